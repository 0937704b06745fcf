"""The ``ot`` preprocessing provider (work in progress: interface only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pqmpc_node.mpc.channel import Channel
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.preprocessing import InputMask, Triple, TruncationPair
from pqmpc_node.mpc.shares import Shared
from pqmpc_node.mpc.sharing import AdditiveScheme

__all__ = ["OtProvider", "OtProviderStats"]


@dataclass
class OtProviderStats:
    """What this provider made (public counts; for metrics and benchmarks)."""

    base_ots: int = 0
    extended_ots: int = 0
    triples: int = 0
    bits: int = 0
    bytes_sent: int = 0


@dataclass
class OtProvider:
    """This party's dealer-free material for an additive session; bind it to its context before use."""

    domain: Domain
    scheme: AdditiveScheme
    authenticated: bool
    stats: OtProviderStats = field(default_factory=OtProviderStats)
    _ctx: MPCContext | None = field(default=None, repr=False)

    @classmethod
    async def create(cls, channel: Channel, *, domain: Domain, scheme: AdditiveScheme, live: Sequence[int],
                     session: str, authenticated: bool) -> OtProvider:
        """Run the base OTs with every other party (over ``channel``) and set up OT extension."""
        raise NotImplementedError("the ot provider is being built")

    def bind(self, ctx: MPCContext) -> None:
        """Use ``ctx``'s channel, coins and MAC checks (the context that took this provider)."""
        if ctx.provider is not self:
            raise ValueError("bind the provider to the context that uses it")
        self._ctx = ctx

    def mac_key_share(self) -> Array | None:
        raise NotImplementedError

    async def triples(self, shape: tuple[int, ...]) -> Triple:
        raise NotImplementedError

    async def matrix_triple(self, left: tuple[int, int], right: tuple[int, int]) -> Triple:
        raise NotImplementedError

    async def edabits(self, shape: tuple[int, ...]) -> Shared:
        raise NotImplementedError

    async def truncation_pairs(self, shape: tuple[int, ...], frac_bits: int) -> TruncationPair:
        raise NotImplementedError

    async def input_mask(self, shape: tuple[int, ...], owner: int) -> InputMask:
        raise NotImplementedError
