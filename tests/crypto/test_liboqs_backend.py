"""The liboqs backend for real: Wycheproof ML-KEM-768 / ML-DSA-65 known answers, and interop with pyca.

Needs the liboqs build from ``make liboqs`` (scripts/build-liboqs.sh, cached under
~/.cache/pqmpc) and liboqs-python (the ``oqs`` extra); ``make test`` provides both.
Without them the module skips, saying why; under CI (CI=true) it fails instead, so a
CI run can never pass without having exercised liboqs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pqmpc_local import liboqs
from pqmpc_node.crypto.backends import BackendUnavailable, OqsBackend, PycaBackend
from pqmpc_node.crypto.suites import MLKemParameterSet, SignatureAlgorithm

KEM = MLKemParameterSet.ML_KEM_768
SIG = SignatureAlgorithm.ML_DSA_65
REPO = Path(__file__).resolve().parents[2]
PYCA = PycaBackend()


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI must exercise the liboqs backend: `make test` builds it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def oqs() -> Iterator[OqsBackend]:
    """The liboqs backend on the ``make liboqs`` build, found through OQS_INSTALL_PATH for this module only."""
    if liboqs.shared_library() is None:
        _unavailable(f"liboqs is not built in {liboqs.install_dir()}: run `make liboqs`")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OQS_INSTALL_PATH", str(liboqs.install_dir()))
        try:
            backend = OqsBackend()
        except BackendUnavailable as exc:
            _unavailable(str(exc))
        yield backend


def cases(path: Path) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    data = json.loads(path.read_text())
    for group in data["testGroups"]:
        for test in group["tests"]:
            yield group, test


def test_build_script_and_tests_pin_the_same_liboqs() -> None:
    script = (REPO / "scripts" / "build-liboqs.sh").read_text()
    pinned = re.search(r'^LIBOQS_VERSION="([^"]+)"', script, re.M)
    assert pinned is not None and pinned.group(1) == liboqs.LIBOQS_VERSION


def test_the_backend_runs_the_pinned_build(oqs: OqsBackend) -> None:
    import oqs as liboqs_python  # imported by OqsBackend() above, so this never triggers a download

    assert liboqs_python.oqs_version() == liboqs.LIBOQS_VERSION
    assert {"ML-KEM-768", "ML-KEM-1024"} <= set(liboqs_python.get_enabled_kem_mechanisms())
    assert {"ML-DSA-44", "ML-DSA-65", "ML-DSA-87"} <= set(liboqs_python.get_enabled_sig_mechanisms())


def test_mlkem768_keygen_from_seed(oqs: OqsBackend, vectors_dir: Path) -> None:
    n = 0
    for _, t in cases(vectors_dir / "mlkem_768_keygen_seed_test.json"):
        pk, sk = oqs.kem_keypair(KEM, bytes.fromhex(t["seed"]))
        assert pk == bytes.fromhex(t["ek"]), t["tcId"]
        assert bytes(sk.key.export_secret_key()) == bytes.fromhex(t["dk"]), t["tcId"]
        n += 1
    assert n >= 50


def test_mlkem768_decapsulation(oqs: OqsBackend, vectors_dir: Path) -> None:
    valid = 0
    for _, t in cases(vectors_dir / "mlkem_768_test.json"):
        seed, ct = bytes.fromhex(t.get("seed", "")), bytes.fromhex(t["c"])
        if len(seed) != 64:  # malformed seeds: key generation must refuse them
            with pytest.raises(ValueError):
                oqs.kem_keypair(KEM, seed)
            continue
        pk, sk = oqs.kem_keypair(KEM, seed)
        assert pk == bytes.fromhex(t["ek"]), t["tcId"]
        if t["result"] == "valid":
            assert oqs.kem_decapsulate(sk, ct) == bytes.fromhex(t["K"]), t["tcId"]
            valid += 1
        elif len(ct) != 1088:
            with pytest.raises(ValueError):
                oqs.kem_decapsulate(sk, ct)
        else:  # a well-formed but wrong ciphertext: implicit rejection, never the real key
            assert oqs.kem_decapsulate(sk, ct) != bytes.fromhex(t["K"]) if t["K"] else True
    assert valid > 0


def test_mlkem768_encapsulation_key_checks(oqs: OqsBackend, vectors_dir: Path) -> None:
    invalid = 0
    for _, t in cases(vectors_dir / "mlkem_768_encaps_test.json"):
        ek = bytes.fromhex(t["ek"])
        if t["result"] == "invalid":
            with pytest.raises(ValueError):
                oqs.kem_encapsulate(KEM, ek)
            invalid += 1
        else:
            ss, ct = oqs.kem_encapsulate(KEM, ek)
            assert len(ss) == 32 and len(ct) == 1088
    assert invalid > 0


def test_mldsa65_verify(oqs: OqsBackend, vectors_dir: Path) -> None:
    seen = {"valid": 0, "invalid": 0}
    for g, t in cases(vectors_dir / "mldsa_65_verify_test.json"):
        ok = oqs.verify(SIG, bytes.fromhex(g["publicKey"]), bytes.fromhex(t["msg"]), bytes.fromhex(t["sig"]),
                        bytes.fromhex(t.get("ctx", "")))
        if t["result"] in seen:
            assert ok is (t["result"] == "valid"), t["tcId"]
            seen[t["result"]] += 1
    assert seen["valid"] > 0 and seen["invalid"] > 0


def test_mldsa65_sign_vectors_verify_under_liboqs(oqs: OqsBackend, vectors_dir: Path) -> None:
    """liboqs signs hedged (randomised), so its signatures cannot equal the deterministic
    known answers: it must accept every known-good signature, and refuse to sign under a
    context the vectors mark invalid (over 255 bytes) the way pyca does."""
    checked = refused = 0
    _, signer = oqs.sign_keypair(SIG)
    for g, t in cases(vectors_dir / "mldsa_65_sign_seed_test.json"):
        ctx = bytes.fromhex(t.get("ctx", ""))
        if "InvalidContext" in t["flags"]:
            with pytest.raises(ValueError):
                oqs.sign(signer, b"m", ctx)
            with pytest.raises(ValueError):
                PYCA.sign(PYCA.sign_keypair(SIG)[1], b"m", ctx)
            refused += 1
        elif t["result"] == "valid" and "msg" in t:  # "Internal" cases sign an external mu: not this API
            assert oqs.verify(SIG, bytes.fromhex(g["publicKey"]), bytes.fromhex(t["msg"]), bytes.fromhex(t["sig"]),
                              ctx), t["tcId"]
            checked += 1
    assert checked >= 80 and refused == 1


def test_mldsa_seeded_keys_are_refused(oqs: OqsBackend) -> None:
    with pytest.raises(BackendUnavailable, match="seed"):
        oqs.sign_keypair(SIG, bytes(32))


@pytest.mark.parametrize("ps", list(MLKemParameterSet))
def test_kem_interop_both_ways(oqs: OqsBackend, ps: MLKemParameterSet) -> None:
    seed = os.urandom(64)
    pk_pyca, sk_pyca = PYCA.kem_keypair(ps, seed)
    pk_oqs, sk_oqs = oqs.kem_keypair(ps, seed)
    assert pk_pyca == pk_oqs  # the same seed gives the same key in both
    ss, ct = oqs.kem_encapsulate(ps, pk_pyca)
    assert PYCA.kem_decapsulate(sk_pyca, ct) == ss
    ss, ct = PYCA.kem_encapsulate(ps, pk_oqs)
    assert oqs.kem_decapsulate(sk_oqs, ct) == ss
    tampered = bytes([ct[0] ^ 1]) + ct[1:]
    assert oqs.kem_decapsulate(sk_oqs, tampered) == PYCA.kem_decapsulate(sk_pyca, tampered) != ss


@pytest.mark.parametrize("alg", list(SignatureAlgorithm))
def test_signature_interop_both_ways(oqs: OqsBackend, alg: SignatureAlgorithm) -> None:
    vk, signer = oqs.sign_keypair(alg)
    sig = oqs.sign(signer, b"plan", b"ctx-a")
    assert PYCA.verify(alg, vk, b"plan", sig, b"ctx-a")
    assert not PYCA.verify(alg, vk, b"plan", sig, b"ctx-b")
    vk, signer = PYCA.sign_keypair(alg)
    sig = PYCA.sign(signer, b"plan", b"ctx-a")
    assert oqs.verify(alg, vk, b"plan", sig, b"ctx-a")
    assert not oqs.verify(alg, vk, b"plan", sig, b"ctx-b")
    assert not oqs.verify(alg, vk, b"plan!", sig, b"ctx-a")
    assert not oqs.verify(alg, vk[:-1], b"plan", sig, b"ctx-a")  # a truncated key is refused, not zero-padded
