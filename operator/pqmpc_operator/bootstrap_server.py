"""The operator's node-bootstrap endpoint (I/O shell): PQ-TLS, TokenReview, then certification.

``POST /v1/bootstrap`` (body: :class:`~pqmpc_node.bootstrap_request.BootstrapRequest`) on
``PQMPC_BOOTSTRAP_PORT``. TLS 1.3 with the pool suite's hybrid group only; the server
name (SNI, :func:`~pqmpc_node.crypto.pki.bootstrap_server_name`) selects the pool, and the
operator answers with its certificate for that pool, issued by the pool CA, so a node
knows it hands its token to its operator and to no one else. Steps per request:

1. parse the request (400 ``malformed``); the pool must be one this operator runs (404
   ``unknown_pool``);
2. TokenReview of the token for :data:`~pqmpc_node.crypto.pki.BOOTSTRAP_AUDIENCE`
   (:func:`~pqmpc_operator.attestation.attest_token`), and only then a read of the pod it
   names (:func:`~pqmpc_operator.attestation.attest_pod`); 403 with the reason:
   ``token_rejected``, ``wrong_service_account``, ``unbound_token``, ``wrong_pod``,
   ``foreign_pod``, ``pod_gone``;
3. :func:`~pqmpc_operator.certification.certify_attested` checks the CSR's proof of
   possession, issues, logs and persists (403 ``bad_csr`` when the CSR does not check
   out or the pod was certified too often); the answer carries the certificate and the
   log; the same pod and key asking again get the same certificate;
4. the pool's loop is woken to push the grown log to the other nodes.

Every outcome is counted in ``pqmpc_operator_bootstrap_requests_total{outcome}`` and
refusals are logged with their reason; the token itself is never logged.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from aiohttp import web
from kubernetes.client.exceptions import ApiException
from OpenSSL import SSL

from pqmpc_node.bootstrap_request import BOOTSTRAP_PATH, MAX_REQUEST_BYTES, BootstrapFormatError, BootstrapRequest
from pqmpc_node.crypto.pki import BOOTSTRAP_AUDIENCE, CertificateError, bootstrap_server_name
from pqmpc_node.net.https import TlsFront
from pqmpc_node.net.tls import server_context
from pqmpc_operator import pool_pki
from pqmpc_operator.attestation import AttestationRefused, attest_pod, attest_token
from pqmpc_operator.certification import CertificationState, certify_attested
from pqmpc_operator.kube import ClusterApi
from pqmpc_operator.metrics import OperatorMetrics

__all__ = ["BootstrapServer"]

_log = logging.getLogger(__name__)


def _refusal(status: int, reason: str, message: str) -> web.Response:
    return web.json_response({"error": {"reason": reason, "message": message}}, status=status)


class BootstrapServer:
    """Serves node bootstrap for every pool in ``states`` (see the module docstring)."""

    def __init__(
        self,
        api: ClusterApi,
        states: Mapping[tuple[str, str], CertificationState],
        metrics: OperatorMetrics,
        wake: Callable[[str, str], None],
    ) -> None:
        self._api, self._states, self._metrics, self._wake = api, states, metrics, wake
        self._contexts: dict[str, tuple[str, SSL.Context]] = {}
        self._dir = Path(tempfile.mkdtemp(prefix="pqmpc-bootstrap-"))
        self._runner: web.AppRunner | None = None
        self._front: TlsFront | None = None

    @property
    def port(self) -> int:
        """The bound TLS port (after :meth:`start`)."""
        if self._front is None:
            raise RuntimeError("the bootstrap server is not started")
        return self._front.port

    def context_for(self, server_name: str | None) -> SSL.Context | None:
        """The TLS context of the pool named by SNI, or None (refused) for any other name."""
        for (namespace, pool), state in list(self._states.items()):
            if server_name != bootstrap_server_name(pool, namespace) or state.operator_tls is None:
                continue
            tls = state.operator_tls
            serial = f"{tls.certificate.serial_number:x}"
            cached = self._contexts.get(server_name)
            if cached is None or cached[0] != serial:
                cached = (serial, server_context(tls))
                self._contexts[server_name] = cached
            return cached[1]
        return None

    def _count(self, outcome: str) -> None:
        self._metrics.bootstrap_requests.labels(outcome=outcome).inc()

    async def handle(self, request: web.Request) -> web.Response:
        """``POST /v1/bootstrap`` (module docstring, steps 1-4)."""
        try:
            raw = await request.content.read(MAX_REQUEST_BYTES + 1)
            if len(raw) > MAX_REQUEST_BYTES:
                raise BootstrapFormatError(f"body is larger than {MAX_REQUEST_BYTES} bytes")
            req = BootstrapRequest.from_json(json.loads(raw))
        except (BootstrapFormatError, ValueError) as exc:
            self._count("malformed")
            return _refusal(400, "malformed", f"not a bootstrap request: {exc}")
        state = self._states.get((req.namespace, req.pool))
        if state is None or state.pool is None or state.pki is None:
            self._count("unknown_pool")
            return _refusal(404, "unknown_pool", f"this operator runs no pool {req.namespace}/{req.pool} (yet); retry")
        pool = state.pool
        try:
            review = await self._api.review_token(req.token, [BOOTSTRAP_AUDIENCE])
            bound = attest_token(review, namespace=req.namespace, pool=req.pool, node_id=req.node_id,
                                 csr_node_id=req.csr_document.get("nodeId"))  # before any pod is read
            pod = await self._api.read_pod(req.namespace, bound.name)
            attest_pod(bound, pod, namespace=req.namespace, pool=pool, created_uids=state.created_uids,
                       started_at=state.started_at)
            answer = await certify_attested(self._api, pool, state, req.csr_document, pod_name=bound.name,
                                            pod_uid=bound.uid)
        except AttestationRefused as exc:
            self._count(exc.reason)
            _log.warning("bootstrap for %s/%s (claims %s) refused: %s: %s", req.namespace, req.pool, req.node_id,
                         exc.reason, exc)
            return _refusal(403, exc.reason, str(exc))
        except (pool_pki.CertificationRefused, CertificateError) as exc:
            self._count("bad_csr")
            _log.warning("bootstrap of %s/%s: CSR refused: %s", req.namespace, req.node_id, exc)
            return _refusal(403, "bad_csr", f"the CSR does not check out: {exc}")
        except ApiException as exc:
            self._count("api_error")
            _log.warning("bootstrap of %s/%s: API server error %s %s", req.namespace, req.node_id, exc.status, exc.reason)
            return _refusal(503, "api_error", "the operator could not reach the API server; retry")
        except Exception:  # noqa: BLE001 - a bug or an unexpected answer must not escape uncounted
            self._count("internal")
            _log.exception("bootstrap of %s/%s failed unexpectedly", req.namespace, req.node_id)
            return _refusal(500, "internal", "the operator failed to process the request; retry")
        self._count("certified")
        self._wake(req.namespace, req.pool)
        return web.json_response(answer)

    async def start(self, host: str, port: int) -> None:
        """Serve on ``host:port`` (0: any free port)."""
        app = web.Application(client_max_size=MAX_REQUEST_BYTES + 1024)
        app.router.add_post(BOOTSTRAP_PATH, self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = str(self._dir / "bootstrap.sock")
        await web.UnixSite(self._runner, sock).start()
        self._front = TlsFront(self.context_for, sock, on_refusal=self._refused_handshake)
        await self._front.start(host, port)
        _log.info("node bootstrap (PQ-TLS) on %s:%d", host, self._front.port)

    def _refused_handshake(self, reason: str) -> None:
        self._count(f"tls_{reason}")

    async def close(self) -> None:
        """Stop serving."""
        if self._front is not None:
            await self._front.close()
        if self._runner is not None:
            await self._runner.cleanup()
        shutil.rmtree(self._dir, ignore_errors=True)
