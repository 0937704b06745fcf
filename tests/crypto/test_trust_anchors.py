"""The formats node, client and operator share from ``crypto``: trust anchors and the log copy."""

from __future__ import annotations

import base64
import datetime as dt
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pqmpc_node.crypto.suites import SuiteName, get_suite
from pqmpc_node.crypto.transparency import EntryKind, LogBundle, LogVerifier, MalformedLogError
from pqmpc_node.crypto.trust_anchors import TrustAnchorError, parse_ca_certificate, parse_plan_signer

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.timezone.utc)  # the same instant as conftest.NOW
DEFAULT, HIGH = get_suite(SuiteName.PQ_DEFAULT), get_suite(SuiteName.PQ_HIGH)


def test_plan_signer_in_pem_or_base64_raw_is_the_same_key() -> None:
    key = DEFAULT.signature.generate(os.urandom(32)).public_key()
    pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    raw = base64.b64encode(key.public_bytes_raw()) + b"\n"
    assert parse_plan_signer(pem, DEFAULT).public_bytes_raw() == key.public_bytes_raw()
    assert parse_plan_signer(raw, DEFAULT).public_bytes_raw() == key.public_bytes_raw()


@pytest.mark.parametrize("raw, why", [
    (b"not base64 at all!", "not a PEM or base64 ML-DSA-65 key"),
    (base64.b64encode(b"\x01" * 10), "not a PEM or base64 ML-DSA-65 key"),
    (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a PEM or base64 ML-DSA-65 key"),
])
def test_plan_signer_garbage_is_refused(raw: bytes, why: str) -> None:
    with pytest.raises(TrustAnchorError, match=why):
        parse_plan_signer(raw, DEFAULT)


def test_plan_signer_of_another_suite_is_refused() -> None:
    key = HIGH.signature.generate(os.urandom(32)).public_key()
    with pytest.raises(TrustAnchorError, match="it is ML-DSA-87, the suite needs ML-DSA-65"):
        parse_plan_signer(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo), DEFAULT)


def test_ca_certificate_pem(pool: Any) -> None:
    pem = pool.ca.certificate.public_bytes(Encoding.PEM)
    assert parse_ca_certificate(pem) == pool.ca.certificate
    with pytest.raises(TrustAnchorError, match="not PEM X.509"):
        parse_ca_certificate(pem.replace(b"CERTIFICATE", b"PRIVATE KEY"))


def test_log_bundle_round_trips_and_verifies(pool: Any) -> None:
    pool.node("node-a")
    pool.log.append(EntryKind.KEM_KEY_CERTIFICATE, b"kem-key", now=NOW)
    doc = LogBundle(pool.log.entries, pool.log.signed_tree_head(now=NOW)).to_json()
    bundle = LogBundle.from_json(doc)
    verifier = LogVerifier(pool.ca.public_key)
    verifier.update(bundle.entries, bundle.tree_head)
    assert verifier.size == 2 and verifier.contains(EntryKind.KEM_KEY_CERTIFICATE, b"kem-key")


@pytest.mark.parametrize("mutate", [
    lambda d: None,
    lambda d: {"entries": d["entries"]},
    lambda d: {**d, "entries": "x"},
    lambda d: {**d, "entries": ["%%%"]},
    lambda d: {**d, "entries": [base64.b64encode(b"PQL1garbage").decode()]},
    lambda d: {**d, "treeHead": base64.b64encode(b"short").decode()},
])
def test_malformed_log_bundle_is_refused_as_malformed(pool: Any, mutate: Any) -> None:
    pool.node("node-a")
    doc = LogBundle(pool.log.entries, pool.log.signed_tree_head(now=NOW)).to_json()
    with pytest.raises(MalformedLogError) as err:
        LogBundle.from_json(mutate(doc))
    assert err.value.reason == "malformed"
