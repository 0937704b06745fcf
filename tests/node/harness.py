"""A test harness that plays the operator for real node processes on 127.0.0.x loopback addresses.

It holds the pool CA, the transparency log and the plan-signing key, starts
``python -m pqmpc_node`` processes with the operator's env variables, certifies them
through the operator's real bootstrap server (:class:`pqmpc_operator.bootstrap_server.BootstrapServer`,
PQ-TLS) — with :class:`FakeAttestationApi` in place of the API server's TokenReview, our
own seam; the real TokenReview path runs in the cluster tests — pushes logs, signs and
posts session plans over the nodes' PQ-TLS API, and plays the trusted dealer: once a
session's inputs are in (a node reports ``awaitingPreprocessing`` and the ``inputRows``),
a background thread calls :func:`pqmpc_node.dealer.deal` and posts each party its own
sealed material.

A node's attestation token file is written only when :meth:`Operator.certify` admits
it, the way a kubelet mounts the projected token: before that the node cannot bootstrap.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pqmpc_node.crypto.kemkeys import KemKeyCertificate, kem_public_key_from_bytes
from pqmpc_node.crypto.pki import PoolCA
from pqmpc_node.crypto.suites import Suite, SuiteName, get_suite
from pqmpc_node.crypto.transparency import EntryKind, LogBundle, TransparencyLog
from pqmpc_node.client import Identity
from pqmpc_node.dealer import DealerOutput, deal
from pqmpc_node.plan import PlanInput, PlanOutput, PlanParty, SessionId, SessionPlan, FieldDecl, sign_plan
from pqmpc_node.client import node_http_client
from pqmpc_operator.attestation import POD_NAME_CLAIM, POD_UID_CLAIM
from pqmpc_operator.bootstrap_server import BootstrapServer
from pqmpc_operator.builders import LABEL_POOL
from pqmpc_operator.certification import CertificationState, ensure_operator_tls
from pqmpc_operator.metrics import OperatorMetrics
from pqmpc_operator.model import parse_nodepool
from pqmpc_operator.pool_pki import PoolPKI

SUITE = get_suite(SuiteName.PQ_DEFAULT)
HERE = Path(__file__).resolve().parent


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class NodeProc:
    node_id: str
    host: str
    api_port: int
    peer_port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int = 0
    token_path: Path = Path()
    pool: str = "banks"
    fingerprint: str = ""
    kem_epoch: int = 1

    @property
    def url(self) -> str:
        """The PQ-TLS node API."""
        return f"https://{self.host}:{self.api_port}"

    @property
    def metrics_url(self) -> str:
        """Plain-HTTP /metrics, /healthz, /readyz."""
        return f"http://{self.host}:{self.metrics_port}"

    @property
    def dns_name(self) -> str:
        return f"{self.node_id}.{self.pool}-nodes.default.svc"

    def party(self, index: int) -> PlanParty:
        return PlanParty(index=index, node_id=self.node_id, address=self.host, dns_name=self.dns_name,
                         peer_port=self.peer_port, api_port=self.api_port, cert_fingerprint=self.fingerprint,
                         kem_epoch=self.kem_epoch)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Operator:
    """The operator's part: CA, log, plan signer, node processes."""

    workdir: Path
    pool: str = "banks"
    suite: Suite = SUITE
    ca: PoolCA = field(init=False)
    log: TransparencyLog = field(init=False)
    nodes: list[NodeProc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ca = PoolCA.create(self.suite, name="banks-ca", now=now() - dt.timedelta(minutes=5),
                                lifetime=dt.timedelta(days=1), rng=os.urandom)
        self.log = TransparencyLog(self.ca)
        self.signer = self.suite.signature.generate(os.urandom(32))
        self.trust_dir = self.workdir / "trust"
        self.trust_dir.mkdir(parents=True, exist_ok=True)
        (self.trust_dir / "ca.pem").write_bytes(self.ca.certificate.public_bytes(Encoding.PEM))
        (self.trust_dir / "plan-signer.pub").write_bytes(
            self.signer.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
        self.http = self.client()
        self.plain = httpx.Client(timeout=30.0)  # metrics port only
        self.attestation = FakeAttestationApi(self.pool)
        self.bootstrap = _BootstrapThread(self)
        self._next_ip = 10
        self._stop = threading.Event()
        self._dealers: dict[str, threading.Thread] = {}
        self.dealt: dict[str, DealerOutput] = {}
        self.dealer_errors: list[str] = []

    # -- processes ------------------------------------------------------------------

    def start_nodes(self, count: int, *, extra_env: dict[str, str] | None = None,
                    command: list[str] | None = None, per_node_env: dict[int, dict[str, str]] | None = None) -> list[NodeProc]:
        started = []
        for i in range(count):
            host = f"127.0.0.{self._next_ip}"
            self._next_ip += 1
            node_id = f"{self.pool}-g-{host.rsplit('.', 1)[1]}"  # a pod name of the pool's group g
            api, peer, metrics = free_port(host), free_port(host), free_port(host)
            state = self.workdir / node_id
            state.mkdir(exist_ok=True)
            env = {
                **os.environ,
                "PQMPC_POOL": self.pool, "PQMPC_NODE_ID": node_id, "PQMPC_NAMESPACE": "default",
                "PQMPC_POD_IP": host, "PQMPC_GROUP": "g", "PQMPC_REGION": "eu-west", "PQMPC_ZONE": f"z{i}",
                "PQMPC_TRUST_DOMAIN": f"td{i}", "PQMPC_BACKEND": "numpy", "PQMPC_SUITE": self.suite.name.value,
                "PQMPC_API_PORT": str(api), "PQMPC_PEER_PORT": str(peer), "PQMPC_METRICS_PORT": str(metrics),
                "PQMPC_DNS_NAME": f"{node_id}.{self.pool}-nodes.default.svc",
                "PQMPC_BOOTSTRAP_URL": self.bootstrap.url, "PQMPC_BOOTSTRAP_TOKEN": str(state / "token"),
                "PQMPC_STATE_DIR": str(state), "PQMPC_TRUST_DIR": str(self.trust_dir),
                "PQMPC_MESH_TIMEOUT": "15", "PQMPC_ROUND_TIMEOUT": "20",
                **(extra_env or {}), **((per_node_env or {}).get(i, {})),
            }
            log_path = self.workdir / f"{node_id}.log"
            cmd = command or [sys.executable, "-m", "pqmpc_node"]
            with log_path.open("wb") as out:
                proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
            started.append(NodeProc(node_id, host, api, peer, proc, log_path, metrics, state / "token", self.pool))
        for n in started:
            self._wait_healthy(n)
        self.nodes.extend(started)
        return started

    def _wait_healthy(self, node: NodeProc, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise RuntimeError(f"{node.node_id} exited with {node.proc.returncode}:\n{node.log_text()}")
            try:
                if self.plain.get(node.metrics_url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{node.node_id} did not become healthy:\n{node.log_text()}")

    def stop_all(self) -> None:
        self._stop.set()
        for t in self._dealers.values():
            t.join(timeout=10)
        for n in self.nodes:
            if n.proc.poll() is None:
                n.proc.terminate()
        for n in self.nodes:
            try:
                n.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()
        self.http.close()
        self.plain.close()
        self.bootstrap.stop()

    # -- certification ----------------------------------------------------------------

    def bundle(self) -> dict[str, Any]:
        return LogBundle(self.log.entries, self.log.signed_tree_head(now=now())).to_json()

    def _log_kem_keys(self, node: NodeProc) -> dict[str, Any]:
        doc = self.http.get(node.url + "/v1/csr").json()
        logged = {e.payload for e in self.log.entries}
        for raw in doc["kemKeyCertificates"]:
            data = base64.b64decode(raw)
            if data not in logged:
                self.log.append(EntryKind.KEM_KEY_CERTIFICATE, data, now=now())
        return dict(doc)

    def client(self, **kw: Any) -> httpx.Client:
        """A PQ-TLS client for the node APIs (trusting this pool's CA)."""
        return node_http_client(self.ca.certificate, **kw)

    def certify(self, nodes: list[NodeProc], timeout: float = 60.0) -> None:
        """Admit the nodes (write their bound tokens) and wait until the bootstrap server has certified them."""
        for n in nodes:
            token = self.attestation.admit(n.node_id)
            n.token_path.write_text(token)
        deadline = time.monotonic() + timeout
        for n in nodes:
            while self.plain.get(n.metrics_url + "/readyz").status_code != 200:
                if n.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{n.node_id} was not certified:\n{n.log_text()[-3000:]}")
                time.sleep(0.05)
            doc = self.http.get(n.url + "/v1/keys").json()
            n.fingerprint = doc["certFingerprint"]
            n.kem_epoch = [k for k in doc["kemKeys"] if k["state"] == "current"][-1]["epoch"]
        self.push_log()

    def push_log(self) -> None:
        for n in self.nodes:
            if n.proc.poll() is None:
                if not n.fingerprint:
                    continue  # not certified: its API is not up
                r = self.http.post(n.url + "/v1/log", json=self.bundle())
                assert r.status_code == 200, r.text

    def sync_keys(self) -> None:
        """Log any new KEM key certificates (after rotation) and push the log everywhere."""
        for n in self.nodes:
            if n.proc.poll() is None:
                self._log_kem_keys(n)
        self.push_log()

    # -- plans ------------------------------------------------------------------------

    def kem_key_of(self, node: NodeProc) -> tuple[int, Any]:
        doc = self.http.get(node.url + "/v1/keys").json()
        current = [k for k in doc["kemKeys"] if k["state"] == "current"][-1]
        kc = KemKeyCertificate.from_bytes(base64.b64decode(current["certificate"]))
        return kc.epoch, kem_public_key_from_bytes(self.suite.envelope_kem, kc.public_key)

    def plan(self, session_id: str, nodes: list[NodeProc], *, program: dict[str, Any],
             owners: list[Identity], fields: list[FieldDecl], recipients: dict[Identity, list[str]],
             sharing: str = "additive", threshold: int = 1, security: str = "semi-honest",
             model_owner: Identity | None = None, generation: int = 1, pool: str | None = None,
             lifetime_s: int = 600, max_rows_per_owner: int | None = None,
             preprocessing: str = "dealer") -> SessionPlan:
        parties = []
        keys = {}
        for i, n in enumerate(nodes):
            epoch, key = self.kem_key_of(n)
            n.kem_epoch = epoch
            parties.append(n.party(i))
            keys[n.node_id] = key
        t0 = int(now().timestamp())
        inputs = [PlanInput(o.name, o.signing_key.public_key().public_bytes_raw(), "data", tuple(fields)) for o in owners]
        if model_owner is not None:
            inputs.append(PlanInput(model_owner.name, model_owner.signing_key.public_key().public_bytes_raw(), "model", ()))
        outputs = [PlanOutput(r.name, r.kem.public_bytes, tuple(allow)) for r, allow in recipients.items()]
        return SessionPlan(
            session_id=SessionId(session_id), pool=pool or self.pool, namespace="default", generation=generation,
            issued_at=t0 - 1, not_after=t0 + lifetime_s, deadline=t0 + lifetime_s, parties=tuple(parties),
            sharing=sharing,  # type: ignore[arg-type]
            threshold=threshold, security=security,  # type: ignore[arg-type]
            program=program, inputs=tuple(inputs), outputs=tuple(outputs), suite=self.suite.name,
            preprocessing=preprocessing,  # type: ignore[arg-type]
            **({} if max_rows_per_owner is None else {"max_rows_per_owner": max_rows_per_owner}),
        )

    def signed_body(self, plan: SessionPlan) -> bytes:
        import json

        return json.dumps(sign_plan(plan, self.signer).to_json()).encode()

    def post_plan(self, plan: SessionPlan, nodes: list[NodeProc], *, dealer: bool | None = None) -> None:
        """Post the signed plan; deal its preprocessing in the background unless it is dealer-free."""
        if dealer is None:
            dealer = plan.preprocessing == "dealer"
        body = self.signed_body(plan)
        for n in nodes:
            r = self.http.post(n.url + "/v1/sessions", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code in (200, 201), r.text
        key = f"{plan.session_id}@{plan.digest()}"
        if dealer and key not in self._dealers:
            t = threading.Thread(target=self._dealer_loop, args=(plan,), name=f"dealer-{plan.session_id}", daemon=True)
            self._dealers[key] = t
            t.start()

    # -- the dealer -------------------------------------------------------------------

    def node_of(self, node_id: str) -> NodeProc:
        return next(n for n in self.nodes if n.node_id == node_id)

    def deal(self, plan: SessionPlan, rows: dict[str, int], http: httpx.Client | None = None) -> DealerOutput:
        """Deal ``plan``'s preprocessing for ``rows`` (the operator's call), sealed to each party's current KEM key."""
        client = http or self.http
        keys = {}
        for p in plan.parties:
            doc = client.get(self.node_of(p.node_id).url + "/v1/keys").json()
            current = [k for k in doc["kemKeys"] if k["state"] == "current"][-1]
            kc = KemKeyCertificate.from_bytes(base64.b64decode(current["certificate"]))
            keys[p.node_id] = (kc.epoch, kem_public_key_from_bytes(self.suite.envelope_kem, kc.public_key))
        out = deal(plan, rows, suite=self.suite, signer_key=self.signer, node_kem_keys=keys)
        self.dealt[plan.session_id] = out
        return out

    def post_preprocessing(self, plan: SessionPlan, out: DealerOutput, http: httpx.Client | None = None) -> dict[str, int]:
        """Post each party its own body; returns the HTTP status per node (unreachable nodes: 0)."""
        client = http or self.http
        codes = {}
        for p in plan.parties:
            node = self.node_of(p.node_id)
            try:
                r = client.post(f"{node.url}/v1/sessions/{plan.session_id}/preprocessing", content=out.bodies[p.node_id],
                                headers={"Content-Type": "application/octet-stream"})
                codes[p.node_id] = r.status_code
            except httpx.HTTPError:
                codes[p.node_id] = 0
        return codes

    def _dealer_loop(self, plan: SessionPlan) -> None:
        """Wait until some party reports all inputs in, then deal and post (like the operator would)."""
        digest = SessionPlan.from_json(plan.to_json()).digest()  # as the nodes parse it
        deadline = time.monotonic() + min(300.0, plan.deadline - now().timestamp())
        with self.client(timeout=httpx.Timeout(60.0)) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                rows = None
                for p in plan.parties:
                    node = self.node_of(p.node_id)
                    if node.proc.poll() is not None:
                        continue
                    try:
                        st = client.get(f"{node.url}/v1/sessions/{plan.session_id}").json()
                    except (httpx.HTTPError, ValueError):
                        continue
                    if st.get("planDigest") != digest or st.get("phase") in ("Succeeded", "Failed"):
                        return  # superseded by a re-plan, or over
                    if st.get("awaitingPreprocessing"):
                        rows = st["inputRows"]
                        break
                if rows is not None:
                    try:
                        self.post_preprocessing(plan, self.deal(plan, rows, client), client)
                    except Exception as exc:  # noqa: BLE001 - reported to the test through dealer_errors
                        self.dealer_errors.append(f"{plan.session_id}: {type(exc).__name__}: {exc}")
                    return
                self._stop.wait(0.1)

    def wait_phase(self, node: NodeProc, session_id: str, phases: set[str], timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                return {"phase": "Exited", "returncode": node.proc.returncode}
            status = self.http.get(f"{node.url}/v1/sessions/{session_id}").json()
            if status.get("phase") in phases:
                return status
            time.sleep(0.1)
        raise AssertionError(f"{node.node_id}: session {session_id} stuck in {status} (dealer errors: "
                             f"{self.dealer_errors}):\n{node.log_text()[-3000:]}")

    def metric(self, node: NodeProc, name: str) -> float:
        text = self.plain.get(node.metrics_url + "/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


class FakeAttestationApi:
    """The operator's API seam for bootstrap: TokenReview and pod reads, answered from admitted tokens.

    ``admit(node)`` mints a random token bound to that node's "pod" (as the kubelet's
    TokenRequest would); review answers like the API server does for a pod-bound
    projected token, and anything else is not authenticated.
    """

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.pool_uid = "pool-uid-" + secrets.token_hex(4)
        self._tokens: dict[str, str] = {}
        self.reviews = 0

    def admit(self, node_id: str) -> str:
        token = secrets.token_urlsafe(32)
        self._tokens[token] = node_id
        return token

    def _uid(self, node_id: str) -> str:
        return f"uid-{node_id}"

    async def review_token(self, token: str, audiences: list[str]) -> dict[str, Any]:
        self.reviews += 1
        node = self._tokens.get(token)
        if node is None:
            return {"authenticated": False, "error": "token not admitted by the harness"}
        return {"authenticated": True, "audiences": audiences, "user": {
            "username": f"system:serviceaccount:default:{self.pool}-node",
            "extra": {POD_NAME_CLAIM: [node], POD_UID_CLAIM: [self._uid(node)]}}}

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return {"metadata": {"name": name, "namespace": namespace, "uid": self._uid(name),
                             "creationTimestamp": "2000-01-01T00:00:00Z",  # made by "a predecessor"
                             "labels": {LABEL_POOL: self.pool}, "ownerReferences": [{"uid": self.pool_uid}]}}

    async def apply(self, obj: Any) -> None:
        return None  # the harness keeps its log in memory


class _BootstrapThread:
    """The operator's real BootstrapServer on its own event loop thread, serving the harness's pool."""

    def __init__(self, op: Operator) -> None:
        body = {"metadata": {"name": op.pool, "namespace": "default", "uid": op.attestation.pool_uid},
                "spec": {"groups": [{"name": "g", "replicas": 100, "region": "eu-west", "zone": "z0",
                                     "trustDomain": "td0"}], "keys": {"suite": op.suite.name.value}}}
        pool = parse_nodepool(body)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bootstrap", daemon=True)
        self.thread.start()

        async def start() -> BootstrapServer:
            st = CertificationState(pki=PoolPKI(op.ca, op.signer, op.log, b""), pool=pool)
            ensure_operator_tls(pool, st)
            server = BootstrapServer(op.attestation, {("default", op.pool): st}, OperatorMetrics(),  # type: ignore[arg-type]
                                     wake=lambda _ns, _name: None)
            await server.start("127.0.0.1", 0)
            return server

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=30)
        self.url = f"https://127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
