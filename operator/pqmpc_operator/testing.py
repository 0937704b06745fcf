"""In-memory fakes of the operator's two doors, for tests (the way httpx ships ``MockTransport``).

:class:`FakeKubeApi` implements :class:`~pqmpc_operator.kube.ClusterApi` over plain
dicts: objects are stored as the API server would return them, status writes are JSON
merge patches (RFC 7386, as the real ``application/merge-patch+json`` calls), pods are
listed by the pool's labels and owner uid like :class:`~pqmpc_operator.kube.KubeApi`
does. :class:`FakeNodeClient` implements :class:`~pqmpc_operator.nodeclient.NodeApi`
over :class:`FakeNode` objects keyed by pod IP: each holds the keys document a test
gives it, keeps the plans, preprocessing and cancels posted to it, and answers
``GET /v1/sessions/{id}`` with the report the test scripts. A node marked ``down``, a
call listed in ``failures``, or an address with no node raises
:class:`~pqmpc_operator.nodeclient.NodeCallError` as the real client would.

Both record every call (``calls``) so a test can assert what the operator did. Nothing
here touches a network, a thread or the clock.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pqmpc_operator.builders import pool_selector
from pqmpc_operator.nodeclient import NodeCallError

if TYPE_CHECKING:
    from pqmpc_operator.kube import ClusterApi
    from pqmpc_operator.nodeclient import NodeApi

__all__ = ["FakeKubeApi", "FakeNode", "FakeNodeClient", "merge_patch"]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, ``None`` removes a key, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _plain(obj: Any) -> Any:
    """What a JSON round trip through the API server leaves (str enums become str, tuples lists)."""
    return json.loads(json.dumps(obj))


class FakeKubeApi:
    """An in-memory Kubernetes API holding NodePools, MPCSessions, pods, Nodes, Secrets and ConfigMaps."""

    def __init__(self) -> None:
        self.pools: dict[tuple[str, str], dict[str, Any]] = {}
        self.sessions: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.nodes: list[dict[str, Any]] = []
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.secret_meta: dict[tuple[str, str], dict[str, Any]] = {}
        """A Secret's ``metadata`` (labels, owner references) by (namespace, name); ``secrets`` holds its data."""
        self.configmaps: dict[tuple[str, str], dict[str, str]] = {}
        self.applied: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.token_reviews: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    # -- arranging a test

    def add_pool(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Store a NodePool (a uid and generation are filled in when missing); returns the stored copy."""
        return self._add(self.pools, body)

    def add_session(self, body: Mapping[str, Any], *, created: str | None = None) -> dict[str, Any]:
        """Store an MPCSession; ``created`` is its ``creationTimestamp`` (RFC 3339, UTC)."""
        stored = self._add(self.sessions, body)
        if created is not None:
            stored["metadata"]["creationTimestamp"] = created
        return stored

    def add_pod(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Store a pod as the kubelet would report it (give it ``status.podIP``)."""
        return self._add(self.pods, body)

    def _add(self, store: dict[tuple[str, str], dict[str, Any]], body: Mapping[str, Any]) -> dict[str, Any]:
        stored: dict[str, Any] = _plain(body)
        meta = stored.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        store[(meta["namespace"], meta["name"])] = stored
        return stored

    def _record(self, call: str, *args: Any) -> None:
        self.calls.append((call, args))

    def called(self, call: str) -> list[tuple[Any, ...]]:
        """The arguments of every call of ``call`` so far."""
        return [args for name, args in self.calls if name == call]

    # -- ClusterApi

    async def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._record("get_pool", namespace, name)
        body = self.pools.get((namespace, name))
        return copy.deepcopy(body) if body is not None else None

    async def list_pool_pods(self, namespace: str, pool: str, uid: str) -> list[dict[str, Any]]:
        self._record("list_pool_pods", namespace, pool, uid)
        selector = pool_selector(pool)
        return [
            copy.deepcopy(p) for (ns, _), p in sorted(self.pods.items())
            if ns == namespace and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
            and any(ref.get("uid") == uid for ref in p["metadata"].get("ownerReferences") or [])
        ]

    async def review_token(self, token: str, audiences: list[str]) -> dict[str, Any]:
        self._record("review_token", token, tuple(audiences))
        return copy.deepcopy(self.token_reviews.get(token, {"authenticated": False}))

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._record("read_pod", namespace, name)
        pod = self.pods.get((namespace, name))
        return copy.deepcopy(pod) if pod is not None else None

    async def list_nodes(self) -> list[dict[str, Any]]:
        self._record("list_nodes")
        return copy.deepcopy(self.nodes)

    async def create_pod(self, pod: Mapping[str, Any]) -> str | None:
        self._record("create_pod", pod["metadata"]["name"])
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if key in self.pods:
            return None
        stored = self._add(self.pods, {**pod, "metadata": {**pod["metadata"], "uid": str(uuid.uuid4())}})
        return str(stored["metadata"]["uid"])

    async def delete_pod(self, namespace: str, name: str) -> None:
        self._record("delete_pod", namespace, name)
        self.pods.pop((namespace, name), None)

    async def apply(self, obj: Mapping[str, Any]) -> None:
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        self._record("apply", kind, ns, name)
        if kind not in ("ServiceAccount", "ConfigMap", "Secret", "Service", "PodDisruptionBudget", "NetworkPolicy",
                        "Deployment", "Role", "RoleBinding"):
            raise ValueError(f"cannot apply a {kind}: no writer for that kind")
        self.applied[(kind, ns, name)] = _plain(obj)
        if kind == "ConfigMap":
            self.configmaps[(ns, name)] = dict(obj.get("data") or {})
        if kind == "Secret":
            self.secrets[(ns, name)] = dict(obj.get("data") or {})
            self.secret_meta[(ns, name)] = _plain(obj["metadata"])

    async def delete_owned(self, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
        self._record("delete_owned", kind, namespace, name)
        obj = self.applied.get((kind, namespace, name))
        if obj is None or not any(ref.get("uid") == owner_uid
                                  for ref in (obj.get("metadata") or {}).get("ownerReferences") or []):
            return False
        del self.applied[(kind, namespace, name)]
        return True

    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        self._record("read_secret_data", namespace, name)
        data = self.secrets.get((namespace, name))
        return dict(data) if data is not None else None

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._record("read_secret", namespace, name)
        data = self.secrets.get((namespace, name))
        if data is None:
            return None
        meta = copy.deepcopy(self.secret_meta.get((namespace, name)) or {"name": name, "namespace": namespace})
        return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": dict(data)}

    async def create_object(self, obj: Mapping[str, Any]) -> bool:
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        self._record("create_object", kind, ns, name)
        store = {"Secret": self.secrets, "ConfigMap": self.configmaps}[kind]
        if (ns, name) in store:
            return False
        store[(ns, name)] = dict(obj.get("data") or {})
        if kind == "Secret":
            self.secret_meta[(ns, name)] = _plain(obj["metadata"])
        return True

    async def read_configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        self._record("read_configmap_data", namespace, name)
        data = self.configmaps.get((namespace, name))
        return dict(data) if data is not None else None

    async def patch_pool_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        self._record("patch_pool_annotations", namespace, name)
        pool = self.pools[(namespace, name)]
        pool["metadata"] = merge_patch(pool["metadata"], {"annotations": _plain(dict(annotations))})

    async def get_session(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._record("get_session", namespace, name)
        body = self.sessions.get((namespace, name))
        return copy.deepcopy(body) if body is not None else None

    async def list_sessions(self, namespace: str) -> list[dict[str, Any]]:
        self._record("list_sessions", namespace)
        return [copy.deepcopy(b) for (ns, _), b in sorted(self.sessions.items()) if ns == namespace]

    async def list_all_sessions(self) -> list[dict[str, Any]]:
        self._record("list_all_sessions")
        return [copy.deepcopy(b) for _, b in sorted(self.sessions.items())]

    async def patch_session_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._record("patch_session_status", namespace, name)
        body = self.sessions[(namespace, name)]
        body["status"] = merge_patch(body.get("status") or {}, _plain(dict(status)))

    async def delete_session(self, namespace: str, name: str) -> None:
        self._record("delete_session", namespace, name)
        self.sessions.pop((namespace, name), None)

    async def patch_pool_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._record("patch_pool_status", namespace, name)
        body = self.pools[(namespace, name)]
        body["status"] = merge_patch(body.get("status") or {}, _plain(dict(status)))


@dataclass
class FakeNode:
    """One node pod as the operator's client sees it."""

    name: str
    keys_document: dict[str, Any] = field(default_factory=dict)
    csr_document: dict[str, Any] = field(default_factory=dict)
    plans: dict[str, bytes] = field(default_factory=dict)
    """Session id -> the signed plan posted last (a newer generation replaces it)."""
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Session id -> the report ``GET /v1/sessions/{id}`` answers (default: awaiting inputs, none received)."""
    preprocessing: dict[str, bytes] = field(default_factory=dict)
    cancels: dict[str, bytes] = field(default_factory=dict)
    down: bool = False
    """Unreachable: every call fails as a refused connection would."""
    failures: dict[str, str] = field(default_factory=dict)
    """Call name (``keys``, ``post_plan``, ``post_preprocessing``, ``session``, ``cancel``...) -> error text."""


class FakeNodeClient:
    """Node API calls answered by :class:`FakeNode` objects keyed by pod IP."""

    def __init__(self, nodes: Mapping[str, FakeNode] | None = None) -> None:
        self.nodes: dict[str, FakeNode] = dict(nodes or {})
        self.calls: list[tuple[str, str]] = []
        self.closed = False

    def called(self, call: str) -> list[str]:
        """The IPs ``call`` went to, in order."""
        return [ip for name, ip in self.calls if name == call]

    def _node(self, call: str, ip: str) -> FakeNode:
        self.calls.append((call, ip))
        node = self.nodes.get(ip)
        url = f"https://{ip}"
        if node is None or node.down:
            raise NodeCallError(f"{call} {url}: ConnectError: no node answers at {ip or '(no address)'}")
        if call in node.failures:
            raise NodeCallError(f"{call} {url}: {node.failures[call]}")
        return node

    async def aclose(self) -> None:
        self.closed = True

    async def keys(self, ip: str) -> dict[str, Any]:
        return copy.deepcopy(self._node("keys", ip).keys_document)

    async def post_plan(self, ip: str, body: bytes) -> dict[str, Any]:
        node = self._node("post_plan", ip)
        session_id = str(json.loads(body)["plan"]["sessionId"])
        fresh = session_id not in node.plans
        node.plans[session_id] = bytes(body)
        return {"sessionId": session_id, "created": fresh}

    async def post_preprocessing(self, ip: str, session_id: str, body: bytes) -> None:
        self._node("post_preprocessing", ip).preprocessing[session_id] = bytes(body)

    async def cancel(self, ip: str, session_id: str, body: bytes, *, timeout: float = 2.0) -> dict[str, Any]:
        node = self._node("cancel", ip)
        node.cancels[session_id] = bytes(body)
        return {"phase": "Failed", "reason": "cancelled", "alreadyFinished": False}

    async def session(self, ip: str, session_id: str) -> dict[str, Any]:
        node = self._node("session", ip)
        if session_id not in node.plans:
            raise NodeCallError(f"GET https://{ip}/v1/sessions/{session_id}: HTTP 404: no such session")
        return copy.deepcopy(node.reports.get(session_id, {"phase": "AwaitingInputs", "inputs": []}))

    async def csr(self, ip: str) -> dict[str, Any]:
        return copy.deepcopy(self._node("csr", ip).csr_document)

    async def install_certificate(self, ip: str, certificate_b64: str, log: Mapping[str, Any]) -> dict[str, Any]:
        self._node("install_certificate", ip)
        return {"installed": True}

    async def push_log(self, ip: str, log: Mapping[str, Any]) -> dict[str, Any]:
        self._node("push_log", ip)
        return {"size": len(log.get("entries") or [])}


if TYPE_CHECKING:  # mypy proves the fakes fit the doors they stand in for
    _API: ClusterApi = FakeKubeApi()
    _NODES: NodeApi = FakeNodeClient()
