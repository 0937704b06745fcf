"""Declarative MPCSession programs compiled to execution plans, and the session runner.

``compile_program(program, fields)`` turns the ``program`` of an MPCSession (one of
``aggregate``, ``linearScore``, ``mlp``) and the declared input fields into a frozen
plan; :func:`run_session` executes a plan at one party.

Input range checks run inside MPC for every field the plan reads: a row whose value of
any such field lies outside the field's declared ``[min, max]`` gets a shared validity
bit 0 and is excluded (aggregates skip it, scores and MLP outputs are zeroed). Only the
number of valid (hence rejected) rows is opened; every other result stays shared
until :mod:`pqmpc_node.mpc.outputs` delivers it to its recipients.

Inputs (:class:`SessionInputs`): sharings of each column, shape (N,), rows of all
owners concatenated, encoded as :func:`encode_column` says (aggregates: integers in
units of the field's decimals; models: fixed point); model parameters of the model
owner: ``weights`` (d,) and ``bias`` (1,) for ``linearScore``, ``W{i}`` and ``b{i}``
per layer for ``mlp`` (:func:`model_shapes`).

Compilation bounds every intermediate against the declared ranges, the row bound and
the model's shapes, and refuses what could wrap (:mod:`pqmpc_node.mpc.numerics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from pqmpc_node.mpc import protocols as proto
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.fixedpoint import FixedPoint
from pqmpc_node.mpc.mac import check_macs
from pqmpc_node.mpc.numerics import (
    AUTO_MAX_DECIMALS,
    DEFAULT_WEIGHT_BOUND,
    MAX_VARIANCE_LIMBS,
    MODEL_FRAC_BITS,
    FieldNumerics,
    NumericsError,
    OutputDecoding,
    RowBound,
    VarianceLimbs,
    bits_text,
    capacity_bits,
    decimals_needed,
    variance_limbs,
)
from pqmpc_node.mpc.shares import Shared

__all__ = [
    "ProgramError",
    "ModelOutOfRangeError",
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
    "encode_column",
    "encode_model",
    "output_decodings",
    "output_labels",
    "delivered_names",
    "is_histogram_bins",
    "run_session",
]

AggregateKind = Literal["count", "sum", "mean", "variance", "min", "max", "histogram"]
_AGG_KINDS = ("count", "sum", "mean", "variance", "min", "max", "histogram")


HISTOGRAM_BELOW = ".below"
HISTOGRAM_ABOVE = ".above"


def is_histogram_bins(name: str) -> bool:
    """Whether output ``name`` is a histogram's array of bin counts (``histogram(f)``, not its ``.below``/``.above``)."""
    return name.startswith("histogram(") and name.endswith(")")


def delivered_names(allow: Sequence[str]) -> tuple[str, ...]:
    """The outputs an allow-list delivers: each name, and with ``histogram(f)`` also its range counts.

    A histogram's ``histogram(f).below`` and ``histogram(f).above`` (the valid rows under its
    first edge and over its last) are part of the histogram the policy names, so a
    recipient allowed ``histogram(f)`` receives them too; they stay separate outputs so the
    histogram's array keeps one count per bin for positional consumers. Pure; order kept.
    """
    out: dict[str, None] = {}
    for name in allow:
        out[name] = None
        if is_histogram_bins(name):
            out[f"{name}{HISTOGRAM_BELOW}"] = None
            out[f"{name}{HISTOGRAM_ABOVE}"] = None
    return tuple(out)


class ProgramError(ValueError):
    """The program of an MPCSession is malformed."""


class ModelOutOfRangeError(ProgramError):
    """The model owner's parameters lie outside the declared ``weightBound`` (checked inside MPC)."""


@dataclass(frozen=True)
class FieldSpec:
    """A declared input field with its accepted range and, optionally, its decimals."""

    name: str
    min: float
    max: float
    decimals: int | None = None


@dataclass(frozen=True)
class AggregateOp:
    """One statistic over one field."""

    op: AggregateKind
    field: str
    bins: tuple[float, ...] = ()

    @property
    def output_name(self) -> str:
        return f"{self.op}({self.field})"

    @property
    def range_outputs(self) -> tuple[str, str]:
        """A histogram's companion outputs: the valid rows below its first and above its last edge."""
        return f"{self.output_name}{HISTOGRAM_BELOW}", f"{self.output_name}{HISTOGRAM_ABOVE}"


@dataclass(frozen=True)
class AggregatePlan:
    fields: tuple[FieldSpec, ...]
    ops: tuple[AggregateOp, ...]
    numerics: Mapping[str, FieldNumerics] = field(default_factory=dict, hash=False)
    rows: RowBound = RowBound()


@dataclass(frozen=True)
class LinearScorePlan:
    fields: tuple[FieldSpec, ...]
    output: Literal["score", "sigmoid", "threshold"]
    threshold: float = 0.0
    weight_bound: float = DEFAULT_WEIGHT_BOUND
    frac_bits: int = MODEL_FRAC_BITS[0]
    rows: RowBound = RowBound()


@dataclass(frozen=True)
class MlpPlan:
    fields: tuple[FieldSpec, ...]
    layers: tuple[int, ...]
    weight_bound: float = DEFAULT_WEIGHT_BOUND
    frac_bits: int = MODEL_FRAC_BITS[0]
    rows: RowBound = RowBound()


ExecutionPlan = AggregatePlan | LinearScorePlan | MlpPlan


def _fields(specs: Sequence[Mapping[str, Any]]) -> dict[str, FieldSpec]:
    out: dict[str, FieldSpec] = {}
    for raw in specs:
        try:
            dec = raw.get("decimals")
            if dec is not None and (isinstance(dec, bool) or not isinstance(dec, int)):
                raise ValueError(f"decimals must be a whole number, got {dec!r}")
            spec = FieldSpec(str(raw["name"]), float(raw["min"]), float(raw["max"]), dec)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProgramError(f"input field {raw!r} needs name, min and max ({exc})") from exc
        if not (math.isfinite(spec.min) and math.isfinite(spec.max)) or not spec.min <= spec.max:
            raise ProgramError(f"field {spec.name!r} has min {spec.min} > max {spec.max} (or a bound that is not finite)")
        if spec.decimals is not None and not 0 <= spec.decimals <= 9:
            raise ProgramError(f"field {spec.name!r} declares decimals {spec.decimals}; use 0..9")
        out[spec.name] = spec
    return out


def _pick(fields: dict[str, FieldSpec], names: Sequence[str]) -> tuple[FieldSpec, ...]:
    missing = [n for n in names if n not in fields]
    if missing:
        raise ProgramError(f"program uses undeclared fields {missing}; declared: {sorted(fields)}")
    return tuple(fields[n] for n in dict.fromkeys(names))


def compile_program(program: Mapping[str, Any], fields: Sequence[Mapping[str, Any]], *,
                    rows: RowBound = RowBound(), ring: bool = False, frac_bits: int | None = None) -> ExecutionPlan:
    """Validate ``program`` against the declared ``fields`` and bound its numbers.

    ``rows`` bounds the rows the session can hold, ``ring`` says the domain is Z_2^64
    (additive semi-honest) rather than F_p. Field ``decimals`` left out, and model
    ``frac_bits`` left None, are chosen automatically; a program whose numbers cannot
    be exact raises :class:`~pqmpc_node.mpc.numerics.NumericsError`.
    """
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
            if not all(math.isfinite(b) for b in bins):
                raise ProgramError(f"histogram of {item.get('field')!r} has a bin edge that is not a finite number")
            if op == "histogram" and (len(bins) < 2 or any(b2 <= b1 for b1, b2 in zip(bins, bins[1:], strict=False))):
                raise ProgramError(f"histogram of {item.get('field')!r} needs at least 2 increasing bin edges")
            ops.append(AggregateOp(op, str(item.get("field")), bins))
        used = _pick(declared, [o.field for o in ops])
        numerics = {s.name: _resolve_field(s, ops, rows, ring) for s in used}
        return AggregatePlan(used, tuple(ops), numerics, rows)
    features = body.get("features")
    if not isinstance(features, list) or not features:
        raise ProgramError(f"{kinds[0]} needs a non-empty list of features")
    chosen = _pick(declared, [str(f) for f in features])
    if len(chosen) != len(features):
        raise ProgramError(f"{kinds[0]} features must be distinct, got {features}")
    bound = float(body.get("weightBound", DEFAULT_WEIGHT_BOUND))
    if not (math.isfinite(bound) and bound > 0):
        raise ProgramError(f"{kinds[0]} weightBound must be a positive number, got {body.get('weightBound')!r}")
    if kinds[0] == "linearScore":
        output = body.get("output", "score")
        threshold = float(body["threshold"]) if "threshold" in body else 0.0
        if "threshold" in body:
            output = "threshold"
        elif output not in ("score", "sigmoid"):
            raise ProgramError(f"linearScore output must be 'score', 'sigmoid' or a threshold, got {output!r}")
        f = _model_frac_bits(kinds[0], chosen, (1,), bound, output, threshold, ring, frac_bits)
        return LinearScorePlan(chosen, output, threshold, bound, f, rows)
    layers = body.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(w, int) and w > 0 for w in layers):
        raise ProgramError(f"mlp layers must be a non-empty list of positive widths, got {layers!r}")
    f = _model_frac_bits(kinds[0], chosen, tuple(layers), bound, "score", 0.0, ring, frac_bits)
    return MlpPlan(chosen, tuple(layers), bound, f, rows)


def _resolve_field(spec: FieldSpec, ops: Sequence[AggregateOp], rows: RowBound, ring: bool) -> FieldNumerics:
    """The field's encoding: its declared decimals, or the most that fit (see :mod:`~pqmpc_node.mpc.numerics`)."""
    mine = [o for o in ops if o.field == spec.name]
    edges = [b for o in mine for b in o.bins]
    if spec.decimals is not None:
        candidates = [spec.decimals]
    else:
        needed = []
        for what, x in [("min", spec.min), ("max", spec.max), *(("histogram bin edge", b) for b in edges)]:
            d = decimals_needed(x)
            if d is None:
                raise NumericsError(f"inputs[].fields[{spec.name}]", f"{what} {x!r} has more than 9 decimals",
                                    "round it to at most 9 decimals")
            needed.append(d)
        d0 = max(needed)
        candidates = list(range(max(d0, AUTO_MAX_DECIMALS), d0 - 1, -1))
    error: NumericsError | None = None
    for d in candidates:
        num = FieldNumerics(spec.name, spec.min, spec.max, d)
        try:
            limbs = _check_field(num, {o.op for o in mine}, edges, rows, capacity_bits(ring))
            return replace(num, variance=limbs)
        except NumericsError as exc:
            error = exc  # the last candidate is the most permissive: report its reason
    assert error is not None  # invariant: candidates is never empty
    raise error


def _fits_fix(name: str, per_owner: int, decimals: int) -> str:
    fewer = " declare fewer decimals," if decimals else ""
    if per_owner >= 1:
        return f"set spec.maxRowsPerOwner to at most {per_owner},{fewer} or narrow [min, max] of {name}"
    return f"narrow [min, max] of {name}{' or declare fewer decimals' if decimals else ''}"


def _check_field(num: FieldNumerics, ops: set[str], edges: Sequence[float], rows: RowBound,
                 cap: int) -> VarianceLimbs | None:
    """Refuse the field's encoding unless every intermediate of its ops stays exact; the variance's limbs."""
    name, d = num.name, num.decimals
    unit = f"units of 10^-{d}"
    for b in edges:
        num.units(b, "histogram bin edge")
    lo, hi, big_u = num.lo, num.hi, num.magnitude
    path = f"inputs[].fields[{name}]"
    if big_u >= 2**53:
        raise NumericsError(path, f"[{num.min:g}, {num.max:g}] at {d} decimals reaches {bits_text(big_u)} {unit}, more "
                            "than the 2^53 a float64 encodes exactly", "declare fewer decimals or narrow the range")
    if hi - lo >= 2 ** (cap - 1):
        raise NumericsError(path, f"[{num.min:g}, {num.max:g}] spans {bits_text(hi - lo)} {unit}, more than the 2^{cap - 1} "
                            "that comparisons handle", "declare fewer decimals or narrow the range")
    n = rows.total
    for op in ("sum", "mean"):
        if op in ops and n * big_u >= 2**cap:
            per_owner = (2**cap - 1) // max(big_u, 1) // rows.owners
            raise NumericsError(
                f"program.aggregate[{op}({name})]",
                f"the sum of up to {rows.describe()} of |{name}| <= {big_u} {unit} can reach {bits_text(n * big_u)}, "
                f"beyond the exact range 2^{cap}", _fits_fix(name, per_owner, d))
    if "variance" in ops:
        span = hi - lo
        limbs = variance_limbs(n, span, cap)
        if limbs is None:
            fits = _most_rows(lambda rows_: variance_limbs(rows_, span, cap) is not None, n)
            raise NumericsError(
                f"program.aggregate[variance({name})]",
                f"the variance of up to {rows.describe()} of {name} spanning {span} {unit} ([{num.min:g}, {num.max:g}]) "
                f"needs (rows x span)^2 / 4 = {bits_text((n * span) ** 2 / 4)}, beyond what {MAX_VARIANCE_LIMBS} "
                f"{cap}-bit limbs carry exactly", _fits_fix(name, fits // rows.owners, d))
        return limbs
    return None


def _most_rows(fits: Callable[[int], bool], upper: int) -> int:
    """The largest row count below ``upper`` for which ``fits`` holds (0 if none); ``fits`` is monotone."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _model_frac_bits(kind: str, features: Sequence[FieldSpec], layers: Sequence[int], bound: float, output: str,
                     threshold: float, ring: bool, frac_bits: int | None) -> int:
    """The fixed-point precision of a model: ``frac_bits`` checked, or the most in 16..8 that fit."""
    tb = 62 if ring else 59
    candidates = [frac_bits] if frac_bits is not None else list(range(MODEL_FRAC_BITS[0], MODEL_FRAC_BITS[1] - 1, -1))
    error: NumericsError | None = None
    for f in candidates:
        try:
            _check_model(kind, features, layers, bound, output, threshold, tb, f)
            return f
        except NumericsError as exc:
            error = exc
    assert error is not None  # invariant: candidates is never empty
    raise error


def _check_model(kind: str, features: Sequence[FieldSpec], layers: Sequence[int], bound: float, output: str,
                 threshold: float, tb: int, f: int) -> None:
    """Every product a model's layers accumulate must stay below ``2^(tb-1)`` with ``2f`` fractional bits."""
    limit = 2.0 ** (tb - 1)
    for s in features:
        if max(abs(s.min), abs(s.max)) * 2.0**f >= 2.0 ** (tb - f):
            raise NumericsError(f"inputs[].fields[{s.name}]", f"[{s.min:g}, {s.max:g}] does not fit {f}-bit fixed point",
                                "narrow the feature's range (rescale the data)")
    if bound * 2.0**f >= 2.0 ** (tb - f):
        raise NumericsError(f"program.{kind}.weightBound", f"{bound:g} does not fit {f}-bit fixed point", "lower weightBound")
    acc = bound * sum(max(abs(s.min), abs(s.max)) for s in features)
    fan_in, h = len(features), 0.0
    for i, width in enumerate(layers):
        if i:
            acc = fan_in * h * bound
        what = "the linear score" if kind == "linearScore" else f"layers[{i}] of the mlp"
        if acc * 4.0**f >= limit:
            raise NumericsError(
                f"program.{kind}.weightBound",
                f"{what} can accumulate |sum| <= {acc:.6g} ({fan_in} inputs, weightBound {bound:g}), and products need "
                f"|sum| x 2^(2f) < 2^{tb - 1} (here {bits_text(acc * 4.0**f)} with f = {f} fractional bits)",
                "lower weightBound, narrow the features' ranges, or use narrower layers")
        h = acc + bound
        fan_in = width
    if output == "sigmoid" and (h + 8) * 4.0**f >= limit:
        raise NumericsError(f"program.{kind}", f"the sigmoid of a score up to {h:.6g} needs {bits_text((h + 8) * 4.0**f)} "
                            f"with f = {f} fractional bits, beyond 2^{tb - 1}", "lower weightBound or narrow the features")
    if output == "threshold" and (h + abs(threshold)) * 2.0**f >= limit:
        raise NumericsError(f"program.{kind}.threshold", f"{threshold:g} is too far from the score's range",
                            "choose a threshold within the reachable scores")


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


def encode_column(plan: ExecutionPlan, name: str, values: Any, domain: Domain) -> Array:
    """A column as the engine takes it: units of the field's decimals (aggregates) or fixed point (models).

    Raises :class:`ValueError` naming the field on NaN, infinity or a value too large to encode.
    """
    if isinstance(plan, AggregatePlan):
        if name not in plan.numerics:  # declared but unused: any encoding will do, the program never reads it
            return domain.from_signed(domain.xp.asarray(FieldNumerics(name, 0, 0, 0).encode(values)))
        return domain.from_signed(domain.xp.asarray(plan.numerics[name].encode(values)))
    return FixedPoint(plan.frac_bits).encode(values, domain)


def encode_model(plan: ExecutionPlan, name: str, values: Any, domain: Domain) -> Array:
    """A model parameter in the model's fixed point; refuses values outside ``[-weightBound, weightBound]``."""
    if isinstance(plan, AggregatePlan):
        raise ProgramError("an aggregate program takes no model")
    v = np.asarray(values, dtype=np.float64)
    if v.size and (not np.all(np.isfinite(v)) or float(np.max(np.abs(v))) > plan.weight_bound):
        worst = float(np.max(np.abs(np.nan_to_num(v, nan=np.inf))))
        raise ModelOutOfRangeError(f"model parameter {name!r} holds {worst:g}, outside the program's weightBound "
                                   f"[-{plan.weight_bound:g}, {plan.weight_bound:g}]; rescale the model or raise weightBound")
    return FixedPoint(plan.frac_bits).encode(v, domain)


def output_decodings(plan: ExecutionPlan) -> dict[str, OutputDecoding]:
    """How the recipient turns each output's integers into numbers (see :mod:`~pqmpc_node.mpc.numerics`)."""
    if not isinstance(plan, AggregatePlan):
        return {"score": OutputDecoding(1 << plan.frac_bits)}
    out: dict[str, OutputDecoding] = {}
    for op in plan.ops:
        if op.op in ("count", "histogram"):
            out[op.output_name] = OutputDecoding(1)
            if op.op == "histogram":
                out.update((name, OutputDecoding(1)) for name in op.range_outputs)
            continue
        scale = plan.numerics[op.field].scale
        if op.op == "mean":
            out[op.output_name] = OutputDecoding(scale, 1)
        elif op.op == "variance":
            limbs = plan.numerics[op.field].variance
            out[op.output_name] = OutputDecoding(scale * scale, 2, 0 if limbs is None else limbs.k)
        else:
            out[op.output_name] = OutputDecoding(scale)
    return out


def _edge_text(edge: float) -> str:
    """A bin edge as a person wrote it: ``0``, ``1000``, ``2.5`` (never ``1e+03`` or ``1000.0``)."""
    return f"{edge:.15g}" if abs(edge) < 1e15 else repr(edge)


def output_labels(plan: ExecutionPlan) -> dict[str, str]:
    """What a person reads for outputs whose name alone does not say it: a histogram's range counts.

    ``histogram(amount).below`` reads ``histogram(amount) below 0`` (the valid rows with
    ``amount < 0``), ``.above`` reads ``histogram(amount) above 1000`` (``amount > 1000``;
    the last bin includes its upper edge, as numpy's does).
    """
    labels: dict[str, str] = {}
    if isinstance(plan, AggregatePlan):
        for op in plan.ops:
            if op.op == "histogram":
                below, above = op.range_outputs
                labels[below] = f"{op.output_name} below {_edge_text(op.bins[0])}"
                labels[above] = f"{op.output_name} above {_edge_text(op.bins[-1])}"
    return labels


@dataclass(frozen=True)
class SessionInputs:
    """This party's shares: input columns (shape (N,), :func:`encode_column`) and model parameters."""

    columns: Mapping[str, Shared]
    model: Mapping[str, Shared] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionResult:
    """What a run leaves at this party: public facts, and its shares of the outputs.

    Nothing but ``public`` is ever opened to the parties: the row count that passed the
    range checks (``count``, and ``count(field)`` ops) is public by design, and the mean
    and variance divide by it. Every other output stays a sharing until it is delivered
    to the recipients the policy names (:mod:`pqmpc_node.mpc.outputs`).

    ``valid_rows`` is that count (the mean and variance divide by it at the recipient,
    :func:`output_decodings`); ``integer_outputs`` are counts (histograms, and each
    histogram's ``.below``/``.above`` range counts, :func:`delivered_names`);
    ``undefined`` names statistics with no valid rows (their shares are computed anyway,
    so the material a run consumes never depends on the data, and decode to None).
    """

    public: dict[str, Any]
    outputs: dict[str, Shared]
    rejected_rows: int
    integer_outputs: frozenset[str] = frozenset()
    undefined: frozenset[str] = frozenset()
    valid_rows: int = 0


async def _and_all(ctx: MPCContext, bits: Shared) -> Shared:
    """Product of the rows of ``bits`` (shape (K, N)) by a tree: ceil(log2 K) rounds."""
    while bits.shape[0] > 1:
        half = bits.shape[0] // 2
        (prod,) = await proto.multiply_many(ctx, [(bits[:half], bits[half : 2 * half])])
        bits = ctx.concat([prod, bits[2 * half :]]) if bits.shape[0] % 2 else prod
    return bits[0]


def _const(ctx: MPCContext, value: int) -> Array:
    """A signed integer constant as a domain element (shape (1,))."""
    return ctx.domain.from_signed(ctx.xp.asarray([value], dtype=ctx.xp.int64))


async def _validity(
    ctx: MPCContext, bounds: Sequence[tuple[Shared, int, int]], extra: Sequence[tuple[Shared, int]]
) -> tuple[Shared, list[Shared]]:
    """Validity bits of the rows (every ``lo <= col <= hi``) and ``[col < c]`` per extra, in one comparison batch.

    Bounds and constants are already encoded. For any element ``u`` (even one a cheating
    owner picked) both ``u - lo`` and ``hi - u`` read as non-negative only when
    ``lo <= u <= hi``: their sum is ``hi - lo`` modulo the domain, which is below half
    of it (:mod:`~pqmpc_node.mpc.numerics` refuses wider ranges).
    """
    rows: list[Shared] = []
    for col, lo, hi in bounds:
        rows.append(ctx.add_public(col, _const(ctx, -lo)))  # v - min < 0 -> invalid
        rows.append(ctx.add_public(ctx.neg(col), _const(ctx, hi)))  # max - v < 0 -> invalid
    for col, c in extra:
        rows.append(ctx.add_public(col, _const(ctx, -c)))
    below = await proto.less_than_zero(ctx, ctx.stack(rows))
    ok = ctx.add_public(ctx.neg(below[: 2 * len(bounds)]), ctx.domain.scalar(1))
    valid = await _and_all(ctx, ok)
    return valid, [below[2 * len(bounds) + i] for i in range(len(extra))]


def _columns(inputs: SessionInputs, specs: Sequence[FieldSpec]) -> tuple[dict[str, Shared], int]:
    missing = [s.name for s in specs if s.name not in inputs.columns]
    if missing:
        raise ProgramError(f"no input shares for fields {missing}")
    cols = {s.name: inputs.columns[s.name] for s in specs}
    lengths = {c.shape for c in cols.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ProgramError(f"input columns must be one-dimensional and equally long, got shapes {sorted(lengths)}")
    n_rows = next(iter(lengths))[0]
    return cols, n_rows


def _check_rows(plan: ExecutionPlan, n_rows: int) -> None:
    """The compile-time bounds hold only up to the declared rows: refuse more before computing."""
    if n_rows > plan.rows.total:
        raise ProgramError(f"the inputs hold {n_rows} rows, more than the {plan.rows.describe()} the program was "
                           "compiled for; results could overflow, so nothing is computed")


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


def _edge(num: FieldNumerics, edge: float) -> int:
    """A bin edge in units, clamped to ``[min - 1, max + 1]``: the same comparisons for every in-range value
    (so the same counts), and every comparison stays far inside the exact range however far out the edge is."""
    return min(max(num.units(edge, "histogram bin edge"), num.lo - 1), num.hi + 1)


async def _run_aggregate(ctx: MPCContext, plan: AggregatePlan, inputs: SessionInputs) -> SessionResult:
    """Integer statistics over the fields' units (exact; see :mod:`~pqmpc_node.mpc.numerics`).

    1. Range checks and histogram comparisons in one batch; open the valid count.
    2. One round: ``valid * x`` for every field, ``valid * [x >= edge]`` per histogram
       edge, ``valid * (x - base)`` for min/max.
    3. Variance: ``y = valid (x - min)`` in exact limbs (:func:`_variance_numerator`).
    4. Min/max by tournament trees; histogram counts by differences of the sums.
       Bin k counts ``e_k <= x < e_{k+1}``, the last bin ``e_{m-1} <= x <= e_m`` (numpy's
       bins); ``.below`` counts ``x < e_0`` (the public valid count minus the sum for
       ``e_0``) and ``.above`` counts ``x > e_m`` (the sum for the top): no extra
       comparison or multiplication, and every valid row lands in exactly one of them.
    """
    cols, n_rows = _columns(inputs, plan.fields)
    _check_rows(plan, n_rows)
    num = plan.numerics
    extra: list[tuple[Shared, int]] = []
    for op in plan.ops:
        if op.op == "histogram":
            extra.extend((cols[op.field], _edge(num[op.field], b)) for b in op.bins[:-1])
    hist_top = [(ctx.neg(cols[op.field]), -_edge(num[op.field], op.bins[-1]))
                for op in plan.ops if op.op == "histogram"]
    bounds = [(cols[s.name], num[s.name].lo, num[s.name].hi) for s in plan.fields]
    valid, below = await _validity(ctx, bounds, extra + hist_top)
    valid_count = await _open_count(ctx, valid)
    rejected = n_rows - valid_count
    one = ctx.domain.scalar(1)
    terms: dict[str, Shared] = {f"v:{s.name}": cols[s.name] for s in plan.fields}
    cursor = 0
    hist_rows: dict[int, list[str]] = {}
    for i, op in enumerate(plan.ops):
        if op.op == "histogram":
            hist_rows[i] = []
            for k in range(len(op.bins) - 1):
                terms[f"h{i}:{k}"] = ctx.add_public(ctx.neg(below[cursor + k]), one)  # [x >= edge k]
                hist_rows[i].append(f"h{i}:{k}")
            cursor += len(op.bins) - 1
    for i, op in enumerate(plan.ops):
        if op.op == "histogram":
            terms[f"h{i}:top"] = below[cursor]  # [x > last edge]
            cursor += 1
        if op.op in ("min", "max"):
            base = num[op.field].lo if op.op == "max" else num[op.field].hi
            terms[f"mm{i}"] = ctx.add_public(cols[op.field], _const(ctx, -base))
        if op.op == "variance":
            terms[f"var:{op.field}"] = ctx.add_public(cols[op.field], _const(ctx, -num[op.field].lo))  # y = x - min
    keys = list(terms)
    masked = dict(zip(keys, await proto.multiply_many(ctx, [(valid, terms[k]) for k in keys]), strict=True))
    variance_num = {f: await _variance_numerator(ctx, masked[f"var:{f}"], valid_count, num[f])
                    for f in dict.fromkeys(op.field for op in plan.ops if op.op == "variance")}
    # The control flow never depends on the data: with no valid rows the statistics are
    # still computed (and reported undefined), so the material a run consumes is the same
    # whatever the inputs.
    outputs: dict[str, Shared] = {}
    integer_outputs: set[str] = set()
    public: dict[str, Any] = {}
    undefined: set[str] = set()
    for i, op in enumerate(plan.ops):
        name = op.output_name
        if op.op == "count":
            public[name] = valid_count
            continue
        if op.op in ("mean", "variance", "min", "max") and not valid_count:
            undefined.add(name)
        if op.op in ("sum", "mean"):
            outputs[name] = ctx.sum(masked[f"v:{op.field}"])  # the mean divides by the public count at the recipient
        elif op.op == "variance":
            outputs[name] = variance_num[op.field]
        elif op.op in ("min", "max"):
            base = num[op.field].lo if op.op == "max" else num[op.field].hi
            filled = ctx.add_public(masked[f"mm{i}"], _const(ctx, base))
            reducer = proto.max_reduce if op.op == "max" else proto.min_reduce
            outputs[name] = await reducer(ctx, filled)
        elif op.op == "histogram":
            hist = [ctx.sum(masked[r]) for r in [*hist_rows[i], f"h{i}:top"]]
            outputs[name] = ctx.concat([ctx.sub(hist[k], hist[k + 1]) for k in range(len(hist) - 1)])
            below_name, above_name = op.range_outputs
            outputs[below_name] = ctx.add_public(ctx.neg(hist[0]), ctx.domain.scalar(valid_count))  # N - #[x >= e_0]
            outputs[above_name] = hist[-1]  # #[x > e_m]
            integer_outputs.update((name, below_name, above_name))
    return SessionResult(public, outputs, rejected, frozenset(integer_outputs), frozenset(undefined), valid_count)


async def _variance_numerator(ctx: MPCContext, y: Shared, n_valid: int, num: FieldNumerics) -> Shared:
    """Base-``2^k`` digits of ``V = N sum y^2 - (sum y)^2``, most significant first, exact.

    ``y`` (shape (rows,)) is 0 on invalid rows and in ``[0, max - min]`` on valid ones.
    Steps (bounds and offsets in :func:`~pqmpc_node.mpc.numerics.variance_limbs`):

    1. Split every ``y = sum_j a_j 2^(jk)`` exactly (:func:`~pqmpc_node.mpc.protocols.split_limbs`).
    2. One round: ``a_i a_j`` (i <= j) per row; sum them and the limbs (``A_i``).
    3. One round: ``A_i A_j`` of the sums; ``T_m = sum_(i+j=m) w_ij (N sum a_i a_j - A_i A_j)``
       with the public count ``N`` (``w_ii = 1``, ``w_ij = 2``), so ``V = sum_m 2^(mk) T_m``.
    4. Carry from the lowest position up: split ``T_m + carry + K_m 2^k`` (``K_m`` makes it
       non-negative) into its digit and the next carry; the top digit is what remains.
    """
    limbs = num.variance
    if limbs is None:
        raise ProgramError(f"the plan computes variance({num.name}) without its limb parameters")
    k, count = limbs.k, limbs.limbs
    parts = await proto.split_limbs(ctx, y, k, count)
    pairs = [(i, j) for i in range(count) for j in range(i, count)]
    row_products = await proto.multiply_many(ctx, [(parts[i], parts[j]) for i, j in pairs])
    sums = ctx.stack([ctx.sum(v) for v in [*parts, *row_products]])  # shape (L + pairs, 1)
    sum_products = await proto.multiply_many(ctx, [(sums[i], sums[j]) for i, j in pairs])
    n = _const(ctx, n_valid)
    positions: list[Shared | None] = [None] * (2 * count - 1)
    for idx, (i, j) in enumerate(pairs):
        term = ctx.sub(ctx.mul_public(sums[count + idx], n), sum_products[idx])
        if i != j:
            term = ctx.mul_public(term, ctx.domain.scalar(2))
        held = positions[i + j]
        positions[i + j] = term if held is None else ctx.add(held, term)
    digits: list[Shared] = []
    carry: Shared | None = None
    for m, offset in enumerate(limbs.offsets):
        position = positions[m]
        assert position is not None  # invariant: every position below the top has a term
        x = position if carry is None else ctx.add(position, carry)
        low, high = await proto.split_limbs(ctx, ctx.add_public(x, _const(ctx, offset << k)), k, 2)
        digits.append(low)
        carry = ctx.add_public(high, _const(ctx, -offset))
    top = positions[-1]
    assert top is not None and carry is not None  # invariant: at least two limbs
    return ctx.concat([ctx.add(top, carry), *reversed(digits)])


async def _check_model_bounds(ctx: MPCContext, plan: LinearScorePlan | MlpPlan, params: Sequence[Shared]) -> None:
    """Open one bit: are all model parameters within ``[-weightBound, weightBound]``? Abort if not.

    The compile-time bounds assume it; a model owner that shares larger weights would
    make products wrap. Only the single AND of all checks is opened, after a MAC check.
    """
    flat = ctx.concat([p.reshape(-1) for p in params])
    w = FixedPoint(plan.frac_bits).encode_int([plan.weight_bound], ctx.domain)[0]
    valid, _ = await _validity(ctx, [(flat, -int(w), int(w))], [])
    every = await _and_all(ctx, valid.reshape(flat.shape[0], 1))  # one bit: all inside, not how many
    await check_macs(ctx, "before-model-bound")
    (all_ok,) = await ctx.open([every], "model-bound")
    if int(ctx.domain.to_signed(all_ok)[0]) != 1:
        raise ModelOutOfRangeError(
            f"some of the model owner's {flat.shape[0]} parameters lie outside weightBound "
            f"[-{plan.weight_bound:g}, {plan.weight_bound:g}]; nothing was computed: the model owner must resubmit "
            "a model within the bound (or the session must declare a larger one)")


async def _run_model(ctx: MPCContext, plan: LinearScorePlan | MlpPlan, inputs: SessionInputs) -> SessionResult:
    cols, n_rows = _columns(inputs, plan.fields)
    _check_rows(plan, n_rows)
    shapes = model_shapes(plan)
    for name, shape in shapes.items():
        if name not in inputs.model or inputs.model[name].shape != shape:
            got = inputs.model[name].shape if name in inputs.model else None
            raise ProgramError(f"model parameter {name!r} must have shape {shape}, got {got}")
    await _check_model_bounds(ctx, plan, [inputs.model[k] for k in shapes])
    fx = FixedPoint(plan.frac_bits)
    bounds = [(cols[s.name], int(fx.encode_int([s.min], ctx.domain)[0]), int(fx.encode_int([s.max], ctx.domain)[0]))
              for s in plan.fields]
    valid, _ = await _validity(ctx, bounds, [])
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
    else:
        h = x
        for i in range(len(plan.layers)):
            h = ctx.add(await proto.fx_matmul(ctx, h, inputs.model[f"W{i}"]), inputs.model[f"b{i}"])
            if i < len(plan.layers) - 1:
                h = await proto.relu(ctx, h)
        out = h
    vshape = valid
    if len(out.shape) == 2:
        vshape = ctx.broadcast_rows(valid, out.shape[1]).T
        vshape = Shared(ctx.xp.ascontiguousarray(vshape.value), None if vshape.mac is None else ctx.xp.ascontiguousarray(vshape.mac))
    out = await proto.multiply(ctx, out, vshape)
    # the MPCSession API publishes model results as "score"
    return SessionResult({"count": valid_count}, {"score": out}, n_rows - valid_count, valid_rows=valid_count)
