"""The trusted dealer's preprocessing for one session, sealed per party, and the engine run it mirrors.

Trust assumption: the dealer — the operator — is trusted not to collude with any node
and to deal correct material; it knows every preprocessed value (triples, masks, the
MAC key) but never sees inputs or outputs. A node learns only its own material: its
seed ``s_i`` and its correction stream (:mod:`pqmpc_node.mpc.seeded_dealer` explains
the split), never another party's seed, so it cannot unmask any Beaver opening.

Operator API (pure; randomness is passed in, no I/O)::

    out = deal(plan, rows={"bank-a": 1000, "bank-b": 250}, suite=suite, signer_key=plan_signer,
               node_kem_keys={node_id: (epoch, kem_public_key), ...})
    for node_id, body in out.bodies.items():
        POST {node}/v1/sessions/{plan.session_id}/preprocessing   (application/octet-stream, body)

``rows`` are the row counts of the data owners (public: every node sees the length of the
shares it holds). They are known once the owners have delivered: a node's status reports
them as ``inputRows`` and sets ``awaitingPreprocessing`` when only the material is missing.
A dealer that knows the counts in advance may post earlier; a node refuses material whose
counts disagree with inputs it holds, and inputs whose counts disagree with its material.

How: for each attempt the session may need (:func:`attempt_count`: 1 additive, n - t
Shamir, so a restart never reuses material) :func:`deal` draws one fresh seed per party,
runs the compiled program once with all parties simulated in this process on dummy inputs of the declared shapes (MPC control
flow does not depend on secret data) through :class:`~pqmpc_node.mpc.seeded_dealer.DealingProvider`,
which records each party's corrections in request order, and seals each party's
:class:`PartyMaterial` to that party's KEM key.

Wire form of a preprocessing body::

    b"PQMPCPP1" || u32 len(envelope) || envelope || AES-256-GCM(stream key, stream)

The envelope is a sealed envelope (:mod:`pqmpc_node.crypto.envelopes`) from sender
``operator``, signed with the plan-signing ML-DSA key (the node verifies it with the key
it trusts for plans) and encrypted to the node's KEM key; its plaintext holds the seeds
(one per attempt), the manifest, the stream length of each attempt, the row counts, the plan digest and a fresh AES key for the (large)
correction streams, which follow (concatenated in attempt order) encrypted under it (nonce 0, the key is single-use;
associated data: plan digest and node id).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pqmpc_node.crypto.envelopes import (
    EnvelopeHeader,
    KemKeySource,
    ReplayGuard,
    key_fingerprint,
    open_envelope,
    seal_envelope,
)
from pqmpc_node.crypto.kemkeys import KemPublicKey
from pqmpc_node.crypto.suites import MLDSAPrivateKey, MLDSAPublicKey, Suite
from pqmpc_node.mpc.channel import InProcessHub
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.fixedpoint import FixedPoint
from pqmpc_node.mpc.inputs import OwnerShares, authenticate_inputs, share_owner_input
from pqmpc_node.mpc.outputs import DeliveredShare, OutputRequest, deliver_outputs
from pqmpc_node.mpc.programs import ExecutionPlan, SessionInputs, SessionResult, encode_column, model_shapes, run_session
from pqmpc_node.mpc.randomness import AesCtrRandom
from pqmpc_node.mpc.seeded_dealer import DealingProvider, Request, SplitProvider
from pqmpc_node.mpc.shares import Shared
from pqmpc_node.plan import OPERATOR_SENDER, SessionPlan

__all__ = [
    "DealerOutput",
    "MAGIC",
    "PREPROCESSING_INPUT_ID",
    "PartyInputs",
    "PartyMaterial",
    "RunOutcome",
    "attempt_count",
    "output_requests",
    "PreprocessingError",
    "deal",
    "deal_async",
    "engine_config",
    "execute",
    "open_preprocessing",
    "party_provider",
    "seal_preprocessing",
]

MAGIC = b"PQMPCPP1"
PREPROCESSING_INPUT_ID = "preprocessing"
MATERIAL_FORMAT = "pqmpc.io/preprocessing/v1"
_NONCE = bytes(12)


class PreprocessingError(ValueError):
    """A preprocessing body that cannot be used; ``reason`` is a stable label."""

    def __init__(self, message: str, reason: str = "bad_preprocessing") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PartyMaterial:
    """What one party receives from the dealer (secret: the seeds and the streams).

    One seed and one correction stream per attempt (:func:`attempt_count`); every attempt
    requests the same material in the same order (``manifest``).
    """

    session_id: str
    plan_digest: str
    party: int
    node_id: str
    rows: Mapping[str, int]
    manifest: tuple[Request, ...]
    seeds: tuple[bytes, ...] = field(repr=False)
    streams: tuple[np.ndarray[Any, np.dtype[np.uint64]], ...] = field(repr=False)


@dataclass(frozen=True)
class DealerOutput:
    """:func:`deal`'s result: one sealed preprocessing body per party node, plus public facts."""

    session_id: str
    plan_digest: str
    rows: Mapping[str, int]
    bodies: Mapping[str, bytes] = field(repr=False)
    stream_words: Mapping[str, int]


def engine_config(plan: SessionPlan, backend: str = "numpy") -> EngineConfig:
    """The engine parameters a plan fixes."""
    return EngineConfig(parties=len(plan.parties), threshold=plan.threshold if plan.sharing == "shamir" else 1,
                        sharing=plan.sharing, security=plan.security, frac_bits=plan.frac_bits,
                        backend="cupy" if backend == "cupy" else ("auto" if backend == "auto" else "numpy"))


# -- the engine run (shared by the nodes and the dealer's simulation) --------------------------


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
    """The plan's output policy as the engine takes it."""
    return [OutputRequest(o.recipient, tuple(o.allow)) for o in plan.outputs]


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


# -- dealing -----------------------------------------------------------------------------------


def _check_rows(plan: SessionPlan, rows: Mapping[str, int]) -> dict[str, int]:
    owners = [i.owner for i in plan.inputs if i.role == "data"]
    if sorted(rows) != sorted(owners):
        raise PreprocessingError(f"rows must name exactly the data owners {owners}, got {sorted(rows)}", "bad_rows")
    out = {}
    for o in owners:
        r = rows[o]
        if isinstance(r, bool) or not isinstance(r, int) or not 0 < r <= 10_000_000:
            raise PreprocessingError(f"rows of {o!r} must be an integer in 1..10000000, got {r!r}", "bad_rows")
        out[o] = r
    return out


async def _simulate(plan: SessionPlan, rows: Mapping[str, int], seeds: Sequence[bytes], dealer_seed: bytes,
                    rng: Callable[[int], bytes]) -> list[DealingProvider]:
    """Run the program once with every party simulated on dummy inputs of the real shapes."""
    cfg = engine_config(plan)
    domain, scheme = cfg.domain(), cfg.scheme()
    exec_plan = plan.execution_plan()
    fx = FixedPoint(plan.frac_bits)
    fields = plan.data_fields()
    keyed = plan.security == "malicious"
    share_rng = AesCtrRandom(rng(32))
    per_party: list[list[OwnerShares]] = [[] for _ in plan.parties]
    for owner in (i.owner for i in plan.inputs if i.role == "data"):
        encoded = np.stack([encode_column(exec_plan, f.name, np.full(rows[owner], (f.min + f.max) / 2.0), domain)
                            for f in fields])
        for i, (x, t, k) in enumerate(share_owner_input(domain, scheme, encoded, share_rng, keyed=keyed)):
            per_party[i].append(OwnerShares(owner, x.reshape(encoded.shape), t, k))
    model: list[OwnerShares | None] = [None] * len(plan.parties)
    shapes = model_shapes(exec_plan)
    if shapes:
        owner = next(i.owner for i in plan.inputs if i.role == "model")
        zeros = domain.zeros((sum(int(np.prod(s)) for s in shapes.values()),))
        for i, (x, t, k) in enumerate(share_owner_input(domain, scheme, zeros, share_rng, keyed=keyed)):
            model[i] = OwnerShares(owner, x, t, k)
    hub = InProcessHub(cfg.parties)
    providers = [DealingProvider(domain, scheme, i, seeds=seeds, dealer_seed=dealer_seed,
                                 authenticated=plan.security == "malicious") for i in range(cfg.parties)]
    ctxs = [MPCContext(party=i, channel=hub.channel(i), domain=domain, scheme=scheme, provider=providers[i],
                       rng=AesCtrRandom(rng(32)), security=plan.security, fixed=fx, session="deal")
            for i in range(cfg.parties)]
    names = [f.name for f in fields]
    requests = output_requests(plan)
    await asyncio.gather(*(execute(ctx, exec_plan, names, PartyInputs(per_party[ctx.party], model[ctx.party]), requests)
                           for ctx in ctxs))
    return providers


async def deal_async(
    plan: SessionPlan,
    rows: Mapping[str, int],
    *,
    suite: Suite,
    signer_key: MLDSAPrivateKey,
    node_kem_keys: Mapping[str, tuple[int, KemPublicKey]],
    rng: Callable[[int], bytes] = os.urandom,
) -> DealerOutput:
    """:func:`deal` for callers inside an event loop (the simulation runs on the current loop)."""
    plan = SessionPlan.from_json(plan.to_json())  # as the nodes parse it, so the digests agree
    counts = _check_rows(plan, rows)
    missing = [p.node_id for p in plan.parties if p.node_id not in node_kem_keys]
    if missing:
        raise PreprocessingError(f"no KEM key for party nodes {missing}", "missing_kem_key")
    runs = []
    for _ in range(attempt_count(plan)):  # fresh, independent material per attempt
        seeds = [rng(32) for _ in plan.parties]
        runs.append((seeds, await _simulate(plan, counts, seeds, rng(32), rng)))
    digest = plan.digest()
    bodies: dict[str, bytes] = {}
    words: dict[str, int] = {}
    for p in plan.parties:
        manifests = {tuple(prov[p.index].requests) for _, prov in runs}
        if len(manifests) != 1:
            raise PreprocessingError("the attempts' simulations requested different material", "dealing_failed")
        material = PartyMaterial(plan.session_id, digest, p.index, p.node_id, counts, manifests.pop(),
                                 tuple(seeds[p.index] for seeds, _ in runs), tuple(prov[p.index].stream for _, prov in runs))
        epoch, key = node_kem_keys[p.node_id]
        bodies[p.node_id] = seal_preprocessing(material, suite=suite, key_epoch=epoch, node_kem_key=key,
                                               signer_key=signer_key, generation=plan.generation, rng=rng)
        words[p.node_id] = sum(int(st.size) for st in material.streams)
    return DealerOutput(plan.session_id, digest, counts, bodies, words)


def deal(
    plan: SessionPlan,
    rows: Mapping[str, int],
    *,
    suite: Suite,
    signer_key: MLDSAPrivateKey,
    node_kem_keys: Mapping[str, tuple[int, KemPublicKey]],
    rng: Callable[[int], bytes] = os.urandom,
) -> DealerOutput:
    """Deal the session's preprocessing: one sealed body per party node (see the module docstring).

    CPU-bound (it runs the program once for all parties); call it from a worker thread in
    an async operator, or use :func:`deal_async`.
    """
    return asyncio.run(deal_async(plan, rows, suite=suite, signer_key=signer_key, node_kem_keys=node_kem_keys, rng=rng))


# -- wire form ---------------------------------------------------------------------------------


def _aad(plan_digest: str, node_id: str) -> bytes:
    return f"pqmpc/preprocessing/v1|{plan_digest}|{node_id}".encode()


def seal_preprocessing(
    material: PartyMaterial,
    *,
    suite: Suite,
    key_epoch: int,
    node_kem_key: KemPublicKey,
    signer_key: MLDSAPrivateKey,
    generation: int,
    rng: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """One party's preprocessing body, sealed to its KEM key and signed with the plan-signing key.

    The envelope is bound to the plan version it was dealt for (digest and ``generation``).
    """
    stream_key = rng(32)
    doc = {
        "format": MATERIAL_FORMAT, "sessionId": material.session_id, "planDigest": material.plan_digest,
        "party": material.party, "nodeId": material.node_id, "rows": dict(material.rows),
        "manifest": [list(m) for m in material.manifest], "streamWords": [int(st.size) for st in material.streams],
        "seeds": [base64.b64encode(seed).decode() for seed in material.seeds],
        "streamKey": base64.b64encode(stream_key).decode(),
    }
    header = EnvelopeHeader(
        suite=suite.name, session_id=material.session_id, node_id=material.node_id, party_index=material.party,
        input_id=PREPROCESSING_INPUT_ID, key_epoch=key_epoch, sender=OPERATOR_SENDER,
        sender_key_fingerprint=key_fingerprint(signer_key.public_key()),
        plan_digest=bytes.fromhex(material.plan_digest), generation=generation,
    )
    env = seal_envelope(json.dumps(doc).encode(), suite=suite, header=header, recipient_key=node_kem_key,
                        sender_key=signer_key)
    stream = np.concatenate([np.ascontiguousarray(st, dtype="<u8").reshape(-1) for st in material.streams])
    blob = AESGCM(stream_key).encrypt(_NONCE, stream.tobytes(),
                                      _aad(material.plan_digest, material.node_id))
    return MAGIC + struct.pack(">I", len(env)) + env + blob


def open_preprocessing(
    body: bytes,
    plan: SessionPlan,
    *,
    suite: Suite,
    node_id: str,
    signer_key: MLDSAPublicKey,
    keys: KemKeySource,
    now: dt.datetime,
) -> PartyMaterial:
    """Verify (plan signer's ML-DSA signature), open and check one preprocessing body for this node.

    Raises envelope errors (bad signature, wrong recipient, retired key…) or
    :class:`PreprocessingError`.
    """
    if len(body) < len(MAGIC) + 4 or body[: len(MAGIC)] != MAGIC:
        raise PreprocessingError("not a preprocessing body (bad magic)", "malformed")
    (env_len,) = struct.unpack(">I", body[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if env_len > len(body) - start:
        raise PreprocessingError("truncated preprocessing body", "malformed")
    party = plan.party_of(node_id)
    opened = open_envelope(
        body[start : start + env_len], suite=suite, session_id=plan.session_id, plan=plan.binding(), node_id=node_id,
        party_index=party.index, senders={OPERATOR_SENDER: signer_key}, keys=keys, replay_guard=ReplayGuard(), now=now,
    )
    if opened.header.input_id != PREPROCESSING_INPUT_ID:
        raise PreprocessingError(f"envelope carries {opened.header.input_id!r}, not preprocessing", "malformed")
    try:
        doc = json.loads(opened.plaintext)
        if doc.get("format") != MATERIAL_FORMAT:
            raise PreprocessingError(f"material format must be {MATERIAL_FORMAT!r}", "malformed")
        seeds = tuple(base64.b64decode(x, validate=True) for x in doc["seeds"])
        stream_key = base64.b64decode(doc["streamKey"], validate=True)
        words = [int(w) for w in doc["streamWords"]]
        rows = {str(k): int(v) for k, v in dict(doc["rows"]).items()}
        manifest = tuple(tuple(m) for m in doc["manifest"])
        digest, doc_party, doc_node = str(doc["planDigest"]), int(doc["party"]), str(doc["nodeId"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        if isinstance(exc, PreprocessingError):
            raise
        raise PreprocessingError(f"malformed preprocessing material: {type(exc).__name__}", "malformed") from None
    if digest != plan.digest():
        raise PreprocessingError("the material was dealt for another version of the plan; deal again", "stale_preprocessing")
    if (doc_party != party.index or doc_node != node_id or not seeds or len(words) != len(seeds)
            or any(len(seed) < 16 for seed in seeds) or any(w < 0 for w in words) or len(stream_key) != 32):
        raise PreprocessingError("the material names another party", "malformed")
    try:
        raw = AESGCM(stream_key).decrypt(_NONCE, body[start + env_len :], _aad(digest, node_id))
    except InvalidTag:
        raise PreprocessingError("the correction stream does not authenticate", "bad_stream") from None
    if len(raw) != 8 * sum(words):
        raise PreprocessingError("the correction stream has the wrong length", "bad_stream")
    stream = np.frombuffer(raw, dtype="<u8").astype(np.uint64, copy=False)
    bounds = np.cumsum([0, *words])
    streams = tuple(stream[int(lo):int(hi)] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True))
    _check_rows(plan, rows)
    return PartyMaterial(plan.session_id, digest, party.index, node_id, rows, manifest, seeds, streams)

