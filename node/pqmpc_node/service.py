"""The node's HTTP API (aiohttp) and the process runtime behind it.

Two listeners (docs/node.md has bodies and answers):

- the **API** on ``PQMPC_API_PORT``: post-quantum TLS only (TLS 1.3, the suite's hybrid
  group, the node's ML-DSA certificate; :class:`~pqmpc_node.net.https.TlsFront` pipes
  the plaintext to this app on a private Unix socket). Before the node is certified
  the port refuses every handshake: the node has nothing to serve until the operator
  has certified it (it pushes its CSR there itself, :mod:`pqmpc_node.bootstrap`).
- **metrics and probes** on ``PQMPC_METRICS_PORT``, plain HTTP: Prometheus and kubelets
  speak neither ML-DSA nor a PQ-only group, and these answers carry no secret.

API routes:

=======  ==============================  =================================================
GET      /v1/csr                         CSR and KEM key certificates (operator: KEM sync, renewal)
POST     /v1/certificate                 a renewed certificate + log (only a later-expiring one is taken)
POST     /v1/log                         a longer transparency log (operator pushes)
GET      /v1/keys                        certificate, CA, logged KEM keys, log (clients)
POST     /v1/sessions                    signed session plan (operator)
GET      /v1/sessions/{id}               status
GET      /v1/sessions/{id}/plan          the signed plan as posted (clients verify it)
POST     /v1/sessions/{id}/preprocessing this party's dealt material (operator; sealed + plan-signed)
POST     /v1/sessions/{id}/inputs        one sealed input envelope (data owners)
GET      /v1/sessions/{id}/outputs       ?recipient=NAME: sealed result shares
POST     /v1/sessions/{id}/cancel        stop the session (operator; plan-signed, see plan.sign_cancel)
=======  ==============================  =================================================

Metrics routes: ``GET /healthz`` (200 while the process is healthy), ``GET /readyz``
(200 once certified, else 503 with a JSON reason), ``GET /metrics`` (Prometheus text).

:class:`NodeRuntime` holds the keys, sessions and metrics of the process; :func:`build_app`
and :func:`build_metrics_app` wire the routes. Private keys stay in memory; nothing
secret is ever in a response.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from OpenSSL import SSL
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pqmpc_node.api_errors import ApiError, error_middleware, read_body, read_json
from pqmpc_node.bootstrap import bootstrap_until_certified
from pqmpc_node.config import NodeConfig, Trust
from pqmpc_node.crypto.pki import NodeId, Rng
from pqmpc_node.crypto.suites import get_suite
from pqmpc_node.crypto.transparency import LogBundle
from pqmpc_node.dealer.size import PREPROCESSING_LIMIT
from pqmpc_node.keystore import NodeKeys
from pqmpc_node.metrics import NodeMetrics
from pqmpc_node.net.counters import RefusalCounters
from pqmpc_node.net.tls import TlsIdentity, server_context
from pqmpc_node.sessions import SessionManager, SessionSettings

__all__ = ["NodeRuntime", "build_app", "build_metrics_app", "wall_clock"]

log = logging.getLogger("pqmpc_node")
_LOG_LIMIT = 16 << 20
_PLAN_LIMIT = 4 << 20
_CANCEL_LIMIT = 64 << 10
_PREPROCESSING_LIMIT = PREPROCESSING_LIMIT
"""Largest preprocessing body (seed envelope + correction stream) a node takes; the operator
projects a session's body against the same limit before dealing (:mod:`pqmpc_node.dealer.size`)."""


def wall_clock() -> dt.datetime:
    """The current UTC time (the only clock of the process)."""
    return dt.datetime.now(dt.timezone.utc)


class NodeRuntime:
    """Everything one node process holds: keys, sessions, metrics."""

    def __init__(
        self,
        config: NodeConfig,
        trust: Trust,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], dt.datetime] = wall_clock,
        rng: Rng = os.urandom,
    ) -> None:
        self.config = config
        self.trust = trust
        self.clock = clock
        self.registry = registry or CollectorRegistry()
        self.counters = RefusalCounters()
        self.metrics = NodeMetrics(self.registry, refusals=self.counters.snapshot,
                                   refusals_by_peer=self.counters.snapshot_by_peer)
        self.metrics.kem_duration.set(config.kem_rotation.duration.total_seconds())
        self.metrics.info.labels(config.pool, config.node_id, config.group, config.region, config.zone,
                                 config.trust_domain, config.suite).set(1)
        self.keys = NodeKeys.generate(
            suite=get_suite(config.suite), node_id=NodeId(config.node_id), dns_name=config.dns_name or config.node_id,
            ca_certificate=trust.ca_certificate, policy=config.kem_rotation, rng=rng, now=clock(),
        )
        self.sessions = SessionManager(
            node_id=config.node_id, pool=config.pool, keys=self.keys, signer_key=trust.plan_signer,
            metrics=self.metrics, counters=self.counters, state_dir=Path(config.state_dir), clock=clock,
            settings=SessionSettings(mesh_timeout_s=config.mesh_timeout_s, round_timeout_s=config.round_timeout_s,
                                     backend=config.backend),
        )
        self._rotation: asyncio.Task[None] | None = None
        self._bootstrap: asyncio.Task[None] | None = None
        self.broken = ""
        """Non-empty when a background duty died for good (``/healthz`` answers 503 with it)."""
        self._api_context: tuple[str, SSL.Context] | None = None
        self._update_key_metrics()

    def api_context(self, server_name: str | None) -> SSL.Context | None:
        """The API's TLS context (any SNI): the node's current certificate, or None before certification."""
        if not self.keys.certified:
            return None
        cert = self.keys.certificate
        if self._api_context is None or self._api_context[0] != cert.fingerprint:
            tls = TlsIdentity(self.keys.identity, cert.certificate, self.keys.ca_certificate)
            self._api_context = (cert.fingerprint, server_context(tls))
        return self._api_context[1]

    def api_refused(self, reason: str) -> None:
        """Count a refused API handshake (``api_<reason>``, e.g. a classical-only client)."""
        self.counters.count(f"api_{reason}")

    async def _bootstrap_then_report(self) -> None:
        try:
            await bootstrap_until_certified(
                self.keys, url=self.config.bootstrap_url, namespace=self.config.namespace, pool=self.config.pool,
                token_path=self.config.bootstrap_token_path, clock=self.clock)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a node that can never be certified must say so and fail liveness
            log.exception("bootstrap stopped for good; /healthz now fails so the kubelet restarts the node")
            self.broken = "bootstrap_failed"
            return
        self.metrics.certified.set(1)

    def _update_key_metrics(self) -> None:
        self.metrics.kem_epoch.set(self.keys.current_epoch())
        self.metrics.kem_age.set(max(0.0, self.clock().timestamp() - self.keys.current_key_not_before()))

    async def _rotate_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.rotation_check_s)
            report = self.keys.rotate(self.clock())
            if report.activated or report.dropped:
                log.info("KEM keys: activated %s, dropped %s", report.activated, report.dropped)
            self._update_key_metrics()

    async def start(self) -> None:
        """Start the peer listener and the KEM rotation loop."""
        await self.sessions.start_listener(self.config.listen_host, self.config.peer_port)
        self._rotation = asyncio.get_running_loop().create_task(self._rotate_forever())
        if not self.keys.certified:
            self._bootstrap = asyncio.get_running_loop().create_task(self._bootstrap_then_report())

    async def stop(self) -> None:
        """Stop background work."""
        for task in (self._rotation, self._bootstrap):
            if task is not None:
                task.cancel()
        await self.sessions.close()


def _b64(raw: Any, what: str) -> bytes:
    if not isinstance(raw, str):
        raise ApiError(400, "malformed", f"{what} must be a base64 string")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "malformed", f"{what} is not valid base64") from None


def _object(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ApiError(400, "malformed", "body must be a JSON object")
    return raw


def build_metrics_app(node: NodeRuntime) -> web.Application:
    """Probes and Prometheus metrics: plain HTTP on their own port, nothing secret."""
    keys, config = node.keys, node.config

    async def healthz(_: web.Request) -> web.Response:
        if node.broken:
            return web.json_response({"status": "broken", "reason": node.broken}, status=503)
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if not keys.certified:
            return web.json_response(
                {"status": "not_ready", "reason": "awaiting_certificate",
                 "message": "the operator has not certified this node yet (it pushes its CSR with its attestation "
                            f"token to {config.bootstrap_url}; see the node's log)"},
                status=503)
        return web.json_response({"status": "ready", "node": config.node_id, "kemEpoch": keys.current_epoch()})

    async def metrics(_: web.Request) -> web.Response:
        node._update_key_metrics()
        return web.Response(body=generate_latest(node.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


def _key_routes(node: NodeRuntime) -> list[web.RouteDef]:
    """Certification and key directory: ``/v1/csr``, ``/v1/certificate``, ``/v1/log``, ``/v1/keys``."""
    keys = node.keys

    async def get_csr(_: web.Request) -> web.Response:
        return web.json_response(keys.csr_document())

    async def post_certificate(request: web.Request) -> web.Response:
        body = _object(await read_json(request, _LOG_LIMIT))
        der = _b64(body.get("certificate"), "certificate")
        bundle = LogBundle.from_json(body.get("log"))
        verified = keys.install_certificate(der, bundle, now=node.clock())
        node.metrics.certified.set(1)
        log.info("certified: fingerprint %s, valid until %s", verified.fingerprint, verified.not_after.isoformat())
        return web.json_response({"certified": True, "certFingerprint": verified.fingerprint,
                                  "notAfter": verified.not_after.isoformat(), "kemEpoch": keys.current_epoch()})

    async def post_log(request: web.Request) -> web.Response:
        bundle = LogBundle.from_json(_object(await read_json(request, _LOG_LIMIT)))
        keys.update_log(bundle)
        return web.json_response({"size": keys.log.size})

    async def get_keys(_: web.Request) -> web.Response:
        return web.json_response(keys.keys_document())

    return [web.get("/v1/csr", get_csr), web.post("/v1/certificate", post_certificate), web.post("/v1/log", post_log),
            web.get("/v1/keys", get_keys)]


def _session_routes(node: NodeRuntime) -> list[web.RouteDef]:
    """Sessions: plans, inputs, preprocessing, outputs and cancels under ``/v1/sessions``."""
    keys, sessions, config = node.keys, node.sessions, node.config

    def _require_certified() -> None:
        if not keys.certified:
            raise ApiError(503, "not_certified", "this node is not certified yet; retry once /readyz answers 200")

    async def post_session(request: web.Request) -> web.Response:
        _require_certified()
        body = await read_body(request, _PLAN_LIMIT)
        rt, created = sessions.accept_plan(body)
        return web.json_response(rt.status(), status=201 if created else 200)

    async def get_session(request: web.Request) -> web.Response:
        return web.json_response(sessions.get(request.match_info["id"]).status())

    async def get_plan(request: web.Request) -> web.Response:
        rt = sessions.get(request.match_info["id"])
        return web.Response(body=rt.body, content_type="application/json")

    async def post_input(request: web.Request) -> web.Response:
        _require_certified()
        sid = request.match_info["id"]
        sessions.get(sid)
        data = await read_body(request, config.max_input_bytes)
        if not data:
            raise ApiError(400, "malformed", "empty body; post the sealed envelope bytes (application/octet-stream)")
        return web.json_response(sessions.accept_input(sid, data), status=202)

    async def post_preprocessing(request: web.Request) -> web.Response:
        _require_certified()
        sid = request.match_info["id"]
        sessions.get(sid)
        data = await read_body(request, _PREPROCESSING_LIMIT)
        if not data:
            raise ApiError(400, "malformed", "empty body; post the dealer's preprocessing body (application/octet-stream)")
        return web.json_response(sessions.accept_preprocessing(sid, data), status=202)

    async def post_cancel(request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        sessions.get(sid)
        body = await read_body(request, _CANCEL_LIMIT)
        return web.json_response(await sessions.cancel(sid, body))

    async def get_output(request: web.Request) -> web.Response:
        recipient = request.query.get("recipient", "")
        if not recipient:
            raise ApiError(400, "malformed", "name the recipient: /v1/sessions/{id}/outputs?recipient=NAME")
        sealed = sessions.output_for(request.match_info["id"], recipient)
        return web.Response(body=sealed, content_type="application/octet-stream")

    return [
        web.post("/v1/sessions", post_session),
        web.get("/v1/sessions/{id}", get_session),
        web.get("/v1/sessions/{id}/plan", get_plan),
        web.post("/v1/sessions/{id}/inputs", post_input),
        web.post("/v1/sessions/{id}/preprocessing", post_preprocessing),
        web.get("/v1/sessions/{id}/outputs", get_output),
        web.post("/v1/sessions/{id}/cancel", post_cancel),
    ]


def build_app(node: NodeRuntime) -> web.Application:
    """The node's API application, served behind PQ-TLS (see the module docstring for the routes)."""
    app = web.Application(client_max_size=max(node.config.max_input_bytes, _PREPROCESSING_LIMIT) + (1 << 16),
                          middlewares=[error_middleware])
    app.add_routes(_key_routes(node))
    app.add_routes(_session_routes(node))

    async def on_startup(_: web.Application) -> None:
        await node.start()

    async def on_cleanup(_: web.Application) -> None:
        await node.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
