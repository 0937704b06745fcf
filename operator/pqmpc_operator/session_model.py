"""Typed, validated view of the MPCSession custom resource.

Contract: pure. The API server already enforced the CRD schema and its CEL rules; this
module checks what they cannot (key encodings and sizes, that every data owner shares
the same table columns, that the model owner supplies the model), compiles the program
against the declared ranges and row bound (:mod:`pqmpc_node.mpc.numerics`: a program
whose numbers could wrap is refused here, before any data arrives, and automatic
decimals and model precision are resolved into the spec the plan is built from) and
raises :class:`~pqmpc_operator.model.SpecError` naming the field and the fix.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from pqmpc_node.crypto.kemkeys import kem_public_key_from_bytes
from pqmpc_node.crypto.suites import Suite
from pqmpc_node.mpc.numerics import DEFAULT_MAX_ROWS_PER_OWNER, NumericsError, RowBound
from pqmpc_node.mpc.programs import AggregatePlan, ExecutionPlan, ProgramError, compile_program
from pqmpc_node.mpc.prss import MAX_PARTIES as PRSS_MAX_PARTIES
from pqmpc_node.plan import Preprocessing
from pqmpc_operator.model import SpecError, parse_duration
from pqmpc_operator.placement import PlacementRequest, placement_request_from_spec

__all__ = ["InputSpec", "OutputSpec", "SessionSpec", "parse_mpcsession", "session_id_of"]

Sharing = Literal["additive", "shamir"]
Security = Literal["semi-honest", "malicious"]


@dataclass(frozen=True)
class InputSpec:
    """One input owner: its ML-DSA identity key and the columns (or the model) it supplies."""

    owner: str
    identity: bytes = field(repr=False)
    role: Literal["data", "model"]
    fields: tuple[tuple[str, float, float, int | None], ...]
    """(name, min, max, decimals); decimals resolved by :func:`parse_mpcsession` for the fields the program reads."""


@dataclass(frozen=True)
class OutputSpec:
    """One recipient: its KEM public key and the outputs it may receive."""

    recipient: str
    kem_public_key: bytes = field(repr=False)
    allow: tuple[str, ...]


@dataclass(frozen=True)
class SessionSpec:
    """The parts of an MPCSession that decide its plan."""

    name: str
    namespace: str
    uid: str
    generation: int
    pool: str
    parties: int
    threshold: int
    sharing: Sharing
    security: Security
    inputs: tuple[InputSpec, ...]
    program: Mapping[str, Any] = field(hash=False)
    outputs: tuple[OutputSpec, ...] = ()
    placement: PlacementRequest = field(default_factory=lambda: PlacementRequest(parties=2))
    deadline_s: float = 3600.0
    ttl_after_finished_s: int = 3600
    max_rows_per_owner: int = DEFAULT_MAX_ROWS_PER_OWNER
    frac_bits: int = 16
    preprocessing: Preprocessing = "dealer"
    """The provider that runs (:func:`resolve_preprocessing`); ``auto`` is resolved at admission."""
    preprocessing_note: str = ""
    """Why ``auto`` chose it, for the status (empty when the user named the provider)."""

    @property
    def session_id(self) -> str:
        """The id nodes and clients use (``pqmpc submit --session``)."""
        return session_id_of(self.namespace, self.name, self.uid)


def session_id_of(namespace: str, name: str, uid: str) -> str:
    """``<namespace>.<name>.<uid prefix>``: unique even when a name is reused."""
    return f"{namespace}.{name}.{uid[:8]}"


def _key(raw: Any, path: str, size: int, what: str) -> bytes:
    try:
        data = base64.b64decode(str(raw), validate=True)
    except (binascii.Error, ValueError):
        raise SpecError(path, "is not base64", f"paste the {what} as base64 (pqmpc identity new prints it)") from None
    if data.startswith(b"replace with"):
        raise SpecError(path, f"is still the example's placeholder ({data.decode(errors='replace')!r})",
                        f"run `pqmpc identity new NAME --out NAME.identity.json` on the owner's or recipient's machine "
                        f"and paste its {what} here (the file's public part; the private key stays there)")
    if len(data) != size:
        raise SpecError(
            path, f"is {len(data)} bytes, not the {size} bytes of {what}",
            f"paste the {what} from the owner's identity file (pqmpc identity new prints it)",
        )
    return data


def _kem_key(raw: Any, path: str, suite: Suite) -> bytes:
    what = f"recipient's {suite.envelope_kem.value} KEM public key"
    try:
        data = base64.b64decode(str(raw), validate=True)
        if data.startswith(b"replace with"):
            raise SpecError(path, f"is still the example's placeholder ({data.decode(errors='replace')!r})",
                            "run `pqmpc identity new NAME --out NAME.identity.json` on the recipient's machine and "
                            "paste its kemPublicKey here")
        kem_public_key_from_bytes(suite.envelope_kem, data)
    except (binascii.Error, ValueError) as exc:
        raise SpecError(path, f"is not a {what} ({exc})",
                        "paste the recipient's KEM public key from its identity file (pqmpc identity new prints it)") from None
    return data


PREPROCESSING_CHOICES = ("auto", "prss", "ot", "dealer")
AUTO_OT_NOTE = "auto: additive session, dealer-free (ot: ML-KEM base OTs + OT extension)"
AUTO_PRSS_NOTE = "auto: honest-majority Shamir session, dealer-free (prss)"


def resolve_preprocessing(requested: Any, sharing: str, parties: int, threshold: int) -> tuple[Preprocessing, str]:
    """Which provider makes the session's correlated randomness, and why (``spec.preprocessing``).

    * ``ot`` — dealer-free for additive sessions (n-of-n, any n >= 2, dishonest
      majority): the parties run ML-KEM base OTs and OT extension between themselves and
      make MAC-authenticated triples from them.
    * ``prss`` — dealer-free, made by the parties (PRSS + degree reduction); needs Shamir
      with an honest majority, 2t < n.
    * ``dealer`` — the operator deals every party its material and so knows every
      triple, mask and MAC key (trusted dealer; operator + one node = every input). Never
      picked by ``auto`` for a session a dealer-free provider can run; an explicit choice.
    * ``auto`` (default) — ``ot`` for additive sessions, ``prss`` for honest-majority
      Shamir sessions; the dealer only for Shamir without an honest majority (2t >= n),
      and the note says so.
    """
    choice = "auto" if requested is None else str(requested)
    if choice not in PREPROCESSING_CHOICES:
        raise SpecError("preprocessing", f"{choice!r} is not one of {list(PREPROCESSING_CHOICES)}",
                        "use auto (the default), ot, prss, or dealer")
    honest_majority = sharing == "shamir" and 0 < threshold and 2 * threshold < parties <= PRSS_MAX_PARTIES
    if choice == "ot" and sharing != "additive":
        raise SpecError("preprocessing", f"'ot' (dealer-free, oblivious transfer) runs additive sessions only, this one "
                        f"is {sharing}", "use prss or auto: a Shamir session with 2t < n runs dealer-free with prss; "
                        "or set sharing: additive")
    if choice == "prss" and not honest_majority:
        raise SpecError("preprocessing", f"'prss' needs Shamir sharing with an honest majority (2t < n) and at most "
                        f"{PRSS_MAX_PARTIES} parties, got {sharing} with n={parties}, t={threshold}",
                        "use sharing: shamir with threshold < parties/2, preprocessing: ot for an additive session, "
                        "or preprocessing: dealer")
    if choice == "auto":
        if sharing == "additive":
            return "ot", AUTO_OT_NOTE
        if honest_majority:
            return "prss", AUTO_PRSS_NOTE
        return "dealer", ("auto: the trusted dealer (the operator) deals this Shamir session's preprocessing: "
                          f"without an honest majority (2t < n, at most {PRSS_MAX_PARTIES} parties) prss cannot run, "
                          "and ot runs additive sessions only")
    return cast(Preprocessing, choice), ""


def parse_mpcsession(body: Mapping[str, Any], suite: Suite) -> SessionSpec:
    """Turn a raw MPCSession body into a :class:`SessionSpec`, or raise :class:`SpecError`."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    program = spec.get("program") or {}
    kinds = [k for k in ("aggregate", "linearScore", "mlp") if k in program]
    if len(kinds) != 1:
        raise SpecError("program", "must have exactly one of aggregate, linearScore, mlp", "keep one program kind")
    model_owner = None if kinds[0] == "aggregate" else str((program[kinds[0]] or {}).get("modelOwner", ""))
    sig_size = len(suite.signature.generate(bytes(32)).public_key().public_bytes_raw())
    inputs: list[InputSpec] = []
    for i, raw in enumerate(spec.get("inputs") or []):
        owner = str(raw.get("owner", ""))
        identity = _key(raw.get("identity"), f"inputs[{i}].identity", sig_size, f"{suite.signature.label} public key")
        fields = tuple((str(f["name"]), float(f["min"]), float(f["max"]),
                        None if f.get("decimals") is None else int(f["decimals"])) for f in raw.get("fields") or [])
        if owner == model_owner and not fields:
            inputs.append(InputSpec(owner, identity, "model", ()))
        elif owner == model_owner:
            raise SpecError(
                f"inputs[{i}].fields", f"{owner} is the modelOwner and also declares table fields",
                "omit fields for the model owner (it supplies the model); add its rows as a separate owner",
            )
        else:
            inputs.append(InputSpec(owner, identity, "data", fields))
    data = [inp for inp in inputs if inp.role == "data"]
    if not data:
        raise SpecError("inputs", "no data owner", "declare at least one input with fields")
    for idx, inp in enumerate(inputs):
        if inp.role == "data" and inp.fields != data[0].fields:
            raise SpecError(
                f"inputs[{idx}].fields",
                f"{inp.owner} declares {[f[0] for f in inp.fields]} but {data[0].owner} declares "
                f"{[f[0] for f in data[0].fields]} (with their ranges)",
                "every data owner supplies rows of the same columns with the same min/max",
            )
    if model_owner is not None and not any(inp.role == "model" for inp in inputs):
        raise SpecError("inputs", f"the modelOwner {model_owner!r} is not among the inputs",
                        f"add an input with owner {model_owner} and its identity, without fields")
    sharing = spec.get("sharing", "additive")
    security = spec.get("security", "malicious")
    max_rows = int(spec.get("maxRowsPerOwner", DEFAULT_MAX_ROWS_PER_OWNER))
    compiled = _compile(program, data[0].fields, RowBound(len(data), max_rows),
                        ring=sharing == "additive" and security == "semi-honest")
    if isinstance(compiled, AggregatePlan):
        inputs = [InputSpec(i.owner, i.identity, i.role, tuple(
            (n, lo, hi, compiled.numerics[n].decimals if n in compiled.numerics else d) for n, lo, hi, d in i.fields))
            for i in inputs]
    outputs = []
    for i, raw in enumerate(spec.get("outputs") or []):
        kem = _kem_key(raw.get("identity"), f"outputs[{i}].identity", suite)
        outputs.append(OutputSpec(str(raw.get("recipient", "")), kem, tuple(str(a) for a in raw.get("allow") or [])))
    results = _results(program)
    for i, out in enumerate(outputs):
        for j, name in enumerate(out.allow):
            if name not in results:
                raise SpecError(f"outputs[{i}].allow[{j}]", f"{name} is not a result the program computes",
                                f"allow only results of spec.program ({', '.join(results)})")
    if not outputs:
        raise SpecError("outputs", "is empty", "name at least one recipient and the results it may receive: "
                                               "without outputs nobody can ever read the session's result")
    if sharing not in ("additive", "shamir") or security not in ("semi-honest", "malicious"):
        raise SpecError("sharing", f"{sharing!r}/{security!r} is unknown", "use additive|shamir and semi-honest|malicious")
    provider, note = resolve_preprocessing(spec.get("preprocessing"), sharing, int(spec.get("parties", 0)),
                                           int(spec.get("threshold", 0)))
    return SessionSpec(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation", 1)),
        pool=str(spec.get("poolRef", "")),
        parties=int(spec.get("parties", 0)),
        threshold=int(spec.get("threshold", 0)),
        sharing=sharing,
        security=security,
        inputs=tuple(inputs),
        program=dict(program),
        outputs=tuple(outputs),
        placement=placement_request_from_spec(spec),
        deadline_s=parse_duration(spec.get("deadline", "1h"), "deadline"),
        ttl_after_finished_s=int(spec.get("ttlSecondsAfterFinished", 3600)),
        max_rows_per_owner=max_rows,
        preprocessing=provider,
        preprocessing_note=note,
        frac_bits=16 if isinstance(compiled, AggregatePlan) else compiled.frac_bits,
    )


def _results(program: Mapping[str, Any]) -> list[str]:
    """The results a recipient may be allowed: ``op(field)`` per aggregate entry, or ``score``."""
    if "aggregate" in program:
        return [f"{g.get('op')}({g.get('field')})" for g in program.get("aggregate") or []]
    return ["score"]


def _compile(program: Mapping[str, Any], fields: tuple[tuple[str, float, float, int | None], ...], rows: RowBound, *,
             ring: bool) -> ExecutionPlan:
    """The program compiled as the nodes will compile it; its refusals become :class:`SpecError`."""
    declared = [{"name": n, "min": lo, "max": hi, **({} if d is None else {"decimals": d})} for n, lo, hi, d in fields]
    try:
        return compile_program(program, declared, rows=rows, ring=ring)
    except NumericsError as exc:
        raise SpecError(exc.path, exc.problem, exc.fix) from None
    except ProgramError as exc:
        raise SpecError("program", str(exc), "fix the program so it only uses declared fields and valid ops") from None
