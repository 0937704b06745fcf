"""pqmpc node."""
