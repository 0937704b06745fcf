"""Names and routing decisions of the gateway.

Contract: pure. The external name of a node is ``<node-id>.<domain>``
(:func:`external_name`): the node id is the pod name ``<pool>-<group>-<ordinal>``, a DNS
label, and ``domain`` is the pool's ``spec.externalAccess.domain``. The operator puts that
name into the node's certificate as a DNS SAN, the CLI sends it as the TLS server name,
and the gateway maps it back to the pod (:func:`route`) through a table built from the
pool's pods (:func:`endpoints_from_pods`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Endpoint",
    "Refusal",
    "endpoints_from_pods",
    "external_name",
    "node_of",
    "route",
]

LABEL_POOL = "pqmpc.io/pool"
NODE_APP = "pqmpc-node"


def external_name(node_id: str, domain: str) -> str:
    """The name clients use for node ``node_id`` through the gateway of ``domain``."""
    return f"{node_id}.{domain.rstrip('.').lower()}"


def node_of(server_name: str, domain: str) -> str | None:
    """The node id a server name asks for under ``domain`` (one label before it), else None."""
    suffix = "." + domain.rstrip(".").lower()
    name = server_name.rstrip(".").lower()
    if not name.endswith(suffix):
        return None
    node = name[: -len(suffix)]
    return node if node and "." not in node else None


@dataclass(frozen=True)
class Endpoint:
    """Where a node's API listens inside the cluster."""

    node_id: str
    ip: str
    port: int


@dataclass(frozen=True)
class Refusal:
    """Why a connection is not routed: a stable ``reason`` and a line for the log."""

    reason: str
    detail: str


def endpoints_from_pods(pods: Iterable[Mapping[str, Any]], *, pool: str, api_port: int) -> dict[str, Endpoint]:
    """The routable nodes of ``pool``: its node pods that have an IP, run, and are not being deleted.

    Only pods labelled as this pool's nodes are ever routed to; any other pod the
    watch might show is ignored. A pod that is not certified yet is still routed (the
    node itself refuses the handshake until it is).
    """
    table: dict[str, Endpoint] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        status = pod.get("status") or {}
        if labels.get(LABEL_POOL) != pool or labels.get("app.kubernetes.io/name") != NODE_APP:
            continue
        if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
            continue
        name = str(meta.get("name", ""))
        table[name] = Endpoint(name, str(status["podIP"]), api_port)
    return table


def route(server_name: str, *, domain: str, endpoints: Mapping[str, Endpoint]) -> Endpoint | Refusal:
    """The node pod a connection for ``server_name`` goes to, or why it goes nowhere."""
    node = node_of(server_name, domain)
    if node is None:
        return Refusal("unknown_sni", f"{server_name!r} is not <node-id>.{domain}")
    endpoint = endpoints.get(node)
    if endpoint is None:
        return Refusal("unknown_node", f"{server_name!r} names node {node!r}, which is not a running node of this pool")
    return endpoint
