"""Workload-attested node bootstrap: the node pushes its CSR to the operator, never the reverse.

Pattern: SPIRE's Kubernetes projected-ServiceAccount-token (PSAT) node attestor
(github.com/spiffe/spire, ``pkg/server/plugin/nodeattestor/k8spsat``): the kubelet
mounts a short-lived token bound to the pod (name and uid) and to one audience; the
workload presents it to the server, which asks the API server (TokenReview) who it
belongs to and checks the pod it names. Here:

1. The pod spec mounts a projected ``serviceAccountToken`` with audience
   :data:`BOOTSTRAP_AUDIENCE` at ``PQMPC_BOOTSTRAP_TOKEN``; the node's ServiceAccount
   has no API rights and its ordinary token is not mounted.
2. The node opens PQ-TLS (TLS 1.3, the suite's hybrid group only) to
   ``PQMPC_BOOTSTRAP_URL`` with SNI :func:`~pqmpc_node.crypto.pki.bootstrap_server_name`
   and checks that the server certificate is the *operator's* for this pool
   (:func:`~pqmpc_node.crypto.pki.verify_operator_certificate`) before sending anything.
3. It posts :class:`~pqmpc_node.bootstrap_request.BootstrapRequest` (the wire format the
   operator parses too, in its own module so the operator imports nothing of this one): its CSR document (CSR with proof of possession,
   KEM key certificates) and the token. The token goes to the operator only; the node
   serves it to no one.
4. The operator answers with the certificate and the transparency log, which the node
   checks (:meth:`~pqmpc_node.keystore.NodeKeys.install_certificate`) and installs.

Refusals come back as ``{"error": {"reason", "message"}}`` and are retried with back-off
(a pod the operator has not seen yet is refused until it has); the token file is read
afresh at every attempt (the kubelet rotates it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from pqmpc_node.bootstrap_request import BOOTSTRAP_PATH, BootstrapRequest
from pqmpc_node.crypto.pki import (
    BOOTSTRAP_AUDIENCE,
    CertificateError,
    bootstrap_server_name,
    verify_operator_certificate,
)
from pqmpc_node.crypto.transparency import LogBundle
from pqmpc_node.keystore import CertificationError, NodeKeys
from pqmpc_node.net.https import async_pq_transport

__all__ = ["bootstrap_until_certified"]

_log = logging.getLogger("pqmpc_node.bootstrap")


def _operator_check(keys: NodeKeys, server_name: str, clock: Callable[[], dt.datetime]) -> Callable[[x509.Certificate, str], None]:
    def check(cert: x509.Certificate, _host: str) -> None:
        verify_operator_certificate(cert, ca_certificate=keys.ca_certificate, suite=keys.suite,
                                    server_name=server_name, now=clock())
    return check


def _install(keys: NodeKeys, doc: Any, now: dt.datetime) -> None:
    if not isinstance(doc, dict):
        raise CertificationError("the operator's answer is not a JSON object", "malformed")
    try:
        der = base64.b64decode(str(doc["certificate"]), validate=True)
    except (KeyError, binascii.Error, ValueError):
        raise CertificationError("the operator's answer has no base64 certificate", "malformed") from None
    keys.install_certificate(der, LogBundle.from_json(doc.get("log")), now=now)


async def bootstrap_until_certified(
    keys: NodeKeys,
    *,
    url: str,
    namespace: str,
    pool: str,
    token_path: str,
    clock: Callable[[], dt.datetime],
    transport: httpx.AsyncBaseTransport | None = None,
    max_backoff_s: float = 10.0,
) -> None:
    """Push the CSR with the bound token until the operator issues a certificate (see the module docstring).

    ``transport`` replaces the PQ-TLS transport only in tests of this loop's error handling.
    """
    server_name = bootstrap_server_name(pool, namespace)
    transport = transport or async_pq_transport(keys.ca_certificate, keys.suite,
                                                verify_peer=_operator_check(keys, server_name, clock))
    backoff = 0.5
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(30.0, connect=5.0)) as http:
        while not keys.certified:
            try:
                token = Path(token_path).read_text().strip()
            except OSError as exc:
                _log.warning("bootstrap: cannot read the attestation token at %s (%s); mount the projected "
                             "serviceAccountToken volume (audience %s) there", token_path, exc.strerror,
                             BOOTSTRAP_AUDIENCE)
                token = ""
            if token:
                request = BootstrapRequest(namespace, pool, keys.node_id, keys.csr_document(), token)
                try:
                    resp = await http.post(url + BOOTSTRAP_PATH, json=request.to_json(),
                                           extensions={"sni_hostname": server_name})
                    if resp.status_code == 200:
                        _install(keys, resp.json(), clock())
                        _log.info("bootstrap: certified by the operator at %s", url)
                        return
                    _log.warning("bootstrap: the operator refused (HTTP %d): %s", resp.status_code, resp.text[:500])
                except httpx.HTTPError as exc:
                    _log.info("bootstrap: operator at %s not reachable yet: %s", url, exc)
                except (CertificationError, CertificateError, ValueError) as exc:
                    _log.warning("bootstrap: the operator's certificate does not verify: %s", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
