"""Run a compiled program with every party in this process, as a recipient sees the result.

The columns are encoded as the plan says (:func:`encode_column`), shared by the
simulation's dealer, run by :func:`run_session`, delivered to one recipient allowed
every output and decoded exactly (:func:`output_decodings`), the way the client does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from fractions import Fraction
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pqmpc_local.mpc_simulation import make_contexts, run_local
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.numerics import decode_fractions
from pqmpc_node.mpc.outputs import OutputRequest, deliver_outputs, verify_delivered
from pqmpc_node.mpc.programs import (
    AggregatePlan,
    ExecutionPlan,
    SessionInputs,
    encode_column,
    encode_model,
    output_decodings,
    run_session,
)


@dataclass
class Revealed:
    """What one recipient allowed every output gets: the verified, decoded outputs."""

    rejected_rows: int
    valid_rows: int
    opened: dict[str, Any]
    exact: dict[str, list[Fraction]]
    """Every output's exact values (what the client's ``exact`` texts write out)."""


def run_compiled(config: EngineConfig, plan: ExecutionPlan, table: Mapping[str, Any],
                 model: Mapping[str, Any] | None = None, *, seed: bytes = b"programs-seed-0123456789abcdef01") -> Revealed:
    """Every party runs ``plan`` on ``table`` (and ``model``); returns what the recipient decodes."""
    if not isinstance(plan, AggregatePlan):
        config = replace(config, frac_bits=plan.frac_bits)
    contexts, dealer = make_contexts(config, seed=seed)
    d = contexts[0].domain

    async def party(ctx: MPCContext) -> Any:
        cols = {k: dealer.share_input(ctx.party, encode_column(plan, k, np.asarray(v), d), k) for k, v in table.items()}
        params = {k: dealer.share_input(ctx.party, encode_model(plan, k, np.asarray(v), d), k)
                  for k, v in (model or {}).items()}
        result = await run_session(ctx, plan, SessionInputs(cols, params))
        delivered = await deliver_outputs(ctx, result, [OutputRequest("r", tuple(result.outputs))])
        return result, delivered["r"]

    runs = asyncio.run(run_local(contexts, party))
    results = [r for r, _ in runs]
    assert all(r.rejected_rows == results[0].rejected_rows for r in results)
    first = results[0]
    decodings = output_decodings(plan)
    opened: dict[str, Any] = dict(first.public)
    exact: dict[str, list[Fraction]] = {}
    for name in first.outputs:
        y = verify_delivered(d, contexts[0].scheme, {i: dl[name] for i, (_, dl) in enumerate(runs)},
                             authenticated=config.security == "malicious")
        exact[name] = decode_fractions(decodings[name], [int(v) for v in d.to_signed(y).reshape(-1).tolist()],
                                       first.valid_rows)
        values = [int(q) if q.denominator == 1 else float(q) for q in exact[name]]
        if name == "score":
            opened[name] = np.asarray(values, dtype=np.float64).reshape(y.shape)
        elif name.startswith("histogram(") and name.endswith(")"):  # the bins; .below/.above are single counts
            opened[name] = values
        else:
            opened[name] = None if name in first.undefined else values[0]
    return Revealed(first.rejected_rows, first.valid_rows, opened, exact)
