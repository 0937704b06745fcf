"""The wire form of one party's dealt preprocessing, and the checks a node makes when it opens it.

Wire form of a preprocessing body::

    b"PQMPCPP1" || u32 len(envelope) || envelope || AES-256-GCM(stream key, stream)

The envelope is a sealed envelope (:mod:`pqmpc_node.crypto.envelopes`) from sender
``operator``, signed with the plan-signing ML-DSA key (the node verifies it with the key
it trusts for plans) and encrypted to the node's KEM key; its plaintext holds the seeds
(one per attempt), the manifest, the stream length of each attempt, the row counts, the
plan digest and a fresh AES key for the (large) correction streams, which follow
(concatenated in attempt order) encrypted under it (nonce 0, the key is single-use;
associated data: plan digest and node id).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import struct
from collections.abc import Callable, Mapping
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
from pqmpc_node.dealer.seeded import Request
from pqmpc_node.plan import OPERATOR_SENDER, SessionPlan

__all__ = ["MAGIC", "MATERIAL_FORMAT", "PREPROCESSING_INPUT_ID", "PartyMaterial", "PreprocessingError",
           "check_rows", "open_preprocessing", "seal_preprocessing"]

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


def check_rows(plan: SessionPlan, rows: Mapping[str, int]) -> dict[str, int]:
    """``rows`` names exactly the plan's data owners, each with 1..10,000,000 rows; the counts as a dict."""
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
    check_rows(plan, rows)
    return PartyMaterial(plan.session_id, digest, party.index, node_id, rows, manifest, seeds, streams)

