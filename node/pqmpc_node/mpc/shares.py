"""A party's share of a secret array, with its MAC share in malicious mode."""

from __future__ import annotations

from dataclasses import dataclass

from pqmpc_node.mpc.domain import Array

__all__ = ["Shared"]


@dataclass(frozen=True)
class Shared:
    """This party's share ``value`` of a secret array and, when MACs are on, its MAC share.

    The MAC share satisfies ``sum_i mac_i = alpha * x`` (additive) or interpolates to
    ``alpha * x`` (Shamir), where ``alpha`` is the session's secret MAC key.
    """

    value: Array
    mac: Array | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def size(self) -> int:
        return int(self.value.size)

    def reshape(self, *shape: int) -> Shared:
        """The same share with a new shape."""
        return Shared(self.value.reshape(shape), None if self.mac is None else self.mac.reshape(shape))

    def __getitem__(self, index: object) -> Shared:
        return Shared(self.value[index], None if self.mac is None else self.mac[index])

    @property
    def T(self) -> Shared:  # noqa: N802 - mirrors numpy
        return Shared(self.value.T, None if self.mac is None else self.mac.T)
