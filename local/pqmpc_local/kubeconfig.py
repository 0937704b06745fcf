"""Kubeconfig files for the local control plane: client certificate or bearer token."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

__all__ = ["api_client", "write_cert_kubeconfig", "write_token_kubeconfig"]


def api_client(kubeconfig: Path) -> k8s.ApiClient:
    """A ``kubernetes`` ApiClient for ``kubeconfig``; use it as a context manager so it is closed."""
    configuration = k8s.Configuration()
    k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration
    )
    return k8s.ApiClient(configuration)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _write(path: Path, *, server: str, ca: Path, user_name: str, user: dict[str, Any], namespace: str) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "pqmpc-local", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [
            {"name": "pqmpc-local", "context": {"cluster": "pqmpc-local", "user": user_name, "namespace": namespace}}
        ],
        "current-context": "pqmpc-local",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


def write_cert_kubeconfig(
    path: Path, *, server: str, ca: Path, cert: Path, key: Path, user_name: str, namespace: str = "default"
) -> Path:
    """Write a kubeconfig that authenticates with a client certificate (embedded)."""
    user = {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}
    return _write(path, server=server, ca=ca, user_name=user_name, user=user, namespace=namespace)


def write_token_kubeconfig(
    path: Path, *, server: str, ca: Path, token: str, user_name: str, namespace: str = "default"
) -> Path:
    """Write a kubeconfig that authenticates with a bearer token."""
    return _write(path, server=server, ca=ca, user_name=user_name, user={"token": token}, namespace=namespace)
