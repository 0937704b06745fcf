"""Workload-attested node bootstrap, attacked on the real local control plane.

The operator (a real process under its least-privilege ServiceAccount) serves bootstrap
over PQ-TLS and checks every token with the real API server's TokenReview; the tokens
here are minted by the real TokenRequest API, as the local node agent mints the pods'
projected tokens (as a kubelet does). Each attack posts a CSR for a real node pod of the
pool and must be refused with its reason, counted, and leave the pool's transparency log
untouched: no certificate is issued. A control with the genuine token shows the same
request succeeds, so the refusals are the checks' doing.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography import x509
from kubernetes import client as k8s

from pqmpc_local.controlplane import ControlPlane
from pqmpc_local.kubeconfig import api_client
from pqmpc_local.operator_runner import OperatorProcess, start_operator
from pqmpc_local.pytest_plugin import Kubectl, wait_for
from pqmpc_node.bootstrap_request import BOOTSTRAP_PATH, BootstrapRequest
from pqmpc_node.crypto.kemkeys import KeyRotationPolicy
from pqmpc_node.crypto.pki import (
    BOOTSTRAP_AUDIENCE,
    NodeId,
    bootstrap_server_name,
    suite_of_ca,
    verify_operator_certificate,
)
from pqmpc_node.keystore import NodeKeys
from pqmpc_node.net.https import pq_transport

NS = "pq-attest"
POOL = "att"
VICTIM, OTHER = "att-a-0", "att-a-1"


def get_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-n", NS, "-o", "json").stdout)


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, node_agent: object, kubectl: Kubectl,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    kubectl("create", "namespace", NS, check=False)
    op = start_operator(control_plane, tmp_path_factory.mktemp("op-attest"), args=["--namespace", NS],
                        resync_seconds=3)
    pool = {"apiVersion": "pqmpc.io/v1alpha1", "kind": "NodePool", "metadata": {"name": POOL, "namespace": NS},
            "spec": {"engine": {"backend": "numpy"},
                     "groups": [{"name": "a", "replicas": 2, "region": "eu-west", "zone": "eu-west-1a",
                                 "trustDomain": "org-a"}]}}
    kubectl("apply", "-f", "-", input=json.dumps(pool))

    def ready() -> bool:
        nodes = (get_json(kubectl, "mpcpool", POOL).get("status") or {}).get("nodes") or []
        return len(nodes) == 2 and all(n.get("ready") and n.get("certFingerprint") for n in nodes)

    try:
        wait_for("pool att Ready: both nodes bootstrapped with their pod-bound tokens", ready, timeout=180)
    except BaseException:
        print(op.process.log_tail(60))
        raise
    yield op
    kubectl("delete", "mpcpool", POOL, "-n", NS, "--wait=true", "--timeout=60s", check=False)
    op.stop()


@pytest.fixture(scope="module")
def core(control_plane: ControlPlane) -> Iterator[k8s.CoreV1Api]:
    with api_client(control_plane.kubeconfig) as api:
        yield k8s.CoreV1Api(api)


def ca_certificate(kubectl: Kubectl) -> x509.Certificate:
    pem = get_json(kubectl, "configmap", f"{POOL}-trust")["data"]["ca.pem"]
    return x509.load_pem_x509_certificate(pem.encode())


def log_size(kubectl: Kubectl) -> int:
    entries = get_json(kubectl, "configmap", f"{POOL}-keylog")["data"].get("entries", "")
    return len([line for line in entries.splitlines() if line])


def mint(core: k8s.CoreV1Api, *, sa: str = f"{POOL}-node", pod: str | None = VICTIM,
         audience: str | None = BOOTSTRAP_AUDIENCE) -> str:
    """A token from the real TokenRequest API (bound to ``pod`` when given)."""
    spec: dict[str, Any] = {"audiences": [audience] if audience else [], "expirationSeconds": 600}
    if pod is not None:
        uid = core.read_namespaced_pod(pod, NS).metadata.uid
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    return str(core.create_namespaced_service_account_token(sa, NS, body).status.token)


def bootstrap(op: OperatorProcess, kubectl: Kubectl, token: str, node_id: str = VICTIM,
              **transport: Any) -> httpx.Response:
    """What a node sends: a fresh key's CSR document for ``node_id`` and ``token``, over PQ-TLS to the operator."""
    ca = ca_certificate(kubectl)
    suite = suite_of_ca(ca)
    now = dt.datetime.now(dt.timezone.utc)
    keys = NodeKeys.generate(suite=suite, node_id=NodeId(node_id), dns_name=f"{node_id}.{POOL}-nodes.{NS}.svc",
                             ca_certificate=ca, rng=os.urandom, now=now,
                             policy=KeyRotationPolicy(dt.timedelta(hours=24), dt.timedelta(hours=8),
                                                      dt.timedelta(hours=1)))
    name = bootstrap_server_name(POOL, NS)

    def operator_only(cert: x509.Certificate, _host: str) -> None:
        verify_operator_certificate(cert, ca_certificate=ca, suite=suite, server_name=name, now=now)

    request = BootstrapRequest(NS, POOL, node_id, keys.csr_document(), token)
    with httpx.Client(transport=pq_transport(ca, suite, verify_peer=operator_only, **transport), timeout=30) as http:
        return http.post(f"https://127.0.0.1:{op.bootstrap_port}{BOOTSTRAP_PATH}", json=request.to_json(),
                         extensions={"sni_hostname": name})


def outcome_count(op: OperatorProcess, outcome: str) -> float:
    for line in op.metrics().splitlines():
        if line.startswith("pqmpc_operator_bootstrap_requests_total{") and f'outcome="{outcome}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def refused(op: OperatorProcess, kubectl: Kubectl, token: str, reason: str, node_id: str = VICTIM) -> str:
    before, counted = log_size(kubectl), outcome_count(op, reason)
    r = bootstrap(op, kubectl, token, node_id)
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["reason"] == reason, error
    assert "certificate" not in r.json()
    assert log_size(kubectl) == before  # nothing was issued or logged
    assert outcome_count(op, reason) == counted + 1
    return str(error["message"])


def test_a_token_relayed_from_another_pod_is_refused(operator: OperatorProcess, kubectl: Kubectl,
                                                     core: k8s.CoreV1Api) -> None:
    message = refused(operator, kubectl, mint(core, pod=OTHER), "wrong_pod")
    assert OTHER in message and VICTIM in message


def test_a_token_for_another_audience_is_refused(operator: OperatorProcess, kubectl: Kubectl,
                                                 core: k8s.CoreV1Api) -> None:
    """A genuine pod-bound token, but minted for the API server (what an automounted token is)."""
    message = refused(operator, kubectl, mint(core, audience=None), "token_rejected")
    assert "audience" in message.lower(), message


def test_a_token_bound_to_no_pod_is_refused(operator: OperatorProcess, kubectl: Kubectl, core: k8s.CoreV1Api) -> None:
    refused(operator, kubectl, mint(core, pod=None), "unbound_token")


def test_a_token_of_another_service_account_is_refused(operator: OperatorProcess, kubectl: Kubectl,
                                                       core: k8s.CoreV1Api) -> None:
    """(The API server itself refuses to bind another ServiceAccount's token to the node pod.)"""
    refused(operator, kubectl, mint(core, sa="default", pod=None), "wrong_service_account")


def test_a_pod_the_operator_did_not_create_is_refused(operator: OperatorProcess, kubectl: Kubectl,
                                                      core: k8s.CoreV1Api) -> None:
    """Same ServiceAccount and pool labels, but no owner reference to the pool: someone else's pod."""
    rogue = "att-a-9"
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": rogue, "namespace": NS,
                        "labels": {"app.kubernetes.io/name": "pqmpc-node", "pqmpc.io/pool": POOL}},
           "spec": {"serviceAccountName": f"{POOL}-node", "automountServiceAccountToken": False,
                    "nodeSelector": {"pqmpc.io/no-such-node": "true"},  # stays Pending: it never runs
                    "containers": [{"name": "x", "image": "none", "command": ["true"]}]}}
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        refused(operator, kubectl, mint(core, pod=rogue), "foreign_pod", node_id=rogue)
    finally:
        kubectl("delete", "pod", rogue, "-n", NS, "--wait=false", check=False)


def test_a_forged_token_is_refused(operator: OperatorProcess, kubectl: Kubectl) -> None:
    header_payload = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6cHEtYXR0ZXN0OmF0dC1ub2RlIn0"
    refused(operator, kubectl, header_payload + ".c2lnbmF0dXJl", "token_rejected")


def test_a_classical_only_client_cannot_reach_the_bootstrap_port(operator: OperatorProcess, kubectl: Kubectl,
                                                                 core: k8s.CoreV1Api) -> None:
    before = outcome_count(operator, "tls_no_shared_group")
    with pytest.raises(httpx.ConnectError):
        bootstrap(operator, kubectl, mint(core), offer_groups=["X25519"])
    # The server counts the refusal once it has sent its alert, a moment after the client saw it.
    wait_for("the operator to count the refused handshake",
             lambda: outcome_count(operator, "tls_no_shared_group") == before + 1, timeout=30, every=0.1)


def test_the_genuine_bound_token_gets_a_certificate(operator: OperatorProcess, kubectl: Kubectl,
                                                    core: k8s.CoreV1Api) -> None:
    """The control: the same request with the pod's own token for the bootstrap audience succeeds."""
    before = log_size(kubectl)
    r = bootstrap(operator, kubectl, mint(core))
    assert r.status_code == 200, r.text
    cert = x509.load_der_x509_certificate(base64.b64decode(r.json()["certificate"]))
    assert f"urn:pqmpc:node:{VICTIM}" in str(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName))
    wait_for("the new certificate in the persisted log", lambda: log_size(kubectl) > before, timeout=30)
