"""Session parameters of the engine and the domain/sharing they select."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pqmpc_node.mpc.backend import BackendName, select_namespace
from pqmpc_node.mpc.context import Security
from pqmpc_node.mpc.domain import Domain
from pqmpc_node.mpc.field import MersenneField61
from pqmpc_node.mpc.fixedpoint import DEFAULT_FRAC_BITS
from pqmpc_node.mpc.ring import Ring64
from pqmpc_node.mpc.sharing import AdditiveScheme, ShamirScheme, SharingScheme

__all__ = ["EngineConfig", "SharingKind"]

SharingKind = Literal["additive", "shamir"]


@dataclass(frozen=True)
class EngineConfig:
    """What an MPCSession fixes for the engine.

    Domain choice: additive semi-honest sessions compute in Z_2^64 (fastest, no modular
    reduction); malicious sessions and Shamir sessions compute in F_p, p = 2^61 - 1
    (MACs need a field, Shamir needs a field).
    """

    parties: int
    threshold: int = 1
    sharing: SharingKind = "additive"
    security: Security = "semi-honest"
    frac_bits: int = DEFAULT_FRAC_BITS
    backend: BackendName = "numpy"

    def __post_init__(self) -> None:
        if self.parties < 2:
            raise ValueError(f"an MPC session needs at least 2 parties, got {self.parties}")
        if self.sharing == "shamir" and not 0 < self.threshold < self.parties:
            raise ValueError(f"Shamir threshold must be in 1..{self.parties - 1}, got {self.threshold}")

    def scheme(self) -> SharingScheme:
        if self.sharing == "additive":
            return AdditiveScheme(self.parties)
        return ShamirScheme(self.parties, self.threshold)

    def domain(self, xp: Any | None = None) -> Domain:
        ns = select_namespace(self.backend) if xp is None else xp
        if self.sharing == "additive" and self.security == "semi-honest":
            return Ring64(ns)
        return MersenneField61(ns)
