"""Structured JSON errors for the node API: ``{"error": {"reason", "message", ...}}``.

Every refusal carries a stable ``reason`` label (the same labels the metrics use) and a
message that says what to do. Unexpected failures answer 500 with a generic message and
are logged; they never echo internals, keys or shares.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pqmpc_node.crypto.transparency import MalformedLogError
from pqmpc_node.keystore import CertificationError, NotCertifiedError
from pqmpc_node.plan import PlanError
from pqmpc_node.sessions import SessionError

__all__ = ["ApiError", "error_middleware", "error_response", "read_body", "read_json"]

log = logging.getLogger("pqmpc_node.api")

_PLAN_STATUS = {"unsigned": 401, "bad_signature": 403, "foreign_pool": 403, "expired": 410, "stale": 409,
                "not_a_party": 409, "malformed": 400}


class ApiError(Exception):
    """A request refused by the API layer itself (size, content type, shape)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def error_response(status: int, reason: str, message: str, extra: dict[str, Any] | None = None) -> web.Response:
    """The JSON error answer."""
    body: dict[str, Any] = {"reason": reason, "message": message}
    if extra:
        body.update(extra)
    return web.json_response({"error": body}, status=status)


async def read_body(request: web.Request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The request body, refusing more than ``limit`` bytes or a body slower than ``timeout_s``."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"body is {request.content_length} bytes; the limit is {limit}")
    async def read_all() -> bytes:
        chunks, size = [], 0
        while size <= limit:
            chunk = await request.content.read(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    try:
        data = await asyncio.wait_for(read_all(), timeout_s)
    except TimeoutError:
        raise ApiError(408, "timeout", f"request body not received within {timeout_s:.0f}s") from None
    if len(data) > limit:
        raise ApiError(413, "too_large", f"body exceeds the limit of {limit} bytes")
    return data


async def read_json(request: web.Request, limit: int) -> Any:
    """A JSON body (object expected by callers)."""
    data = await read_body(request, limit)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed", f"body is not JSON: {exc}") from None



@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every refusal into a JSON error with the right status; never leak internals."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.reason, str(exc))
    except SessionError as exc:
        return error_response(exc.status, exc.reason, str(exc), exc.extra)
    except PlanError as exc:
        return error_response(_PLAN_STATUS.get(exc.reason, 400), exc.reason, str(exc))
    except CertificationError as exc:
        return error_response(400 if exc.reason == "malformed" else 422, exc.reason, str(exc))
    except MalformedLogError as exc:
        return error_response(400, exc.reason, str(exc))
    except NotCertifiedError as exc:
        return error_response(503, "not_certified", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - the last line of defence: log, answer 500 without details
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; see the node's log")
