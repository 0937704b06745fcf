"""The node's HTTP API (aiohttp): health, readiness and metrics for now.

Sessions, inputs, outputs and the CSR exchange arrive with the node-service issue; this
shell already answers the kubelet's probes and Prometheus' scrapes.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pqmpc_node.config import NodeConfig

__all__ = ["build_app"]


def build_app(config: NodeConfig, registry: CollectorRegistry | None = None) -> web.Application:
    """The node's aiohttp application."""
    registry = registry or CollectorRegistry()
    info = Gauge("pqmpc_node_info", "Static facts about this node (value is always 1).",
                 ["pool", "node", "group", "region", "zone", "trust_domain", "suite"], registry=registry)
    info.labels(config.pool, config.node_id, config.group, config.region, config.zone,
                config.trust_domain, config.suite).set(1)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ready", "node": config.node_id})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=1 << 20)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
