"""Node configuration, read once from the environment the operator's pod template sets.

Contract: :func:`config_from_env` is the only reader of the environment and
:func:`load_trust` the only reader of the trust files; everything else takes a
:class:`NodeConfig` and a :class:`Trust`.

Trust anchors (docs/node.md): the pool CA certificate and the operator's plan-signing
public key come from ``PQMPC_CA_PEM`` / ``PQMPC_PLAN_SIGNER_PUB`` when set (the file
contents), else from ``$PQMPC_TRUST_DIR/ca.pem`` and ``$PQMPC_TRUST_DIR/plan-signer.pub``
(default ``/etc/pqmpc/trust``, the trust-bundle ConfigMap); their formats are
:mod:`pqmpc_node.crypto.trust_anchors`, which the ``pqmpc`` CLI parses them with too.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from pqmpc_node.crypto.kemkeys import KeyRotationPolicy
from pqmpc_node.crypto.suites import MLDSAPublicKey, get_suite
from pqmpc_node.crypto.trust_anchors import TrustAnchorError, parse_ca_certificate, parse_plan_signer

__all__ = ["ConfigError", "NodeConfig", "Trust", "config_from_env", "load_trust", "parse_duration"]


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
    metrics_port: int = 9100
    bootstrap_url: str = ""
    bootstrap_token_path: str = "/var/run/secrets/pqmpc.io/bootstrap/token"
    trust_dir: str = "/etc/pqmpc/trust"
    ca_pem: str = field(default="", repr=False)
    plan_signer_pub: str = field(default="", repr=False)
    kem_rotation: KeyRotationPolicy = KeyRotationPolicy(
        dt.timedelta(hours=24), dt.timedelta(hours=8), dt.timedelta(hours=1))
    rotation_check_s: float = 5.0
    mesh_timeout_s: float = 30.0
    round_timeout_s: float = 120.0
    max_input_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class Trust:
    """The node's trust anchors: pool CA certificate and the operator's plan-signing key."""

    ca_certificate: x509.Certificate
    plan_signer: MLDSAPublicKey


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(key: str, raw: str) -> dt.timedelta:
    """``"24h"``, ``"90m"``, ``"1h30m"``, ``"2.5s"`` or plain seconds."""
    try:
        return dt.timedelta(seconds=float(raw))
    except ValueError:
        pass
    m = _DURATION.match(raw.strip())
    if not raw.strip() or m is None:
        raise ConfigError(f"{key}={raw!r} is not a duration; use e.g. 24h, 30m, 90s or seconds")
    h, mi, sec = m.groups()
    return dt.timedelta(hours=int(h or 0), minutes=int(mi or 0), seconds=float(sec or 0))


def _seconds(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if not raw:
        return default
    value = parse_duration(key, raw).total_seconds()
    if value <= 0:
        raise ConfigError(f"{key}={raw!r} must be positive")
    return value


def _port(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a port number; set 1..65535") from None
    if not 0 < value < 65536:
        raise ConfigError(f"{key}={value} is out of range; set 1..65535")
    return value


def _bootstrap_url(env: Mapping[str, str]) -> str:
    raw = env.get("PQMPC_BOOTSTRAP_URL", "").strip().rstrip("/")
    if not raw:
        raise ConfigError("PQMPC_BOOTSTRAP_URL not set: the node pushes its CSR to the operator there "
                          "(https://<operator service>:<bootstrap port>); the operator's pod template sets it")
    if not raw.startswith("https://"):
        raise ConfigError(f"PQMPC_BOOTSTRAP_URL={raw!r} must be an https:// URL: the CSR and the attestation "
                          "token travel only over post-quantum TLS to the operator")
    return raw


def config_from_env(env: Mapping[str, str] | None = None) -> NodeConfig:
    """Build the node's configuration from ``PQMPC_*`` variables."""
    env = os.environ if env is None else env
    missing = [k for k in ("PQMPC_POOL", "PQMPC_NODE_ID") if not env.get(k)]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set; the operator's pod template sets them, set them by hand outside Kubernetes")
    suite = env.get("PQMPC_SUITE", "pq-default")
    try:
        get_suite(suite)
    except ValueError as exc:
        raise ConfigError(f"PQMPC_SUITE: {exc}") from None
    try:
        rotation = KeyRotationPolicy(
            parse_duration("PQMPC_KEM_KEY_DURATION", env.get("PQMPC_KEM_KEY_DURATION", "24h")),
            parse_duration("PQMPC_KEM_RENEW_BEFORE", env.get("PQMPC_KEM_RENEW_BEFORE", "8h")),
            parse_duration("PQMPC_KEM_GRACE_PERIOD", env.get("PQMPC_KEM_GRACE_PERIOD", "1h")),
        )
    except ValueError as exc:
        raise ConfigError(f"KEM key rotation (PQMPC_KEM_KEY_DURATION/RENEW_BEFORE/GRACE_PERIOD): {exc}") from None
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
        suite=suite,
        listen_host=env.get("PQMPC_POD_IP") or "0.0.0.0",
        api_port=_port(env, "PQMPC_API_PORT", 8443),
        peer_port=_port(env, "PQMPC_PEER_PORT", 9443),
        dns_name=env.get("PQMPC_DNS_NAME", ""),
        metrics_port=_port(env, "PQMPC_METRICS_PORT", 9100),
        bootstrap_url=_bootstrap_url(env),
        bootstrap_token_path=env.get("PQMPC_BOOTSTRAP_TOKEN") or NodeConfig.bootstrap_token_path,
        state_dir=env.get("PQMPC_STATE_DIR", "/var/lib/pqmpc"),
        trust_dir=env.get("PQMPC_TRUST_DIR", "/etc/pqmpc/trust"),
        ca_pem=env.get("PQMPC_CA_PEM", ""),
        plan_signer_pub=env.get("PQMPC_PLAN_SIGNER_PUB", ""),
        kem_rotation=rotation,
        rotation_check_s=_seconds(env, "PQMPC_ROTATION_CHECK_INTERVAL", 5.0),
        mesh_timeout_s=_seconds(env, "PQMPC_MESH_TIMEOUT", 30.0),
        round_timeout_s=_seconds(env, "PQMPC_ROUND_TIMEOUT", 120.0),
    )


def _read(config_value: str, path: Path, what: str, env_key: str) -> bytes:
    if config_value:
        return config_value.encode()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} at {path} ({exc.strerror}); mount the trust bundle at "
                          f"PQMPC_TRUST_DIR or set {env_key}") from None


def load_trust(config: NodeConfig) -> Trust:
    """Read the CA certificate and the plan-signing public key and parse them (:mod:`pqmpc_node.crypto.trust_anchors`)."""
    trust = Path(config.trust_dir)
    try:
        ca = parse_ca_certificate(_read(config.ca_pem, trust / "ca.pem", "pool CA certificate", "PQMPC_CA_PEM"))
        signer_raw = _read(config.plan_signer_pub, trust / "plan-signer.pub", "plan-signing public key",
                           "PQMPC_PLAN_SIGNER_PUB")
        return Trust(ca, parse_plan_signer(signer_raw, get_suite(config.suite)))
    except TrustAnchorError as exc:
        raise ConfigError(str(exc)) from None
