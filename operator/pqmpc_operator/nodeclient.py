"""The operator's HTTP calls to node pods (httpx): CSR pull, certificate and log push, plans, cancels.

Addresses come from the pod's status as the API server reports it, never from what a
node says about itself. Timeouts are short: a slow node must not stall the pool's loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

__all__ = ["NodeCallError", "NodeClient"]


class NodeCallError(RuntimeError):
    """A node did not answer as expected; the message names the node and the call."""


class NodeClient:
    """Calls to the node API (``http://<podIP>:<api port>``)."""

    def __init__(self, api_port: int, timeout: float = 3.0) -> None:
        self._port = api_port
        self._http = httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(self, method: str, ip: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        url = f"http://{ip}:{self._port}{path}"
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
        url = f"http://{ip}:{self._port}/v1/sessions"
        try:
            resp = await self._http.post(url, content=body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            raise NodeCallError(f"POST {url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 300:
            raise NodeCallError(f"POST {url}: HTTP {resp.status_code}: {resp.text[:300]}")
        doc = resp.json()
        return doc if isinstance(doc, dict) else {}

    async def plan(self, ip: str, session_id: str) -> bytes:
        """``GET /v1/sessions/{id}/plan``: the signed plan the node holds."""
        url = f"http://{ip}:{self._port}/v1/sessions/{session_id}/plan"
        try:
            resp = await self._http.get(url)
        except httpx.HTTPError as exc:
            raise NodeCallError(f"GET {url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            raise NodeCallError(f"GET {url}: HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.content

    async def post_preprocessing(self, ip: str, session_id: str, body: bytes) -> None:
        """``POST /v1/sessions/{id}/preprocessing``: this party's sealed, signed material."""
        url = f"http://{ip}:{self._port}/v1/sessions/{session_id}/preprocessing"
        try:
            resp = await self._http.post(url, content=body, headers={"Content-Type": "application/octet-stream"},
                                         timeout=120.0)
        except httpx.HTTPError as exc:
            raise NodeCallError(f"POST {url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 300:
            raise NodeCallError(f"POST {url}: HTTP {resp.status_code}: {resp.text[:300]}")

    async def cancel(self, ip: str, session_id: str, body: bytes, *, timeout: float = 2.0) -> dict[str, Any]:
        """``POST /v1/sessions/{id}/cancel``: a plan-signed cancel (200 also when already cancelled or finished)."""
        url = f"http://{ip}:{self._port}/v1/sessions/{session_id}/cancel"
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
