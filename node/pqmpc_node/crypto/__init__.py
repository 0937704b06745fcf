"""Post-quantum cryptography for pqmpc nodes: suites, PKI, KEM keys, envelopes.

Contract: pure computation over bytes and key objects. No sockets, no files, no
Kubernetes, no metrics (enforced by the import-linter contract in ``.importlinter``).
"""
