"""Nothing is sealed to a KEM key the operator has not verified (issue 12, finding 1).

The operator fetches a party's keys document from the pod IP, where anyone who gets that
IP can answer. Before it signs a plan naming a key, and again before it seals a party's
preprocessing to it, the document must verify: pool CA -> node certificate (that node,
in the operator's own log) -> KEM key certificate (signed by that certificate's key, in
the log). Each attack below is an impostor's or a tampered document; every one is
refused with its reason and with the words "nothing was sealed", while the genuine node's
document (real ``NodeKeys`` certified by the operator's real ``PoolPKI``) passes.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from typing import Any

import pytest

from pqmpc_node.crypto.kemkeys import KemKeyCertificate, KemKeyPair, KeyRotationPolicy, KeyState
from pqmpc_node.crypto.pki import NodeId, NodeIdentity
from pqmpc_node.crypto.suites import get_suite
from pqmpc_node.crypto.transparency import LogBundle
from pqmpc_node.keystore import NodeKeys
from pqmpc_operator import pool_pki
from pqmpc_operator.nodeclient import NodeCallError
from pqmpc_operator.session_controller import _verified_kem_key

SUITE = get_suite("pq-default")
NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.timezone.utc)
H = dt.timedelta(hours=1)
POLICY = KeyRotationPolicy(duration=24 * H, renew_before=8 * H, grace_period=H)


def certified_node(pki: pool_pki.PoolPKI, name: str) -> NodeKeys:
    """A node certified the way the operator certifies one: CSR document -> certificate -> pushed log."""
    keys = NodeKeys.generate(suite=SUITE, node_id=NodeId(name), dns_name=f"{name}.pool.ns.svc",
                             ca_certificate=pki.ca.certificate, policy=POLICY, rng=os.urandom, now=NOW)
    issued = pool_pki.certify_node(pki, keys.csr_document(), pod_name=name, expected_dns_name=f"{name}.pool.ns.svc",
                                   now=NOW, lifetime=24 * H, rng=os.urandom)
    keys.install_certificate(issued.certificate_der, LogBundle(tuple(pki.log.entries), pki.log.signed_tree_head(now=NOW)),
                             now=NOW)
    return keys


@pytest.fixture()
def world() -> tuple[pool_pki.PoolPKI, NodeKeys, NodeKeys]:
    pki = pool_pki.new_pool_pki("banks", SUITE, now=NOW, rng=os.urandom)
    return pki, certified_node(pki, "banks-a-0"), certified_node(pki, "banks-b-0")


def refused(doc: dict[str, Any], node: str, pki: pool_pki.PoolPKI, reason: str, epoch: int | None = None) -> None:
    with pytest.raises(NodeCallError) as err:
        _verified_kem_key(doc, node, pki, SUITE, now=NOW, epoch=epoch)
    assert f"({reason})" in str(err.value) and "nothing was sealed" in str(err.value), str(err.value)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _with_fresh_kem_key(doc: dict[str, Any], signer: NodeIdentity, *, epoch: int) -> dict[str, Any]:
    """``doc`` offering a fresh KEM key for banks-a-0 signed by ``signer`` instead of its logged ones."""
    cert = KemKeyCertificate.issue(signer, node_id=NodeId("banks-a-0"), epoch=epoch,
                                   keypair=KemKeyPair.from_seed(SUITE.envelope_kem, os.urandom(32)),
                                   not_before=NOW, not_after=NOW + 24 * H)
    doc["kemKeys"] = [{"epoch": epoch, "state": "current", "certificate": b64(cert.to_bytes())}]
    return doc


def test_the_genuine_nodes_document_verifies(world: Any) -> None:
    pki, a, _ = world
    keys = _verified_kem_key(a.keys_document(), "banks-a-0", pki, SUITE, now=NOW)
    assert keys.kem.epoch == 1 and keys.node.fingerprint == a.certificate.fingerprint
    assert keys.kem.public_bytes == a.ring.certificate(KeyState.CURRENT).public_key


def test_an_impostor_with_its_own_kem_key_gets_nothing(world: Any) -> None:
    """It relays the node's public certificate but offers its own KEM key, signed by its own identity."""
    pki, a, _ = world
    impostor = NodeIdentity.generate(SUITE, os.urandom)
    refused(_with_fresh_kem_key(a.keys_document(), impostor, epoch=1), "banks-a-0", pki, "bad_signature")


def test_a_key_certificate_missing_from_the_operators_log_is_refused(world: Any) -> None:
    """Validly signed by the node, but never logged: a key the pool cannot audit."""
    pki, a, _ = world
    refused(_with_fresh_kem_key(a.keys_document(), a.identity, epoch=2), "banks-a-0", pki, "not_in_log")


def test_another_nodes_genuine_document_at_this_ip_is_refused(world: Any) -> None:
    """A pod that took over banks-a-0's IP serves its own, genuine, documents."""
    pki, _, b = world
    refused(b.keys_document(), "banks-a-0", pki, "wrong_identity")


def test_a_certificate_from_another_ca_is_refused(world: Any) -> None:
    """An impostor with a whole parallel PKI: its own CA, certificate, key and log."""
    pki, _, _ = world
    rogue_pki = pool_pki.new_pool_pki("banks", SUITE, now=NOW, rng=os.urandom)
    rogue = certified_node(rogue_pki, "banks-a-0")
    refused(rogue.keys_document(), "banks-a-0", pki, "wrong_ca")


def test_a_stale_epoch_or_a_relabelled_key_is_refused_at_sealing(world: Any) -> None:
    pki, a, _ = world
    refused(a.keys_document(), "banks-a-0", pki, "no_kem_key", epoch=5)  # the plan's epoch is gone
    doc = a.keys_document()
    doc["kemKeys"] = [{**doc["kemKeys"][0], "epoch": 3}]  # epoch 1's certificate labelled as epoch 3
    refused(doc, "banks-a-0", pki, "wrong_identity", epoch=3)


def test_a_malformed_document_is_refused(world: Any) -> None:
    pki, a, _ = world
    doc = a.keys_document()
    del doc["certificate"]
    refused(doc, "banks-a-0", pki, "malformed")
