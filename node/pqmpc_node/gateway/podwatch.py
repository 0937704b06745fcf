"""The pool's node pods, kept current from the Kubernetes API (list, then watch; relist on any break).

The gateway's ServiceAccount may only ``get``/``list``/``watch`` pods in the pool's
namespace (the Role the operator creates with it). The table is rebuilt purely
(:func:`~pqmpc_node.gateway.routing.endpoints_from_pods`) from the pods seen, after
every change, and read by the proxy without blocking.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pqmpc_node.gateway.routing import LABEL_POOL, NODE_APP, Endpoint, endpoints_from_pods

__all__ = ["PodTable", "load_api_client"]

_log = logging.getLogger(__name__)


def load_api_client(kubeconfig: Path | None) -> Any:
    """A ``kubernetes`` ApiClient: the kubeconfig when given, else in-cluster credentials, else ``KUBECONFIG``."""
    from kubernetes import client, config

    if kubeconfig is not None:
        return config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


class PodTable:
    """The routable nodes of one pool, fed by a background list/watch thread."""

    def __init__(self, api_client: Any, *, namespace: str, pool: str, api_port: int,
                 watch_timeout_s: int = 300, retry_s: float = 2.0) -> None:
        self.api_client, self.namespace, self.pool, self.api_port = api_client, namespace, pool, api_port
        self.watch_timeout_s, self.retry_s = watch_timeout_s, retry_s
        self._pods: dict[str, Mapping[str, Any]] = {}
        self._table: dict[str, Endpoint] = {}
        self._stop = threading.Event()
        self.synced = threading.Event()
        """Set once the first list has been read."""
        self._thread = threading.Thread(target=self._run, name=f"podwatch-{pool}", daemon=True)

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/name={NODE_APP},{LABEL_POOL}={self.pool}"

    def endpoints(self) -> Mapping[str, Endpoint]:
        """The current table (replaced whole on every change; never mutated in place)."""
        return self._table

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _update(self) -> None:
        table = endpoints_from_pods(self._pods.values(), pool=self.pool, api_port=self.api_port)
        if table != self._table:
            _log.info("pool %s/%s: %d routable nodes: %s", self.namespace, self.pool, len(table),
                      ", ".join(f"{e.node_id}={e.ip}" for e in sorted(table.values(), key=lambda e: e.node_id)))
        self._table = table

    def _run(self) -> None:
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.api_client)
        while not self._stop.is_set():
            try:
                listed = self.api_client.sanitize_for_serialization(
                    core.list_namespaced_pod(self.namespace, label_selector=self.selector))
                self._pods = {str(p["metadata"]["name"]): p for p in listed.get("items") or []}
                self._update()
                self.synced.set()
                w = watch.Watch()  # type: ignore[no-untyped-call]
                events = w.stream(  # type: ignore[no-untyped-call]
                    core.list_namespaced_pod, self.namespace, label_selector=self.selector,
                    resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=self.watch_timeout_s,
                    _request_timeout=self.watch_timeout_s + 30)
                for event in events:
                    if self._stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
                        break
                    pod = self.api_client.sanitize_for_serialization(event["object"])
                    name = str((pod.get("metadata") or {}).get("name", ""))
                    pods = dict(self._pods)
                    if event["type"] == "DELETED":
                        pods.pop(name, None)
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        pods[name] = pod
                    else:
                        break  # ERROR (e.g. 410 Gone): relist
                    self._pods = pods
                    self._update()
            except ApiException as exc:
                _log.warning("pool %s/%s: reading pods failed (%s %s); retrying", self.namespace, self.pool,
                             exc.status, exc.reason)
                self._stop.wait(self.retry_s)
            except Exception as exc:  # noqa: BLE001 - any network failure: keep the last table and relist
                _log.warning("pool %s/%s: pod watch broke (%s); relisting", self.namespace, self.pool, exc)
                self._stop.wait(self.retry_s)
