"""Operator settings: defaults the CRs may leave out, read once at start-up.

Contract: a frozen value built by :func:`settings_from_env`; nothing else reads the
environment, so every other module takes the settings as an explicit argument.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from pqmpc_node.dealer.size import PREPROCESSING_LIMIT

__all__ = ["OperatorSettings", "settings_from_env"]


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator needs to build children that the CRs do not spell out."""

    default_image: str = "ghcr.io/pqmpc/pqmpc:0.1.0"
    node_command: tuple[str, ...] = ("python", "-m", "pqmpc_node")
    api_port: int = 8443
    peer_port: int = 9443
    operator_selector: Mapping[str, str] | None = None
    resync_seconds: float = 30.0
    liveness_port: int = 8080
    metrics_port: int = 9090
    node_metrics_port: int = 9100
    """Nodes' plain-HTTP port for /metrics and probes (their API port is PQ-TLS only)."""
    bootstrap_port: int = 8444
    """Where the operator serves node bootstrap (CSR + attestation token) over PQ-TLS."""
    bootstrap_host: str = "0.0.0.0"
    bootstrap_url: str = "https://pqmpc-operator-bootstrap.pqmpc-system.svc:8444"
    """How node pods reach that port (the chart's Service); set into every node pod."""
    gateway_command: tuple[str, ...] = ("python", "-m", "pqmpc_node.gateway")
    """The command of a pool's gateway pods (``spec.externalAccess``; same image as the nodes)."""
    gateway_service_type: str = "LoadBalancer"
    """The gateway Service's type when a pool does not choose one (the chart's ``gateway.serviceType``)."""
    preprocessing_limit: int = PREPROCESSING_LIMIT
    """The largest dealt body (bytes) the operator deals: a session whose projected body is
    larger fails before dealing (``PreprocessingTooLarge``). The nodes' own limit; a test sets it lower."""

    def operator_pod_labels(self) -> dict[str, str]:
        """Labels of the operator's own pods, which the NetworkPolicy lets in."""
        return dict(self.operator_selector or {"app.kubernetes.io/name": "pqmpc-operator"})


def _int_env(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} is not an integer; unset it or give a port number") from None
    if not 0 < value < 65536:
        raise ValueError(f"{key}={value} is not a TCP port; use 1..65535")
    return value


def settings_from_env(env: Mapping[str, str] | None = None) -> OperatorSettings:
    """Build settings from ``PQMPC_*`` environment variables (the chart sets them)."""
    env = os.environ if env is None else env
    command = env.get("PQMPC_NODE_COMMAND")
    gateway_command = env.get("PQMPC_GATEWAY_COMMAND")
    service_type = env.get("PQMPC_GATEWAY_SERVICE_TYPE") or OperatorSettings.gateway_service_type
    if service_type not in ("LoadBalancer", "NodePort", "ClusterIP"):
        raise ValueError(f"PQMPC_GATEWAY_SERVICE_TYPE={service_type!r} is not LoadBalancer, NodePort or ClusterIP")
    resync = env.get("PQMPC_RESYNC_SECONDS", "30")
    try:
        resync_s = float(resync)
    except ValueError:
        raise ValueError(f"PQMPC_RESYNC_SECONDS={resync!r} is not a number of seconds") from None
    limit = env.get("PQMPC_PREPROCESSING_LIMIT_BYTES") or str(PREPROCESSING_LIMIT)
    if not limit.isdigit() or not 0 < int(limit) <= PREPROCESSING_LIMIT:
        raise ValueError(f"PQMPC_PREPROCESSING_LIMIT_BYTES={limit!r} is not a byte count in 1..{PREPROCESSING_LIMIT} "
                         "(a node takes no larger body)")
    return OperatorSettings(
        default_image=env.get("PQMPC_NODE_IMAGE", OperatorSettings.default_image),
        node_command=tuple(command.split()) if command else OperatorSettings.node_command,
        api_port=_int_env(env, "PQMPC_NODE_API_PORT", OperatorSettings.api_port),
        peer_port=_int_env(env, "PQMPC_NODE_PEER_PORT", OperatorSettings.peer_port),
        resync_seconds=resync_s,
        liveness_port=_int_env(env, "PQMPC_LIVENESS_PORT", OperatorSettings.liveness_port),
        metrics_port=_int_env(env, "PQMPC_METRICS_PORT", OperatorSettings.metrics_port),
        node_metrics_port=_int_env(env, "PQMPC_NODE_METRICS_PORT", OperatorSettings.node_metrics_port),
        bootstrap_port=_int_env(env, "PQMPC_BOOTSTRAP_PORT", OperatorSettings.bootstrap_port),
        bootstrap_host=env.get("PQMPC_BOOTSTRAP_HOST") or OperatorSettings.bootstrap_host,
        bootstrap_url=_https_url(env.get("PQMPC_BOOTSTRAP_URL") or OperatorSettings.bootstrap_url),
        gateway_command=tuple(gateway_command.split()) if gateway_command else OperatorSettings.gateway_command,
        gateway_service_type=service_type,
        preprocessing_limit=int(limit),
    )


def _https_url(raw: str) -> str:
    url = raw.strip().rstrip("/")
    if not url.startswith("https://"):
        raise ValueError(f"PQMPC_BOOTSTRAP_URL={raw!r} must be https://<operator service>:<port>: nodes send their "
                         "attestation token only over post-quantum TLS")
    return url
