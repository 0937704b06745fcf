"""pqmpc operator."""
