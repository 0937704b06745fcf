"""A pod's program for the node-agent tests: reports its env, mounted files and in-cluster API access over HTTP.

Modes (first argument): ``serve`` (default) serves JSON on $POD_IP:$PORT, ``/ready`` turns
200 after $READY_AFTER seconds; ``crash`` exits with $EXIT_CODE at once.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _in_cluster_version() -> str:
    from kubernetes import client, config

    config.load_incluster_config()
    with client.ApiClient() as api:
        return str(client.VersionApi(api).get_code().git_version)


def _resolve(name: str) -> str | None:
    try:
        return socket.gethostbyname(name) if name else None
    except OSError:
        return None


def report() -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k.startswith(("POD_", "NODE_", "SA_", "LABEL_", "SECRET_", "CONFIG_",
                                                                   "KUBERNETES_"))}
    try:
        version = _in_cluster_version()
    except Exception as exc:  # reported, asserted by the test
        version = f"error: {exc}"
    return {
        "env": env,
        "path_python": sys.executable,
        "sa_token": bool(_read(str(SA_DIR / "token"))),
        "sa_namespace": _read(str(SA_DIR / "namespace")),
        "sa_ca": (_read(str(SA_DIR / "ca.crt")) or "").startswith("-----BEGIN CERTIFICATE"),
        "secret_file": _read("/etc/pqmpc-test/secret/password"),
        "config_file": _read("/etc/pqmpc-test/config/greeting"),
        "api_version": version,
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "resolved": _resolve(os.environ.get("RESOLVE", "")),
    }


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if mode == "crash":
        print("crashing on purpose", flush=True)
        sys.exit(int(os.environ.get("EXIT_CODE", "3")))
    started = time.monotonic()
    ready_after = float(os.environ.get("READY_AFTER", "0"))
    body = json.dumps(report()).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/ready":
                ok = time.monotonic() - started >= ready_after
                self.send_response(200 if ok else 503)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer((os.environ["POD_IP"], int(os.environ.get("PORT", "8080"))), Handler)
    print(f"serving on {server.server_address}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
