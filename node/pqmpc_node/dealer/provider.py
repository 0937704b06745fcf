"""A node's provider for dealt material: one fresh set per attempt, checked against the dealer's manifest."""

from __future__ import annotations

from typing import Any

from pqmpc_node.dealer.seeded import SplitProvider
from pqmpc_node.dealer.wire import PartyMaterial, PreprocessingError
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.plan import SessionPlan

__all__ = ["attempt_count", "party_provider"]


def attempt_count(plan: SessionPlan) -> int:
    """How many attempts the dealer deals for: a fresh set of material for each.

    Additive sessions need every party, so they run once. Shamir sessions restart with
    the survivors after a lost party while t + 1 remain: at most n - t attempts. A
    restart never reuses material: reused Beaver masks would open the difference of two
    attempts' values.
    """
    return 1 if plan.sharing != "shamir" else len(plan.parties) - plan.threshold


def party_provider(plan: SessionPlan, material: PartyMaterial, cfg: EngineConfig, xp: Any | None = None,
                   *, attempt: int = 1) -> SplitProvider:
    """A node's preprocessing provider for ``attempt`` (1-based) from its material; each attempt's is fresh."""
    if not 1 <= attempt <= len(material.seeds):
        raise PreprocessingError(f"the dealer dealt material for {len(material.seeds)} attempts; attempt {attempt} "
                                 "has none (a restart never reuses an earlier attempt's material)", "attempts_exhausted")
    return SplitProvider(cfg.domain(xp), cfg.scheme(), material.party, seed=material.seeds[attempt - 1],
                         stream=material.streams[attempt - 1], manifest=material.manifest,
                         authenticated=plan.security == "malicious")
