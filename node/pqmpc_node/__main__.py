"""``python -m pqmpc_node``: the command every node pod runs."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from pqmpc_node.config import ConfigError, config_from_env, load_trust
from pqmpc_node.service import NodeRuntime, build_app

__all__ = ["main"]


def main() -> int:
    """Read the configuration and serve until SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_env()
        trust = load_trust(config)
    except ConfigError as exc:
        print(f"pqmpc-node: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("pqmpc_node")
    log.info(
        "node %s of pool %s (%s/%s, trust domain %s) listening on %s:%d (peers on %d)",
        config.node_id, config.pool, config.region, config.zone, config.trust_domain,
        config.listen_host, config.api_port, config.peer_port,
    )
    node = NodeRuntime(config, trust)
    log.info("identity and KEM keys generated in memory; CSR waiting at GET /v1/csr")
    web.run_app(build_app(node), host=config.listen_host, port=config.api_port, print=None, handle_signals=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
