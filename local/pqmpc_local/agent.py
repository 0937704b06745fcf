"""The local node agent: plays kubelet (and a tiny scheduler) for fake Nodes. Tests and demo only.

::

    python -m pqmpc_local.agent --kubeconfig K --workdir D \\
        --node eu-1a --labels topology.kubernetes.io/region=eu,topology.kubernetes.io/zone=eu-1a --gpus 8 \\
        --node us-1a --labels topology.kubernetes.io/region=us,topology.kubernetes.io/zone=us-1a --gpus 8

It registers the Nodes (Ready, ``nvidia.com/gpu`` capacity, Lease heartbeats), binds
pending pods to a Node that fits (see :mod:`pqmpc_local.scheduling`), and runs each bound
pod's first container as a local process on its own loopback address 127.0.0.x with the
pod's env and volumes, reporting status like kubelet (probes, restarts, exit codes).

Names: in the mount namespace, /etc/hosts is a file the agent keeps current with every pod
it runs (``<hostname>.<subdomain>.<ns>.svc[.cluster.local]`` and the short hostname, as
cluster DNS would resolve them), and the UTS hostname is the pod's hostname.

Volume mounts: as root the process starts in a private mount namespace
(``unshare --mount --propagation private``) where each volume is bind-mounted at its
``mountPath`` (e.g. /var/run/secrets/kubernetes.io/serviceaccount), so unmodified
in-cluster clients work. Where that is not possible, the agent falls back to passing
``PQMPC_LOCAL_MOUNTS``: a JSON object mapping each mountPath to the host folder holding
its files. Missing mount points are created on the host (empty folders) and removed
again when the agent stops.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import http.client
import json
import logging
import os
import platform
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import urlparse

import yaml
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from pqmpc_local.kubeconfig import api_client
from pqmpc_local.podenv import ContainerConfigError, command_line, resolve_env
from pqmpc_local.podstatus import ContainerView, RestartPolicy, Terminated, build_status, rfc3339
from pqmpc_local.processes import kill_process_group, pdeathsig_preexec
from pqmpc_local.scheduling import GPU_RESOURCE, NodeCapacity, Unschedulable, choose_node, pod_gpu_request
from pqmpc_local.volumes import MountSpec, materialize_volumes, mounts_for

__all__ = ["Agent", "AgentOptions", "FakeNodeSpec", "IpPool", "RegistrationError", "main", "parse_args"]

log = logging.getLogger("pqmpc_local.agent")

HOST_IP = "127.0.0.1"
MAX_BACKOFF_S = 300.0
VOLUME_REFRESH_S = 60.0
HEARTBEAT_S = 10.0

Pod = dict[str, Any]


# -- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class FakeNodeSpec:
    """One Node the agent plays."""

    name: str
    labels: Mapping[str, str]
    gpus: int


@dataclass(frozen=True)
class AgentOptions:
    """Everything the agent is told on its command line."""

    kubeconfig: Path
    workdir: Path
    nodes: tuple[FakeNodeSpec, ...]
    backoff_base_s: float = 10.0
    schedule: bool = True
    mount_namespaces: bool | None = None  # None: use them where they work


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"label {item!r} is not key=value")
        labels[key] = value
    return labels


def parse_args(argv: list[str]) -> AgentOptions:
    """Parse the command line; ``--labels``/``--gpus`` apply to the ``--node`` before them."""
    parser = argparse.ArgumentParser(prog="python -m pqmpc_local.agent", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--backoff-base", type=float, default=10.0, help="first CrashLoopBackOff delay, seconds")
    parser.add_argument("--no-scheduling", action="store_true",
                        help="only run pods already bound to these Nodes; bind nothing")
    parser.add_argument("--no-mount-namespaces", action="store_true", help="always use the PQMPC_LOCAL_MOUNTS fallback")
    parser.add_argument("--node", action="append", default=[], help="a fake Node name (repeatable)")
    parser.add_argument("--labels", action="append", default=[], help="k=v,... for the preceding --node")
    parser.add_argument("--gpus", action="append", default=[], type=int, help="nvidia.com/gpu of the preceding --node")
    args, rest = parser.parse_known_args(argv)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    # Re-walk argv to attach --labels/--gpus to the node they follow.
    nodes: list[dict[str, Any]] = []
    it = iter(argv)
    for token in it:
        key, eq, inline = token.partition("=")
        if key not in ("--node", "--labels", "--gpus"):
            continue
        value = inline if eq else next(it, "")
        if key == "--node":
            nodes.append({"name": value, "labels": {}, "gpus": 0})
        elif not nodes:
            parser.error(f"{key} must follow a --node")
        elif key == "--labels":
            nodes[-1]["labels"].update(_parse_labels(value))
        else:
            nodes[-1]["gpus"] = int(value)
    if not nodes:
        nodes.append({"name": f"{socket.gethostname()}-local", "labels": {}, "gpus": 0})
    names = [n["name"] for n in nodes]
    if len(set(names)) != len(names):
        parser.error(f"node names must be unique, got {names}")
    return AgentOptions(
        kubeconfig=args.kubeconfig,
        workdir=args.workdir,
        nodes=tuple(FakeNodeSpec(n["name"], n["labels"], n["gpus"]) for n in nodes),
        backoff_base_s=args.backoff_base,
        schedule=not args.no_scheduling,
        mount_namespaces=False if args.no_mount_namespaces else None,
    )


class RegistrationError(RuntimeError):
    """The agent could not register its Nodes."""


# -- loopback addresses ----------------------------------------------------------------------


class IpPool:
    """Distinct loopback addresses 127.0.0.10 … 127.0.255.254, lowest free first, reused after release.

    With ``lock_dir``, each address in use is held by an ``flock`` on a file there, so
    several agents on one machine (parallel test sessions) never hand out the same
    address; a lock dies with its agent.
    """

    def __init__(self, first: int = 10, *, lock_dir: Path | None = None) -> None:
        self._first = first
        self._taken: dict[int, int | None] = {}  # address number → lock fd
        self._lock_dir = lock_dir
        if lock_dir is not None:
            lock_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _addr(n: int) -> str:
        return f"127.0.{n // 256}.{n % 256}"

    def _claim(self, n: int) -> tuple[bool, int | None]:
        """(claimed, lock fd): False where another agent holds the address."""
        if self._lock_dir is None:
            return True, None
        fd = os.open(self._lock_dir / f"{self._addr(n)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False, None
        return True, fd

    def allocate(self) -> str:
        """Take the lowest free address."""
        n = self._first
        while True:
            if n >= 256 * 256:
                raise RuntimeError("out of loopback addresses for pods")
            if n not in self._taken and n % 256 not in (0, 255):
                claimed, fd = self._claim(n)
                if claimed:
                    self._taken[n] = fd
                    return self._addr(n)
            n += 1

    def release(self, ip: str) -> None:
        """Give an address back."""
        parts = ip.split(".")
        fd = self._taken.pop(int(parts[2]) * 256 + int(parts[3]), None)
        if fd is not None:
            os.close(fd)


# -- API access (raw JSON dicts) -------------------------------------------------------------


def _json(response: Any) -> Any:
    return json.loads(response.data) if response.data else {}


class Api:
    """The few API calls the agent makes, on raw dicts."""

    def __init__(self, kubeconfig: Path) -> None:
        self.client = api_client(kubeconfig)
        self.client.configuration.connection_pool_maxsize = 32
        self.core = k8s.CoreV1Api(self.client)
        self.coordination = k8s.CoordinationV1Api(self.client)

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]

    def post(self, path: str, body: Any) -> dict[str, Any]:
        """POST a raw JSON body (no client-side model coercion, which mangles MicroTime fields)."""
        method, url, headers, data, _ = self.client.param_serialize(
            method="POST", resource_path=path, body=body, auth_settings=["BearerToken"],
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
        )
        response = self.client.call_api(method, url, header_params=headers, body=data, _request_timeout=30)
        response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status < 300:
            raise ApiException(http_resp=response)
        return cast(dict[str, Any], json.loads(response.data or b"{}"))

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        reader = self.core.read_namespaced_secret if kind == "secret" else self.core.read_namespaced_config_map
        try:
            return cast(dict[str, Any], _json(reader(name, namespace, _preload_content=False)))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_pods(self) -> tuple[list[Pod], str]:
        body = _json(self.core.list_pod_for_all_namespaces(_preload_content=False))
        return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])

    def bind(self, pod: Pod, node: str) -> None:
        meta = pod["metadata"]
        body: Any = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        self.core.create_namespaced_pod_binding(meta["name"], meta["namespace"], body, _preload_content=False)

    def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(
            name, namespace, {"status": status},
            _content_type="application/merge-patch+json", _preload_content=False,
        )

    def finalize_pod_deletion(self, namespace: str, name: str, uid: str) -> None:
        body: Any = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        self.core.delete_namespaced_pod(name, namespace, body=body, grace_period_seconds=0, _preload_content=False)

    def token(self, pod: Pod, audience: str | None, expiration: int) -> str:
        meta, spec = pod["metadata"], pod["spec"]
        request_spec: dict[str, Any] = {
            "audiences": [audience] if audience else [],
            "expirationSeconds": expiration,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        }
        body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": request_spec}
        sa = spec.get("serviceAccountName") or "default"
        response = _json(self.core.create_namespaced_service_account_token(
            sa, meta["namespace"], body, _preload_content=False))
        return str(response["status"]["token"])

    def register_node(self, node: FakeNodeSpec) -> None:
        labels = {
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64" if platform.machine() in ("x86_64", "AMD64") else platform.machine(),
            "pqmpc.io/local-agent": "true",
            **node.labels,
        }
        body: Any = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name, "labels": labels}}
        try:
            self.core.create_node(body, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.core.patch_node(node.name, {"metadata": {"labels": labels}}, _preload_content=False)
        self.heartbeat(node, ready=True)

    def heartbeat(self, node: FakeNodeSpec, *, ready: bool) -> None:
        now = rfc3339(time.time())
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": "64Gi", "pods": "250", GPU_RESOURCE: str(node.gpus)}
        status = {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": node.name}],
            "conditions": [{
                "type": "Ready", "status": "True" if ready else "False",
                "reason": "KubeletReady" if ready else "KubeletStopped",
                "message": "pqmpc local node agent is posting ready status" if ready else "pqmpc local node agent stopped",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
            "nodeInfo": {
                "machineID": node.name, "systemUUID": node.name, "bootID": "", "kernelVersion": platform.release(),
                "osImage": "pqmpc local agent", "containerRuntimeVersion": "pqmpc-local://0",
                "kubeletVersion": "v1.35.4", "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self.core.patch_node_status(node.name, {"status": status},
                                    _content_type="application/merge-patch+json", _preload_content=False)
        lease: Any = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": node.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": node.name, "leaseDurationSeconds": 40,
                     "renewTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())},
        }
        try:
            self.coordination.patch_namespaced_lease(node.name, "kube-node-lease", {"spec": lease["spec"]},
                                                     _content_type="application/merge-patch+json",
                                                     _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.post("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease)


def pod_host_names(pod: Mapping[str, Any]) -> list[str]:
    """Names that resolve to the pod: ``<hostname>.<subdomain>.<ns>.svc[.cluster.local]``, then the short hostname."""
    meta, spec = pod["metadata"], pod["spec"]
    hostname = spec.get("hostname") or meta["name"]
    names = []
    if spec.get("subdomain"):
        base = f"{hostname}.{spec['subdomain']}.{meta['namespace']}.svc"
        names += [f"{base}.cluster.local", base]
    return [*names, hostname[:63]]


def _other_agents_running() -> bool:
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pqmpc_local.agent" in argv:
            return True
    return False


# -- probes ----------------------------------------------------------------------------------


def _probe_once(probe: Mapping[str, Any], pod_ip: str, container: Mapping[str, Any], env: Mapping[str, str]) -> bool:
    timeout = float(probe.get("timeoutSeconds", 1))
    if "httpGet" in probe:
        spec = probe["httpGet"]
        port = _resolve_port(spec.get("port"), container)
        host = spec.get("host") or pod_ip
        conn: http.client.HTTPConnection
        if str(spec.get("scheme", "HTTP")).upper() == "HTTPS":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # kubelet does not verify probe certificates either
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
            conn.request("GET", spec.get("path", "/"), headers=headers)
            return 200 <= conn.getresponse().status < 400
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
    if "tcpSocket" in probe:
        port = _resolve_port(probe["tcpSocket"].get("port"), container)
        try:
            with socket.create_connection((probe["tcpSocket"].get("host") or pod_ip, port), timeout=timeout):
                return True
        except OSError:
            return False
    if "exec" in probe:
        try:
            result = subprocess.run(list(probe["exec"]["command"]), env=dict(env), capture_output=True,
                                    timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0
    return True


def _resolve_port(port: object, container: Mapping[str, Any]) -> int:
    if isinstance(port, int):
        return port
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    return int(str(port))


# -- one pod -----------------------------------------------------------------------------------


@dataclass
class PodRuntime:
    """What the agent knows and does for one pod bound to one of its Nodes."""

    uid: str
    namespace: str
    name: str
    node: str
    pod: Pod
    workdir: Path
    ip: str | None = None
    start_time: float = field(default_factory=time.time)
    proc: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    started_at: float | None = None
    restart_count: int = 0
    crashes_in_a_row: int = 0
    backoff_until: float = 0.0
    backoff_s: float = 0.0
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    ready: bool = False
    liveness_failed: bool = False
    kill_deadline: float | None = None
    probe_stop: threading.Event | None = None
    volumes_refreshed: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    deleting_since: float | None = None
    finalized: bool = False
    transitions: dict[str, float] = field(default_factory=dict)
    last_status: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def container(self) -> Mapping[str, Any]:
        return cast(Mapping[str, Any], self.pod["spec"]["containers"][0])

    @property
    def restart_policy(self) -> RestartPolicy:
        return cast(RestartPolicy, self.pod["spec"].get("restartPolicy", "Always"))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Agent:
    """The agent's state and loops; ``run()`` blocks until ``stop()``."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.workdir = options.workdir
        self.nodes = {n.name: n for n in options.nodes}
        self.ips = IpPool(lock_dir=Path(os.environ.get("PQMPC_LOCAL_IP_LOCKS", "/tmp/pqmpc-local-ip-locks")))
        self.stopping = threading.Event()
        self.wakeup = threading.Event()
        self.lock = threading.Lock()
        self.pods: dict[str, Pod] = {}  # uid → latest pod seen by the watch
        self.runtimes: dict[str, PodRuntime] = {}
        self.pending_binds: dict[str, tuple[str, int]] = {}  # uid → (node, gpus) until the watch shows it
        self.unschedulable_messages: dict[str, str] = {}
        self.created_dirs: set[Path] = set()
        self.server = self._server_from_kubeconfig(options.kubeconfig)
        self.venv_bin = str(Path(sys.executable).parent)
        self.use_mount_ns = False if options.mount_namespaces is False else self._mount_namespaces_work()
        self.hosts_file = self.workdir / "hosts"
        self._hosts_written: str | None = None

    # -- set-up ---------------------------------------------------------------------------

    @staticmethod
    def _server_from_kubeconfig(path: Path) -> tuple[str, int]:
        config = yaml.safe_load(path.read_text())
        current = config.get("current-context")
        context = next(c["context"] for c in config["contexts"] if c["name"] == current)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        url = urlparse(cluster["server"])
        return url.hostname or HOST_IP, url.port or 443

    def _mount_namespaces_work(self) -> bool:
        if os.geteuid() != 0:
            log.info("not root: volumes are passed through PQMPC_LOCAL_MOUNTS instead of mount namespaces")
            return False
        self.workdir.mkdir(parents=True, exist_ok=True)
        here = str(self.workdir)
        try:
            probe = subprocess.run(
                ["unshare", "--mount", "--uts", "--propagation", "private", "--", "mount", "--bind", here, here],
                capture_output=True, text=True, check=False,
            )
        except OSError as exc:
            log.warning("unshare unavailable (%s); using PQMPC_LOCAL_MOUNTS", exc)
            return False
        if probe.returncode != 0:
            log.warning("mount namespaces unavailable (%s); using PQMPC_LOCAL_MOUNTS", probe.stderr.strip())
            return False
        log.info("volumes are bind-mounted at their mountPaths inside private mount namespaces")
        return True

    # -- main loop -------------------------------------------------------------------------

    def run(self) -> None:
        """Register the Nodes, then schedule, run and report pods until :meth:`stop`."""
        (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
        api = Api(self.options.kubeconfig)
        threads: list[threading.Thread] = []
        try:
            self._register_nodes(api)
            threads = [
                threading.Thread(target=self._watch_loop, name="watch", daemon=True),
                threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True),
            ]
            for thread in threads:
                thread.start()
            while not self.stopping.is_set():
                try:
                    self._tick(api)
                except Exception:  # keep supervising whatever one pod or API call did
                    log.exception("supervisor tick failed; continuing")
                self.wakeup.wait(0.25)
                self.wakeup.clear()
        finally:
            self._shutdown(api)
            for thread in threads:
                thread.join(timeout=1)  # daemons; a watch may sit in a long read
            api.close()
            log.info("stopped")

    def _register_nodes(self, api: Api, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            while True:
                try:
                    api.register_node(node)
                    break
                except ApiException:
                    raise  # the API server answered: retrying will not help
                except Exception as exc:
                    if time.monotonic() > deadline or self.stopping.is_set():
                        raise RegistrationError(
                            f"cannot reach the API server {self.server[0]}:{self.server[1]} to register Node "
                            f"{node.name}: {exc}; is the control plane running?"
                        ) from exc
                    log.warning("registering Node %s failed (%s); retrying", node.name, exc)
                    self.stopping.wait(1)
            log.info("registered Node %s (labels %s, %d GPUs)", node.name, dict(node.labels), node.gpus)

    def stop(self) -> None:
        """Ask :meth:`run` to return (after killing every pod process)."""
        self.stopping.set()
        self.wakeup.set()

    def _shutdown(self, api: Api) -> None:
        log.info("stopping: killing %d pod process(es)", sum(rt.running() for rt in self.runtimes.values()))
        for rt in self.runtimes.values():
            if rt.proc is not None and rt.proc.poll() is None:
                kill_process_group(rt.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for rt in self.runtimes.values():
            self._reap(rt, deadline)
        for node in self.nodes.values():
            try:
                api.heartbeat(node, ready=False)
            except Exception as exc:  # the API server may already be gone
                log.info("could not mark Node %s NotReady: %s", node.name, exc)
        # Removing a mount point detaches it in every namespace, so leave the folders to a
        # concurrently running agent whose pods may still have volumes mounted there.
        if self.created_dirs and not _other_agents_running():
            for path in sorted(self.created_dirs, key=lambda p: len(p.parts), reverse=True):
                try:
                    path.rmdir()
                except OSError:
                    pass

    def _reap(self, rt: PodRuntime, deadline: float) -> None:
        if rt.probe_stop is not None:
            rt.probe_stop.set()
        if rt.proc is not None:
            try:
                rt.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            kill_process_group(rt.proc.pid, signal.SIGKILL)
            rt.proc.wait()
        if rt.log_file is not None:
            rt.log_file.close()
            rt.log_file = None

    # -- watch ------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        api = Api(self.options.kubeconfig)
        try:
            while not self.stopping.is_set():
                try:
                    items, rv = api.list_pods()
                    with self.lock:
                        self.pods = {p["metadata"]["uid"]: p for p in items}
                    self.wakeup.set()
                    log.debug("listed %d pods at resourceVersion %s", len(items), rv)
                    for event in self._watch(api, rv):
                        obj = event["raw_object"]
                        if event["type"] == "ERROR":
                            log.info("watch ended (%s); re-listing", obj.get("message"))
                            break
                        uid = obj.get("metadata", {}).get("uid")
                        if not uid:
                            continue
                        with self.lock:
                            if event["type"] == "DELETED":
                                self.pods.pop(uid, None)
                            else:
                                self.pods[uid] = obj
                        self.wakeup.set()
                except Exception as exc:
                    if self.stopping.is_set():
                        return
                    log.warning("pod watch failed (%s: %s); reconnecting in 1s", type(exc).__name__, exc)
                    self.stopping.wait(1)
        finally:
            api.close()

    def _watch(self, api: Api, rv: str) -> Iterator[dict[str, Any]]:
        w = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        try:
            for event in w.stream(  # type: ignore[no-untyped-call]
                api.core.list_pod_for_all_namespaces, resource_version=rv, timeout_seconds=30,
                                  allow_watch_bookmarks=False, _request_timeout=60):
                if self.stopping.is_set():
                    return
                yield cast(dict[str, Any], event)
        finally:
            w.stop()  # type: ignore[no-untyped-call]

    def _heartbeat_loop(self) -> None:
        api = Api(self.options.kubeconfig)
        try:
            while not self.stopping.wait(HEARTBEAT_S):
                for node in self.nodes.values():
                    try:
                        api.heartbeat(node, ready=True)
                    except ApiException as exc:
                        if exc.status == 404:  # someone deleted the Node: register it again
                            log.warning("Node %s disappeared; registering it again", node.name)
                            try:
                                api.register_node(node)
                            except Exception as again:
                                log.warning("re-registering Node %s failed: %s", node.name, again)
                        else:
                            log.warning("heartbeat for Node %s failed: %s", node.name, exc.reason)
                    except Exception as exc:
                        log.warning("heartbeat for Node %s failed: %s", node.name, exc)
        finally:
            api.close()

    # -- supervision --------------------------------------------------------------------------

    def _hosts_content(self) -> str:
        lines = ["# written by the pqmpc local node agent: pods it runs, like cluster DNS would resolve them",
                 "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        for rt in sorted(self.runtimes.values(), key=lambda r: r.ip or ""):
            if rt.ip is not None and rt.terminated is None:
                lines.append(f"{rt.ip}\t{' '.join(pod_host_names(rt.pod))}")
        return "\n".join(lines) + "\n"

    def _update_hosts(self) -> None:
        content = self._hosts_content()
        if content == self._hosts_written:
            return
        # In place (same inode): pods see it through their bind mount of /etc/hosts.
        with open(self.hosts_file, "w") as handle:
            handle.write(content)
        self._hosts_written = content

    def _tick(self, api: Api) -> None:
        self._update_hosts()
        with self.lock:
            pods = dict(self.pods)
        if self.options.schedule:
            self._schedule(api, pods)
        for uid, pod in pods.items():
            if pod["spec"].get("nodeName") in self.nodes and uid not in self.runtimes:
                phase = pod.get("status", {}).get("phase")
                if phase in ("Succeeded", "Failed") and pod["metadata"].get("deletionTimestamp") is None:
                    continue  # finished before this agent started; nothing to run
                self.runtimes[uid] = self._new_runtime(pod)
        for uid, rt in list(self.runtimes.items()):
            pod_now = pods.get(uid)
            try:
                done = self._supervise(api, rt, pod_now)
            except Exception:
                log.exception("pod %s: supervision failed; will retry", rt.key)
                continue
            if done:
                self._forget(rt)

    def _new_runtime(self, pod: Pod) -> PodRuntime:
        meta = pod["metadata"]
        workdir = self.workdir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        workdir.mkdir(parents=True, exist_ok=True)
        rt = PodRuntime(uid=meta["uid"], namespace=meta["namespace"], name=meta["name"],
                        node=pod["spec"]["nodeName"], pod=pod, workdir=workdir)
        log.info("pod %s: bound to %s, work dir %s", rt.key, rt.node, workdir)
        return rt

    def _forget(self, rt: PodRuntime) -> None:
        self._reap(rt, time.monotonic())
        if rt.ip is not None:
            self.ips.release(rt.ip)
        self.runtimes.pop(rt.uid, None)
        log.info("pod %s: gone, address %s released", rt.key, rt.ip)

    def _gpus_in_use(self, pods: Mapping[str, Pod]) -> dict[str, int]:
        used: dict[str, int] = {}
        for uid, pod in pods.items():
            node = pod["spec"].get("nodeName")
            if node is None and uid in self.pending_binds:
                node = self.pending_binds[uid][0]
            if node is None or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                continue
            used[node] = used.get(node, 0) + pod_gpu_request(pod)
        return used

    def _schedule(self, api: Api, pods: Mapping[str, Pod]) -> None:
        for uid in [u for u in self.pending_binds if u not in pods or pods[u]["spec"].get("nodeName")]:
            self.pending_binds.pop(uid, None)
        capacities = [
            NodeCapacity(n.name, {"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux", **n.labels}, n.gpus)
            for n in self.nodes.values()
        ]
        for uid, pod in sorted(pods.items(), key=lambda kv: kv[1]["metadata"].get("creationTimestamp", "")):
            spec, meta = pod["spec"], pod["metadata"]
            if spec.get("nodeName") or uid in self.pending_binds or meta.get("deletionTimestamp"):
                continue
            if spec.get("schedulerName", "default-scheduler") != "default-scheduler":
                continue
            choice = choose_node(pod, capacities, self._gpus_in_use(pods))
            key = f"{meta['namespace']}/{meta['name']}"
            if isinstance(choice, Unschedulable):
                if self.unschedulable_messages.get(uid) != choice.message:
                    log.info("pod %s: unschedulable: %s", key, choice.message)
                    self._report_unschedulable(api, pod, choice.message)
                    self.unschedulable_messages[uid] = choice.message
                continue
            try:
                api.bind(pod, choice)
            except ApiException as exc:
                log.warning("pod %s: binding to %s failed: %s", key, choice, exc.reason)
                continue
            self.pending_binds[uid] = (choice, pod_gpu_request(pod))
            self.unschedulable_messages.pop(uid, None)
            log.info("pod %s: scheduled to %s", key, choice)

    def _report_unschedulable(self, api: Api, pod: Pod, message: str) -> None:
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                     "lastProbeTime": None, "lastTransitionTime": rfc3339(time.time())}
        try:
            api.patch_pod_status(pod["metadata"]["namespace"], pod["metadata"]["name"],
                                 {"phase": "Pending", "conditions": [condition]})
        except ApiException as exc:
            log.warning("pod %s: could not report Unschedulable: %s", pod["metadata"]["name"], exc.reason)

    def _supervise(self, api: Api, rt: PodRuntime, pod: Pod | None) -> bool:
        """Advance one pod; True once it is gone and forgotten."""
        now = time.time()
        if pod is None:
            # Deleted from the API (forced, or after our finalisation): just make sure it is dead.
            if rt.proc is not None and rt.proc.poll() is None:
                log.info("pod %s: deleted from the API; killing pid %d", rt.key, rt.proc.pid)
                kill_process_group(rt.proc.pid, signal.SIGKILL)
            return True
        rt.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            return self._delete(api, rt, pod, now)
        self._advance_container(api, rt, now)
        self._report(api, rt)
        return False

    def _delete(self, api: Api, rt: PodRuntime, pod: Pod, now: float) -> bool:
        if rt.finalized:
            return False
        if rt.deleting_since is None:
            rt.deleting_since = now
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            grace = 30 if grace is None else int(grace)
            rt.kill_deadline = now + grace
            if rt.probe_stop is not None:
                rt.probe_stop.set()
            if rt.running() and rt.proc is not None:
                log.info("pod %s: deleting; SIGTERM to pid %d, grace %ds", rt.key, rt.proc.pid, grace)
                kill_process_group(rt.proc.pid, signal.SIGTERM)
        if rt.running() and rt.proc is not None:
            if now < (rt.kill_deadline or now):
                return False
            log.info("pod %s: grace period over; SIGKILL to pid %d", rt.key, rt.proc.pid)
            kill_process_group(rt.proc.pid, signal.SIGKILL)
            rt.proc.wait()
        if rt.proc is not None:
            kill_process_group(rt.proc.pid, signal.SIGKILL)  # leftovers in its process group
        try:
            api.finalize_pod_deletion(rt.namespace, rt.name, rt.uid)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
        rt.finalized = True
        log.info("pod %s: processes stopped, deletion finalised", rt.key)
        return False

    def _advance_container(self, api: Api, rt: PodRuntime, now: float) -> None:
        if rt.proc is not None:
            code = rt.proc.poll()
            if code is None:
                if rt.liveness_failed and rt.kill_deadline is None:
                    grace = int(rt.pod["spec"].get("terminationGracePeriodSeconds", 30))
                    log.info("pod %s: liveness probe failed; restarting container (SIGTERM pid %d)",
                             rt.key, rt.proc.pid)
                    kill_process_group(rt.proc.pid, signal.SIGTERM)
                    rt.kill_deadline = now + grace
                elif rt.kill_deadline is not None and now >= rt.kill_deadline:
                    kill_process_group(rt.proc.pid, signal.SIGKILL)
                elif now - rt.volumes_refreshed > VOLUME_REFRESH_S:
                    self._materialize(api, rt)
                return
            self._on_exit(rt, code, now)
        if rt.terminated is not None:
            return  # finished for good (restartPolicy)
        if now < rt.backoff_until:
            return
        self._start(api, rt, now)

    def _on_exit(self, rt: PodRuntime, code: int, now: float) -> None:
        if rt.proc is not None:
            kill_process_group(rt.proc.pid, signal.SIGKILL)  # children the container left behind
        if rt.probe_stop is not None:
            rt.probe_stop.set()
        sig = -code if code < 0 else None
        exit_code = 128 + sig if sig is not None else code
        reason = "Completed" if exit_code == 0 else "Error"
        if rt.liveness_failed:
            reason = "Error"
        run = Terminated(exit_code=exit_code, reason=reason, started_at=rt.started_at or now, finished_at=now,
                         signal=sig)
        log.info("pod %s: container exited with %d (%s) after %.1fs", rt.key, exit_code, reason,
                 now - (rt.started_at or now))
        if rt.log_file is not None:
            rt.log_file.close()
            rt.log_file = None
        rt.proc, rt.ready, rt.kill_deadline = None, False, None
        restart = rt.restart_policy == "Always" or (rt.restart_policy == "OnFailure" and exit_code != 0)
        if not restart:
            rt.terminated = run
            return
        rt.last_terminated = run
        rt.crashes_in_a_row = 1 if now - (rt.started_at or now) > 600 else rt.crashes_in_a_row + 1
        if rt.crashes_in_a_row <= 1:
            rt.backoff_s = 0.0
        else:
            rt.backoff_s = min(self.options.backoff_base_s * 2 ** (rt.crashes_in_a_row - 2), MAX_BACKOFF_S)
        rt.backoff_until = now + rt.backoff_s
        rt.waiting_reason = "CrashLoopBackOff"
        rt.waiting_message = (f"back-off {rt.backoff_s:g}s restarting failed container={rt.container['name']} "
                              f"pod={rt.name}_{rt.namespace}({rt.uid})")

    def _materialize(self, api: Api, rt: PodRuntime) -> dict[str, Path]:
        ns = rt.namespace

        def secret(name: str) -> dict[str, bytes] | None:
            obj = api.get("secret", ns, name)
            return None if obj is None else {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

        def config_map(name: str) -> dict[str, bytes] | None:
            obj = api.get("configmap", ns, name)
            if obj is None:
                return None
            data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
            return data

        volumes = materialize_volumes(
            rt.pod, rt.workdir / "volumes", secrets=secret, config_maps=config_map,
            mint_token=lambda audience, expiry: api.token(rt.pod, audience, expiry),
        )
        rt.volumes_refreshed = time.time()
        return volumes

    def _start(self, api: Api, rt: PodRuntime, now: float) -> None:
        if len(rt.pod["spec"]["containers"]) > 1 and rt.restart_count == 0 and rt.started_at is None:
            log.warning("pod %s: only the first container (%s) runs locally", rt.key, rt.container["name"])
        if rt.ip is None:
            rt.ip = self.ips.allocate()
        pod_view = json.loads(json.dumps(rt.pod))
        pod_view.setdefault("status", {}).update({"podIP": rt.ip, "hostIP": HOST_IP,
                                                  "podIPs": [{"ip": rt.ip}], "hostIPs": [{"ip": HOST_IP}]})
        ns = rt.namespace

        def text_lookup(kind: str) -> Any:
            def lookup(name: str) -> dict[str, str] | None:
                obj = api.get(kind, ns, name)
                if obj is None:
                    return None
                if kind == "secret":
                    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
                return dict(obj.get("data") or {})
            return lookup

        try:
            volumes = self._materialize(api, rt)
            mounts = mounts_for(rt.container, volumes)
            base = {
                "PATH": f"{self.venv_bin}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
                "HOME": os.environ.get("HOME", "/root"),
                "LANG": os.environ.get("LANG", "C.UTF-8"),
            }
            host, port = self.server
            service_env = {
                "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(port), "KUBERNETES_PORT": f"tcp://{host}:{port}",
                "KUBERNETES_PORT_443_TCP": f"tcp://{host}:{port}", "KUBERNETES_PORT_443_TCP_ADDR": host,
                "KUBERNETES_PORT_443_TCP_PORT": str(port), "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
            }
            env = resolve_env(pod_view, rt.container, secrets=text_lookup("secret"),
                              config_maps=text_lookup("configmap"), base=base, service_env=service_env)
            argv = list(command_line(rt.container, env))
        except ContainerConfigError as exc:
            if rt.waiting_message != str(exc):
                log.warning("pod %s: cannot start: %s", rt.key, exc)
            rt.waiting_reason, rt.waiting_message = "CreateContainerConfigError", str(exc)
            rt.backoff_until = now + 2
            return
        rt.env = env
        shown = shlex.join(argv)
        workdir = rt.container.get("workingDir") or str(rt.workdir)
        if self.use_mount_ns:
            self._update_hosts()
            argv = self._wrap_in_mount_namespace(argv, mounts, workdir, pod_host_names(rt.pod)[-1])
        else:
            env["PQMPC_LOCAL_MOUNTS"] = json.dumps({m.target: str(m.source) for m in mounts})
        if not Path(workdir).is_dir() or self.use_mount_ns:
            cwd = str(rt.workdir)
        else:
            cwd = workdir
        log_path = rt.workdir / f"{rt.container['name']}.log"
        rt.log_file = open(log_path, "ab")  # noqa: SIM115 - closed when the process is reaped
        rt.log_file.write(f"--- {rfc3339(now)} start #{rt.restart_count + (1 if rt.started_at else 0)}\n".encode())
        rt.log_file.flush()
        try:
            rt.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=rt.log_file,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=pdeathsig_preexec())
        except OSError as exc:
            rt.log_file.close()
            rt.log_file = None
            rt.waiting_reason, rt.waiting_message = "RunContainerError", f"cannot run {argv[0]!r}: {exc}"
            rt.backoff_until = now + 5
            log.warning("pod %s: %s", rt.key, rt.waiting_message)
            return
        if rt.started_at is not None:
            rt.restart_count += 1
        rt.started_at = now
        rt.waiting_reason, rt.waiting_message = "", ""
        rt.liveness_failed, rt.kill_deadline = False, None
        rt.ready = "readinessProbe" not in rt.container and "startupProbe" not in rt.container
        log.info("pod %s: started pid %d on %s: %s", rt.key, rt.proc.pid, rt.ip, shown)
        self._start_probes(rt)

    def _wrap_in_mount_namespace(
        self, argv: list[str], mounts: list[MountSpec], workdir: str, hostname: str
    ) -> list[str]:
        lines = ["set -e", f"hostname {shlex.quote(hostname)}",
                 f"mount --bind {shlex.quote(str(self.hosts_file))} /etc/hosts"]
        for mount in mounts:
            target = Path(mount.target)
            missing = target
            while not missing.parent.exists() and missing.parent != missing:
                missing = missing.parent
            if not target.exists():
                self.created_dirs.update(p for p in [*target.parents, target] if p.is_relative_to(missing) and
                                         (p != target or mount.source.is_dir()))
            t, s = shlex.quote(mount.target), shlex.quote(str(mount.source))
            if mount.source.is_dir():
                lines.append(f"mkdir -p {t}")
            else:
                lines.append(f"mkdir -p {shlex.quote(str(target.parent))}; [ -e {t} ] || touch {t}")
            lines.append(f"mount --bind {s} {t}")
            if mount.read_only:
                lines.append(f"mount -o remount,bind,ro {t}")
        lines.append(f"cd {shlex.quote(workdir)} 2>/dev/null || true")
        lines.append('exec "$@"')
        return ["unshare", "--mount", "--uts", "--propagation", "private", "--", "/bin/sh", "-c", "\n".join(lines),
                "pqmpc-pod", *argv]

    def _start_probes(self, rt: PodRuntime) -> None:
        container, ip, env = rt.container, rt.ip or HOST_IP, dict(rt.env)
        readiness, liveness = container.get("readinessProbe"), container.get("livenessProbe")
        startup = container.get("startupProbe")
        if readiness is None and liveness is None and startup is None:
            rt.probe_stop = None
            return
        stop = rt.probe_stop = threading.Event()
        started = threading.Event()
        if startup is None:
            started.set()

        def loop(probe: Mapping[str, Any], kind: str) -> None:
            period = float(probe.get("periodSeconds", 10))
            failure_threshold = int(probe.get("failureThreshold", 3))
            success_threshold = int(probe.get("successThreshold", 1))
            successes = failures = 0
            while kind != "startup" and not started.wait(0.2):  # other probes wait for the startup probe
                if stop.is_set():
                    return
            if stop.wait(float(probe.get("initialDelaySeconds", 0))):
                return
            while not stop.is_set():
                ok = _probe_once(probe, ip, container, env)
                if stop.is_set():
                    return
                successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
                if kind == "startup":
                    if ok:
                        log.info("pod %s: startup probe succeeded", rt.key)
                        rt.ready = rt.ready or readiness is None
                        started.set()
                        self.wakeup.set()
                        return
                    if failures >= failure_threshold:
                        log.info("pod %s: startup probe failed %d times", rt.key, failures)
                        rt.liveness_failed = True
                        self.wakeup.set()
                        return
                elif kind == "readiness":
                    if ok and successes >= success_threshold and not rt.ready:
                        rt.ready = True
                        log.info("pod %s: readiness probe succeeded", rt.key)
                        self.wakeup.set()
                    elif not ok and failures >= failure_threshold and rt.ready:
                        rt.ready = False
                        log.info("pod %s: readiness probe failed %d times", rt.key, failures)
                        self.wakeup.set()
                elif not ok and failures >= failure_threshold:
                    log.info("pod %s: liveness probe failed %d times", rt.key, failures)
                    rt.liveness_failed = True
                    self.wakeup.set()
                    return
                stop.wait(period)

        for probe, kind in ((startup, "startup"), (readiness, "readiness"), (liveness, "liveness")):
            if probe is not None:
                threading.Thread(target=loop, args=(probe, kind), name=f"probe-{kind}-{rt.name}",
                                 daemon=True).start()

    def _report(self, api: Api, rt: PodRuntime) -> None:
        container = rt.container
        if rt.proc is not None and rt.proc.poll() is None:
            view = ContainerView(name=container["name"], image=container.get("image", ""), state="running",
                                 ready=rt.ready, restart_count=rt.restart_count, started_at=rt.started_at,
                                 last_terminated=rt.last_terminated, pid=rt.proc.pid)
        elif rt.terminated is not None:
            view = ContainerView(name=container["name"], image=container.get("image", ""), state="terminated",
                                 restart_count=rt.restart_count, terminated=rt.terminated,
                                 last_terminated=rt.last_terminated)
        else:
            view = ContainerView(name=container["name"], image=container.get("image", ""), state="waiting",
                                 restart_count=rt.restart_count, waiting_reason=rt.waiting_reason or "ContainerCreating",
                                 waiting_message=rt.waiting_message, last_terminated=rt.last_terminated)
        views = [view] + [
            ContainerView(name=c["name"], image=c.get("image", ""), state="waiting",
                          waiting_reason="NotRunByLocalAgent",
                          waiting_message="the pqmpc local node agent runs only a pod's first container")
            for c in rt.pod["spec"]["containers"][1:]
        ]
        all_ready = all(v.ready and v.state == "running" for v in views)
        now = time.time()
        for cond, ok in (("Ready", all_ready), ("ContainersReady", all_ready),
                         ("PodReadyToStartContainers", rt.ip is not None and view.state != "terminated")):
            rt.transitions.setdefault(f"{cond}={'True' if ok else 'False'}", now)
            rt.transitions.pop(f"{cond}={'False' if ok else 'True'}", None)
        status = build_status(containers=views, restart_policy=rt.restart_policy, pod_ip=rt.ip, host_ip=HOST_IP,
                              start_time=rt.start_time, transitions=rt.transitions)
        if status == rt.last_status:
            return
        try:
            api.patch_pod_status(rt.namespace, rt.name, status)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        rt.last_status = status


def main(argv: list[str] | None = None) -> int:
    """Run the agent until SIGINT/SIGTERM."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    agent = Agent(options)
    signal.signal(signal.SIGTERM, lambda signum, frame: agent.stop())
    signal.signal(signal.SIGINT, lambda signum, frame: agent.stop())
    try:
        agent.run()
    except ApiException as exc:
        log.error("cannot register the Nodes: %s %s", exc.status, exc.reason)
        return 1
    except RegistrationError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
