"""``python -m pqmpc_node.gateway``: the SNI-routing TLS-passthrough gateway of one NodePool.

::

    python -m pqmpc_node.gateway --namespace NS --pool POOL --domain DOMAIN \\
        [--listen 0.0.0.0:8443] [--api-port 8443] [--kubeconfig FILE]

Every option also reads ``PQMPC_GATEWAY_<OPTION>`` (the operator's Deployment sets them).
Connections for ``<node-id>.<DOMAIN>`` go to that node pod's API port; see
:mod:`pqmpc_node.gateway`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from pqmpc_node.gateway.podwatch import PodTable, load_api_client
from pqmpc_node.gateway.proxy import GatewayTimeouts, SniGateway
from pqmpc_node.gateway.routing import Endpoint, Refusal, route

__all__ = ["main", "parse_args"]


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"PQMPC_GATEWAY_{name}") or default


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The gateway's options (command line, else ``PQMPC_GATEWAY_*``)."""
    p = argparse.ArgumentParser(prog="python -m pqmpc_node.gateway", description=__doc__.split("\n")[0])
    p.add_argument("--namespace", default=_env("NAMESPACE"), required=_env("NAMESPACE") is None)
    p.add_argument("--pool", default=_env("POOL"), required=_env("POOL") is None)
    p.add_argument("--domain", default=_env("DOMAIN"), required=_env("DOMAIN") is None)
    p.add_argument("--listen", type=_host_port, default=_env("LISTEN", "0.0.0.0:8443"))  # argparse converts it
    p.add_argument("--api-port", type=int, default=int(_env("API_PORT", "8443") or "8443"))
    p.add_argument("--kubeconfig", type=Path, default=None)
    p.add_argument("--hello-timeout", type=float, default=float(_env("HELLO_TIMEOUT", "10") or "10"))
    p.add_argument("--idle-timeout", type=float, default=float(_env("IDLE_TIMEOUT", "600") or "600"))
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    table = PodTable(load_api_client(args.kubeconfig), namespace=args.namespace, pool=args.pool,
                     api_port=args.api_port)
    table.start()

    def resolve(name: str) -> Endpoint | Refusal:
        return route(name, domain=args.domain, endpoints=table.endpoints())

    gateway = SniGateway(resolve, timeouts=GatewayTimeouts(hello_s=args.hello_timeout, idle_s=args.idle_timeout))
    host, port = args.listen
    await gateway.start(host, port)
    logging.getLogger(__name__).info("gateway for pool %s/%s (*.%s) listening on %s:%d", args.namespace, args.pool,
                                     args.domain, host, gateway.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    table.stop()
    await gateway.close()


def main(argv: list[str] | None = None) -> None:
    """Run the gateway until SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(parse_args(argv)))


if __name__ == "__main__":
    main()
