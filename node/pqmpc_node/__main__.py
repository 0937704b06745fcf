"""``python -m pqmpc_node``: the command every node pod runs."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from pqmpc_node.config import ConfigError, NodeConfig, Trust, config_from_env, load_trust
from pqmpc_node.net.https import TlsFront
from pqmpc_node.service import NodeRuntime, build_app, build_metrics_app

__all__ = ["main"]

_UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


def _private_socket_dir(config: NodeConfig) -> Path:
    """A 0700 directory for the API's Unix socket: under the state dir when the path fits, else a temp dir."""
    preferred = Path(config.state_dir) / "run"
    if len(str(preferred / "api.sock")) <= _UNIX_PATH_MAX:
        preferred.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(preferred, 0o700)
        return preferred
    return Path(tempfile.mkdtemp(prefix="pqmpc-api-"))


async def serve(config: NodeConfig, trust: Trust) -> None:
    """Run the node until SIGTERM/SIGINT: API behind PQ-TLS, metrics and probes in plain HTTP."""
    log = logging.getLogger("pqmpc_node")
    node = NodeRuntime(config, trust)
    sock_dir = _private_socket_dir(config)
    sock = sock_dir / "api.sock"
    sock.unlink(missing_ok=True)
    api = web.AppRunner(build_app(node), access_log=None)
    metrics = web.AppRunner(build_metrics_app(node), access_log=None)
    front = TlsFront(node.api_context, str(sock), on_refusal=node.api_refused)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await api.setup()  # starts the node (peer listener, KEM rotation, bootstrap)
        await web.UnixSite(api, str(sock)).start()
        os.chmod(sock, 0o600)
        await metrics.setup()
        await web.TCPSite(metrics, config.listen_host, config.metrics_port).start()
        await front.start(config.listen_host, config.api_port)
        log.info("node %s of pool %s (%s/%s, trust domain %s): API (PQ-TLS) on %s:%d, metrics on %d, peers on %d",
                 config.node_id, config.pool, config.region, config.zone, config.trust_domain,
                 config.listen_host, config.api_port, config.metrics_port, config.peer_port)
        log.info("identity and KEM keys generated in memory; pushing the CSR to the operator at %s",
                 config.bootstrap_url)
        await stop.wait()
    finally:
        await front.close()
        await metrics.cleanup()
        await api.cleanup()
        if sock_dir.name.startswith("pqmpc-api-"):
            shutil.rmtree(sock_dir, ignore_errors=True)
        else:
            sock.unlink(missing_ok=True)


def main() -> int:
    """Read the configuration and serve until SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_env()
        trust = load_trust(config)
    except ConfigError as exc:
        print(f"pqmpc-node: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(config, trust))
    return 0


if __name__ == "__main__":
    sys.exit(main())
