"""docs/quickstart-cluster.md, walked on the local control plane: owners and a recipient outside the
cluster reach the node APIs through the pool's SNI gateway.

Every ``sh`` block of the document carries a ``<!-- quickstart-test: run | skip (why) |
instead: LINE -->`` marker (checked here, so a new block cannot be silently left out). The
``run`` blocks run in order in one ``bash -euo pipefail`` with the admin kubeconfig, the
venv's kubectl and pqmpc first on PATH; an ``instead`` block runs its line (the gateway pod's
address, as the local control plane has no load balancer). Before that the operator runs
as a local process (``helm install`` is tests/helm's), with the gateway pods started from
this checkout. Then: the files the document's ``kubectl get cm … -o jsonpath`` commands
wrote are the ConfigMap's data; the result the recipient fetched through the gateway is
the plaintext's; the gateway pod (started by the operator's Deployment, reading pods with
its Role only) routed by SNI to both parties; an unknown node name is refused with one
line, by the gateway, and the operator made the gateway's objects as the builders say.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from pqmpc_local.agent_runner import NodeAgentProcess
from pqmpc_local.controlplane import ControlPlane
from pqmpc_local.operator_runner import REPO, OperatorProcess, start_operator
from pqmpc_local.pytest_plugin import Kubectl, kubectl_binary

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]

DOC = REPO / "docs" / "quickstart-cluster.md"
NS = "banks"
MARKER = re.compile(r"<!-- quickstart-test: (run|skip \([^)]*\)|instead: (?P<line>.+?)) -->\s*$")


@dataclass(frozen=True)
class Block:
    """One ``sh`` block of the document and what the test does with it."""

    action: str  # run | skip | instead
    text: str
    line: int


def doc_blocks(text: str) -> list[Block]:
    """The document's ``sh`` blocks with their markers; a block without a marker is an error."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            marker = MARKER.match(lines[j].strip()) if j >= 0 else None
            if marker is None:
                raise AssertionError(f"{DOC.name}:{i + 1}: an sh block without a quickstart-test marker")
            end = lines.index("```", i + 1)
            body = "\n".join(lines[i + 1:end])
            action = marker.group(1).split()[0].rstrip(":")
            blocks.append(Block(action, marker.group("line") if action == "instead" else body, i + 1))
            i = end
        i += 1
    return blocks


def test_every_block_is_marked_and_the_runnable_ones_are_the_path() -> None:
    blocks = doc_blocks(DOC.read_text())
    actions = [b.action for b in blocks]
    assert actions.count("instead") == 1 and "run" in actions
    run = "\n".join(b.text for b in blocks if b.action in ("run", "instead"))
    for step in ("kubectl apply -n banks", "externalAccess:", "jsonpath='{.data.ca\\.pem}'",
                 "jsonpath='{.data.plan-signer\\.pub}'", "pqmpc identity new", "pqmpc submit", "pqmpc result",
                 "--gateway \"$GATEWAY\""):
        assert step in run, step
    skipped = "\n".join(b.text for b in blocks if b.action == "skip")
    assert "make image" in skipped and "helm install" in skipped


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, node_agent: NodeAgentProcess, kubectl: Kubectl,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("quickstart-operator")
    # The gateway pods run this checkout's pqmpc_node (the venv may be installed from another one).
    command = f"env PYTHONPATH={REPO / 'node'} python -m pqmpc_node.gateway"
    op = start_operator(control_plane, workdir, args=["--namespace", NS], resync_seconds=5,
                        extra_env={"PQMPC_GATEWAY_COMMAND": command})
    try:
        yield op
    finally:
        kubectl("delete", "mpcs,mpcpool", "--all", "-n", NS, "--wait=true", "--timeout=60s", check=False)
        op.stop()
        kubectl("delete", "namespace", NS, "--wait=false", check=False)


@dataclass
class Walk:
    """The shell's outcome and the folder it ran in."""

    result: subprocess.CompletedProcess[str]
    workdir: Path


@pytest.fixture(scope="module")
def walk(operator: OperatorProcess, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory,
         node_agent: NodeAgentProcess) -> Walk:
    workdir = tmp_path_factory.mktemp("quickstart")
    blocks = doc_blocks(DOC.read_text())
    script = ["set -euo pipefail"]
    for b in blocks:
        if b.action in ("run", "instead"):
            script += [f"echo '+++ {DOC.name}:{b.line}' >&2", b.text]
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "PATH": f"{Path(kubectl_binary()).parent}:{venv_bin}:{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=720, check=False)
    if result.returncode != 0:
        pytest.fail(f"the quickstart's commands failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-5000:]}\noperator:\n{operator.process.log_tail(40)}\n"
                    f"agent:\n{node_agent.log_tail(30)}")
    return Walk(result, workdir)


def get_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-n", NS, "-o", "json").stdout)


def test_jsonpath_commands_write_the_trust_files(walk: Walk, kubectl: Kubectl) -> None:
    data = get_json(kubectl, "configmap", "banks-trust")["data"]
    assert (walk.workdir / "ca.pem").read_text() == data["ca.pem"]
    assert (walk.workdir / "plan-signer.pub").read_text() == data["plan-signer.pub"]
    assert data["ca.pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PUBLIC KEY" in data["plan-signer.pub"]


def test_result_through_the_gateway_is_the_plaintexts(walk: Walk) -> None:
    values = [Fraction(v) for v in ("120.50", "89.99", "4310.00", "15.25", "999.99", "56.10", "20000.00", "310.40")]
    res = json.loads((walk.workdir / "result.json").read_text())
    outputs = res["outputs"]
    assert outputs["count(amount)"] == len(values)
    mean = sum(values) / len(values)
    assert abs(Fraction(str(outputs["mean(amount)"])) - mean) <= Fraction(1, 100)
    assert re.search(r"ok.* node banks-bank-a-eu-0: KEM key epoch \d+ is certified and logged", walk.result.stdout)
    assert walk.result.stdout.count("submitted") == 2


def gateway_pod(kubectl: Kubectl) -> dict[str, Any]:
    pods = get_json(kubectl, "pods", "-l", "app.kubernetes.io/name=pqmpc-gateway")["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert len(running) == 1, [p["metadata"]["name"] for p in pods]
    return dict(running[0])


def test_the_operators_gateway_routed_to_both_parties_by_sni(walk: Walk, kubectl: Kubectl,
                                                             node_agent: NodeAgentProcess) -> None:
    status = get_json(kubectl, "mpcs", "fraud-stats")["status"]
    placed = [p["node"] for p in status["placement"]]
    assert len(placed) == 2
    assert status["result"]["externalNodes"] == [f"https://{n}.banks.mpc.example.com" for n in placed]
    assert "--gateway <address of Service banks-gateway>:443" in status["result"]["recipients"][0]["fetchFromOutside"]
    pod = gateway_pod(kubectl)
    logs = node_agent.pod_logs(NS, pod["metadata"]["name"], 2000)
    for node in placed:
        assert re.search(rf"-> {re.escape(node)} \(127\.0\.0\.\d+:8443\)", logs), (node, logs[-3000:])
    # Read with the Role's rights from inside its pod: no kubeconfig, the in-cluster token.
    assert "3 routable nodes" in logs, logs[-3000:]
    assert pod["spec"]["serviceAccountName"] == "banks-gateway"


def test_unknown_node_is_refused_by_the_gateway_in_one_line(walk: Walk, kubectl: Kubectl,
                                                             node_agent: NodeAgentProcess) -> None:
    pod = gateway_pod(kubectl)
    address = f"{pod['status']['podIP']}:8443"
    pqmpc = Path(sys.executable).parent / "pqmpc"
    out = subprocess.run([str(pqmpc), "keys", "fetch", "--gateway", address, "--node",
                          "https://banks-nobody-0.banks.mpc.example.com", "--ca", str(walk.workdir / "ca.pem")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "unrecognized name" in out.stderr.lower() or "unrecognized_name" in out.stderr.lower(), out.stderr
    logs = node_agent.pod_logs(NS, pod["metadata"]["name"], 2000)
    assert "unknown_node" in logs and "banks-nobody-0" in logs


def test_operator_made_the_gateway_objects(walk: Walk, kubectl: Kubectl) -> None:
    svc = get_json(kubectl, "service", "banks-gateway")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(443, "tls")]
    assert svc["spec"]["ports"][0].get("nodePort")  # allocated by the API server; nothing routes it locally
    role = get_json(kubectl, "role", "banks-gateway")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    deployment = get_json(kubectl, "deployment", "banks-gateway")
    assert deployment["status"].get("readyReplicas") == 1
    policy = get_json(kubectl, "networkpolicy", "banks-nodes")
    assert any(rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "pqmpc-gateway",
                                                                 "pqmpc.io/pool": "banks"}}}]
               for rule in policy["spec"]["ingress"])


def test_a_node_whose_certificate_lacks_the_name_is_refused(walk: Walk, kubeconfig: Path, tmp_path: Path) -> None:
    """A second gateway for another domain routes to the same nodes, whose certificates do not name it: the CLI
    refuses the node (the name check, not only the node identity), and says what to do."""
    from pqmpc_local.processes import ManagedProcess, free_port

    port = free_port()
    proc = ManagedProcess("gateway-other-domain", [sys.executable, "-m", "pqmpc_node.gateway", "--namespace", NS,
                                                   "--pool", "banks", "--domain", "other.example.org", "--listen",
                                                   f"127.0.0.1:{port}", "--kubeconfig", str(kubeconfig)],
                          log_path=tmp_path / "gateway.log", env=dict(os.environ), cwd=REPO)
    try:
        def routable() -> bool:
            return "3 routable nodes" in (tmp_path / "gateway.log").read_text(errors="replace")
        from pqmpc_local.pytest_plugin import wait_for
        wait_for("the second gateway to list the pool's nodes", routable, timeout=60)
        pqmpc = Path(sys.executable).parent / "pqmpc"
        out = subprocess.run([str(pqmpc), "keys", "verify", "--gateway", f"127.0.0.1:{port}", "--node",
                              "https://banks-bank-a-eu-0.other.example.org", "--ca", str(walk.workdir / "ca.pem")],
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 1, out.stdout
        assert "Traceback" not in out.stderr
        assert "does not name banks-bank-a-eu-0.other.example.org" in " ".join(out.stderr.split()), out.stderr
        log = (tmp_path / "gateway.log").read_text(errors="replace")
        assert re.search(r"-> banks-bank-a-eu-0 \(127\.0\.0\.\d+:8443\)", log), log[-2000:]
    finally:
        proc.stop()


def test_turning_external_access_off_removes_the_gateway(walk: Walk, kubectl: Kubectl) -> None:
    """Last in the module: the operator deletes the gateway objects it owns (RBAC delete, uid precondition)."""
    from pqmpc_local.pytest_plugin import wait_for

    kubectl("patch", "mpcpool", "banks", "-n", NS, "--type=json",
            "-p", '[{"op": "remove", "path": "/spec/externalAccess"}]')

    def gone() -> bool:
        out = kubectl("get", "deployment,service,role,rolebinding,serviceaccount", "-n", NS,
                      "--field-selector", "metadata.name=banks-gateway", "-o", "name").stdout
        return not out.strip()
    wait_for("the gateway objects to be deleted", gone, timeout=120)
    policy = get_json(kubectl, "networkpolicy", "banks-nodes")
    assert not any("pqmpc-gateway" in json.dumps(rule["from"]) for rule in policy["spec"]["ingress"])

    # The idle nodes are re-certified without the external name (the names changed), not at their next renewal.
    from cryptography import x509

    from pqmpc_node.client import node_http_client
    from pqmpc_node.net.https import peer_certificate

    ca = x509.load_pem_x509_certificate((walk.workdir / "ca.pem").read_bytes())
    ip = get_json(kubectl, "pod", "banks-bank-a-eu-0")["status"]["podIP"]

    def names() -> list[str]:
        with node_http_client(ca) as http:
            cert = peer_certificate(http.get(f"https://{ip}:8443/v1/keys"))
        assert cert is not None
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                    .get_values_for_type(x509.DNSName))

    wait_for("banks-bank-a-eu-0 re-certified without its external name",
             lambda: names() == ["banks-bank-a-eu-0.banks-nodes.banks.svc"], timeout=120)
