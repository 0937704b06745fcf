"""The operator's only door to the Kubernetes API (the I/O seam).

A thin wrapper over the official ``kubernetes`` client: it reads pools, pods and Nodes
and writes exactly what the pure modules decided. Calls are synchronous and run in a
worker thread (``asyncio.to_thread``) from the kopf handlers. Children other than pods
are written with server-side apply under one field manager, so a pass is idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from pqmpc_operator.builders import pool_selector
from pqmpc_operator.model import API_GROUP, API_VERSION

__all__ = ["FIELD_MANAGER", "ClusterApi", "KubeApi", "load_api_client"]

FIELD_MANAGER = "pqmpc-operator"
_APPLY = "application/apply-patch+yaml"
_MERGE = "application/merge-patch+json"
T = TypeVar("T")


def load_api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (``KUBECONFIG``)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


class ClusterApi(Protocol):
    """The Kubernetes API as the operator uses it: :class:`KubeApi` in production,
    :class:`pqmpc_operator.testing.FakeKubeApi` (in memory) in tests."""

    async def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def list_pool_pods(self, namespace: str, pool: str, uid: str) -> list[dict[str, Any]]: ...
    async def review_token(self, token: str, audiences: list[str]) -> dict[str, Any]: ...
    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def list_nodes(self) -> list[dict[str, Any]]: ...
    async def create_pod(self, pod: Mapping[str, Any]) -> str | None: ...
    async def delete_pod(self, namespace: str, name: str) -> None: ...
    async def apply(self, obj: Mapping[str, Any]) -> None: ...
    async def delete_owned(self, kind: str, namespace: str, name: str, owner_uid: str) -> bool: ...
    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str] | None: ...
    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def create_object(self, obj: Mapping[str, Any]) -> bool: ...
    async def read_configmap_data(self, namespace: str, name: str) -> dict[str, str] | None: ...
    async def patch_pool_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None: ...
    async def get_session(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def list_sessions(self, namespace: str) -> list[dict[str, Any]]: ...
    async def list_all_sessions(self) -> list[dict[str, Any]]: ...
    async def patch_session_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...
    async def delete_session(self, namespace: str, name: str) -> None: ...
    async def patch_pool_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...


class KubeApi:
    """Reads and writes for NodePools and their children."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._policy = client.PolicyV1Api(api_client)
        self._net = client.NetworkingV1Api(api_client)
        self._authn = client.AuthenticationV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._rbac = client.RbacAuthorizationV1Api(api_client)
        self._client = api_client

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _read(self, fn: Any, *args: Any) -> Any | None:
        """``fn(*args)`` in a worker thread, or None when the object does not exist (404)."""
        try:
            return await self._run(fn, *args)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _plain(self, obj: Any) -> Any:
        return self._client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]

    async def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The NodePool as stored, or None when it is gone."""
        body = await self._read(self._custom.get_namespaced_custom_object, API_GROUP, API_VERSION, namespace, "nodepools", name)
        return None if body is None else dict(body)

    async def list_pool_pods(self, namespace: str, pool: str, uid: str) -> list[dict[str, Any]]:
        """Node pods of the pool that this pool owns (a foreign pod with our labels is ignored)."""
        selector = ",".join(f"{k}={v}" for k, v in pool_selector(pool).items())
        result = await self._run(self._core.list_namespaced_pod, namespace, label_selector=selector)
        pods = [self._plain(p) for p in result.items]
        return [
            p for p in pods if any(ref.get("uid") == uid for ref in (p["metadata"].get("ownerReferences") or []))
        ]

    async def review_token(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """TokenReview: the API server's ``status`` for ``token`` presented for ``audiences``."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": audiences}}
        result = await self._run(self._authn.create_token_review, body)
        return dict(self._plain(result).get("status") or {})

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One pod as stored, or None when it does not exist."""
        pod = await self._read(self._core.read_namespaced_pod, name, namespace)
        return None if pod is None else dict(self._plain(pod))

    async def list_nodes(self) -> list[dict[str, Any]]:
        """All Nodes (to tell whether a group can be scheduled at all)."""
        result = await self._run(self._core.list_node)
        return [self._plain(n) for n in result.items]

    async def create_pod(self, pod: Mapping[str, Any]) -> str | None:
        """Create a pod and return its uid; one that already exists is left alone (another pass made it): None."""
        try:
            created = await self._run(self._core.create_namespaced_pod, pod["metadata"]["namespace"], pod,
                                      field_manager=FIELD_MANAGER)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return None
        uid = getattr(getattr(created, "metadata", None), "uid", None)
        return str(uid) if uid else None

    async def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod with its grace period; one already gone is fine."""
        try:
            await self._run(self._core.delete_namespaced_pod, name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def apply(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply one child object (ServiceAccount, ConfigMap, Secret, Service, PDB, NetworkPolicy,
        and a gateway's Deployment, Role and RoleBinding)."""
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        method = {
            "ServiceAccount": self._core.patch_namespaced_service_account,
            "ConfigMap": self._core.patch_namespaced_config_map,
            "Secret": self._core.patch_namespaced_secret,
            "Service": self._core.patch_namespaced_service,
            "PodDisruptionBudget": self._policy.patch_namespaced_pod_disruption_budget,
            "NetworkPolicy": self._net.patch_namespaced_network_policy,
            "Deployment": self._apps.patch_namespaced_deployment,
            "Role": self._rbac.patch_namespaced_role,
            "RoleBinding": self._rbac.patch_namespaced_role_binding,
        }.get(kind)
        if method is None:
            raise ValueError(f"cannot apply a {kind}: no writer for that kind")
        await self._run(method, name, ns, obj, field_manager=FIELD_MANAGER, force=True, _content_type=_APPLY)

    async def delete_owned(self, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
        """Delete a child (a pool's gateway object) by name, only while ``owner_uid`` owns it.

        Read first: an object of that name that the pool does not own (made by someone
        else) is left alone; the delete carries the read object's uid as a precondition, so
        a replacement made in between is not deleted either. True when it deleted.
        """
        doors = {
            "Deployment": (self._apps.read_namespaced_deployment, self._apps.delete_namespaced_deployment),
            "Service": (self._core.read_namespaced_service, self._core.delete_namespaced_service),
            "ServiceAccount": (self._core.read_namespaced_service_account,
                               self._core.delete_namespaced_service_account),
            "Role": (self._rbac.read_namespaced_role, self._rbac.delete_namespaced_role),
            "RoleBinding": (self._rbac.read_namespaced_role_binding, self._rbac.delete_namespaced_role_binding),
        }.get(kind)
        if doors is None:
            raise ValueError(f"cannot delete a {kind}: no door for that kind")
        found = await self._read(doors[0], name, namespace)
        if found is None:
            return False
        meta = self._plain(found).get("metadata") or {}
        if not any(ref.get("uid") == owner_uid for ref in meta.get("ownerReferences") or []):
            return False
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=meta.get("uid")),
                                         propagation_policy="Background")
        try:
            await self._run(doors[1], name, namespace, body=options)
        except ApiException as exc:
            if exc.status in (404, 409):  # gone already, or replaced by another object
                return False
            raise
        return True

    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's base64 ``data`` by name (the operator never lists Secrets), or None."""
        secret = await self._read(self._core.read_namespaced_secret, name, namespace)
        return None if secret is None else dict(secret.data or {})

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret by name as stored (metadata with its owner references, base64 ``data``), or None."""
        secret = await self._read(self._core.read_namespaced_secret, name, namespace)
        return None if secret is None else dict(self._plain(secret))

    async def create_object(self, obj: Mapping[str, Any]) -> bool:
        """Create a Secret or ConfigMap; False when it already exists (someone was first)."""
        ns = obj["metadata"]["namespace"]
        method = {"Secret": self._core.create_namespaced_secret, "ConfigMap": self._core.create_namespaced_config_map}[obj["kind"]]
        try:
            await self._run(method, ns, obj, field_manager=FIELD_MANAGER)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def read_configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's ``data``, or None when it does not exist."""
        cm = await self._read(self._core.read_namespaced_config_map, name, namespace)
        return None if cm is None else dict(cm.data or {})

    async def patch_pool_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        """Merge-patch a pool's annotations (None removes one)."""
        await self._run(
            self._custom.patch_namespaced_custom_object, API_GROUP, API_VERSION, namespace, "nodepools", name,
            {"metadata": {"annotations": dict(annotations)}}, _content_type=_MERGE,
        )

    async def get_session(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The MPCSession as stored, or None when it is gone."""
        body = await self._read(self._custom.get_namespaced_custom_object, API_GROUP, API_VERSION, namespace, "mpcsessions", name)
        return None if body is None else dict(body)

    async def list_sessions(self, namespace: str) -> list[dict[str, Any]]:
        """Every MPCSession of a namespace (to count each node's running sessions)."""
        result = await self._run(self._custom.list_namespaced_custom_object, API_GROUP, API_VERSION, namespace, "mpcsessions")
        return [dict(item) for item in result.get("items", [])]

    async def list_all_sessions(self) -> list[dict[str, Any]]:
        """Every MPCSession of the cluster (an operator that restarted rebuilds its memory from them)."""
        result = await self._run(self._custom.list_cluster_custom_object, API_GROUP, API_VERSION, "mpcsessions")
        return [dict(item) for item in result.get("items", [])]

    async def patch_session_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch an MPCSession's status subresource."""
        await self._run(
            self._custom.patch_namespaced_custom_object_status, API_GROUP, API_VERSION, namespace, "mpcsessions", name,
            {"status": dict(status)}, _content_type=_MERGE,
        )

    async def delete_session(self, namespace: str, name: str) -> None:
        """Delete a finished MPCSession (ttlSecondsAfterFinished)."""
        try:
            await self._run(self._custom.delete_namespaced_custom_object, API_GROUP, API_VERSION, namespace, "mpcsessions", name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def patch_pool_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Replace the pool's status fields we own through the status subresource."""
        await self._run(
            self._custom.patch_namespaced_custom_object_status,
            API_GROUP,
            API_VERSION,
            namespace,
            "nodepools",
            name,
            {"status": dict(status)},
            _content_type=_MERGE,
        )
