"""Builders of a NodePool's child objects: node pods and their surroundings.

Contract: pure. Each builder takes the parsed pool (and settings) and returns the
desired object as a plain dict, ready for the API; a separate step writes it
(KubeRay's builder/writer split). Every child carries an owner reference to its pool,
so deleting the pool lets the garbage collector remove everything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pqmpc_node.crypto.pki import BOOTSTRAP_AUDIENCE
from pqmpc_operator.model import API_GROUP, API_VERSION, GroupSpec, NodePoolSpec
from pqmpc_operator.settings import OperatorSettings

__all__ = [
    "LABEL_GROUP",
    "LABEL_ORDINAL",
    "LABEL_POOL",
    "LABEL_TEMPLATE_HASH",
    "MANAGED_BY",
    "build_headless_service",
    "build_network_policy",
    "build_node_pod",
    "build_pdb",
    "build_service_account",
    "build_trust_configmap",
    "build_keylog_configmap",
    "build_pki_secret",
    "trust_configmap_name",
    "desired_pod_names",
    "gateway_selector",
    "headless_service_name",
    "node_service_account_name",
    "owner_reference",
    "pod_name",
    "pool_selector",
    "selector_string",
    "template_hash",
]

LABEL_POOL = f"{API_GROUP}/pool"
LABEL_GROUP = f"{API_GROUP}/group"
LABEL_ORDINAL = f"{API_GROUP}/ordinal"
LABEL_TEMPLATE_HASH = f"{API_GROUP}/template-hash"
LABEL_TRUST_DOMAIN = f"{API_GROUP}/trust-domain"
LABEL_REGION = "topology.kubernetes.io/region"
LABEL_ZONE = "topology.kubernetes.io/zone"
MANAGED_BY = "pqmpc-operator"
GATEWAY_APP = "pqmpc-gateway"
GPU_RESOURCE = "nvidia.com/gpu"
STATE_DIR = "/var/lib/pqmpc"
TRUST_DIR = "/etc/pqmpc/trust"
BOOTSTRAP_TOKEN_DIR = "/var/run/secrets/pqmpc.io/bootstrap"
BOOTSTRAP_TOKEN_SECONDS = 600


def trust_configmap_name(pool: str) -> str:
    """ConfigMap with the pool's public trust anchors, mounted into every node pod."""
    return f"{pool}-trust"


def pod_name(pool: str, group: str, ordinal: int) -> str:
    """Stable pod name ``<pool>-<group>-<ordinal>``."""
    return f"{pool}-{group}-{ordinal}"


def headless_service_name(pool: str) -> str:
    """Name of the headless Service that gives every node pod a DNS name."""
    return f"{pool}-nodes"


def node_service_account_name(pool: str) -> str:
    """Name of the node pods' ServiceAccount (bound to no role: nodes never call the API)."""
    return f"{pool}-node"


def node_dns_name(pool: NodePoolSpec, pod: str) -> str:
    """The stable DNS name of node pod ``pod`` (headless Service), which its certificate names."""
    return f"{pod}.{headless_service_name(pool.name)}.{pool.namespace}.svc"


def pool_selector(pool: str) -> dict[str, str]:
    """Labels that select every node pod of a pool."""
    return {"app.kubernetes.io/name": "pqmpc-node", LABEL_POOL: pool}


def gateway_selector(pool: str) -> dict[str, str]:
    """Labels of the pool's gateway pods (``spec.externalAccess``); no node selector matches them."""
    return {"app.kubernetes.io/name": GATEWAY_APP, LABEL_POOL: pool}


def selector_string(pool: str) -> str:
    """The pool selector as a label-selector string (for ``status.selector``)."""
    return ",".join(f"{k}={v}" for k, v in sorted(pool_selector(pool).items()))


def owner_reference(pool: NodePoolSpec) -> dict[str, Any]:
    """Controller owner reference to the pool, so garbage collection follows it."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "NodePool",
        "name": pool.name,
        "uid": pool.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(pool: NodePoolSpec, name: str, extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    labels = {
        **pool_selector(pool.name),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "pqmpc",
        **(extra_labels or {}),
    }
    return {
        "name": name,
        "namespace": pool.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(pool)],
    }


def desired_pod_names(pool: NodePoolSpec) -> dict[str, tuple[GroupSpec, int]]:
    """Every pod the pool should have, by name, with its group and ordinal."""
    wanted = pool.effective_replicas()
    return {
        pod_name(pool.name, g.name, i): (g, i)
        for g in pool.groups
        for i in range(wanted[g.name])
    }


def _resources(group: GroupSpec) -> dict[str, Any]:
    resources: dict[str, Any] = json.loads(json.dumps(dict(group.resources)))
    if group.gpus:
        # Extended resources are requested through limits; requests default to them.
        limits = dict(resources.get("limits") or {})
        limits[GPU_RESOURCE] = str(group.gpus)  # a quantity, which the API types as a string
        resources["limits"] = limits
    return resources


def _node_env(pool: NodePoolSpec, group: GroupSpec, name: str, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The node's ``PQMPC_*`` environment (:func:`pqmpc_node.config.config_from_env` reads it)."""
    return [
        {"name": "PQMPC_POOL", "value": pool.name},
        {"name": "PQMPC_NODE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "PQMPC_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "PQMPC_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "PQMPC_GROUP", "value": group.name},
        {"name": "PQMPC_REGION", "value": group.region},
        {"name": "PQMPC_ZONE", "value": group.zone},
        {"name": "PQMPC_TRUST_DOMAIN", "value": group.trust_domain},
        {"name": "PQMPC_BACKEND", "value": pool.backend.value},
        {"name": "PQMPC_SUITE", "value": pool.suite.value},
        {"name": "PQMPC_API_PORT", "value": str(settings.api_port)},
        {"name": "PQMPC_PEER_PORT", "value": str(settings.peer_port)},
        {"name": "PQMPC_METRICS_PORT", "value": str(settings.node_metrics_port)},
        # Workload-attested bootstrap: the node pushes its CSR with the bound token here.
        {"name": "PQMPC_BOOTSTRAP_URL", "value": settings.bootstrap_url},
        {"name": "PQMPC_BOOTSTRAP_TOKEN", "value": f"{BOOTSTRAP_TOKEN_DIR}/token"},
        {
            "name": "PQMPC_DNS_NAME",
            "value": node_dns_name(pool, name),
        },
        {"name": "PQMPC_STATE_DIR", "value": STATE_DIR},
        {"name": "PQMPC_TRUST_DIR", "value": TRUST_DIR},
        # The node rotates its own KEM key on this schedule; the operator logs each new key.
        {"name": "PQMPC_KEM_KEY_DURATION", "value": f"{int(pool.rotation.duration_s)}s"},
        {"name": "PQMPC_KEM_RENEW_BEFORE", "value": f"{int(pool.rotation.renew_before_s)}s"},
        {"name": "PQMPC_KEM_GRACE_PERIOD", "value": f"{int(pool.rotation.grace_period_s)}s"},
    ]


def _node_container(pool: NodePoolSpec, group: GroupSpec, name: str, settings: OperatorSettings) -> dict[str, Any]:
    """The one container of a node pod: image, command, ports, probes, resources, hardening, mounts."""
    # Probes use the plain-HTTP metrics port: the API port speaks PQ-TLS only.
    probe = {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 2, "failureThreshold": 3}
    liveness = {
        "httpGet": {"path": "/healthz", "port": "metrics"},
        "periodSeconds": 10,
        "failureThreshold": 3,
        "initialDelaySeconds": 5,
    }
    return {
        "name": "node",
        "image": pool.image or settings.default_image,
        "command": list(settings.node_command),
        "env": _node_env(pool, group, name, settings),
        "ports": [
            {"name": "api", "containerPort": settings.api_port, "protocol": "TCP"},
            {"name": "peer", "containerPort": settings.peer_port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": settings.node_metrics_port, "protocol": "TCP"},
        ],
        "readinessProbe": probe,
        "livenessProbe": liveness,
        "resources": _resources(group),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "state", "mountPath": STATE_DIR},
            {"name": "trust", "mountPath": TRUST_DIR, "readOnly": True},
            {"name": "bootstrap-token", "mountPath": BOOTSTRAP_TOKEN_DIR, "readOnly": True},
        ],
    }


def _node_volumes(pool: NodePoolSpec) -> list[dict[str, Any]]:
    """State, trust anchors and the bound bootstrap token of a node pod."""
    return [
        # Accepted inputs stay sealed here until the session ends (survives restarts).
        {"name": "state", "emptyDir": {}},
        # Public trust anchors: the pool CA certificate and the plan signer's key.
        {"name": "trust", "configMap": {"name": trust_configmap_name(pool.name)}},
        # A short-lived token bound to this pod and to the bootstrap audience only (the
        # kubelet rotates it); the node sends it to the operator with its CSR and to no
        # one else. The ServiceAccount has no API rights; its API token is not mounted.
        {"name": "bootstrap-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": BOOTSTRAP_AUDIENCE, "expirationSeconds": BOOTSTRAP_TOKEN_SECONDS, "path": "token"}}]}},
    ]


def _group_affinity(group: GroupSpec) -> dict[str, Any]:
    """Pin the group's pods to its region and zone (the placement the sessions rely on)."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": LABEL_REGION, "operator": "In", "values": [group.region]},
                            {"key": LABEL_ZONE, "operator": "In", "values": [group.zone]},
                        ]
                    }
                ]
            }
        }
    }


def _pod_spec(pool: NodePoolSpec, group: GroupSpec, name: str, settings: OperatorSettings) -> dict[str, Any]:
    """A node pod's spec: identity in the headless service, no API token, hardened, pinned to its zone."""
    spec: dict[str, Any] = {
        "hostname": name,
        "subdomain": headless_service_name(pool.name),
        "serviceAccountName": node_service_account_name(pool.name),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
        "affinity": _group_affinity(group),
        "containers": [_node_container(pool, group, name, settings)],
        "volumes": _node_volumes(pool),
    }
    if group.node_selector:
        spec["nodeSelector"] = dict(group.node_selector)
    if group.tolerations:
        spec["tolerations"] = [dict(t) for t in group.tolerations]
    return spec


def template_hash(pool: NodePoolSpec, group: GroupSpec, settings: OperatorSettings) -> str:
    """Digest of everything in a group's pods except their names: a change means roll out."""
    spec = _pod_spec(pool, group, "<pod>", settings)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return digest[:12]


def build_node_pod(pool: NodePoolSpec, group: GroupSpec, ordinal: int, settings: OperatorSettings) -> dict[str, Any]:
    """The desired node pod ``<pool>-<group>-<ordinal>``."""
    name = pod_name(pool.name, group.name, ordinal)
    meta = _meta(
        pool,
        name,
        {
            LABEL_GROUP: group.name,
            LABEL_ORDINAL: str(ordinal),
            LABEL_TRUST_DOMAIN: group.trust_domain,
            LABEL_REGION: group.region,
            LABEL_ZONE: group.zone,
            LABEL_TEMPLATE_HASH: template_hash(pool, group, settings),
        },
    )
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": _pod_spec(pool, group, name, settings)}


def build_headless_service(pool: NodePoolSpec, settings: OperatorSettings) -> dict[str, Any]:
    """Headless Service: stable DNS ``<pod>.<pool>-nodes.<ns>.svc`` for every node."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(pool, headless_service_name(pool.name)),
        "spec": {
            "clusterIP": "None",
            # Peers must find each other while they are still certifying keys.
            "publishNotReadyAddresses": True,
            "selector": pool_selector(pool.name),
            "ports": [
                {"name": "api", "port": settings.api_port, "targetPort": "api", "protocol": "TCP"},
                {"name": "peer", "port": settings.peer_port, "targetPort": "peer", "protocol": "TCP"},
                {"name": "metrics", "port": settings.node_metrics_port, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def build_trust_configmap(pool: NodePoolSpec, data: Mapping[str, str]) -> dict[str, Any]:
    """The trust bundle ConfigMap (CA certificate, plan signer public key): public data only."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(pool, trust_configmap_name(pool.name)), "data": dict(data)}


def build_keylog_configmap(pool: NodePoolSpec, name: str, data: Mapping[str, str]) -> dict[str, Any]:
    """The ConfigMap that stores the pool's transparency log (public by design)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(pool, name), "data": dict(data)}


def build_pki_secret(pool: NodePoolSpec, name: str, data: Mapping[str, str]) -> dict[str, Any]:
    """The Secret with the pool CA and plan-signing key seeds (read by the operator only)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": _meta(pool, name), "data": dict(data)}


def build_service_account(pool: NodePoolSpec) -> dict[str, Any]:
    """ServiceAccount for node pods; bound to no role and its token is never mounted."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(pool, node_service_account_name(pool.name)),
        "automountServiceAccountToken": False,
    }


def build_pdb(pool: NodePoolSpec) -> dict[str, Any]:
    """PodDisruptionBudget: voluntary disruptions take at most one node at a time.

    One is what any session with threshold ``t >= 1`` (Shamir) survives; additive
    sessions survive none, and the session controller fences their nodes itself.
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(pool, headless_service_name(pool.name)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": pool_selector(pool.name)}},
    }


def build_network_policy(pool: NodePoolSpec, settings: OperatorSettings) -> dict[str, Any]:
    """Node pods accept traffic only from their pool, the operator and declared clients."""
    ports = [
        {"protocol": "TCP", "port": settings.api_port},
        {"protocol": "TCP", "port": settings.peer_port},
    ]
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": pool_selector(pool.name)}}], "ports": ports},
        {
            "from": [
                {
                    "namespaceSelector": {},
                    "podSelector": {"matchLabels": settings.operator_pod_labels()},
                }
            ],
            "ports": [{"protocol": "TCP", "port": settings.api_port}],
        },
    ]
    # Metrics and probes: plain HTTP, nothing secret (Prometheus and kubelets cannot speak PQ-TLS).
    ingress.append({"from": [{"namespaceSelector": {}}],
                    "ports": [{"protocol": "TCP", "port": settings.node_metrics_port}]})
    if pool.external_access is not None:
        # The pool's SNI gateway passes client connections through to the API port (TLS ends at the node).
        ingress.append({"from": [{"podSelector": {"matchLabels": gateway_selector(pool.name)}}],
                        "ports": [{"protocol": "TCP", "port": settings.api_port}]})
    if pool.client_cidrs:
        ingress.append(
            {
                "from": [{"ipBlock": {"cidr": cidr}} for cidr in pool.client_cidrs],
                "ports": [{"protocol": "TCP", "port": settings.api_port}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(pool, headless_service_name(pool.name)),
        "spec": {
            "podSelector": {"matchLabels": pool_selector(pool.name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
