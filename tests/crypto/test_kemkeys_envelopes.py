"""KEM key certificates and rotation (grace, fences), and sealed envelopes with every refusal."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from pqmpc_node.crypto import envelopes as E
from pqmpc_node.crypto import pki
from pqmpc_node.crypto.kemkeys import (
    BadKeySignatureError, KemKeyCertificate, KemKeyPair, KeyRetiredError, KeyState, verify_kem_key_certificate,
)
from pqmpc_node.crypto.pki import NodeId
from pqmpc_node.crypto.suites import SuiteName
from pqmpc_node.crypto.transparency import EntryKind
from pqmpc_node.net.counters import RefusalCounters

H = dt.timedelta(hours=1)


def setup(pool: Any, ring_factory: Any, now: dt.datetime) -> tuple[Any, Any, Any]:
    ident, cert = pool.node("node-a")
    ring = ring_factory(pool, "node-a", ident)
    report = ring.step(now)
    for kc in report.prepared:
        pool.log.append(EntryKind.KEM_KEY_CERTIFICATE, kc.to_bytes(), now=now)
    return ident, cert, ring


def test_kem_key_chain_verifies(pool: Any, ring_factory: Any, now: dt.datetime) -> None:
    _, cert, ring = setup(pool, ring_factory, now)
    kc = ring.certificate(KeyState.CURRENT)
    v = verify_kem_key_certificate(kc.to_bytes(), node_certificate=cert, ca_certificate=pool.ca.certificate,
                                   suite=pool.suite, expected_node_id=NodeId("node-a"), log=pool.verifier(), now=now)
    assert v.epoch == 1 and v.public_bytes == kc.public_key


def test_kem_key_refusals(pool: Any, ring_factory: Any, now: dt.datetime) -> None:
    ident, cert, ring = setup(pool, ring_factory, now)
    kc = ring.certificate(KeyState.CURRENT)
    kw = dict(node_certificate=cert, ca_certificate=pool.ca.certificate, suite=pool.suite, now=now)
    with pytest.raises(pki.WrongIdentityError):
        verify_kem_key_certificate(kc.to_bytes(), expected_node_id=NodeId("node-b"), log=pool.verifier(), **kw)
    # a key certificate signed by another identity
    other = pki.NodeIdentity.generate(pool.suite, os.urandom)
    forged = KemKeyCertificate.issue(other, node_id=NodeId("node-a"), epoch=9,
                                     keypair=KemKeyPair.from_seed(pool.suite.envelope_kem, os.urandom(32)),
                                     not_before=now, not_after=now + H)
    pool.log.append(EntryKind.KEM_KEY_CERTIFICATE, forged.to_bytes(), now=now)
    with pytest.raises(BadKeySignatureError):
        verify_kem_key_certificate(forged.to_bytes(), expected_node_id=NodeId("node-a"), log=pool.verifier(), **kw)
    # validly signed by the node but never logged
    unlogged = KemKeyCertificate.issue(ident, node_id=NodeId("node-a"), epoch=7,
                                       keypair=KemKeyPair.from_seed(pool.suite.envelope_kem, os.urandom(32)),
                                       not_before=now, not_after=now + H)
    with pytest.raises(pki.NotInLogError):
        verify_kem_key_certificate(unlogged.to_bytes(), expected_node_id=NodeId("node-a"), log=pool.verifier(), **kw)
    with pytest.raises(pki.ExpiredCertificateError):
        verify_kem_key_certificate(kc.to_bytes(), expected_node_id=NodeId("node-a"), log=pool.verifier(),
                                   **{**kw, "now": now + 30 * H})


def test_rotation_grace_and_fences(pool: Any, ring_factory: Any, now: dt.datetime) -> None:
    _, _, ring = setup(pool, ring_factory, now)
    assert ring.states() == {1: KeyState.CURRENT}
    r = ring.step(now + 17 * H)  # within renew_before (8h) of the 24h rotation
    assert [c.epoch for c in r.prepared] == [2] and ring.states()[2] is KeyState.NEXT
    r = ring.step(now + 24 * H)
    assert r.activated == (2,) and ring.states() == {1: KeyState.RETIRING, 2: KeyState.CURRENT}
    ring.fence("sess-1", 1)
    assert ring.keypair_for(1, now=now + 26 * H)  # fenced: kept past grace
    assert ring.step(now + 26 * H).dropped == ()
    ring.release("sess-1")
    with pytest.raises(KeyRetiredError):  # past grace, unfenced, even before step() drops it
        ring.keypair_for(1, now=now + 26 * H)
    assert ring.step(now + 26 * H).dropped == (1,)
    assert 1 not in ring.states()
    assert "private" not in repr(ring) and "private_key" not in repr(ring.keypair_for(2, now=now + 26 * H))


@pytest.mark.parametrize("name", list(SuiteName))
def test_kem_keypair_round_trip(name: SuiteName, pool_factory: Any) -> None:
    suite = pool_factory(name).suite
    kp = KemKeyPair.from_seed(suite.envelope_kem, os.urandom(32))
    ct = suite.hpke_suite().encrypt(b"x", kp.public_key(), b"info")
    assert suite.hpke_suite().decrypt(ct, kp.private_key, b"info") == b"x"


PLAN_DIGEST = bytes(range(32))  # the plan version every envelope here is bound to


class Scenario:
    """One data owner, one node with a key ring, and helpers to seal and open."""

    def __init__(self, pool: Any, ring_factory: Any, now: dt.datetime) -> None:
        self.pool, self.now = pool, now
        _, _, self.ring = setup(pool, ring_factory, now)
        self.owner = pool.suite.signature.generate(os.urandom(32))
        self.guard = E.ReplayGuard()
        self.counters = RefusalCounters()
        self.kc = self.ring.certificate(KeyState.CURRENT)

    def header(self, **over: Any) -> E.EnvelopeHeader:
        base = dict(suite=self.pool.suite.name, session_id="sess-1", node_id="node-a", party_index=0,
                    input_id="in-1", key_epoch=self.kc.epoch, sender="bank-a",
                    sender_key_fingerprint=E.key_fingerprint(self.owner.public_key()),
                    plan_digest=PLAN_DIGEST, generation=1)
        base.update(over)
        return E.EnvelopeHeader(**base)

    def seal(self, pt: bytes = b"share-bytes", key: Any = None, **over: Any) -> bytes:
        from pqmpc_node.crypto.kemkeys import kem_public_key_from_bytes
        pk = kem_public_key_from_bytes(self.pool.suite.envelope_kem, self.kc.public_key)
        return E.seal_envelope(pt, suite=self.pool.suite, header=self.header(**over), recipient_key=pk,
                               sender_key=key or self.owner)

    def open(self, data: bytes, now: dt.datetime | None = None, **over: Any) -> E.OpenedEnvelope:
        kw: dict[str, Any] = dict(suite=self.pool.suite, session_id="sess-1", plan=(PLAN_DIGEST, 1), node_id="node-a",
                                  party_index=0, senders={"bank-a": self.owner.public_key()}, keys=self.ring,
                                  replay_guard=self.guard, now=now or self.now)
        kw.update(over)
        return E.open_envelope_counted(data, counters=self.counters, **kw)


@pytest.fixture
def sc(pool: Any, ring_factory: Any, now: dt.datetime) -> Scenario:
    return Scenario(pool, ring_factory, now)


def test_envelope_round_trip_and_replay(sc: Scenario) -> None:
    env = sc.seal(b"\x01\x02secret")
    assert sc.open(env).plaintext == b"\x01\x02secret"
    assert sc.counters.snapshot() == {}  # an accepted envelope counts nothing
    with pytest.raises(E.ReplayError) as e:
        sc.open(env)
    assert e.value.reason == "replay" and sc.counters.snapshot() == {"replay": 1}


def test_uncounted_open_still_raises_and_counted_open_counts_once(sc: Scenario) -> None:
    env = sc.seal(session_id="sess-2")
    kw: dict[str, Any] = dict(suite=sc.pool.suite, session_id="sess-1", plan=(PLAN_DIGEST, 1), node_id="node-a",
                              party_index=0,
                              senders={"bank-a": sc.owner.public_key()}, keys=sc.ring, replay_guard=sc.guard, now=sc.now)
    with pytest.raises(E.WrongSessionError):
        E.open_envelope(env, **kw)
    assert sc.counters.snapshot() == {}
    counters = RefusalCounters()
    for _ in range(2):
        with pytest.raises(E.WrongSessionError):
            E.open_envelope_counted(env, counters=counters, **kw)
    assert counters.snapshot() == {"wrong_session": 2}


@pytest.mark.parametrize(
    ("over", "err"),
    [
        ({"session_id": "sess-2"}, E.WrongSessionError),
        ({"plan_digest": bytes(32)}, E.WrongPlanError),  # sealed under another plan of this session
        ({"generation": 2}, E.WrongPlanError),  # or another generation of it
        ({"node_id": "node-b"}, E.WrongNodeError),
        ({"party_index": 3}, E.WrongPartyError),
        ({"key_epoch": 99}, E.WrongEpochError),
        ({"sender": "mallory"}, E.UnknownSenderError),
    ],
)
def test_envelope_for_another_target_refused(sc: Scenario, over: dict[str, Any], err: type[E.EnvelopeError]) -> None:
    with pytest.raises(err):
        sc.open(sc.seal(**over))
    assert sc.counters.snapshot() == {err.reason: 1}


def test_tampered_ciphertext_or_tag_refused(sc: Scenario) -> None:
    raw = E.SealedEnvelope.from_bytes(sc.seal())
    for pos in (5, len(raw.ciphertext) - 1):  # inside the KEM encapsulation, inside the tag
        ct = bytearray(raw.ciphertext)
        ct[pos] ^= 0x40
        # not re-signed: the signature catches it
        with pytest.raises(E.BadEnvelopeSignatureError):
            sc.open(E.SealedEnvelope(raw.header, bytes(ct), raw.signature).to_bytes())
        # a malicious owner re-signs garbage: HPKE catches it
        resigned = E.SealedEnvelope(raw.header, bytes(ct), b"")
        sig = sc.owner.sign(resigned.signed_bytes(), E.ENVELOPE_SIGNATURE_CONTEXT)
        with pytest.raises(E.DecryptionError) as e:
            sc.open(E.SealedEnvelope(raw.header, bytes(ct), sig).to_bytes())
        assert e.value.reason == "decrypt_failed"
    assert sc.counters.snapshot() == {"bad_signature": 2, "decrypt_failed": 2}


def test_unsigned_and_wrongly_signed_refused(sc: Scenario) -> None:
    raw = E.SealedEnvelope.from_bytes(sc.seal())
    with pytest.raises(E.UnsignedEnvelopeError):
        sc.open(E.SealedEnvelope(raw.header, raw.ciphertext, b"").to_bytes())
    mallory = sc.pool.suite.signature.generate(os.urandom(32))
    wrong = mallory.sign(raw.signed_bytes(), E.ENVELOPE_SIGNATURE_CONTEXT)
    with pytest.raises(E.BadEnvelopeSignatureError):
        sc.open(E.SealedEnvelope(raw.header, raw.ciphertext, wrong).to_bytes())
    # right key, wrong context string
    other_ctx = sc.owner.sign(raw.signed_bytes(), b"pqmpc/v1/session-plan")
    with pytest.raises(E.BadEnvelopeSignatureError):
        sc.open(E.SealedEnvelope(raw.header, raw.ciphertext, other_ctx).to_bytes())
    assert sc.counters.snapshot() == {"unsigned": 1, "bad_signature": 2}


def test_key_used_after_grace_period_refused(sc: Scenario) -> None:
    env = sc.seal()
    sc.ring.step(sc.now + 17 * H)
    sc.ring.step(sc.now + 24 * H)  # epoch 1 retires
    assert sc.open(env, now=sc.now + 24 * H + dt.timedelta(minutes=30)).plaintext  # within grace
    with pytest.raises(E.RetiredKeyError) as e:
        sc.open(sc.seal(input_id="in-2"), now=sc.now + 26 * H)
    assert e.value.reason == "kem_key_retired" and sc.counters.get("kem_key_retired") == 1


def test_oversized_envelope_refused(sc: Scenario) -> None:
    env = sc.seal(b"x" * 2048)
    with pytest.raises(E.EnvelopeTooLargeError):
        sc.open(env, max_bytes=1024)
    assert sc.counters.snapshot() == {"too_large": 1}


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=2048), pos=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_fuzz_envelope_parser_never_accepts(shared_pool: Any, data: bytes, pos: int, flip: int) -> None:
    if not hasattr(shared_pool, "scenario"):
        from pqmpc_node.crypto.kemkeys import KemKeyRing, KeyRotationPolicy
        shared_pool.scenario = Scenario.__new__(Scenario)
        s = shared_pool.scenario
        ident, _ = shared_pool.node("node-a")
        s.pool, s.now = shared_pool, dt.datetime(2026, 5, 1, 12, tzinfo=dt.timezone.utc)
        s.ring = KemKeyRing(node_id=NodeId("node-a"), identity=ident, rng=os.urandom,
                            policy=KeyRotationPolicy(24 * H, 8 * H, H))
        s.ring.step(s.now)
        s.owner = shared_pool.suite.signature.generate(os.urandom(32))
        s.guard = E.ReplayGuard()
        s.counters = RefusalCounters()
        s.kc = s.ring.certificate(KeyState.CURRENT)
        s.valid = s.seal()
    s = shared_pool.scenario
    before = sum(s.counters.snapshot().values())
    with pytest.raises(E.EnvelopeError):
        s.open(data)
    mutated = bytearray(s.valid)
    mutated[pos % len(mutated)] ^= flip
    with pytest.raises(E.EnvelopeError):
        s.open(bytes(mutated))
    assert sum(s.counters.snapshot().values()) == before + 2  # every refusal counted, once
