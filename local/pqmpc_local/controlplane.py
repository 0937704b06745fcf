"""A real local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager.

Tests and demo only. The binaries come from ``scripts/build-control-plane.sh``
(``make control-plane``), cached outside the repository; this module finds them,
generates certificates, starts the three components on free loopback ports, waits
until they serve, and stops them leaving no process behind::

    with ControlPlane(workdir) as cp:
        subprocess.run(["kubectl", "--kubeconfig", str(cp.kubeconfig), "get", "ns"])

Command line (stays in the foreground until SIGINT/SIGTERM)::

    python -m pqmpc_local.controlplane up --dir /tmp/pqmpc-cp
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from pqmpc_local.kubeconfig import api_client, write_cert_kubeconfig, write_token_kubeconfig
from pqmpc_local.pki import ClusterPKI, write_cluster_pki
from pqmpc_local.processes import ManagedProcess, Stopped, free_port, stop_on

__all__ = [
    "CONTROLLERS",
    "ControlPlane",
    "ControlPlaneError",
    "ControlPlaneNotBuiltError",
    "binaries_dir",
    "main",
]

log = logging.getLogger("pqmpc_local.controlplane")

K8S_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.0.0.0/24"
REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")

# The controllers pqmpc needs, plus those they rely on: kube-root-ca.crt for projected
# service-account volumes, endpoints for Services, disruption for PDB status.
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "deployment-controller",
    "replicaset-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "disruption-controller",
    "clusterrole-aggregation-controller",
)


class ControlPlaneError(RuntimeError):
    """The control plane failed to start or to answer."""


class ControlPlaneNotBuiltError(ControlPlaneError):
    """The cached binaries are missing."""


def binaries_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where ``scripts/build-control-plane.sh`` caches the binaries (same logic as the script).

    ``PQMPC_CONTROL_PLANE_DIR`` overrides the whole path.
    """
    env = os.environ if env is None else env
    override = env.get("PQMPC_CONTROL_PLANE_DIR")
    if override:
        return Path(override)
    cache_home = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", str(Path.home()))) / ".cache")
    root = Path(env.get("PQMPC_CACHE_DIR") or Path(cache_home) / "pqmpc")
    k8s_version = env.get("PQMPC_K8S_VERSION") or K8S_VERSION
    etcd_version = env.get("PQMPC_ETCD_VERSION") or ETCD_VERSION
    return root / "control-plane" / f"{k8s_version}-etcd-{etcd_version}"


def _require_binaries(directory: Path) -> dict[str, Path]:
    found = {name: directory / name for name in REQUIRED_BINARIES}
    missing = [name for name, path in found.items() if not os.access(path, os.X_OK)]
    if missing:
        raise ControlPlaneNotBuiltError(
            f"control-plane binaries {', '.join(missing)} not found in {directory}; "
            "build them once with `make control-plane` (or set PQMPC_CONTROL_PLANE_DIR "
            "to a folder holding etcd, kube-apiserver and kube-controller-manager)"
        )
    return found


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager as local processes under ``workdir``.

    ``start()`` returns once the API server is ready and the controller manager has
    created the ``default`` ServiceAccount; ``stop()`` kills every process it started.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binaries: Path | None = None,
        start_timeout: float = 90.0,
        controllers: tuple[str, ...] = CONTROLLERS,
    ) -> None:
        self.workdir = Path(workdir)
        self.binaries = binaries_dir() if binaries is None else Path(binaries)
        self.start_timeout = start_timeout
        self.controllers = controllers
        self.host = "127.0.0.1"
        self.port = 0
        self._pki: ClusterPKI | None = None
        self._procs: list[ManagedProcess] = []
        self._kubeconfig: Path | None = None

    # -- public surface -------------------------------------------------------------

    @property
    def server(self) -> str:
        """The API server's URL."""
        return f"https://{self.host}:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (``system:masters``)."""
        if self._kubeconfig is None:
            raise ControlPlaneError("the control plane is not started; call start() first")
        return self._kubeconfig

    @property
    def ca_file(self) -> Path:
        """The cluster CA certificate (PEM)."""
        return self._require_pki().ca.cert

    @property
    def running(self) -> bool:
        """True while every component is alive."""
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids of the running components."""
        return tuple(p.pid for p in self._procs)

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start etcd, kube-apiserver and kube-controller-manager; stops everything on failure."""
        if self._procs:
            raise ControlPlaneError("the control plane is already started")
        bins = _require_binaries(self.binaries)
        try:
            self._start(bins)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every component (SIGTERM, bounded wait, SIGKILL), newest first. Idempotent."""
        while self._procs:
            proc = self._procs.pop()
            code = proc.stop(timeout=10.0)
            log.info("stopped %s (pid %d, exit %s)", proc.name, proc.pid, code)

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, *, expiration_seconds: int = 86400, path: Path | None = None
    ) -> Path:
        """Mint a token for ServiceAccount ``namespace/name`` (TokenRequest) and write a kubeconfig for it.

        The ServiceAccount must exist; the token carries only its RBAC permissions.
        """
        with api_client(self.kubeconfig) as api:
            core = k8s.CoreV1Api(api)
            request = k8s.AuthenticationV1TokenRequest(
                spec=k8s.V1TokenRequestSpec(
                    audiences=[SERVICE_ACCOUNT_ISSUER], expiration_seconds=expiration_seconds
                )
            )
            try:
                response = core.create_namespaced_service_account_token(name, namespace, request)
            except ApiException as exc:
                if exc.status == 404:
                    raise ControlPlaneError(
                        f"ServiceAccount {namespace}/{name} does not exist; create it before asking for its kubeconfig"
                    ) from exc
                raise
        token = response.status.token if response.status is not None else None
        if not token:
            raise ControlPlaneError(f"the API server returned no token for ServiceAccount {namespace}/{name}")
        target = path or self.workdir / "kubeconfigs" / f"{namespace}.{name}.kubeconfig"
        return write_token_kubeconfig(
            target,
            server=self.server,
            ca=self.ca_file,
            token=token,
            user_name=f"system:serviceaccount:{namespace}:{name}",
            namespace=namespace,
        )

    # -- internals -------------------------------------------------------------------

    def _require_pki(self) -> ClusterPKI:
        if self._pki is None:
            raise ControlPlaneError("the control plane is not started; call start() first")
        return self._pki

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        log_path = self.workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        proc = ManagedProcess(name, argv, log_path=log_path, cwd=self.workdir)
        self._procs.append(proc)
        log.info("started %s (pid %d), log %s", name, proc.pid, log_path)
        return proc

    def _start(self, bins: dict[str, Path]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki = self._pki = write_cluster_pki(self.workdir / "pki")
        deadline = time.monotonic() + self.start_timeout

        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd = self._spawn("etcd", [
            str(bins["etcd"]),
            "--name=pqmpc-local",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=pqmpc-local=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ])
        self._wait(etcd, deadline, "etcd /health", lambda: _http_ok("127.0.0.1", etcd_port, "/health"))

        self.port = free_port()
        apiserver = self._spawn("kube-apiserver", [
            str(bins["kube-apiserver"]),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_private_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            "--v=1",
        ])
        self._wait(apiserver, deadline, "kube-apiserver /readyz", self._apiserver_ready)
        self._kubeconfig = write_cert_kubeconfig(
            self.workdir / "admin.kubeconfig", server=self.server, ca=pki.ca.cert,
            cert=pki.admin.cert, key=pki.admin.key, user_name="pqmpc-admin",
        )
        cm_kubeconfig = write_cert_kubeconfig(
            self.workdir / "controller-manager.kubeconfig", server=self.server, ca=pki.ca.cert,
            cert=pki.controller_manager.cert, key=pki.controller_manager.key,
            user_name="system:kube-controller-manager",
        )
        controller_manager = self._spawn("kube-controller-manager", [
            str(bins["kube-controller-manager"]),
            f"--kubeconfig={cm_kubeconfig}",
            f"--controllers={','.join(self.controllers)}",
            f"--root-ca-file={pki.ca.cert}",
            f"--service-account-private-key-file={pki.sa_private_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false",
            "--secure-port=0",
            "--concurrent-gc-syncs=10",
            "--v=1",
        ])
        self._wait(controller_manager, deadline, "the controller manager's default ServiceAccount",
                   self._controllers_ready)
        log.info("control plane ready at %s, kubeconfig %s", self.server, self._kubeconfig)

    def _wait(self, proc: ManagedProcess, deadline: float, what: str, check: Callable[[], bool]) -> None:
        while True:
            code = proc.poll()
            if code is not None:
                raise ControlPlaneError(
                    f"{proc.name} exited with status {code} while waiting for {what}; "
                    f"its log ({proc.log_path}) ends with:\n{proc.log_tail()}"
                )
            if check():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"timed out after {self.start_timeout:.0f}s waiting for {what}; "
                    f"{proc.name}'s log ({proc.log_path}) ends with:\n{proc.log_tail()}"
                )
            time.sleep(0.2)

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self._require_pki()
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
        return ctx

    def _apiserver_ready(self) -> bool:
        return _http_ok(self.host, self.port, "/readyz", context=self._ssl_context())

    def _controllers_ready(self) -> bool:
        with api_client(self.kubeconfig) as api:
            core = k8s.CoreV1Api(api)
            try:
                core.read_namespaced_service_account("default", "default")
                core.read_namespaced_config_map("kube-root-ca.crt", "default")
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            return True


def _http_ok(host: str, port: int, path: str, *, context: ssl.SSLContext | None = None) -> bool:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, port, timeout=2)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=2, context=context)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


# -- command line ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``up --dir D``: start a control plane, print its kubeconfig path, run until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m pqmpc_local.controlplane", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a control plane and keep it running in the foreground")
    up.add_argument("--dir", type=Path, required=True, help="work directory (certificates, etcd data, logs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    stop_on(signal.SIGTERM, signal.SIGINT)
    plane = ControlPlane(args.dir)
    try:
        with plane:
            print(plane.kubeconfig, flush=True)
            while plane.running:
                time.sleep(1)
            log.error("a control-plane component exited; see the logs under %s", args.dir / "logs")
            return 1
    except Stopped as stop:
        log.info("stopping on %s", stop)
        return 0
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
