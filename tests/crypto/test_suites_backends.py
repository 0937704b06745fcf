"""Suite registry lookups and the backend interface (pyca; liboqs reports itself unavailable)."""

from __future__ import annotations

import pytest

from pqmpc_node.crypto.backends import BackendUnavailable, OqsBackend, PycaBackend, available_backends
from pqmpc_node.crypto.suites import (
    EnvelopeKem, MLKemParameterSet, SignatureAlgorithm, SuiteName, TlsGroup, UnknownSuiteError, get_suite,
)


def test_registry_names_every_algorithm() -> None:
    d = get_suite("pq-default")
    assert (d.tls_group, d.signature, d.envelope_kem) == (TlsGroup.X25519MLKEM768, SignatureAlgorithm.ML_DSA_65, EnvelopeKem.XWING)
    h = get_suite(SuiteName.PQ_HIGH)
    assert (h.kem, h.signature) == (MLKemParameterSet.ML_KEM_1024, SignatureAlgorithm.ML_DSA_87)


def test_unknown_suite_names_the_choices() -> None:
    with pytest.raises(UnknownSuiteError, match="pq-default, pq-high"):
        get_suite("rsa-2048")


@pytest.mark.parametrize("ps", list(MLKemParameterSet))
def test_pyca_kem_round_trip(ps: MLKemParameterSet) -> None:
    b = PycaBackend()
    pk, sk = b.kem_keypair(ps)
    ss, ct = b.kem_encapsulate(ps, pk)
    assert b.kem_decapsulate(sk, ct) == ss
    assert "key=" not in repr(sk)


@pytest.mark.parametrize("alg", list(SignatureAlgorithm))
def test_pyca_sign_verify_with_context(alg: SignatureAlgorithm) -> None:
    b = PycaBackend()
    pk, sk = b.sign_keypair(alg)
    sig = b.sign(sk, b"msg", b"ctx-a")
    assert b.verify(alg, pk, b"msg", sig, b"ctx-a")
    assert not b.verify(alg, pk, b"msg", sig, b"ctx-b")
    assert not b.verify(alg, pk, b"msg2", sig, b"ctx-a")


def test_liboqs_reports_unavailable_without_downloading() -> None:
    try:
        OqsBackend()
    except BackendUnavailable as exc:
        assert "liboqs" in str(exc) and ("not installed" in str(exc) or "not found" in str(exc))
        found, missing = available_backends()
        assert [b.name for b in found] == ["pyca"] and "liboqs" in missing
    else:
        pytest.skip("liboqs is installed here; the unavailable path cannot be exercised")


def test_backends_interoperate() -> None:
    found, missing = available_backends()
    if len(found) < 2:
        pytest.skip(f"only one backend available: {missing.get('liboqs', '')}")
    a, b = found[0], found[1]
    pk, sk = a.kem_keypair(MLKemParameterSet.ML_KEM_768)
    ss, ct = b.kem_encapsulate(MLKemParameterSet.ML_KEM_768, pk)
    assert a.kem_decapsulate(sk, ct) == ss
    vk, signer = b.sign_keypair(SignatureAlgorithm.ML_DSA_65)
    assert a.verify(SignatureAlgorithm.ML_DSA_65, vk, b"m", b.sign(signer, b"m", b"c"), b"c")
