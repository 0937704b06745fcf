"""Networking for pqmpc nodes: PQ mutual-TLS peer links and MPC channels over sockets.

This is the I/O shell around :mod:`pqmpc_node.crypto` and :mod:`pqmpc_node.mpc`.
"""
