"""In-memory refusal counters keyed by reason label (exported to Prometheus by the node service).

A refusal may name the peer it refused (the node a link dialed, or the authenticated
peer of an established link); ``""`` when the peer is not known (an inbound connection
refused before its certificate was verified, an envelope).
"""

from __future__ import annotations

from collections import Counter

__all__ = ["RefusalCounters"]


class RefusalCounters:
    """Counts every refusal (handshake, identity, frame, envelope) under a stable reason label."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._by_peer: Counter[tuple[str, str]] = Counter()

    def count(self, reason: str, peer: str = "") -> None:
        """Add one refusal for ``reason``, of ``peer`` when known."""
        self._counts[reason] += 1
        self._by_peer[(reason, peer)] += 1

    def get(self, reason: str) -> int:
        """How many refusals for ``reason`` so far (all peers)."""
        return self._counts[reason]

    def snapshot(self) -> dict[str, int]:
        """A copy of all counts by reason."""
        return dict(self._counts)

    def snapshot_by_peer(self) -> dict[tuple[str, str], int]:
        """A copy of all counts by ``(reason, peer)``; ``peer`` is ``""`` where unknown."""
        return dict(self._by_peer)
