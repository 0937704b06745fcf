"""The engine run of one session at one party: from the plan to the recipients' output shares.

One home for what every party runs, whoever made its preprocessing: the plan's
:class:`~pqmpc_node.mpc.config.EngineConfig` (:func:`engine_config`), the program
compiled once into a typed model (:class:`CompiledSession`, from
:meth:`~pqmpc_node.plan.SessionPlan.execution_plan`), and :func:`execute`, which the
node runs for real and the dealer (:mod:`pqmpc_node.dealer`) runs once in simulation to
record the material a session consumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.inputs import OwnerShares, authenticate_inputs
from pqmpc_node.mpc.outputs import DeliveredShare, OutputRequest, deliver_outputs
from pqmpc_node.mpc.programs import (
    ExecutionPlan,
    SessionInputs,
    SessionResult,
    delivered_names,
    model_shapes,
    run_session,
)
from pqmpc_node.mpc.shares import Shared
from pqmpc_node.plan import SessionPlan

__all__ = ["CompiledSession", "PartyInputs", "RunOutcome", "compile_session", "engine_config", "execute",
           "output_requests"]


def engine_config(plan: SessionPlan, backend: str = "numpy") -> EngineConfig:
    """The engine parameters a plan fixes."""
    return EngineConfig(parties=len(plan.parties), threshold=plan.threshold if plan.sharing == "shamir" else 1,
                        sharing=plan.sharing, security=plan.security, frac_bits=plan.frac_bits,
                        backend="cupy" if backend == "cupy" else ("auto" if backend == "auto" else "numpy"))


@dataclass(frozen=True)
class CompiledSession:
    """A plan's program compiled once, with everything the engine run takes from the plan."""

    config: EngineConfig
    program: ExecutionPlan
    fields: tuple[str, ...]
    """The data fields, in the order of each owner's table rows."""
    requests: tuple[OutputRequest, ...]


def compile_session(plan: SessionPlan, backend: str = "numpy") -> CompiledSession:
    """Compile ``plan``'s program (the one place a node or the dealer does) into a :class:`CompiledSession`.

    Raises :class:`~pqmpc_node.mpc.programs.ProgramError` when the numbers cannot be exact
    (the operator compiled the same program at admission, so a signed plan passes).
    """
    return CompiledSession(engine_config(plan, backend), plan.execution_plan(),
                           tuple(f.name for f in plan.data_fields()), tuple(output_requests(plan)))


@dataclass(frozen=True)
class PartyInputs:
    """This party's raw shares of every owner's input, as the owners sealed them.

    ``data``: one :class:`~pqmpc_node.mpc.inputs.OwnerShares` per data owner in plan order,
    ``values`` of shape (len(fields), rows); ``model``: the model owner's parameters,
    flattened in sorted name order (:func:`model_shapes`), or None.
    """

    data: Sequence[OwnerShares]
    model: OwnerShares | None = None


@dataclass(frozen=True)
class RunOutcome:
    """A finished run at one party: the public facts and each recipient's checked output shares."""

    result: SessionResult
    delivered: dict[str, dict[str, DeliveredShare]]


def output_requests(plan: SessionPlan) -> list[OutputRequest]:
    """The plan's output policy as the engine takes it (a histogram brings its range counts, :func:`delivered_names`)."""
    return [OutputRequest(o.recipient, delivered_names(o.allow)) for o in plan.outputs]


async def execute(ctx: MPCContext, exec_plan: ExecutionPlan, fields: Sequence[str], inputs: PartyInputs,
                  requests: Sequence[OutputRequest]) -> RunOutcome:
    """Run the session's program at one party, from the owners' raw shares to the recipients' shares.

    1. Authenticate every owner's input (:func:`~pqmpc_node.mpc.inputs.authenticate_inputs`).
    2. Run the program (only the valid-row count is opened, after a MAC check).
    3. Check every opening, then make each recipient's output shares
       (:func:`~pqmpc_node.mpc.outputs.deliver_outputs`).
    """
    owners = [*inputs.data, *([inputs.model] if inputs.model is not None else [])]
    authed = await authenticate_inputs(ctx, owners)
    columns: dict[str, Shared] = {}
    if inputs.data:
        tables = [a.reshape(*o.values.shape) for a, o in zip(authed, inputs.data, strict=False)]
        table = ctx.concat(tables, axis=1) if len(tables) > 1 else tables[0]
        columns = {f: table[i] for i, f in enumerate(fields)}
    model: dict[str, Shared] = {}
    if inputs.model is not None:
        flat = authed[-1]
        offset = 0
        for k, shape in sorted(model_shapes(exec_plan).items()):
            size = int(np.prod(shape))
            model[k] = flat[offset:offset + size].reshape(*shape)
            offset += size
    result = await run_session(ctx, exec_plan, SessionInputs(columns, model))
    delivered = await deliver_outputs(ctx, result, requests)
    return RunOutcome(result, delivered)
