"""The MPC engine: sharing math, protocols, preprocessing and programs.

Contract: independent of Kubernetes and of the network. Protocols talk to a small
``Channel`` interface; sockets live in :mod:`pqmpc_node.net`.
"""
