"""``python -m pqmpc_operator``: run the operator (kopf) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import kopf
from prometheus_client import start_http_server

from pqmpc_operator.certification import CertificationState, pod_directory
from pqmpc_operator.handlers import OperatorContext, register
from pqmpc_operator.kube import KubeApi, load_api_client
from pqmpc_operator.metrics import OperatorMetrics
from pqmpc_operator.nodeclient import NodeClient
from pqmpc_operator.settings import settings_from_env

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse flags, wire dependencies explicitly and hand over to kopf."""
    parser = argparse.ArgumentParser(prog="pqmpc-operator", description=__doc__)
    parser.add_argument("--namespace", action="append", default=[], help="watch only these namespaces (repeatable); default: all")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kopf logs every successful event handler at INFO: one line per pod change.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        settings = settings_from_env()
    except ValueError as exc:
        print(f"pqmpc-operator: {exc}", file=sys.stderr)
        return 2
    metrics = OperatorMetrics()
    start_http_server(settings.metrics_port, registry=metrics.registry)
    certification: dict[tuple[str, str], CertificationState] = {}
    ctx = OperatorContext(
        api=KubeApi(load_api_client()), settings=settings, metrics=metrics,
        nodes=NodeClient(settings.api_port, pod_directory(certification)), certification=certification,
        namespaces=tuple(args.namespace),
    )
    registry = kopf.OperatorRegistry()
    register(registry)
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz",
            memo=kopf.Memo(ctx=ctx),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
