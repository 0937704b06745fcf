"""The wire format of the node bootstrap (``POST /v1/bootstrap``): shared by the node and the operator.

The node (:mod:`pqmpc_node.bootstrap`) builds a :class:`BootstrapRequest` and posts it;
the operator (:mod:`pqmpc_operator.bootstrap_server`) parses it with
:meth:`BootstrapRequest.from_json`. Kept apart from the node's bootstrap loop so the
operator depends on the format only, never on the node's server modules (the
``operator-outside-node-server`` contract in ``.importlinter``).

Pure: JSON in, JSON out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BOOTSTRAP_PATH", "BootstrapFormatError", "BootstrapRequest", "MAX_REQUEST_BYTES", "MAX_TOKEN_BYTES"]

BOOTSTRAP_PATH = "/v1/bootstrap"
MAX_TOKEN_BYTES = 16 * 1024
MAX_REQUEST_BYTES = 256 * 1024


class BootstrapFormatError(ValueError):
    """A bootstrap request that is not the documented JSON object."""


@dataclass(frozen=True)
class BootstrapRequest:
    """What a node sends the operator: who it says it is, its CSR document, and its bound token."""

    namespace: str
    pool: str
    node_id: str
    csr_document: Mapping[str, Any]
    token: str = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The request body."""
        return {"namespace": self.namespace, "pool": self.pool, "nodeId": self.node_id,
                "csr": dict(self.csr_document), "token": self.token}

    @classmethod
    def from_json(cls, raw: Any) -> BootstrapRequest:
        """Parse a request body; :class:`BootstrapFormatError` says which field is wrong."""
        if not isinstance(raw, dict):
            raise BootstrapFormatError("the body must be a JSON object")
        for key in ("namespace", "pool", "nodeId", "token"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise BootstrapFormatError(f"{key} must be a non-empty string")
        if len(raw["token"]) > MAX_TOKEN_BYTES:
            raise BootstrapFormatError(f"token is longer than {MAX_TOKEN_BYTES} bytes")
        if not isinstance(raw.get("csr"), dict):
            raise BootstrapFormatError("csr must be the node's CSR document (a JSON object)")
        return cls(raw["namespace"], raw["pool"], raw["nodeId"], raw["csr"], raw["token"])
