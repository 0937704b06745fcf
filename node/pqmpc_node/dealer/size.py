"""How large a session's dealt preprocessing will be, known before dealing it.

A node takes a preprocessing body of at most :data:`PREPROCESSING_LIMIT` bytes (the
service's request limit). Dealing a session whose body would not fit only to have every
party refuse it wastes minutes of operator CPU and gigabytes of its memory, and dealing
it again would never succeed; so the operator projects the size first (:func:`project_size`)
and fails such a session at once, saying how many rows fit.

The projection is exact in shape, linear in extent: the dealer's material grows linearly
with each data owner's row count for every program the engine runs (the program is
vectorised over rows; the manifest of requests does not depend on the row count, only
the shapes in it do). So the dealer's simulation is run at :data:`BASE_ROWS` rows per
owner and once more with each owner at twice that, and each party's body size is
extrapolated linearly per owner. It costs ``owners + 1`` simulations of a few rows each
(milliseconds), never a deal at the real size.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from pqmpc_node.dealer.provider import attempt_count
from pqmpc_node.dealer.seeded import DealingProvider
from pqmpc_node.dealer.simulation import simulate
from pqmpc_node.dealer.wire import MAGIC
from pqmpc_node.plan import SessionPlan

__all__ = ["BASE_ROWS", "ENVELOPE_ALLOWANCE", "PREPROCESSING_LIMIT", "SizeProjection", "project_size"]

PREPROCESSING_LIMIT = 256 << 20
"""The largest preprocessing body a node accepts (bytes); the node's service and the operator both use it."""

ENVELOPE_ALLOWANCE = 64 << 10
"""Bytes a body holds beside the correction streams and the manifest: magic, KEM ciphertext,
ML-DSA signature, envelope header, seeds, keys, GCM tags (a few KiB; a generous bound)."""

BASE_ROWS = 2
"""Rows per owner of the smallest simulation (the second doubles one owner's)."""


@dataclass(frozen=True)
class SizeProjection:
    """Each party's body size as ``intercept + sum(slope[owner] * rows[owner])`` bytes."""

    intercepts: tuple[float, ...]
    """Per party: bytes at zero rows (extrapolated)."""
    slopes: tuple[Mapping[str, float], ...]
    """Per party: bytes each further row of each owner adds."""

    def projected_bytes(self, rows: Mapping[str, int]) -> int:
        """The largest party's body for these row counts (bytes, rounded up)."""
        return max(math.ceil(b + sum(s[o] * rows[o] for o in s)) for b, s in zip(self.intercepts, self.slopes, strict=True))

    def rows_that_fit(self, limit: int = PREPROCESSING_LIMIT) -> int:
        """The most rows each owner may submit (all owners alike) for every party's body to fit ``limit``; 0: none."""
        fits = []
        for b, s in zip(self.intercepts, self.slopes, strict=True):
            per_row = sum(s.values())
            fits.append(10_000_000 if per_row <= 0 else max(0, math.floor((limit - b) / per_row)))
        return min(fits)


def _party_bytes(providers: list[DealingProvider], attempts: int) -> list[float]:
    """Each party's body size from one simulation: streams (one per attempt), manifest, fixed allowance."""
    out = []
    for prov in providers:
        manifest = len(json.dumps([list(m) for m in prov.requests]).encode())
        out.append(float(len(MAGIC) + ENVELOPE_ALLOWANCE + manifest + 8 * attempts * int(prov.stream.size)))
    return out


async def _project(plan: SessionPlan) -> SizeProjection:
    owners = [i.owner for i in plan.inputs if i.role == "data"]
    attempts = attempt_count(plan)

    async def at(rows: dict[str, int]) -> list[float]:
        seeds = [os.urandom(32) for _ in plan.parties]  # dummy: sizes do not depend on the seeds
        return _party_bytes(await simulate(plan, rows, seeds, os.urandom(32), os.urandom), attempts)

    base = await at({o: BASE_ROWS for o in owners})
    slopes: list[dict[str, float]] = [{} for _ in base]
    for o in owners:
        more = await at({p: (2 * BASE_ROWS if p == o else BASE_ROWS) for p in owners})
        for i, (b, m) in enumerate(zip(base, more, strict=True)):
            slopes[i][o] = (m - b) / BASE_ROWS
    intercepts = tuple(b - BASE_ROWS * sum(s.values()) for b, s in zip(base, slopes, strict=True))
    return SizeProjection(intercepts, tuple(slopes))


def project_size(plan: SessionPlan) -> SizeProjection:
    """Project every party's preprocessing body size for ``plan`` (see the module docstring).

    CPU-bound but small (``owners + 1`` simulations at a few rows); runs its own event
    loop, so call it from a worker thread in an async caller.
    """
    return asyncio.run(_project(plan))
