"""The operator's HTTPS calls to node pods (httpx over PQ-TLS): KEM sync, renewal, log push, plans, cancels.

Every call runs over TLS 1.3 with the pool suite's hybrid group only, and the node must
present *its* certificate: issued by its pool's CA, in that pool's transparency log, and
naming the pod that the API server reports at the address dialled
(:class:`PodDirectory`). Addresses come from the pod's status as the API server reports
it, never from what a node says about itself. Timeouts are short: a slow node must not
stall the pool's loop.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pqmpc_node.crypto.pki import InclusionChecker, NodeId, WrongIdentityError, verify_node_certificate
from pqmpc_node.crypto.suites import Suite
from pqmpc_node.net.https import async_pq_transport

__all__ = ["NodeApi", "NodeCallError", "NodeClient", "PodDirectory", "PoolTrust"]


@dataclass(frozen=True)
class PoolTrust:
    """What a node pod's TLS certificate is checked against: its pool's CA, suite and current log."""

    ca_certificate: x509.Certificate
    suite: Suite
    log: Callable[[], InclusionChecker]
    pod_name: str
    fingerprints: frozenset[str] = frozenset()
    """The certificates this operator issued to that pod (current and the one it renewed); empty
    when it issued none (after a restart): then any logged certificate naming the pod passes."""


PodDirectory = Callable[[str], "PoolTrust | None"]
"""Pod IP → the trust of the pool whose pod the API server reports there (None: none of ours)."""


class _PodRouting(httpx.AsyncBaseTransport):
    """Routes each request to the PQ-TLS transport of the pool the pod IP belongs to."""

    def __init__(self, directory: PodDirectory) -> None:
        self._directory = directory
        self._transports: dict[bytes, httpx.AsyncBaseTransport] = {}

    def _verify(self, cert: x509.Certificate, host: str) -> None:
        trust = self._directory(host)
        if trust is None:
            raise httpx.ConnectError(f"no node pod is known at {host} any more")
        verified = verify_node_certificate(cert, ca_certificate=trust.ca_certificate, suite=trust.suite,
                                           now=dt.datetime.now(dt.timezone.utc),
                                           expected_node_ids={NodeId(trust.pod_name)}, log=trust.log())
        if trust.fingerprints and verified.fingerprint not in trust.fingerprints:
            raise WrongIdentityError(f"{host} presents a certificate of {trust.pod_name} ({verified.fingerprint[:16]}) "
                                     "that is not the one the operator issued to the pod there")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        trust = self._directory(request.url.host)
        if trust is None:
            raise httpx.ConnectError(f"{request.url.host} is not the address of a node pod this operator runs",
                                     request=request)
        key = hashlib.sha256(trust.ca_certificate.public_bytes(Encoding.DER)).digest()
        transport = self._transports.get(key)
        if transport is None:
            transport = async_pq_transport(trust.ca_certificate, trust.suite, verify_peer=self._verify)
            self._transports[key] = transport
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()
        self._transports.clear()


class NodeCallError(RuntimeError):
    """A node did not answer as expected; the message names the node and the call."""


class NodeApi(Protocol):
    """The node API as the operator calls it: :class:`NodeClient` in production,
    :class:`pqmpc_operator.testing.FakeNodeClient` (in memory) in tests.

    Every call raises :class:`NodeCallError` when the node does not answer as expected.
    """

    async def aclose(self) -> None: ...
    async def keys(self, ip: str) -> dict[str, Any]: ...
    async def post_plan(self, ip: str, body: bytes) -> dict[str, Any]: ...
    async def post_preprocessing(self, ip: str, session_id: str, body: bytes) -> None: ...
    async def cancel(self, ip: str, session_id: str, body: bytes, *, timeout: float = 2.0) -> dict[str, Any]: ...
    async def session(self, ip: str, session_id: str) -> dict[str, Any]: ...
    async def csr(self, ip: str) -> dict[str, Any]: ...
    async def install_certificate(self, ip: str, certificate_b64: str, log: Mapping[str, Any]) -> dict[str, Any]: ...
    async def push_log(self, ip: str, log: Mapping[str, Any]) -> dict[str, Any]: ...


class NodeClient:
    """Calls to the node API (``https://<podIP>:<api port>``, PQ-TLS, see the module docstring)."""

    def __init__(self, api_port: int, directory: PodDirectory, timeout: float = 3.0) -> None:
        self._port = api_port
        self._http = httpx.AsyncClient(timeout=timeout, transport=_PodRouting(directory))

    @property
    def http(self) -> httpx.AsyncClient:
        """The underlying client (``https://<podIP>:<port>`` URLs only), for callers that build their own requests."""
        return self._http

    def url(self, ip: str) -> str:
        """The API base URL of the pod at ``ip``."""
        return f"https://{ip}:{self._port}"

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(self, method: str, ip: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.url(ip)}{path}"
        try:
            resp = await self._http.request(method, url, json=body)
        except httpx.HTTPError as exc:
            raise NodeCallError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 300:
            raise NodeCallError(f"{method} {url}: HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            doc = resp.json()
        except ValueError:
            raise NodeCallError(f"{method} {url}: answer is not JSON") from None
        if not isinstance(doc, dict):
            raise NodeCallError(f"{method} {url}: answer is not a JSON object")
        return doc

    async def keys(self, ip: str) -> dict[str, Any]:
        """``GET /v1/keys``: certificate, logged KEM key certificates, log."""
        return await self._call("GET", ip, "/v1/keys")

    async def post_plan(self, ip: str, body: bytes) -> dict[str, Any]:
        """``POST /v1/sessions``: a signed plan (201 new, 200 already held)."""
        url = f"{self.url(ip)}/v1/sessions"
        try:
            resp = await self._http.post(url, content=body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            raise NodeCallError(f"POST {url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 300:
            raise NodeCallError(f"POST {url}: HTTP {resp.status_code}: {resp.text[:300]}")
        doc = resp.json()
        return doc if isinstance(doc, dict) else {}

    async def post_preprocessing(self, ip: str, session_id: str, body: bytes) -> None:
        """``POST /v1/sessions/{id}/preprocessing``: this party's sealed, signed material."""
        url = f"{self.url(ip)}/v1/sessions/{session_id}/preprocessing"
        try:
            resp = await self._http.post(url, content=body, headers={"Content-Type": "application/octet-stream"},
                                         timeout=120.0)
        except httpx.HTTPError as exc:
            raise NodeCallError(f"POST {url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 300:
            raise NodeCallError(f"POST {url}: HTTP {resp.status_code}: {resp.text[:300]}")

    async def cancel(self, ip: str, session_id: str, body: bytes, *, timeout: float = 2.0) -> dict[str, Any]:
        """``POST /v1/sessions/{id}/cancel``: a plan-signed cancel (200 also when already cancelled or finished)."""
        url = f"{self.url(ip)}/v1/sessions/{session_id}/cancel"
        try:
            resp = await self._http.post(url, content=body, headers={"Content-Type": "application/json"},
                                         timeout=timeout)
        except httpx.HTTPError as exc:
            raise NodeCallError(f"POST {url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 300:
            raise NodeCallError(f"POST {url}: HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            doc = resp.json()
        except ValueError:
            raise NodeCallError(f"POST {url}: answer is not JSON") from None
        return doc if isinstance(doc, dict) else {}

    async def session(self, ip: str, session_id: str) -> dict[str, Any]:
        """``GET /v1/sessions/{id}``: the node's view of a session."""
        return await self._call("GET", ip, f"/v1/sessions/{session_id}")

    async def csr(self, ip: str) -> dict[str, Any]:
        """``GET /v1/csr``: the node's CSR document."""
        return await self._call("GET", ip, "/v1/csr")

    async def install_certificate(self, ip: str, certificate_b64: str, log: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/certificate``: certificate plus the current log."""
        return await self._call("POST", ip, "/v1/certificate", {"certificate": certificate_b64, "log": dict(log)})

    async def push_log(self, ip: str, log: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/log``: the current transparency log."""
        return await self._call("POST", ip, "/v1/log", log)
