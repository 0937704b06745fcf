"""In-memory refusal counters keyed by reason label (exported to Prometheus by the node service)."""

from __future__ import annotations

from collections import Counter

__all__ = ["RefusalCounters"]


class RefusalCounters:
    """Counts every refusal (handshake, identity, frame, envelope) under a stable reason label."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def count(self, reason: str) -> None:
        """Add one refusal for ``reason``."""
        self._counts[reason] += 1

    def get(self, reason: str) -> int:
        """How many refusals for ``reason`` so far."""
        return self._counts[reason]

    def snapshot(self) -> dict[str, int]:
        """A copy of all counts."""
        return dict(self._counts)
