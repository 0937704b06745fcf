"""Builders of a pool's external-access gateway (``spec.externalAccess.mode: gateway``).

Contract: pure, like :mod:`~pqmpc_operator.builders`: the parsed pool and the settings go
in, desired objects come out. The gateway (:mod:`pqmpc_node.gateway`) is a Deployment
running the node image's ``python -m pqmpc_node.gateway`` under its own ServiceAccount,
whose Role may only read the namespace's pods; a Service of the chosen type
(LoadBalancer, NodePort or ClusterIP) exposes its one TLS port. It routes by SNI and
never terminates TLS, so it holds no secret and needs no volume.
"""

from __future__ import annotations

from typing import Any

from pqmpc_node.gateway.routing import external_name
from pqmpc_operator.builders import GATEWAY_APP, MANAGED_BY, gateway_selector, owner_reference
from pqmpc_operator.model import ExternalAccess, NodePoolSpec
from pqmpc_operator.settings import OperatorSettings

__all__ = [
    "GATEWAY_APP",
    "GATEWAY_KINDS",
    "GATEWAY_PORT",
    "build_gateway_children",
    "build_gateway_deployment",
    "build_gateway_role",
    "build_gateway_role_binding",
    "build_gateway_service",
    "build_gateway_service_account",
    "external_dns_names",
    "gateway_name",
    "gateway_selector",
]

GATEWAY_KINDS = ("ServiceAccount", "Role", "RoleBinding", "Deployment", "Service")
"""The kinds of the gateway's objects (all named :func:`gateway_name`), in apply order."""
GATEWAY_PORT = 8443
"""The gateway container's listening port (named ``tls``)."""


def gateway_name(pool: str) -> str:
    """Name of the pool's gateway Deployment, Service, ServiceAccount, Role and RoleBinding."""
    return f"{pool}-gateway"


def external_dns_names(pool: NodePoolSpec, pod: str) -> tuple[str, ...]:
    """The DNS SANs a node certificate carries besides the in-cluster name: ``<pod>.<domain>`` with a gateway."""
    if pool.external_access is None:
        return ()
    return (external_name(pod, pool.external_access.domain),)


def _meta(pool: NodePoolSpec) -> dict[str, Any]:
    return {
        "name": gateway_name(pool.name),
        "namespace": pool.namespace,
        "labels": {**gateway_selector(pool.name), "app.kubernetes.io/managed-by": MANAGED_BY,
                   "app.kubernetes.io/part-of": "pqmpc"},
        "ownerReferences": [owner_reference(pool)],
    }


def _access(pool: NodePoolSpec) -> ExternalAccess:
    if pool.external_access is None:
        raise ValueError(f"pool {pool.namespace}/{pool.name} has no spec.externalAccess: it gets no gateway")
    return pool.external_access


def build_gateway_service_account(pool: NodePoolSpec) -> dict[str, Any]:
    """The gateway's identity: its token is mounted (it reads pods), bound only to :func:`build_gateway_role`."""
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(pool)}


def build_gateway_role(pool: NodePoolSpec) -> dict[str, Any]:
    """Read the namespace's pods (to learn node pod IPs); nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(pool),
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
    }


def build_gateway_role_binding(pool: NodePoolSpec) -> dict[str, Any]:
    """Bind :func:`build_gateway_role` to the gateway's ServiceAccount."""
    name = gateway_name(pool.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(pool),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": pool.namespace}],
    }


def build_gateway_deployment(pool: NodePoolSpec, settings: OperatorSettings) -> dict[str, Any]:
    """The gateway pods: the node image, ``python -m pqmpc_node.gateway``, one TLS port, TCP probes, hardened."""
    access = _access(pool)
    labels = gateway_selector(pool.name)
    probe = {"tcpSocket": {"port": "tls"}, "periodSeconds": 10, "failureThreshold": 3}
    container = {
        "name": "gateway",
        "image": pool.image or settings.default_image,
        "command": list(settings.gateway_command),
        "env": [
            {"name": "PQMPC_GATEWAY_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "PQMPC_GATEWAY_POOL", "value": pool.name},
            {"name": "PQMPC_GATEWAY_DOMAIN", "value": access.domain},
            # The pod's own address, as the nodes listen (Services and probes reach the pod IP).
            {"name": "PQMPC_GATEWAY_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "PQMPC_GATEWAY_LISTEN", "value": f"$(PQMPC_GATEWAY_POD_IP):{GATEWAY_PORT}"},
            {"name": "PQMPC_GATEWAY_API_PORT", "value": str(settings.api_port)},
        ],
        "ports": [{"name": "tls", "containerPort": GATEWAY_PORT, "protocol": "TCP"}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "initialDelaySeconds": 5},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(pool),
        "spec": {
            "replicas": access.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, "app.kubernetes.io/part-of": "pqmpc"}},
                "spec": {
                    "serviceAccountName": gateway_name(pool.name),
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                    "containers": [container],
                },
            },
        },
    }


def build_gateway_service(pool: NodePoolSpec, settings: OperatorSettings) -> dict[str, Any]:
    """The gateway's Service: ``externalAccess.service.type`` (else the operator's default) on ``port``."""
    access = _access(pool)
    port: dict[str, Any] = {"name": "tls", "port": access.port, "targetPort": "tls", "protocol": "TCP"}
    kind = access.service_type or settings.gateway_service_type
    if access.node_port is not None and kind != "ClusterIP":
        port["nodePort"] = access.node_port
    meta = _meta(pool)
    if access.service_annotations:
        meta["annotations"] = dict(access.service_annotations)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"type": kind, "selector": gateway_selector(pool.name), "ports": [port]},
    }


def build_gateway_children(pool: NodePoolSpec, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Everything the gateway needs, in apply order (identity and rights before the pods); [] without one."""
    if pool.external_access is None:
        return []
    return [build_gateway_service_account(pool), build_gateway_role(pool), build_gateway_role_binding(pool),
            build_gateway_deployment(pool, settings), build_gateway_service(pool, settings)]
