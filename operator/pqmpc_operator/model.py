"""Typed, validated views of the NodePool custom resource.

Contract: purely data-manipulative. Raw Kubernetes bodies (``Mapping`` parsed from
JSON) go in, frozen dataclasses come out; no I/O, no clock. The API server has already
enforced the CRD schema, so the checks here are the ones a schema cannot express and
the defensive ones that keep a hand-edited or older object from crashing the operator:
every failure is a :class:`SpecError` whose message names the field and says what to do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NewType

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "Backend",
    "ExternalAccess",
    "GroupSpec",
    "NodePoolSpec",
    "PoolName",
    "RotationPolicy",
    "SpecError",
    "SuiteName",
    "distribute_replicas",
    "parse_duration",
    "parse_nodepool",
]

API_GROUP = "pqmpc.io"
API_VERSION = "v1alpha1"

PoolName = NewType("PoolName", str)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DNS_NAME_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A node's external name is <pod name>.<domain> (at most 63 + 1 + domain), within the 253 a DNS name allows.
_MAX_EXTERNAL_DOMAIN = 253 - 64
SERVICE_TYPES = ("LoadBalancer", "NodePort", "ClusterIP")
# Pod names are <pool>-<group>-<ordinal>; keep them inside the 63-char label limit
# that the pod's own hostname and the headless Service's DNS records need.
_MAX_POD_NAME = 63


class SpecError(ValueError):
    """A NodePool spec the operator cannot act on; the message names the field."""

    def __init__(self, field_path: str, problem: str, fix: str) -> None:
        self.field_path = field_path
        super().__init__(f"spec.{field_path}: {problem}; {fix}")


class Backend(str, Enum):
    """Array backend the MPC engine should use inside the node pods."""

    AUTO = "auto"
    NUMPY = "numpy"
    CUPY = "cupy"


class SuiteName(str, Enum):
    """Names of the algorithm suites (the registry itself lives in pqmpc_node.crypto)."""

    PQ_DEFAULT = "pq-default"
    PQ_HIGH = "pq-high"


@dataclass(frozen=True)
class RotationPolicy:
    """KEM key rotation schedule, cert-manager style; all in seconds."""

    duration_s: float = 24 * 3600.0
    renew_before_s: float = 8 * 3600.0
    grace_period_s: float = 3600.0


@dataclass(frozen=True)
class GroupSpec:
    """One topology group: identical node pods in one region, zone and trust domain."""

    name: str
    replicas: int
    region: str
    zone: str
    trust_domain: str
    gpus: int = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    resources: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExternalAccess:
    """How clients outside the cluster reach the node APIs (``spec.externalAccess``; None: they do not).

    ``mode: gateway``: one SNI-routing TLS-passthrough gateway per pool
    (:mod:`pqmpc_node.gateway`) behind a Service of ``service_type``; node ``n`` is
    reached as ``n.<domain>`` on ``port``, a name its certificate carries as a DNS SAN.
    """

    mode: str
    domain: str
    service_type: str | None
    """None: the operator's default (the chart's ``gateway.serviceType``)."""
    port: int = 443
    node_port: int | None = None
    replicas: int = 1
    service_annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodePoolSpec:
    """The parts of a NodePool that decide its children."""

    name: PoolName
    namespace: str
    uid: str
    generation: int
    image: str | None
    backend: Backend
    groups: tuple[GroupSpec, ...]
    total_replicas: int | None
    suite: SuiteName
    rotation: RotationPolicy
    quarantine_score: float
    auto_replace: bool
    client_cidrs: tuple[str, ...]
    external_access: ExternalAccess | None = None

    def effective_replicas(self) -> dict[str, int]:
        """Pods wanted per group, honouring a total set through the scale subresource."""
        return distribute_replicas(self.total_replicas, self.groups)


def parse_duration(text: str, field_path: str) -> float:
    """Parse a Go-style duration (``1h30m``, ``45s``, ``500ms``) into seconds."""
    if not isinstance(text, str) or not text:
        raise SpecError(field_path, f"{text!r} is not a duration", "write it like 24h, 90m or 3600s")
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise SpecError(field_path, f"{text!r} is not a duration", "write it like 24h, 90m or 3600s")
    return total


def distribute_replicas(total: int | None, groups: Sequence[GroupSpec]) -> dict[str, int]:
    """Spread a pool-wide replica total over the groups.

    With no total, each group keeps its own ``replicas``. With one (``kubectl scale``),
    growth goes to the groups with the fewest pods first and shrinking takes from the
    groups with the most, the later group first on ties, so that trust domains stay as
    balanced as the total allows.
    """
    counts = {g.name: g.replicas for g in groups}
    if total is None or not groups:
        return counts
    order = [g.name for g in groups]
    current = sum(counts.values())
    while current < total:
        name = min(order, key=lambda n: (counts[n], order.index(n)))
        counts[name] += 1
        current += 1
    while current > total:
        name = max(order, key=lambda n: (counts[n], order.index(n)))
        counts[name] -= 1
        current -= 1
    return counts


def _str(spec: Mapping[str, Any], key: str, path: str, *, required: bool = True) -> str:
    value = spec.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise SpecError(path, "is missing or not a string", "set it to a non-empty string")
    return value


def _int(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(path, f"{value!r} is not an integer in [{low}, {high}]", f"use a value from {low} to {high}")
    return value


def _parse_group(raw: Any, index: int, pool: str) -> GroupSpec:
    path = f"groups[{index}]"
    if not isinstance(raw, Mapping):
        raise SpecError(path, "is not an object", "give name, replicas, region, zone and trustDomain")
    name = _str(raw, "name", f"{path}.name")
    if not _DNS_LABEL.match(name):
        raise SpecError(f"{path}.name", f"{name!r} is not a DNS label", "use lower-case letters, digits and '-'")
    replicas = _int(raw.get("replicas", 1), f"{path}.replicas", 0, 100)
    longest = f"{pool}-{name}-{max(replicas - 1, 99)}"
    if len(longest) > _MAX_POD_NAME:
        raise SpecError(
            f"{path}.name",
            f"pod names such as {longest!r} would exceed {_MAX_POD_NAME} characters",
            "shorten the pool or group name",
        )
    selector = raw.get("nodeSelector") or {}
    if not isinstance(selector, Mapping) or not all(isinstance(v, str) for v in selector.values()):
        raise SpecError(f"{path}.nodeSelector", "is not a map of strings", "use key: value string pairs")
    tolerations = raw.get("tolerations") or []
    if not isinstance(tolerations, list) or not all(isinstance(t, Mapping) for t in tolerations):
        raise SpecError(f"{path}.tolerations", "is not a list of tolerations", "see the Pod tolerations field")
    resources = raw.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise SpecError(f"{path}.resources", "is not an object", "give requests/limits as for a container")
    return GroupSpec(
        name=name,
        replicas=replicas,
        region=_str(raw, "region", f"{path}.region"),
        zone=_str(raw, "zone", f"{path}.zone"),
        trust_domain=_str(raw, "trustDomain", f"{path}.trustDomain"),
        gpus=_int(raw.get("gpus", 0), f"{path}.gpus", 0, 8),
        node_selector=dict(selector),
        tolerations=tuple(dict(t) for t in tolerations),
        resources=dict(resources),
    )


def _parse_external_access(raw: Any) -> ExternalAccess | None:
    path = "externalAccess"
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError(path, "is not an object", "give mode: gateway and domain, or leave it out")
    mode = raw.get("mode", "gateway")
    if mode != "gateway":
        raise SpecError(f"{path}.mode", f"{mode!r} is unknown", "use gateway (the only mode so far)")
    domain = raw.get("domain")
    if not isinstance(domain, str) or not domain:
        raise SpecError(f"{path}.domain", "is missing", "set the DNS domain whose names <node-id>.<domain> point at "
                                                        "the gateway, e.g. banks.mpc.example.com")
    domain = domain.rstrip(".")
    if domain != domain.lower() or len(domain) > _MAX_EXTERNAL_DOMAIN or not all(
            _DNS_NAME_LABEL.match(label) for label in domain.split(".")):
        raise SpecError(f"{path}.domain", f"{domain!r} is not a lower-case DNS name of at most "
                        f"{_MAX_EXTERNAL_DOMAIN} characters", "write it like banks.mpc.example.com (no wildcard, "
                        "no trailing dot, no upper case)")
    service = raw.get("service") or {}
    if not isinstance(service, Mapping):
        raise SpecError(f"{path}.service", "is not an object", "give type, port, nodePort and annotations")
    service_type = service.get("type")
    if service_type is not None and service_type not in SERVICE_TYPES:
        raise SpecError(f"{path}.service.type", f"{service_type!r} is unknown", "use LoadBalancer, NodePort or "
                                                                                  "ClusterIP")
    node_port = service.get("nodePort")
    if node_port is not None:
        node_port = _int(node_port, f"{path}.service.nodePort", 1, 65535)
        if service_type == "ClusterIP":
            raise SpecError(f"{path}.service.nodePort", "is set on a ClusterIP Service", "use type NodePort or "
                                                                                           "LoadBalancer, or drop it")
    annotations = service.get("annotations") or {}
    if not isinstance(annotations, Mapping) or not all(isinstance(v, str) for v in annotations.values()):
        raise SpecError(f"{path}.service.annotations", "is not a map of strings", "use key: value string pairs")
    return ExternalAccess(
        mode=mode, domain=domain, service_type=service_type,
        port=_int(service.get("port", 443), f"{path}.service.port", 1, 65535), node_port=node_port,
        replicas=_int(raw.get("replicas", 1), f"{path}.replicas", 1, 10),
        service_annotations=dict(annotations),
    )


def parse_nodepool(body: Mapping[str, Any]) -> NodePoolSpec:
    """Turn a raw NodePool body into a :class:`NodePoolSpec`, or raise :class:`SpecError`."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    name = str(meta.get("name", ""))
    raw_groups = spec.get("groups")
    if not isinstance(raw_groups, list) or not raw_groups:
        raise SpecError("groups", "is empty", "declare at least one topology group")
    groups = tuple(_parse_group(g, i, name) for i, g in enumerate(raw_groups))
    seen: set[str] = set()
    for i, g in enumerate(groups):
        if g.name in seen:
            raise SpecError(f"groups[{i}].name", f"{g.name!r} is used twice", "give every group a unique name")
        seen.add(g.name)
    total = spec.get("replicas")
    total_replicas = None if total is None else _int(total, "replicas", 0, 100 * len(groups))
    engine = spec.get("engine") or {}
    try:
        backend = Backend(engine.get("backend", "auto"))
    except ValueError:
        raise SpecError("engine.backend", f"{engine.get('backend')!r} is unknown", "use auto, numpy or cupy") from None
    if backend is Backend.CUPY and all(g.gpus == 0 for g in groups):
        raise SpecError("engine.backend", "cupy needs GPUs but no group requests any", "set gpus > 0 or use auto")
    keys = spec.get("keys") or {}
    try:
        suite = SuiteName(keys.get("suite", "pq-default"))
    except ValueError:
        raise SpecError("keys.suite", f"{keys.get('suite')!r} is unknown", "use pq-default or pq-high") from None
    rot = keys.get("rotation") or {}
    rotation = RotationPolicy(
        duration_s=parse_duration(rot.get("duration", "24h"), "keys.rotation.duration"),
        renew_before_s=parse_duration(rot.get("renewBefore", "8h"), "keys.rotation.renewBefore"),
        grace_period_s=parse_duration(rot.get("gracePeriod", "1h"), "keys.rotation.gracePeriod"),
    )
    if rotation.renew_before_s >= rotation.duration_s:
        raise SpecError("keys.rotation.renewBefore", "must be shorter than duration", "lower renewBefore")
    anomaly = spec.get("anomaly") or {}
    score = anomaly.get("quarantineScore", 0.9)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= float(score) <= 1.0:
        raise SpecError("anomaly.quarantineScore", f"{score!r} is not in [0, 1]", "use a number from 0 to 1")
    cidrs = spec.get("clientCIDRs") or []
    if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
        raise SpecError("clientCIDRs", "is not a list of CIDR strings", "write entries like 10.0.0.0/8")
    image = spec.get("image")
    return NodePoolSpec(
        name=PoolName(name),
        namespace=str(meta.get("namespace", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation", 0)),
        image=image if isinstance(image, str) and image else None,
        backend=backend,
        groups=groups,
        total_replicas=total_replicas,
        suite=suite,
        rotation=rotation,
        quarantine_score=float(score),
        auto_replace=bool(anomaly.get("autoReplace", False)),
        client_cidrs=tuple(cidrs),
        external_access=_parse_external_access(spec.get("externalAccess")),
    )
