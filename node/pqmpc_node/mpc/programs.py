"""Declarative MPCSession programs compiled to execution plans, and the session runner.

``compile_program(program, fields)`` turns the ``program`` of an MPCSession (one of
``aggregate``, ``linearScore``, ``mlp``) and the declared input fields into a frozen
plan; :func:`run_session` executes a plan at one party.

Input range checks run inside MPC for every field the plan reads: a row whose value of
any such field lies outside the field's declared ``[min, max]`` gets a shared validity
bit 0 and is excluded (aggregates skip it, scores and MLP outputs are zeroed). Only the
number of valid (hence rejected) rows is opened; every other result stays shared
until :mod:`pqmpc_node.mpc.outputs` delivers it to its recipients.

Inputs (:class:`SessionInputs`): fixed-point sharings of each column, shape (N,), rows
of all owners concatenated; model parameters of the model owner: ``weights`` (d,) and
``bias`` (1,) for ``linearScore``, ``W{i}`` and ``b{i}`` per layer for ``mlp``
(:func:`model_shapes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


from pqmpc_node.mpc import protocols as proto
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.mac import check_macs
from pqmpc_node.mpc.shares import Shared

__all__ = [
    "ProgramError",
    "FieldSpec",
    "AggregateOp",
    "AggregatePlan",
    "LinearScorePlan",
    "MlpPlan",
    "ExecutionPlan",
    "SessionInputs",
    "SessionResult",
    "compile_program",
    "model_shapes",
    "run_session",
]

AggregateKind = Literal["count", "sum", "mean", "variance", "min", "max", "histogram"]
_AGG_KINDS = ("count", "sum", "mean", "variance", "min", "max", "histogram")


class ProgramError(ValueError):
    """The program of an MPCSession is malformed."""


@dataclass(frozen=True)
class FieldSpec:
    """A declared input field with its accepted range."""

    name: str
    min: float
    max: float


@dataclass(frozen=True)
class AggregateOp:
    """One statistic over one field."""

    op: AggregateKind
    field: str
    bins: tuple[float, ...] = ()

    @property
    def output_name(self) -> str:
        return f"{self.op}({self.field})"


@dataclass(frozen=True)
class AggregatePlan:
    fields: tuple[FieldSpec, ...]
    ops: tuple[AggregateOp, ...]


@dataclass(frozen=True)
class LinearScorePlan:
    fields: tuple[FieldSpec, ...]
    output: Literal["score", "sigmoid", "threshold"]
    threshold: float = 0.0


@dataclass(frozen=True)
class MlpPlan:
    fields: tuple[FieldSpec, ...]
    layers: tuple[int, ...]


ExecutionPlan = AggregatePlan | LinearScorePlan | MlpPlan


def _fields(specs: Sequence[Mapping[str, Any]]) -> dict[str, FieldSpec]:
    out: dict[str, FieldSpec] = {}
    for raw in specs:
        try:
            spec = FieldSpec(str(raw["name"]), float(raw["min"]), float(raw["max"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProgramError(f"input field {raw!r} needs name, min and max ({exc})") from exc
        if not spec.min <= spec.max:
            raise ProgramError(f"field {spec.name!r} has min {spec.min} > max {spec.max}")
        out[spec.name] = spec
    return out


def _pick(fields: dict[str, FieldSpec], names: Sequence[str]) -> tuple[FieldSpec, ...]:
    missing = [n for n in names if n not in fields]
    if missing:
        raise ProgramError(f"program uses undeclared fields {missing}; declared: {sorted(fields)}")
    return tuple(fields[n] for n in dict.fromkeys(names))


def compile_program(program: Mapping[str, Any], fields: Sequence[Mapping[str, Any]]) -> ExecutionPlan:
    """Validate ``program`` against the declared ``fields`` and return an execution plan."""
    kinds = [k for k in ("aggregate", "linearScore", "mlp") if k in program]
    if len(kinds) != 1 or len(program) != 1:
        raise ProgramError(f"program must have exactly one of aggregate, linearScore, mlp; got {sorted(program)}")
    declared = _fields(fields)
    body = program[kinds[0]]
    if kinds[0] == "aggregate":
        if not isinstance(body, list) or not body:
            raise ProgramError("aggregate must be a non-empty list of {op, field}")
        ops: list[AggregateOp] = []
        for item in body:
            op = item.get("op")
            if op not in _AGG_KINDS:
                raise ProgramError(f"aggregate op {op!r} is not one of {list(_AGG_KINDS)}")
            bins = tuple(float(b) for b in item.get("bins", ()))
            if op == "histogram" and (len(bins) < 2 or any(b2 <= b1 for b1, b2 in zip(bins, bins[1:], strict=False))):
                raise ProgramError(f"histogram of {item.get('field')!r} needs at least 2 increasing bin edges")
            ops.append(AggregateOp(op, str(item.get("field")), bins))
        return AggregatePlan(_pick(declared, [o.field for o in ops]), tuple(ops))
    features = body.get("features")
    if not isinstance(features, list) or not features:
        raise ProgramError(f"{kinds[0]} needs a non-empty list of features")
    chosen = _pick(declared, [str(f) for f in features])
    if len(chosen) != len(features):
        raise ProgramError(f"{kinds[0]} features must be distinct, got {features}")
    if kinds[0] == "linearScore":
        if "threshold" in body:
            return LinearScorePlan(chosen, "threshold", float(body["threshold"]))
        output = body.get("output", "score")
        if output not in ("score", "sigmoid"):
            raise ProgramError(f"linearScore output must be 'score', 'sigmoid' or a threshold, got {output!r}")
        return LinearScorePlan(chosen, output)
    layers = body.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(w, int) and w > 0 for w in layers):
        raise ProgramError(f"mlp layers must be a non-empty list of positive widths, got {layers!r}")
    return MlpPlan(chosen, tuple(layers))


def model_shapes(plan: ExecutionPlan) -> dict[str, tuple[int, ...]]:
    """The model parameters the model owner must share, by name and shape."""
    if isinstance(plan, LinearScorePlan):
        return {"weights": (len(plan.fields),), "bias": (1,)}
    if isinstance(plan, MlpPlan):
        widths = (len(plan.fields), *plan.layers)
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(len(plan.layers)):
            shapes[f"W{i}"] = (widths[i], widths[i + 1])
            shapes[f"b{i}"] = (widths[i + 1],)
        return shapes
    return {}


@dataclass(frozen=True)
class SessionInputs:
    """This party's shares: input columns (fixed point, shape (N,)) and model parameters."""

    columns: Mapping[str, Shared]
    model: Mapping[str, Shared] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionResult:
    """What a run leaves at this party: public facts, and its shares of the outputs.

    Nothing but ``public`` is ever opened to the parties: the row count that passed the
    range checks (``count``, and ``count(field)`` ops) is public by design, and the mean
    and variance divide by it. Every other output stays a sharing until it is delivered
    to the recipients the policy names (:mod:`pqmpc_node.mpc.outputs`).

    ``integer_outputs`` decode as integers (histogram counts), the others as fixed point;
    ``undefined`` names statistics with no valid rows (their shares are computed anyway,
    so the material a run consumes never depends on the data, and decode to None).
    """

    public: dict[str, Any]
    outputs: dict[str, Shared]
    rejected_rows: int
    integer_outputs: frozenset[str] = frozenset()
    undefined: frozenset[str] = frozenset()


async def _and_all(ctx: MPCContext, bits: Shared) -> Shared:
    """Product of the rows of ``bits`` (shape (K, N)) by a tree: ceil(log2 K) rounds."""
    while bits.shape[0] > 1:
        half = bits.shape[0] // 2
        (prod,) = await proto.multiply_many(ctx, [(bits[:half], bits[half : 2 * half])])
        bits = ctx.concat([prod, bits[2 * half :]]) if bits.shape[0] % 2 else prod
    return bits[0]


async def _validity(
    ctx: MPCContext, plan_fields: Sequence[FieldSpec], columns: Mapping[str, Shared], extra: Sequence[tuple[Shared, float]]
) -> tuple[Shared, list[Shared]]:
    """Validity bits of the rows and ``[v < c]`` for each extra (column, constant), in one comparison batch."""
    rows: list[Shared] = []
    for spec in plan_fields:
        col = columns[spec.name]
        rows.append(ctx.add_public(col, ctx.encode_fixed([-spec.min])))  # v - min < 0 -> invalid
        rows.append(ctx.add_public(ctx.neg(col), ctx.encode_fixed([spec.max])))  # max - v < 0 -> invalid
    for col, const in extra:
        rows.append(ctx.add_public(col, ctx.encode_fixed([-const])))
    below = await proto.less_than_zero(ctx, ctx.stack(rows))
    ok = ctx.add_public(ctx.neg(below[: 2 * len(plan_fields)]), ctx.domain.scalar(1))
    valid = await _and_all(ctx, ok)
    return valid, [below[2 * len(plan_fields) + i] for i in range(len(extra))]


def _columns(inputs: SessionInputs, specs: Sequence[FieldSpec]) -> tuple[dict[str, Shared], int]:
    missing = [s.name for s in specs if s.name not in inputs.columns]
    if missing:
        raise ProgramError(f"no input shares for fields {missing}")
    cols = {s.name: inputs.columns[s.name] for s in specs}
    lengths = {c.shape for c in cols.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ProgramError(f"input columns must be one-dimensional and equally long, got shapes {sorted(lengths)}")
    return cols, next(iter(lengths))[0]


async def run_session(ctx: MPCContext, plan: ExecutionPlan, inputs: SessionInputs) -> SessionResult:
    """Execute ``plan`` at this party; opens only the valid-row count, returns output shares (not yet checked).

    The caller must pass every output through :func:`pqmpc_node.mpc.outputs.deliver_outputs`,
    which MAC-checks all openings before any output share leaves the engine.
    """
    if isinstance(plan, AggregatePlan):
        return await _run_aggregate(ctx, plan, inputs)
    return await _run_model(ctx, plan, inputs)


async def _open_count(ctx: MPCContext, valid: Shared) -> int:
    """Open the number of valid rows, after a MAC check of every opening before it.

    The count is the first opening of a value that no random mask hides: a party that
    added an error to a Beaver opening of the range checks would otherwise read a
    function of the rows in it (an error ``D_j`` on row j's product opens
    ``count + sum_j D_j * bit_j``). The check runs first, so a cheat aborts before.
    """
    await check_macs(ctx, "before-count")
    (total,) = await ctx.open([ctx.sum(valid)], "valid-count")
    return int(ctx.domain.to_signed(total)[0])


async def _run_aggregate(ctx: MPCContext, plan: AggregatePlan, inputs: SessionInputs) -> SessionResult:
    cols, n_rows = _columns(inputs, plan.fields)
    specs = {s.name: s for s in plan.fields}
    extra: list[tuple[Shared, float]] = []
    for op in plan.ops:
        if op.op == "histogram":
            extra.extend((cols[op.field], b) for b in op.bins[:-1])
    hist_top = [(ctx.neg(cols[op.field]), -op.bins[-1]) for op in plan.ops if op.op == "histogram"]
    valid, below = await _validity(ctx, plan.fields, cols, extra + hist_top)
    valid_count = await _open_count(ctx, valid)
    rejected = n_rows - valid_count
    d = ctx.domain
    one = d.scalar(1)
    # Products with the validity bit, all in one round.
    needs_sq = sorted({op.field for op in plan.ops if op.op == "variance"})
    squares = {}
    if needs_sq:
        sq = await proto.fx_multiply(ctx, ctx.stack([cols[f] for f in needs_sq]), ctx.stack([cols[f] for f in needs_sq]))
        squares = {f: sq[i] for i, f in enumerate(needs_sq)}
    terms: dict[str, Shared] = {}
    for name in specs:
        terms[f"v:{name}"] = cols[name]
    for f, s in squares.items():
        terms[f"sq:{f}"] = s
    cursor = 0
    hist_rows: dict[int, list[str]] = {}
    for i, op in enumerate(plan.ops):
        if op.op == "histogram":
            ge = [ctx.add_public(ctx.neg(below[cursor + k]), one) for k in range(len(op.bins) - 1)]
            cursor += len(op.bins) - 1
            hist_rows[i] = []
            for k, g in enumerate(ge):
                terms[f"h{i}:{k}"] = g
                hist_rows[i].append(f"h{i}:{k}")
    for i, op in enumerate(plan.ops):
        if op.op == "histogram":
            gt_top = below[cursor]
            cursor += 1
            terms[f"h{i}:top"] = gt_top
        if op.op in ("min", "max"):
            base = specs[op.field].min if op.op == "max" else specs[op.field].max
            terms[f"mm{i}"] = ctx.add_public(cols[op.field], ctx.encode_fixed([-base]))
    keys = list(terms)
    prods = await proto.multiply_many(ctx, [(valid, terms[k]) for k in keys])
    masked = dict(zip(keys, prods, strict=True))
    outputs: dict[str, Shared] = {}
    integer_outputs: set[str] = set()
    # The control flow never depends on the data: with no valid rows the statistics are
    # computed over a divisor of 1 and reported undefined, so the material consumed (and
    # the dealer's simulation) is the same whatever the inputs.
    divisor = max(valid_count, 1)
    public: dict[str, Any] = {}
    undefined: set[str] = set()
    for i, op in enumerate(plan.ops):
        name = op.output_name
        if op.op == "count":
            public[name] = valid_count
            continue
        if op.op in ("mean", "variance", "min", "max") and not valid_count:
            undefined.add(name)
        if op.op in ("sum", "mean", "variance"):
            total = ctx.sum(masked[f"v:{op.field}"])
            if op.op == "sum":
                outputs[name] = total
            else:
                bound = max(abs(specs[op.field].min), abs(specs[op.field].max))
                mean = await proto.divide_public(ctx, total, divisor, quotient_bound=bound)
                if op.op == "mean":
                    outputs[name] = mean
                else:
                    ex2 = await proto.divide_public(
                        ctx, ctx.sum(masked[f"sq:{op.field}"]), divisor, quotient_bound=bound * bound
                    )
                    outputs[name] = ctx.sub(ex2, await proto.fx_multiply(ctx, mean, mean))
        elif op.op in ("min", "max"):
            base = specs[op.field].min if op.op == "max" else specs[op.field].max
            filled = ctx.add_public(masked[f"mm{i}"], ctx.encode_fixed([base]))
            reducer = proto.max_reduce if op.op == "max" else proto.min_reduce
            outputs[name] = await reducer(ctx, filled)
        elif op.op == "histogram":
            rows = hist_rows[i] + [f"h{i}:top"]
            sums = [ctx.sum(masked[r]) for r in rows]
            counts = [ctx.sub(sums[k], sums[k + 1]) for k in range(len(sums) - 1)]
            outputs[name] = ctx.concat(counts)
            integer_outputs.add(name)
    return SessionResult(public, outputs, rejected, frozenset(integer_outputs), frozenset(undefined))


async def _run_model(ctx: MPCContext, plan: LinearScorePlan | MlpPlan, inputs: SessionInputs) -> SessionResult:
    cols, n_rows = _columns(inputs, plan.fields)
    for name, shape in model_shapes(plan).items():
        if name not in inputs.model or inputs.model[name].shape != shape:
            got = inputs.model[name].shape if name in inputs.model else None
            raise ProgramError(f"model parameter {name!r} must have shape {shape}, got {got}")
    valid, _ = await _validity(ctx, plan.fields, cols, [])
    valid_count = await _open_count(ctx, valid)
    x = ctx.stack([cols[s.name] for s in plan.fields]).T  # (N, d)
    x = Shared(ctx.xp.ascontiguousarray(x.value), None if x.mac is None else ctx.xp.ascontiguousarray(x.mac))
    if isinstance(plan, LinearScorePlan):
        w = inputs.model["weights"].reshape(len(plan.fields), 1)
        score = ctx.add(await proto.fx_matmul(ctx, x, w), inputs.model["bias"])
        out = score.reshape(n_rows)
        if plan.output == "sigmoid":
            out = await proto.sigmoid(ctx, out)
        elif plan.output == "threshold":
            below = await proto.less_than_zero(ctx, ctx.add_public(out, ctx.encode_fixed([-plan.threshold])))
            # a 0/1 decision encoded in fixed point so every output decodes the same way
            out = ctx.mul_public(ctx.add_public(ctx.neg(below), ctx.domain.scalar(1)), ctx.domain.scalar(ctx.fixed.scale))
        name = "score"
    else:
        h = x
        for i in range(len(plan.layers)):
            h = ctx.add(await proto.fx_matmul(ctx, h, inputs.model[f"W{i}"]), inputs.model[f"b{i}"])
            if i < len(plan.layers) - 1:
                h = await proto.relu(ctx, h)
        out = h
        name = "score"  # the MPCSession API publishes model results as "score"
    vshape = valid.reshape(n_rows, 1) if len(out.shape) == 2 else valid
    if len(out.shape) == 2:
        vshape = ctx.broadcast_rows(valid, out.shape[1]).T
        vshape = Shared(ctx.xp.ascontiguousarray(vshape.value), None if vshape.mac is None else ctx.xp.ascontiguousarray(vshape.mac))
    out = await proto.multiply(ctx, out, vshape)
    return SessionResult({"count": valid_count}, {name: out}, n_rows - valid_count)
