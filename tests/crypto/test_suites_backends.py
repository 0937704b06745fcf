"""Suite registry lookups, the pyca backend, and liboqs reporting itself unavailable without downloading.

The liboqs backend itself (known answers, interop with pyca) is tests/crypto/test_liboqs_backend.py.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pqmpc_node.crypto.backends import PycaBackend
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


PROBE = """
import json, sys
from pqmpc_node.crypto.backends import BackendUnavailable, OqsBackend, available_backends
try:
    OqsBackend()
    error = None
except BackendUnavailable as exc:
    error = str(exc)
found, missing = available_backends()
print(json.dumps({"error": error, "found": [b.name for b in found], "missing": sorted(missing),
                  "oqs_imported": "oqs" in sys.modules}))
"""


def probe_without_liboqs(tmp_path: Path, **env: str) -> dict[str, Any]:
    """Run PROBE in a fresh interpreter that cannot see the liboqs build.

    The environment hides every place liboqs-python would find the library (no
    OQS_INSTALL_PATH, LD_LIBRARY_PATH, ~/_oqs) and puts a ``git`` first on PATH that
    records being called, so a download attempt shows up even if it fails.
    """
    bin_dir, marker = tmp_path / "bin", tmp_path / "git-called"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    (bin_dir / "git").chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if k not in ("OQS_INSTALL_PATH", "LD_LIBRARY_PATH")}
    clean |= {"HOME": str(tmp_path / "home"), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"} | env
    proc = subprocess.run([sys.executable, "-c", PROBE], env=clean, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "liboqs-python tried to git-clone liboqs"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_liboqs_reports_unavailable_without_downloading(tmp_path: Path) -> None:
    if ctypes.util.find_library("oqs") is not None:
        pytest.skip("a system-wide liboqs is installed here; it cannot be hidden from the loader")
    r = probe_without_liboqs(tmp_path)
    assert r["error"] is not None and "liboqs" in r["error"]
    assert "not installed" in r["error"] or "not found" in r["error"]
    assert r["found"] == ["pyca"] and r["missing"] == ["liboqs"]
    assert not r["oqs_imported"]


def test_liboqs_install_path_without_the_library_is_unavailable(tmp_path: Path) -> None:
    """OQS_INSTALL_PATH alone is not trusted: liboqs-python would clone and build into it."""
    if ctypes.util.find_library("oqs") is not None:
        pytest.skip("a system-wide liboqs is installed here; it cannot be hidden from the loader")
    (tmp_path / "empty" / "lib").mkdir(parents=True)
    r = probe_without_liboqs(tmp_path, OQS_INSTALL_PATH=str(tmp_path / "empty"))
    assert r["error"] is not None and r["found"] == ["pyca"] and not r["oqs_imported"]
