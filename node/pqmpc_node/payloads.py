"""Plaintexts inside sealed envelopes: input shares (owner → node) and result shares (node → recipient).

Both are JSON objects whose arrays are base64 of little-endian ``uint64`` domain
elements (``ring64``: Z_2^64; ``mersenne61``: F_p, p = 2^61 - 1).

Input (``format: pqmpc.io/input/v2``)::

    {"format", "kind": "rows", "domain", "rows": N, "columns": {field: b64}}
    {"format", "kind": "model", "domain", "params": {name: {"shape": [...], "data": b64}}}

plus, in malicious sessions, the owner's input key material
(:mod:`pqmpc_node.mpc.inputs`): ``"tags"`` (shares of ``k * x``, the same names and
sizes as ``columns`` / ``params``' data) and ``"key"`` (the shares of ``k`` and ``k^2``).

Output (``format: pqmpc.io/output/v3``)::

    {"format", "session", "party", "domain", "sharing", "threshold", "fracBits",
     "shares": {name: {"shape": [...], "kind": "fixed"|"integer", "data": b64,
                       "key": b64, "tag": b64}},      # key/tag: malicious sessions
     "public": {name: value}, "undefined": [name, ...], "validRows": int}

``key`` and ``tag`` are the node's shares of a fresh per-output MAC key ``a`` and of
``a * y`` (:mod:`pqmpc_node.mpc.outputs`); ``public`` holds only values public by design
(valid-row counts); ``validRows`` is the number of rows that passed the range checks,
which the recipient divides the mean's sum and the variance's numerator by
(:func:`pqmpc_node.mpc.programs.output_decodings`).

Pure: parsing checks every bound and raises :class:`PayloadError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "DomainName",
    "INPUT_FORMAT",
    "InputPayload",
    "OUTPUT_FORMAT",
    "OutputPayload",
    "OutputShare",
    "PayloadError",
    "domain_for",
    "modulus_of",
]

INPUT_FORMAT = "pqmpc.io/input/v2"
OUTPUT_FORMAT = "pqmpc.io/output/v3"
MAX_ROWS = 1_000_000
MAX_PARAMS = 4_000_000
DomainName = Literal["ring64", "mersenne61"]
_P61 = (1 << 61) - 1
U64 = np.ndarray[Any, np.dtype[np.uint64]]


class PayloadError(ValueError):
    """A payload that does not match its format or the session's declarations."""


def domain_for(sharing: str, security: str) -> DomainName:
    """The engine's domain for a session (see :class:`pqmpc_node.mpc.config.EngineConfig`)."""
    return "ring64" if sharing == "additive" and security == "semi-honest" else "mersenne61"


def modulus_of(domain: DomainName) -> int:
    return 1 << 64 if domain == "ring64" else _P61


def _enc(a: U64) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<u8").tobytes()).decode()


def _dec(raw: Any, count: int, domain: DomainName, what: str) -> U64:
    if not isinstance(raw, str):
        raise PayloadError(f"{what} must be base64 text")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(f"{what} is not valid base64") from None
    if len(data) != 8 * count:
        raise PayloadError(f"{what} holds {len(data) // 8} elements, expected {count}")
    arr = np.frombuffer(data, dtype="<u8").astype(np.uint64)
    if domain == "mersenne61" and arr.size and int(arr.max()) >= _P61:
        raise PayloadError(f"{what} holds values outside the field F_p, p = 2^61 - 1")
    return arr


def _domain(raw: Any) -> DomainName:
    if raw not in ("ring64", "mersenne61"):
        raise PayloadError(f"domain must be 'ring64' or 'mersenne61', got {raw!r}")
    return "ring64" if raw == "ring64" else "mersenne61"


def _shape(raw: Any, what: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= 4 or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_PARAMS for d in raw
    ):
        raise PayloadError(f"{what} shape must be a list of 1-4 positive integers")
    if math.prod(raw) > MAX_PARAMS:
        raise PayloadError(f"{what} has more than {MAX_PARAMS} elements")
    return tuple(raw)


def _load(data: bytes, fmt: str) -> Mapping[str, Any]:
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise PayloadError("payload is not JSON") from None
    if not isinstance(raw, dict) or raw.get("format") != fmt:
        raise PayloadError(f"payload format must be {fmt!r}")
    return raw


@dataclass(frozen=True)
class InputPayload:
    """One owner's shares for one node: table columns (``rows``) or model parameters (``model``)."""

    kind: Literal["rows", "model"]
    domain: DomainName
    columns: Mapping[str, U64]
    params: Mapping[str, U64]
    rows: int = 0
    tags: Mapping[str, U64] | None = None
    key: U64 | None = None

    def encode(self) -> bytes:
        body: dict[str, Any] = {"format": INPUT_FORMAT, "kind": self.kind, "domain": self.domain}
        if self.kind == "rows":
            body["rows"] = self.rows
            body["columns"] = {k: _enc(v) for k, v in self.columns.items()}
        else:
            body["params"] = {k: {"shape": list(v.shape), "data": _enc(v.reshape(-1))} for k, v in self.params.items()}
        if self.tags is not None and self.key is not None:
            body["tags"] = {k: _enc(v.reshape(-1)) for k, v in self.tags.items()}
            body["key"] = _enc(self.key.reshape(-1))
        return json.dumps(body).encode()

    @classmethod
    def decode(
        cls,
        data: bytes,
        *,
        domain: DomainName,
        fields: Sequence[str] = (),
        model_shapes: Mapping[str, tuple[int, ...]] | None = None,
        keyed: bool = False,
    ) -> InputPayload:
        """Parse and check against the session: the domain, the declared fields or the model's shapes.

        ``keyed`` (malicious sessions) requires the owner's tags and key share.
        """
        raw = _load(data, INPUT_FORMAT)
        if _domain(raw.get("domain")) != domain:
            raise PayloadError(f"shares are in domain {raw.get('domain')!r}; this session computes in {domain!r}")
        kind = raw.get("kind")
        if kind == "rows":
            rows = raw.get("rows")
            if not isinstance(rows, int) or isinstance(rows, bool) or not 0 < rows <= MAX_ROWS:
                raise PayloadError(f"rows must be an integer in 1..{MAX_ROWS}")
            cols = raw.get("columns")
            if not isinstance(cols, dict) or sorted(cols) != sorted(fields):
                got = sorted(cols) if isinstance(cols, dict) else None
                raise PayloadError(f"columns must be exactly the declared fields {sorted(fields)}, got {got}")
            columns = {f: _dec(cols[f], rows, domain, f"column {f!r}") for f in fields}
            tags, key = _keyed(raw, {f: (rows,) for f in fields}, domain, keyed)
            return cls("rows", domain, columns, {}, rows, tags, key)
        if kind == "model":
            if model_shapes is None:
                raise PayloadError("this session takes no model parameters")
            params = raw.get("params")
            if not isinstance(params, dict) or sorted(params) != sorted(model_shapes):
                raise PayloadError(f"params must be exactly {sorted(model_shapes)}")
            out: dict[str, U64] = {}
            for name, want in model_shapes.items():
                p = params[name]
                if not isinstance(p, dict) or _shape(p.get("shape"), name) != want:
                    raise PayloadError(f"parameter {name!r} must have shape {list(want)}")
                out[name] = _dec(p.get("data"), math.prod(want), domain, f"parameter {name!r}").reshape(want)
            tags, key = _keyed(raw, dict(model_shapes), domain, keyed)
            return cls("model", domain, {}, out, 0, tags, key)
        raise PayloadError(f"kind must be 'rows' or 'model', got {kind!r}")


def _keyed(raw: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], domain: DomainName,
           keyed: bool) -> tuple[dict[str, U64] | None, U64 | None]:
    """The owner's tags and key share, required exactly when the session is ``keyed``."""
    if not keyed:
        if "tags" in raw or "key" in raw:
            raise PayloadError("this session takes no input key (it is not malicious-secure); drop tags and key")
        return None, None
    tags = raw.get("tags")
    if not isinstance(tags, dict) or sorted(tags) != sorted(shapes):
        raise PayloadError("a malicious-secure session needs the owner's input tags for every column or parameter "
                           "(submit with a pqmpc client that keys its inputs)")
    out = {k: _dec(tags[k], math.prod(shape), domain, f"tags of {k!r}").reshape(shape) for k, shape in shapes.items()}
    return out, _dec(raw.get("key"), 2, domain, "input key")


@dataclass(frozen=True)
class OutputShare:
    """One node's share of one output."""

    kind: Literal["fixed", "integer"]
    values: U64
    key: U64 | None = None
    tag: U64 | None = None


@dataclass(frozen=True)
class OutputPayload:
    """What a node seals for one recipient: its shares of the allowed outputs and public values."""

    session: str
    party: int
    domain: DomainName
    sharing: str
    threshold: int
    frac_bits: int
    shares: Mapping[str, OutputShare]
    public: Mapping[str, Any]
    undefined: tuple[str, ...] = ()
    valid_rows: int = 0
    """Rows that passed the range checks (public to the parties); the mean and variance divide by it."""

    def encode(self) -> bytes:
        return json.dumps({
            "format": OUTPUT_FORMAT, "session": self.session, "party": self.party, "domain": self.domain,
            "sharing": self.sharing, "threshold": self.threshold, "fracBits": self.frac_bits,
            "shares": {k: {"shape": list(v.values.shape), "kind": v.kind, "data": _enc(v.values.reshape(-1)),
                           **({} if v.key is None or v.tag is None else
                              {"key": _enc(v.key.reshape(-1)), "tag": _enc(v.tag.reshape(-1))})}
                       for k, v in self.shares.items()},
            "public": dict(self.public), "undefined": list(self.undefined), "validRows": self.valid_rows,
        }).encode()

    @classmethod
    def decode(cls, data: bytes) -> OutputPayload:
        raw = _load(data, OUTPUT_FORMAT)
        domain = _domain(raw.get("domain"))
        shares: dict[str, OutputShare] = {}
        body = raw.get("shares")
        if not isinstance(body, dict):
            raise PayloadError("shares must be an object")
        for name, s in body.items():
            if not isinstance(s, dict) or s.get("kind") not in ("fixed", "integer"):
                raise PayloadError(f"share {name!r} must have kind 'fixed' or 'integer'")
            shape = _shape(s.get("shape"), name)
            count = math.prod(shape)
            key = tag = None
            if "key" in s or "tag" in s:
                key = _dec(s.get("key"), count, domain, f"key of {name!r}").reshape(shape)
                tag = _dec(s.get("tag"), count, domain, f"tag of {name!r}").reshape(shape)
            shares[name] = OutputShare(s["kind"], _dec(s.get("data"), count, domain, name).reshape(shape), key, tag)
        party, threshold, frac = raw.get("party"), raw.get("threshold"), raw.get("fracBits")
        if not all(isinstance(v, int) for v in (party, threshold, frac)) or not isinstance(raw.get("public"), dict):
            raise PayloadError("party, threshold and fracBits must be integers, public an object")
        valid_rows = raw.get("validRows")
        if isinstance(valid_rows, bool) or not isinstance(valid_rows, int) or valid_rows < 0:
            raise PayloadError("validRows must be a non-negative integer")
        undefined = raw.get("undefined", [])
        if not isinstance(undefined, list) or not all(isinstance(u, str) for u in undefined):
            raise PayloadError("undefined must be a list of output names")
        return cls(str(raw.get("session")), int(party), domain, str(raw.get("sharing")), int(threshold),  # type: ignore[arg-type]
                   int(frac), shares, raw["public"], tuple(undefined), valid_rows)  # type: ignore[arg-type]
