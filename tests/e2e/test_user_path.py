"""Issue #17's newcomer path, walked on the local control plane with real helm, kubectl, Prometheus and ``pqmpc``.

One module-scoped walk, in the order a new user takes it: ``helm install`` the chart (its
operator runs as a pod of the local node agent, under the chart's ServiceAccount), read
NOTES, apply ``examples/nodepool.yaml``, apply the example session as downloaded (its
placeholder identities are refused), watch that failure reach a real Prometheus under
the session's own namespace and its series go when the session is deleted, make real
identities with ``pqmpc identity new``, extract the trust files with the NOTES'
``kubectl get configmap … -o jsonpath`` lines run verbatim, apply the session, make the
usual mistakes with the CLI, submit an Excel CSV by MPCSession name, fetch the result,
and ask for a placement the pool cannot give. The user's kubeconfig has the pool's
namespace as its context namespace (``kubectl config set-context --current
--namespace``), so every ``kubectl`` and ``pqmpc`` command is typed as a user types it.

Each assertion is on what the user sees: NOTES text, ``kubectl get -o wide`` columns,
admission and status messages, Event type/count/reporter, the CLI's lines and exit codes,
the printed values, the alert's labels and summary. Where a deeper test exists it is named
next to the check.

Issue item -> test (this module unless a path is given):

=================================================================  ====================================================================
Issue #17 item                                                     Covered by
=================================================================  ====================================================================
NOTES step 3: real identities, trust files (jsonpath), CLI          test_helm_install_notes_walk_the_newcomer_to_real_identities;
                                                                    tests/helm/test_chart_cluster.py::test_install_creates_the_chart_objects
Example pool's clientCIDRs explained for a real cluster             test_helm_install_notes_walk_the_newcomer_to_real_identities (NOTES);
                                                                    tests/crds/test_crd_admission.py (pool-client-cidr)
Example session's placeholders refused, naming field and command    test_the_example_session_as_downloaded_is_refused_with_the_command;
                                                                    tests/operator/test_sessions_cluster.py::test_invalid_identity_fails_the_session_with_the_field
Reaching node APIs from outside (SNI gateway)                       tests/e2e/test_quickstart_cluster.py, tests/gateway/
docs/quickstart-cluster.md walked                                   tests/e2e/test_quickstart_cluster.py
NodePool KEYS column set; READY/STATUS/REASON                       test_example_pool_shows_ready_status_and_key_revision
READY/STATUS honest while a node is quarantined                     tests/operator/test_nodepool_pure.py::…quarantined_node_shows_in_status…;
                                                                    tests/operator/test_quarantine_cluster.py
Admission names an undeclared allow entry / aggregate field         test_admission_refuses_undeclared_results_and_missing_outputs
                                                                    (named by the chart's ValidatingAdmissionPolicy);
                                                                    tests/crds/test_crd_admission.py
A session with no outputs refused                                   test_admission_refuses_undeclared_results_and_missing_outputs;
                                                                    tests/crds/test_crd_admission.py (session-no-outputs/empty-outputs)
kubectl get mpcs: Inputs 0/2 -> 2/2, Reason, Preprocessing (ot)     test_real_identities_session_shows_inputs_reason_and_provider,
                                                                    test_excel_csv_by_session_name_and_an_idempotent_rerun;
                                                                    tests/crds/test_crd_admission.py::test_session_status_and_columns
Empty "Unreachable Since" not shown in describe                     test_result_at_the_declared_scale_with_range_counts (describe);
                                                                    tests/crds/test_crd_admission.py::test_session_status_and_columns
--session takes the MPCSession name                                 test_excel_csv_by_session_name_and_an_idempotent_rerun;
                                                                    tests/node/test_cli_user_path.py::test_session_name_is_looked_up_in_the_cluster
Excel CSV (BOM, ';') works; wrong header shows the header found     test_excel_csv_by_session_name_and_an_idempotent_rerun;
                                                                    tests/node/test_cli_user_path.py::test_excel_csv_scaled_results_progress_and_idempotent_resubmit
Extra CSV column refused in one line                                test_cli_mistakes_get_one_line_and_no_traceback;
                                                                    tests/node/test_cli.py::test_user_mistakes_get_one_line_and_no_traceback
Missing/non-JSON --identity, missing --plan-signer: one line        test_cli_mistakes_get_one_line_and_no_traceback;
                                                                    tests/node/test_cli.py::test_user_mistakes_get_one_line_and_no_traceback
Wrong --ca (RSA) blames the CA file                                 test_cli_mistakes_get_one_line_and_no_traceback;
                                                                    tests/node/test_cli_user_path.py::test_wrong_ca_blames_the_ca_file
Identical re-submit succeeds idempotently                           test_excel_csv_by_session_name_and_an_idempotent_rerun;
                                                                    tests/node/test_cli_user_path.py (also a re-run after a partial submit)
Replacing an accepted input (signed, versioned, atomic)             not implemented: other content is refused saying so
                                                                    (tests/node/test_cli_user_path.py::test_excel_csv_…resubmit)
Progress bars, --wait spinner and timeout line                      tests/node/test_cli_user_path.py::test_result_wait_spinner_and_timeout,
                                                                    …test_excel_csv_scaled_results_progress_and_idempotent_resubmit
Large CSV split and sealed in parts                                 not covered here (lead: check the scale issue's tests)
Outputs at the declared scale                                       test_result_at_the_declared_scale_with_range_counts;
                                                                    tests/node/test_cli_user_path.py, tests/e2e/test_demo.py
Histogram .below/.above add up with the bins to the row count       test_result_at_the_declared_scale_with_range_counts;
                                                                    tests/e2e/test_demo.py, tests/node/test_cli_histogram.py
Sessions whose dealt material cannot fit                            tests/operator/test_sessions_cluster.py::test_a_session_that_cannot_fit_…
                                                                    (status, one Warning, parties, pqmpc result); the state machine,
                                                                    decide and tests/node/test_dealer_size.py (projection vs real deals)
One Warning Event per placement failure, from pqmpc-operator        test_placement_failure_is_one_warning_from_the_operator;
                                                                    tests/operator/test_sessions_cluster.py::test_impossible_placement_is_explained
placement_failures_total counts placements, not retries             tests/operator/test_session_decide.py (…same_failure_is_not_counted_again)
Alert names the session's real namespace (real Prometheus)         test_a_failed_session_alerts_under_its_namespace_and_its_series_go_with_it;
                                                                    tests/prometheus/test_alert_namespace_live.py, tests/helm/test_chart_render.py
pqmpc_session_phase removed with the session                        test_a_failed_session_alerts_under_its_namespace_and_its_series_go_with_it
=================================================================  ====================================================================
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from pqmpc_local.agent_runner import NodeAgentProcess
from pqmpc_local.controlplane import ControlPlane
from pqmpc_local.demo import DemoError, helm_binary
from pqmpc_local.operator_runner import REPO
from pqmpc_local.processes import free_port
from pqmpc_local.prometheus_config import prometheus_config
from pqmpc_local.pytest_plugin import Kubectl, kubectl_binary, wait_for
from pqmpc_node.output_scale import rounded_text

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

RELEASE = "pqmpc-newcomer"
SYSTEM_NS = "pqmpc-newcomer-system"
NS = "pq-newcomer"
OPERATOR = f"{RELEASE}-operator"
OPERATOR_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=pqmpc-operator"
PQMPC = str(Path(sys.executable).parent / "pqmpc")
BINS = [0, 100, 1000, 10000, 100000]  # the example's histogram edges


def flat(text: str) -> str:
    """Output with line wrapping undone."""
    return " ".join(text.split())


def table(text: str) -> dict[str, dict[str, str]]:
    """``kubectl get`` output as {name: {COLUMN: cell}}, cut at the header's column starts (cells may be empty)."""
    header, *rows = text.splitlines()
    names = header.split()
    starts = [header.index(f" {n} ") + 1 if i else 0 for i, n in enumerate(names[:-1])] + [header.rindex(names[-1])]
    bounds = list(zip(starts, [*starts[1:], None]))
    parsed = [{n: row[a:b].strip() for n, (a, b) in zip(names, bounds)} for row in rows if row.strip()]
    return {r["NAME"]: r for r in parsed}


@dataclass
class Newcomer:
    """The user's side of the walk: a folder, a kubeconfig whose context namespace is the pool's, the tools."""

    dir: Path
    kubectl: Kubectl
    env: dict[str, str]
    notes: str
    metrics_port: int

    def sh(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a line as the user types it (bash, in the user's folder, kubectl and pqmpc on PATH)."""
        result = subprocess.run(["bash", "-c", command], cwd=self.dir, env=self.env, capture_output=True, text=True,
                                timeout=300, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{command!r} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def pqmpc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PQMPC, *args], cwd=self.dir, env=self.env, capture_output=True, text=True,
                              timeout=300, check=False)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get("mpcs", name).get("status") or {})

    def wait_phase(self, name: str, phases: set[str], timeout: float = 120.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            st = self.status(name)
            return st if st.get("phase") in phases else None
        return dict(wait_for(f"MPCSession {name} in {sorted(phases)}", check, timeout=timeout))

    def wide(self, kind: str) -> dict[str, dict[str, str]]:
        return table(self.kubectl("get", kind, "-o", "wide").stdout)

    def events(self, name: str) -> list[dict[str, Any]]:
        return list(self.get("events", "--field-selector", f"involvedObject.name={name}")["items"])

    def operator_ip(self) -> str:
        pods = [p for p in json.loads(self.kubectl("get", "pods", "-n", SYSTEM_NS, "-l", OPERATOR_SELECTOR, "-o",
                                                   "json").stdout)["items"]
                if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
        return str(pods[0]["status"]["podIP"]) if len(pods) == 1 else ""

    def operator_metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.operator_ip()}:{self.metrics_port}/metrics",  # noqa: S310
                                    timeout=5) as r:
            return str(r.read().decode())


def _helm() -> str:
    try:
        return helm_binary()
    except DemoError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def user(control_plane: ControlPlane, kubectl: Kubectl, node_agent: NodeAgentProcess,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Newcomer]:
    """``helm install`` of the chart (watching the pool's namespace), and the user's folder and kubeconfig."""
    helm = _helm()
    home = tmp_path_factory.mktemp("newcomer")
    kubeconfig = home / "kubeconfig"
    shutil.copy(control_plane.kubeconfig, kubeconfig)
    mine = Kubectl(kubeconfig=kubeconfig, binary=kubectl_binary())
    mine("config", "set-context", "--current", f"--namespace={NS}")
    kubectl("create", "namespace", NS)
    # The operator pod binds 0.0.0.0 on the host: free ports; no cluster DNS, so nodes dial the bootstrap port here.
    live, metrics, bootstrap = free_port(), free_port(), free_port()
    install = subprocess.run(
        [helm, "install", RELEASE, str(REPO / "helm" / "pqmpc"), "--kubeconfig", str(control_plane.kubeconfig),
         "--namespace", SYSTEM_NS, "--create-namespace", "--set", f"operator.watchNamespaces={{{NS}}}",
         "--set", f"operator.livenessPort={live}", "--set", f"operator.metricsPort={metrics}",
         "--set", f"operator.bootstrapPort={bootstrap}", "--set", f"operator.bootstrapUrl=https://127.0.0.1:{bootstrap}",
         "--set", "operator.resyncSeconds=5", "--set", "operator.livenessProbe.initialDelaySeconds=2"],
        capture_output=True, text=True, timeout=180, check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "COLUMNS": "250",
           "PATH": f"{Path(kubectl_binary()).parent}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    newcomer = Newcomer(home, mine, env, install.stdout, metrics)
    try:
        newcomer.sh(f"kubectl -n {SYSTEM_NS} rollout status deployment/{OPERATOR} --timeout=180s")
        yield newcomer
    finally:
        # Sessions and pools carry kopf's finalizer: delete them while the operator still runs.
        kubectl("delete", "mpcs,mpcpool", "--all", "-n", NS, "--wait=true", "--timeout=90s", check=False)
        subprocess.run([helm, "uninstall", RELEASE, "--kubeconfig", str(control_plane.kubeconfig), "--namespace",
                        SYSTEM_NS, "--wait", "--timeout", "60s"], capture_output=True, timeout=120, check=False)
        kubectl("delete", "namespace", NS, SYSTEM_NS, "--wait=false", check=False)


@pytest.fixture(scope="module")
def pool(user: Newcomer) -> dict[str, Any]:
    """``examples/nodepool.yaml`` applied as NOTES step 2 says, until every node is ready and certified."""
    user.sh(f"kubectl apply -f {REPO / 'examples' / 'nodepool.yaml'}")

    def certified() -> dict[str, Any] | None:
        body = user.get("mpcpool", "banks")
        nodes = (body.get("status") or {}).get("nodes") or []
        ok = len(nodes) == 3 and all(n.get("ready") and n.get("certFingerprint") for n in nodes)
        return body if ok else None
    return dict(wait_for("pool banks ready with three certified nodes", certified, timeout=240, every=1.0))


@pytest.fixture(scope="module")
def prometheus(user: Newcomer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the chart's operator pod with the pqmpc rules, the target labelled with the
    operator's namespace as the chart's ServiceMonitor labels it (honorLabels, see prometheus_config)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed: run `make prometheus`")
    ip = wait_for("the operator pod's IP", user.operator_ip, timeout=60)
    work = tmp_path_factory.mktemp("prometheus")
    config = prometheus_config(operator_target=f"{ip}:{user.metrics_port}",
                               operator_labels={"namespace": SYSTEM_NS, "pod": "operator"},
                               rule_files=[str(REPO / "deploy" / "prometheus" / "pqmpc-alerts.yaml")], interval="1s")
    (work / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    with open(work / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prom(base: str, path: str) -> Any:
    try:
        with urllib.request.urlopen(f"{base}{path}", timeout=5) as r:  # noqa: S310 - localhost
            return json.loads(r.read())["data"]
    except OSError:
        return None  # still starting


def prom_query(base: str, query: str) -> list[dict[str, Any]]:
    data = prom(base, "/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    return list(data["result"]) if data else []


@pytest.fixture(scope="module")
def owners(pool: dict[str, Any], user: Newcomer) -> dict[str, dict[str, str]]:
    """Identities made as NOTES step 3 says, and the trust files written by NOTES' own jsonpath lines."""
    ids: dict[str, dict[str, str]] = {}
    for name in ("bank-a", "bank-b", "auditor"):
        out = user.sh(f"pqmpc identity new {name} --out {name}.identity.json")
        ids[name] = json.loads(out.stdout)
    lines = re.findall(r"^\s+(kubectl get configmap banks-trust .*)$", user.notes, flags=re.M)
    assert len(lines) == 2, user.notes
    for line in lines:
        user.sh(line)
    return ids


def example_session() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "examples" / "mpcsession-fraud-stats.yaml").read_text()))


@pytest.fixture(scope="module")
def session(owners: dict[str, dict[str, str]], user: Newcomer) -> dict[str, Any]:
    """The example session with the real identities pasted in, both banks also declaring a ``fee`` column
    (bank-a's Excel export then has two, so the ``;`` delimiter matters). Returns its status once AwaitingInputs."""
    doc = example_session()
    for entry in doc["spec"]["inputs"]:
        entry["identity"] = owners[entry["owner"]]["identity"]
        entry["fields"].append({"name": "fee", "min": 0, "max": 1000, "decimals": 2})
    doc["spec"]["outputs"][0]["identity"] = owners["auditor"]["kemPublicKey"]
    # JSON: a YAML dump would fold the long base64 keys.
    (user.dir / "session.json").write_text(json.dumps(doc))
    # The refused example (left Failed when the Prometheus test is skipped) goes first: a spec is immutable.
    user.sh("kubectl delete mpcs fraud-stats --ignore-not-found --wait=true --timeout=60s")
    user.sh("kubectl apply -f session.json")
    st = user.wait_phase("fraud-stats", {"AwaitingInputs", "Failed"}, timeout=180)
    assert st["phase"] == "AwaitingInputs", st
    return st


# -- the walk ------------------------------------------------------------------------------


def test_helm_install_notes_walk_the_newcomer_to_real_identities(user: Newcomer) -> None:
    notes = user.notes
    assert "STATUS: deployed" in notes
    assert f"The operator ({OPERATOR}) watches namespaces {NS}." in notes
    # Step 2: the example pool's clientCIDRs are for a local control plane, and NOTES says what to set instead.
    assert ("The example pool admits clients only from 127.0.0.0/8 (spec.clientCIDRs, for a local control\n"
            "   plane): on a real cluster set it to the networks your data owners and recipients connect from.") in notes
    # Step 3: real identities first, the placeholders are refused, the trust files by exact jsonpath, the CLI.
    step3 = notes[notes.index("3. Run a computation"):notes.index("4. Metrics")]
    assert "pqmpc identity new bank-a --out bank-a.identity.json   # prints \"identity\" and \"kemPublicKey\"" in step3
    assert "The example session carries placeholders that are refused (InvalidSpec names the field)" in step3
    assert ("# paste each owner's \"identity\" into inputs[].identity, each recipient's \"kemPublicKey\" into "
            "outputs[].identity") in step3
    assert "kubectl get configmap banks-trust -o jsonpath='{.data.ca\\.pem}' > ca.pem" in step3
    assert "kubectl get configmap banks-trust -o jsonpath='{.data.plan-signer\\.pub}' > plan-signer.pub" in step3
    assert "--session takes the MPCSession name" in flat(step3)


def test_example_pool_shows_ready_status_and_key_revision(pool: dict[str, Any], user: Newcomer) -> None:
    row = user.wide("mpcpool")["banks"]
    assert (row["READY"], row["REPLICAS"], row["STATUS"], row["REASON"], row["SUITE"]) == (
        "3", "3", "True", "AllNodesReady", "pq-default"), row
    # KEYS (the transparency log size the nodes hold) is set, and is the status field it shows.
    revision = user.get("mpcpool", "banks")["status"]["keyRevision"]
    assert row["KEYS"] == str(revision) and revision >= 3, row  # at least one logged key per node
    # Quarantine keeps READY/STATUS honest: tests/operator/test_nodepool_pure.py, test_quarantine_cluster.py.


def test_the_example_session_as_downloaded_is_refused_with_the_command(pool: dict[str, Any], user: Newcomer) -> None:
    user.sh(f"kubectl apply -f {REPO / 'examples' / 'mpcsession-fraud-stats.yaml'}")
    st = user.wait_phase("fraud-stats", {"Failed", "AwaitingInputs"})
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidSpec"), st
    assert st["message"] == (
        "spec.inputs[0].identity: is still the example's placeholder (\"replace with bank-a's ML-DSA public key\"); "
        "run `pqmpc identity new NAME --out NAME.identity.json` on the owner's or recipient's machine and paste its "
        "ML-DSA-65 public key here (the file's public part; the private key stays there)")
    row = user.wide("mpcs")["fraud-stats"]
    assert (row["PHASE"], row["REASON"]) == ("Failed", "InvalidSpec"), row
    refused = wait_for("the InvalidSpec Event", lambda: [e for e in user.events("fraud-stats")
                                                         if e["reason"] == "InvalidSpec"], timeout=60)
    assert [(e["type"], e.get("count", 1), e["source"]["component"], e["reportingComponent"]) for e in refused] == [
        ("Warning", 1, "pqmpc-operator", "pqmpc-operator")], refused
    assert refused[0]["message"] == st["message"]


def test_a_failed_session_alerts_under_its_namespace_and_its_series_go_with_it(
        pool: dict[str, Any], user: Newcomer, prometheus: str) -> None:
    """The refused example session (Failed) fires PqmpcSessionFailed naming its own namespace, not the operator's;
    deleting it removes its pqmpc_session_phase series from the operator and so from Prometheus."""
    assert user.status("fraud-stats").get("phase") == "Failed"  # left by the test above

    def firing() -> list[dict[str, Any]]:
        alerts = (prom(prometheus, "/api/v1/alerts") or {}).get("alerts") or []
        return [a for a in alerts if a["labels"].get("alertname") == "PqmpcSessionFailed" and a["state"] == "firing"]
    (alert,) = wait_for("PqmpcSessionFailed to fire", firing, timeout=120)
    assert (alert["labels"]["namespace"], alert["labels"]["session"]) == (NS, "fraud-stats"), alert
    assert alert["annotations"]["summary"] == f"MPCSession {NS}/fraud-stats failed"
    assert alert["annotations"]["description"].startswith(f"kubectl describe mpcs fraud-stats -n {NS} ")
    series = prom_query(prometheus, f'pqmpc_session_phase{{session="fraud-stats",phase="Failed"}}')
    assert [(s["metric"]["namespace"], "exported_namespace" in s["metric"]) for s in series] == [(NS, False)]

    user.sh("kubectl delete mpcs fraud-stats --wait=true --timeout=60s")
    wait_for("the operator to drop the session's pqmpc_session_phase series",
             lambda: 'session="fraud-stats"' not in user.operator_metrics(), timeout=60)
    wait_for("Prometheus to see the series gone",
             lambda: prom(prometheus, "/api/v1/query?query=up") is not None
             and not prom_query(prometheus, 'pqmpc_session_phase{session="fraud-stats"}'), timeout=60)


def test_admission_refuses_undeclared_results_and_missing_outputs(owners: dict[str, dict[str, str]],
                                                                  user: Newcomer) -> None:
    """Refused by the API server before anything exists; the deeper table is tests/crds/test_crd_admission.py."""
    def refused(name: str, change: Any) -> str:
        doc = example_session()
        doc["metadata"]["name"] = name
        for entry in doc["spec"]["inputs"]:
            entry["identity"] = owners[entry["owner"]]["identity"]
        doc["spec"]["outputs"][0]["identity"] = owners["auditor"]["kemPublicKey"]
        change(doc["spec"])
        (user.dir / f"{name}.json").write_text(json.dumps(doc))
        # The chart's admission policy is enforced once the API server has loaded it: wait for that with dry runs.
        wait_for(f"the API server to refuse {name}", lambda: user.sh(f"kubectl apply --dry-run=server -f {name}.json",
                                                                      check=False).returncode == 1, timeout=120)
        out = user.sh(f"kubectl apply -f {name}.json", check=False)
        assert out.returncode == 1 and re.search(f'The (MPCSession|mpcsessions) "{name}" is invalid', out.stderr), \
            out.stdout + out.stderr
        assert "evaluating rule" not in out.stderr and "Traceback" not in out.stderr
        return flat(out.stderr)

    no_outputs = refused("no-outputs", lambda s: s.pop("outputs"))
    assert "spec.outputs: Required value" in no_outputs, no_outputs
    # The chart's ValidatingAdmissionPolicy names the bad value (CRD rules cannot within their cost budget).
    allow = refused("undeclared-allow", lambda s: s["outputs"][0]["allow"].append("sum(amount)"))
    assert ("spec.outputs[].allow: sum(amount) is not a result the program computes; allow only results of "
            "spec.program (count(amount), mean(amount), variance(amount), histogram(amount))") in allow, allow
    field = refused("undeclared-field", lambda s: s["program"]["aggregate"].append({"op": "sum", "field": "income"}))
    assert ("spec.program.aggregate[].field: income is not declared in spec.inputs[].fields; declare the field on "
            "the inputs or fix its name") in field, field
    assert user.kubectl("get", "mpcs", "-o", "name").stdout.strip() == ""  # nothing was created


def test_real_identities_session_shows_inputs_reason_and_provider(session: dict[str, Any], user: Newcomer) -> None:
    row = user.wide("mpcs")["fraud-stats"]
    assert (row["PHASE"], row["INPUTS"], row["REASON"], row["PREPROCESSING"]) == (
        "AwaitingInputs", "0/2", "PlanDelivered", "ot"), row
    assert session["preprocessing"]["dealerFree"] == "true"


def rsa_certificate() -> bytes:
    """A self-signed RSA certificate: what a user may take for "the CA" from their company's bundle."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corporate-root")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(Encoding.PEM)


def test_cli_mistakes_get_one_line_and_no_traceback(session: dict[str, Any], user: Newcomer) -> None:
    """Each mistake: exit 1, exactly one ``error:`` line saying what to do, no traceback, nothing sent.
    The same cases against bare node processes: tests/node/test_cli.py, tests/node/test_cli_user_path.py."""
    node = session["result"]["nodes"][0]
    (user.dir / "extra-column.csv").write_bytes("\ufeffamount;fee;note\r\n12.50;1.00;refund\r\n".encode())
    (user.dir / "good.csv").write_text("amount,fee\n1,0\n")
    (user.dir / "broken.identity.json").write_text("{not json")
    (user.dir / "corporate-root.pem").write_bytes(rsa_certificate())
    sid = session["sessionId"]
    trust = ["--ca", "ca.pem", "--plan-signer", "plan-signer.pub"]
    cases = {
        "extra column": (["--identity", "bank-a.identity.json", *trust, "extra-column.csv"],
                         f"error: column(s) ['note'] are not fields of session {sid}: the header found is "
                         "['amount', 'fee', 'note'] (';'-delimited), the session declares ['amount', 'fee']; remove "
                         "them, or check that this is the file you meant to submit"),
        "missing identity": (["--identity", "bank-a.json", *trust, "good.csv"],
                             "error: cannot read identity file bank-a.json: [Errno 2] No such file or directory: "
                             "'bank-a.json'; create one with `pqmpc identity new`"),
        "identity not JSON": (["--identity", "broken.identity.json", *trust, "good.csv"],
                              "error: cannot read identity file broken.identity.json: Expecting property name enclosed "
                              "in double quotes: line 1 column 2 (char 1); create one with `pqmpc identity new`"),
        "missing plan signer": (["--identity", "bank-a.identity.json", "--ca", "ca.pem", "--plan-signer", "signer.pub",
                                 "good.csv"],
                                "error: --plan-signer signer.pub: no such file; it is plan-signer.pub of the pool's "
                                "<pool>-trust ConfigMap"),
        "RSA certificate as --ca": (["--identity", "bank-a.identity.json", "--ca", "corporate-root.pem",
                                     "--plan-signer", "plan-signer.pub", "good.csv"],
                                    "error: --ca corporate-root.pem: a certificate with an RSA-2048 key, not a pqmpc "
                                    "pool CA; pass the pool's CA certificate (an ML-DSA certificate): kubectl get "
                                    "configmap <pool>-trust -n <namespace> -o jsonpath='{.data.ca\\.pem}' > ca.pem"),
    }
    for what, (args, says) in cases.items():
        r = user.pqmpc("submit", "--session", "fraud-stats", "--node", node, *args)
        output = r.stdout + r.stderr
        assert r.returncode == 1, (what, output)
        assert "Traceback" not in output, (what, output)
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert errors == [says], (what, output)
        # Besides the error, at most the note resolving the MPCSession name.
        assert set(output.splitlines()) - {says} <= {f"MPCSession {NS}/fraud-stats is session {sid}"}, (what, output)
    assert user.wide("mpcs")["fraud-stats"]["INPUTS"] == "0/2"  # nothing reached a node


BANK_A = ["233.28", "12.50", "99.99", "150000.00", "430.10"]  # one row above the last edge
BANK_B = ["5000.00", "0.01", "100000.00", "250.00"]


def test_excel_csv_by_session_name_and_an_idempotent_rerun(session: dict[str, Any], user: Newcomer) -> None:
    node = session["result"]["nodes"][0]
    sid = session["sessionId"]
    # Saved by Excel as "CSV UTF-8" with a ';' list separator: byte-order mark, CRLF, semicolons.
    excel = "\ufeffamount;fee\r\n" + "".join(f"{v};1.25\r\n" for v in BANK_A)
    (user.dir / "bank-a.csv").write_bytes(excel.encode())
    (user.dir / "bank-b.csv").write_text("amount,fee\n" + "".join(f"{v},0.50\n" for v in BANK_B))
    trust = ["--node", node, "--ca", "ca.pem", "--plan-signer", "plan-signer.pub"]
    submit_a = ["submit", "--session", "fraud-stats", "--identity", "bank-a.identity.json", *trust, "bank-a.csv"]
    r = user.pqmpc(*submit_a)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"MPCSession {NS}/fraud-stats is session {sid}" in r.stderr  # the name, looked up with the kubeconfig
    assert r.stdout.strip() == f"submitted to 2 nodes of session {sid}", r.stdout
    wait_for("INPUTS 1/2", lambda: user.wide("mpcs")["fraud-stats"]["INPUTS"] == "1/2", timeout=60)
    # The identical command again: success, nothing changed (the README calls submit idempotent).
    r = user.pqmpc(*submit_a)
    assert r.returncode == 0, r.stdout + r.stderr
    assert flat(r.stdout) == (f"already submitted: the 2 nodes of session {sid} hold this very input "
                              "(same content, version 1); nothing changed"), r.stdout
    assert user.wide("mpcs")["fraud-stats"]["INPUTS"] == "1/2"
    r = user.pqmpc("submit", "--session", "fraud-stats", "--identity", "bank-b.identity.json", *trust, "bank-b.csv")
    assert r.returncode == 0, r.stdout + r.stderr
    row = wait_for("INPUTS 2/2", lambda: (lambda row: row if row["INPUTS"] == "2/2" else None)(
        user.wide("mpcs")["fraud-stats"]), timeout=60)
    assert row["PHASE"] in {"Computing", "Succeeded"}, row


def test_result_at_the_declared_scale_with_range_counts(session: dict[str, Any], user: Newcomer) -> None:
    node = session["result"]["nodes"][0]
    args = ["result", "--session", "fraud-stats", "--identity", "auditor.identity.json", "--node", node,
            "--ca", "ca.pem", "--plan-signer", "plan-signer.pub", "--wait", "240"]
    r = user.pqmpc(*args)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    values = [Fraction(v) for v in BANK_A + BANK_B]
    n = len(values)
    mean = sum(values, Fraction(0)) / n
    variance = sum((v * v for v in values), Fraction(0)) / n - mean * mean
    # Shown at the field's declared scale (decimals 2, mean and variance + 2): exact rounding, no float noise.
    cells = {m.group(1).strip(): m.group(2) for m in re.finditer(r"│ (.+?) +│ +(.+?) │", r.stdout)}
    assert cells["count(amount)"] == str(n)
    assert cells["mean(amount)"] == rounded_text(mean, 4), r.stdout
    assert cells["variance(amount)"] == rounded_text(variance, 4), r.stdout
    counts = [sum(1 for v in values if lo <= v < hi) for lo, hi in zip(BINS, BINS[1:-1])]
    counts.append(sum(1 for v in values if BINS[-2] <= v <= BINS[-1]))
    assert cells["histogram(amount)"] == str(counts), r.stdout
    # The rows outside the edges are counted, labelled with the edge, and everything adds up to the row count.
    assert cells["histogram(amount) below 0"] == "0" and cells["histogram(amount) above 100000"] == "1", r.stdout
    assert sum(counts) + 0 + 1 == n
    r = user.pqmpc(*args, "--json")
    doc = json.loads(r.stdout)
    outputs = doc["outputs"]
    assert outputs["mean(amount)"] == float(rounded_text(mean, 4)) and Fraction(doc["exact"]["mean(amount)"]) == mean
    assert outputs["histogram(amount)"] == counts
    assert sum(outputs["histogram(amount)"]) + outputs["histogram(amount).below"] + \
        outputs["histogram(amount).above"] == outputs["count(amount)"] == n
    st = user.wait_phase("fraud-stats", {"Succeeded", "Failed"}, timeout=120)
    assert (st["phase"], st["reason"]) == ("Succeeded", "Completed"), st
    # Every party answered: describe shows no empty "Unreachable Since" (tests/crds/test_crd_admission.py).
    assert "Unreachable Since" not in user.kubectl("describe", "mpcs", "fraud-stats").stdout


def test_placement_failure_is_one_warning_from_the_operator(owners: dict[str, dict[str, str]],
                                                            user: Newcomer) -> None:
    """Four parties on a three-node pool; the deeper cases: tests/operator/test_sessions_cluster.py."""
    doc = example_session()
    doc["metadata"]["name"] = "four-banks"
    doc["spec"].update(parties=4, threshold=1)
    for entry in doc["spec"]["inputs"]:
        entry["identity"] = owners[entry["owner"]]["identity"]
        entry.pop("locality")
    doc["spec"]["outputs"][0]["identity"] = owners["auditor"]["kemPublicKey"]
    (user.dir / "four-banks.json").write_text(json.dumps(doc))
    user.sh("kubectl apply -f four-banks.json")
    st = user.wait_phase("four-banks", {"Placing", "AwaitingInputs", "Failed"})
    assert (st["phase"], st["reason"]) == ("Placing", "NotEnoughReadyNodes"), st
    assert "need 4" in st["message"] and "has 3" in st["message"], st["message"]
    assert user.wide("mpcs")["four-banks"]["REASON"] == "NotEnoughReadyNodes"
    # kopf posts Events in the background: wait for the failure's, then check it is the only one.
    failed = wait_for("the NotEnoughReadyNodes Event", lambda: [e for e in user.events("four-banks")
                                                                if e["reason"] == "NotEnoughReadyNodes"], timeout=60)
    # One Warning, counted once, reported by the operator (not kopf), and no Normal twin.
    assert [(e["type"], e.get("count", 1), e["source"]["component"], e["reportingComponent"]) for e in failed] == [
        ("Warning", 1, "pqmpc-operator", "pqmpc-operator")], failed
    assert not [e for e in user.events("four-banks") if e["type"] == "Normal" and "Placed" in e["reason"]]
