"""Node configuration, read once from the environment the operator's pod template sets.

Contract: :func:`config_from_env` is the only reader of the environment; everything
else takes a :class:`NodeConfig`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ConfigError", "NodeConfig", "config_from_env"]


class ConfigError(ValueError):
    """A missing or malformed setting; the message names the variable and the fix."""


@dataclass(frozen=True)
class NodeConfig:
    """Identity, placement and listening addresses of one node."""

    pool: str
    node_id: str
    namespace: str
    group: str
    region: str
    zone: str
    trust_domain: str
    backend: str
    suite: str
    listen_host: str
    api_port: int
    peer_port: int
    dns_name: str
    state_dir: str


def _port(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a port number; set 1..65535") from None
    if not 0 < value < 65536:
        raise ConfigError(f"{key}={value} is out of range; set 1..65535")
    return value


def config_from_env(env: Mapping[str, str] | None = None) -> NodeConfig:
    """Build the node's configuration from ``PQMPC_*`` variables."""
    env = os.environ if env is None else env
    missing = [k for k in ("PQMPC_POOL", "PQMPC_NODE_ID") if not env.get(k)]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set; the operator's pod template sets them, set them by hand outside Kubernetes")
    backend = env.get("PQMPC_BACKEND", "auto")
    if backend not in {"auto", "numpy", "cupy"}:
        raise ConfigError(f"PQMPC_BACKEND={backend!r} is unknown; use auto, numpy or cupy")
    return NodeConfig(
        pool=env["PQMPC_POOL"],
        node_id=env["PQMPC_NODE_ID"],
        namespace=env.get("PQMPC_NAMESPACE", "default"),
        group=env.get("PQMPC_GROUP", ""),
        region=env.get("PQMPC_REGION", ""),
        zone=env.get("PQMPC_ZONE", ""),
        trust_domain=env.get("PQMPC_TRUST_DOMAIN", ""),
        backend=backend,
        suite=env.get("PQMPC_SUITE", "pq-default"),
        listen_host=env.get("PQMPC_POD_IP") or "0.0.0.0",
        api_port=_port(env, "PQMPC_API_PORT", 8443),
        peer_port=_port(env, "PQMPC_PEER_PORT", 9443),
        dns_name=env.get("PQMPC_DNS_NAME", ""),
        state_dir=env.get("PQMPC_STATE_DIR", "/var/lib/pqmpc"),
    )
