"""The pqmpc CLI as a new user meets it, against real node processes (issue 17, CLI items).

- a CSV saved by Excel (UTF-8 byte-order mark, ``;`` delimiter) is read; a header that
  does not match shows the header found and the fields expected;
- results are printed at each output's declared scale, in the table and in ``--json``
  (exact decimal literals; integers stay integers; ``exact`` stays exact);
- a wrong ``--ca`` (RSA, EC, not a certificate, another pool's CA) blames the CA file;
- progress bars on stderr with ``--progress`` (never on stdout), a ``--wait`` spinner and
  a one-line timeout;
- re-running the identical ``submit`` succeeds (already accepted), other content is
  refused saying to pass ``--replace`` (test_input_replacement.py covers replacing); a re-run after only one node accepted
  completes with shares of one sharing (the result is right);
- ``--session`` takes the MPCSession name, looked up with the kubeconfig on the real
  local control plane.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from harness import Operator, now
from pqmpc_local.pytest_plugin import Kubectl, wait_for
from pqmpc_node.cli import app
from pqmpc_node.client import Identity, SessionClient, read_csv, sniff_delimiter
from pqmpc_node.crypto.pki import PoolCA
from pqmpc_node.crypto.suites import SuiteName, get_suite
from pqmpc_node.mpc.programs import LinearScorePlan
from pqmpc_node.output_scale import output_decimals, rounded_text
from pqmpc_node.plan import FieldDecl
from pqmpc_node.session_lookup import (
    KubeSessionLookup,
    LookupAnswer,
    SessionLookupError,
    looks_like_session_id,
    resolve_session,
)
from test_cli import trust_files

REPO = Path(__file__).resolve().parents[2]


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def identities(tmp_path: Path, *names: str) -> list[Identity]:
    runner = CliRunner()
    for name in names:
        r = runner.invoke(app, ["identity", "new", name, "--out", str(tmp_path / f"{name}.json")])
        assert r.exit_code == 0, r.output
    return [Identity.load(tmp_path / f"{name}.json") for name in names]


def self_signed(key: Any) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-a-pool-ca")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now() - dt.timedelta(hours=1))
            .not_valid_after(now() + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(Encoding.PEM)


# -- pure parts -----------------------------------------------------------------------


def test_delimiter_is_sniffed_from_the_header_line() -> None:
    assert sniff_delimiter("amount;age") == ";"
    assert sniff_delimiter("amount\tage") == "\t"
    assert sniff_delimiter("amount,age") == ","
    assert sniff_delimiter("amount") == ","  # one column: nothing to tell, the default
    assert sniff_delimiter('"a;b",c') == ","  # a quoted delimiter does not count


def test_excel_csv_with_bom_and_semicolons_is_read(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffamount;age\r\n233.28;41\r\n100;7\r\n\r\n".encode())
    cols = read_csv(path)
    assert dict(cols) == {"amount": ["233.28", "100"], "age": ["41", "7"]}
    assert cols.header == ["amount", "age"] and cols.delimiter == ";"
    (tmp_path / "latin1.csv").write_bytes("montant;\xe2ge\n1;2\n".encode("latin-1"))
    with pytest.raises(Exception, match="not UTF-8 text; save it as \"CSV UTF-8\""):
        read_csv(tmp_path / "latin1.csv")


def test_values_are_rounded_exactly_half_to_even() -> None:
    assert rounded_text(Fraction(38329, 300), 4) == "127.7633"
    assert rounded_text(Fraction(-1, 8), 2) == "-0.12"  # half to even
    assert rounded_text(Fraction(3, 8), 2) == "0.38"
    assert rounded_text(Fraction(5, 2), 0) == "2"
    assert rounded_text(Fraction(1, 200), 2) == "0.00" and rounded_text(Fraction(3, 200), 2) == "0.02"
    # A model's score at its fixed point's resolution: 2^-16 is about 1.5e-5, five places.
    assert output_decimals(LinearScorePlan(fields=(), output="score", frac_bits=16)) == {"score": 5}
    assert rounded_text(Fraction(15288238, 2**16), 5) == "233.28000"  # not 233.27999877929688


def test_session_name_resolution_at_the_lookup_seam() -> None:
    """The decision, with a fake lookup (our own seam); the real lookup runs in the cluster test below."""
    asked: list[tuple[str, str | None]] = []

    def lookup(answer: LookupAnswer) -> Any:
        def run(name: str, namespace: str | None) -> LookupAnswer:
            asked.append((name, namespace))
            return answer
        return run

    assert looks_like_session_id("default.fraud-stats.1a2b3c4d")
    assert looks_like_session_id("team-a.stats.v2.0f0f0f0f")  # names may hold dots
    assert not looks_like_session_id("fraud-stats") and not looks_like_session_id("default.fraud-stats")
    found = LookupAnswer("default", reachable=True, found=True, session_id="default.fraud-stats.1a2b3c4d")
    assert resolve_session("default.x.1a2b3c4d", None, lookup(found)).session_id == "default.x.1a2b3c4d"
    assert asked == []  # an id is never looked up
    r = resolve_session("fraud-stats", None, lookup(found))
    assert r.session_id == "default.fraud-stats.1a2b3c4d" and "MPCSession default/fraud-stats" in r.note
    assert asked == [("fraud-stats", None)]
    r = resolve_session("fraud-stats", "prod", lookup(LookupAnswer("prod", reachable=False, why="no usable kubeconfig")))
    assert r.session_id == "fraud-stats" and "could not be looked up (no usable kubeconfig)" in r.note
    r = resolve_session("fraud-stats", None, lookup(LookupAnswer("default", reachable=True, found=False)))
    assert r.session_id == "fraud-stats" and "no MPCSession 'fraud-stats' in namespace 'default'" in r.note
    with pytest.raises(SessionLookupError, match="has no status.sessionId yet"):
        resolve_session("fraud-stats", None, lookup(LookupAnswer("default", reachable=True, found=True, phase="")))


def test_lookup_without_kubeconfig_or_api_server_is_unreachable(tmp_path: Path) -> None:
    answer = KubeSessionLookup(kubeconfig=str(tmp_path / "no-kubeconfig"))("fraud-stats", None)
    assert answer.reachable is False and "kubeconfig" in answer.why
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}}]}))
        answer = KubeSessionLookup(kubeconfig=str(kubeconfig))("fraud-stats", None)
    assert answer == LookupAnswer("team-a", reachable=False, why=answer.why)  # the context's namespace
    assert "not reachable" in answer.why


# -- against real node processes ------------------------------------------------------


def test_excel_csv_scaled_results_progress_and_idempotent_resubmit(operator: Operator, trio: Any,
                                                                     tmp_path: Path) -> None:
    runner = CliRunner()
    ca, signer = trust_files(operator, tmp_path)
    owner, second, auditor = identities(tmp_path, "bank-a", "bank-z", "auditor")
    sid = "default.excel.0a1b2c3d"
    plan = operator.plan(sid, trio, program={"aggregate": [{"op": "sum", "field": "amount"},
                                                           {"op": "mean", "field": "amount"},
                                                           {"op": "max", "field": "age"}, {"op": "count", "field": "age"}]},
                         owners=[owner, second],
                         fields=[FieldDecl("amount", 0, 1000, 2), FieldDecl("age", 0, 120, 0)],
                         recipients={auditor: ["sum(amount)", "mean(amount)", "max(age)", "count(age)"]})
    operator.post_plan(plan, trio)
    common = ["--session", sid, "--node", trio[0].url, "--ca", str(ca), "--plan-signer", str(signer)]
    submit = ["submit", *common, "--identity", str(tmp_path / "bank-a.json")]

    wrong = tmp_path / "wrong-header.csv"
    wrong.write_bytes("\ufeffAmount;Age\r\n233.28;41\r\n".encode())
    r = runner.invoke(app, [*submit, str(wrong)])
    assert r.exit_code == 1, r.output
    assert ("the header found is ['Amount', 'Age'] (';'-delimited), session default.excel.0a1b2c3d declares the "
            "fields ['amount', 'age']") in flat(r.output), r.output

    excel = tmp_path / "excel.csv"
    excel.write_bytes("\ufeffamount;age\r\n233.28;41\r\n100.00;7\r\n50.01;63\r\n".encode())
    r = runner.invoke(app, [*submit, "--progress", str(excel)])
    assert r.exit_code == 0, r.output
    assert "submitted to 3 nodes" in r.stdout and "parsing" not in r.stdout
    for step in ("parsing excel.csv", "checking values", "secret-sharing", "sealing", "posting"):
        assert step in r.stderr, (step, r.stderr)

    # The identical command again (bank-z has not submitted: the session still awaits inputs): success, nothing
    # changed; other content: refused before anything is sent, saying to use --replace.
    r = runner.invoke(app, [*submit, str(excel)])
    assert r.exit_code == 0, r.output
    assert "already submitted" in r.stdout and "same content" in r.stdout
    other = tmp_path / "other.csv"
    other.write_text("amount,age\n1,2\n")
    r = runner.invoke(app, [*submit, str(other)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "already delivered a different input" in flat(r.output)
    assert "run the same `pqmpc submit` with --replace" in flat(r.output)
    status = operator.http.get(f"{trio[0].url}/v1/sessions/{sid}").json()
    assert status["phase"] == "AwaitingInputs", status
    empty = tmp_path / "empty.csv"  # bank-z: a tab-delimited export
    empty.write_text("age\tamount\n0\t0\n1\t0\n2\t0\n")
    r = runner.invoke(app, ["submit", *common, "--identity", str(tmp_path / "bank-z.json"), str(empty)])
    assert r.exit_code == 0, r.output

    result = ["result", *common, "--identity", str(tmp_path / "auditor.json"), "--wait", "60"]
    r = runner.invoke(app, [*result, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    # mean = 383.29 / 6 rows = 63.88166…: shown at the field's 2 decimals + 2, as a number literal.
    assert '"mean(amount)": 63.8817,' in r.stdout, r.stdout
    assert doc["outputs"] == {"sum(amount)": 383.29, "mean(amount)": 63.8817, "max(age)": 63, "count(age)": 6}
    assert isinstance(doc["outputs"]["max(age)"], int) and isinstance(doc["outputs"]["count(age)"], int)
    assert doc["exact"]["mean(amount)"] == "38329/600" and doc["exact"]["sum(amount)"] == "383.29"
    assert doc["decimals"]["mean(amount)"] == 4 and doc["decimals"]["sum(amount)"] == 2
    r = runner.invoke(app, result)
    assert r.exit_code == 0, r.output
    assert "63.8817" in r.stdout and "63.88166" not in r.stdout and "383.29" in r.stdout
    # After the session ran: the identical command still succeeds; other content finds the inputs closed.
    r = runner.invoke(app, [*submit, str(excel)])
    assert r.exit_code == 0 and "already submitted" in r.stdout, r.output
    r = runner.invoke(app, [*submit, str(other)])
    assert r.exit_code == 1 and "inputs are closed" in flat(r.output), r.output


def test_rerun_after_a_partial_submit_completes_with_one_sharing(operator: Operator, trio: Any,
                                                                  tmp_path: Path) -> None:
    """One node accepted, the others never heard: the re-run completes, and the result is right (no mixed sharings)."""
    runner = CliRunner()
    ca, signer = trust_files(operator, tmp_path)
    owner, auditor = identities(tmp_path, "bank-b", "auditor")
    sid = "default.partial.0b1c2d3e"
    plan = operator.plan(sid, trio, program={"aggregate": [{"op": "sum", "field": "amount"}]}, owners=[owner],
                         fields=[FieldDecl("amount", 0, 1000, 2)], recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, trio)
    data = tmp_path / "data.csv"
    data.write_text("amount\n12.34\n56.78\n900\n")
    with SessionClient(node_url=trio[0].url, session_id=sid, ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as client:
        sealed = client.seal_rows(owner, read_csv(data))
        client.post_sealed(sealed[:1])  # the first node only, as if the connection broke after it
    status = operator.http.get(f"{trio[1].url}/v1/sessions/{sid}").json()
    assert status["inputs"][0]["received"] is False
    common = ["--session", sid, "--node", trio[0].url, "--ca", str(ca), "--plan-signer", str(signer)]
    r = runner.invoke(app, ["submit", *common, "--identity", str(tmp_path / "bank-b.json"), str(data)])
    assert r.exit_code == 0, r.output
    assert "submitted to 3 nodes" in r.stdout and "(1 held it already)" in r.stdout
    r = runner.invoke(app, ["result", *common, "--identity", str(tmp_path / "auditor.json"), "--json", "--wait", "60"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["outputs"]["sum(amount)"] == 969.12


def test_wrong_ca_blames_the_ca_file(operator: Operator, trio: Any, tmp_path: Path) -> None:
    runner = CliRunner()
    _, signer = trust_files(operator, tmp_path)
    identities(tmp_path, "bank-c")
    data = tmp_path / "data.csv"
    data.write_text("amount\n1\n")
    other_pool = PoolCA.create(get_suite(SuiteName.PQ_DEFAULT), name="other-ca", now=now() - dt.timedelta(minutes=5),
                               lifetime=dt.timedelta(days=1), rng=os.urandom)
    files = {
        "rsa.pem": (self_signed(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                    "a certificate with an RSA-2048 key, not a pqmpc pool CA"),
        "ec.pem": (self_signed(ec.generate_private_key(ec.SECP256R1())),
                   "a certificate with an EC (secp256r1) key, not a pqmpc pool CA"),
        "junk.pem": (b"hello\n", "not a PEM certificate"),
        "other-pool.pem": (other_pool.certificate.public_bytes(Encoding.PEM), "did not issue the node's certificate"),
    }
    for name, (content, says) in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        for args in (["keys", "verify", "--node", trio[0].url, "--ca", str(path)],
                     ["submit", "--session", "default.any.0c1d2e3f", "--node", trio[0].url, "--ca", str(path),
                      "--plan-signer", str(signer), "--identity", str(tmp_path / "bank-c.json"), str(data)]):
            r = runner.invoke(app, args)
            text = flat(r.output)
            assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (name, args[0], r.output)
            assert f"--ca {path}" in text and says in text, (name, args[0], r.output)
            assert "kubectl get configmap <pool>-trust -n <namespace> -o jsonpath='{.data.ca\\.pem}'" in text, text
            assert len(r.output.strip().splitlines()) <= 3, r.output  # one line (wrapped at most)


def test_result_wait_spinner_and_timeout(operator: Operator, trio: Any, tmp_path: Path) -> None:
    runner = CliRunner()
    ca, signer = trust_files(operator, tmp_path)
    owner, auditor = identities(tmp_path, "bank-d", "auditor")
    sid = "default.waiting.0d1e2f3a"
    plan = operator.plan(sid, trio, program={"aggregate": [{"op": "sum", "field": "amount"}]}, owners=[owner],
                         fields=[FieldDecl("amount", 0, 100)], recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, trio)
    args = ["result", "--session", sid, "--node", trio[0].url, "--ca", str(ca), "--plan-signer", str(signer),
            "--identity", str(tmp_path / "auditor.json")]
    r = runner.invoke(app, [*args, "--wait", "1.5", "--progress"])
    assert r.exit_code == 1, r.output
    assert "waiting up to 1.5s for the outputs" in r.stderr, r.stderr
    assert "timed out after waiting 1.5s" in flat(r.stderr) and "wait longer (--wait SECONDS)" in flat(r.stderr)
    assert r.stdout == ""
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "pass --wait SECONDS to wait for them" in flat(r.output), r.output


def test_session_name_is_looked_up_in_the_cluster(operator: Operator, trio: Any, tmp_path: Path, kubectl: Kubectl,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """--session fraud-stats -n NS: the real kube-apiserver answers status.sessionId, the nodes know that id."""
    ns = "cli-lookup"
    kubectl("apply", "-f", str(REPO / "crds" / "mpcsessions.pqmpc.io.yaml"))
    wait_for("the MPCSession CRD", lambda: kubectl("get", "crd", "mpcsessions.pqmpc.io", "-o",
                                                   "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                                                   check=False).stdout == "True")
    kubectl("create", "namespace", ns)
    doc = json.loads(kubectl("create", "--dry-run=client", "-o", "json", "-n", ns, "-f",
                             str(REPO / "examples" / "mpcsession-fraud-stats.yaml")).stdout)
    name = doc["metadata"]["name"]
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc))
    uid = kubectl("get", "mpcs", name, "-n", ns, "-o", "jsonpath={.metadata.uid}").stdout
    sid = f"{ns}.{name}.{uid[:8]}"

    lookup = KubeSessionLookup(kubeconfig=str(kubectl.kubeconfig))
    answer = lookup(name, ns)
    assert answer.reachable and answer.found and answer.session_id == ""  # no operator here: not planned yet
    assert lookup("no-such-session", ns) == LookupAnswer(ns, reachable=True, found=False)
    # No -n: the kubeconfig context's namespace (none set in the admin context: "default").
    assert lookup(name, None) == LookupAnswer("default", reachable=True, found=False)

    owner, auditor = identities(tmp_path, "bank-e", "auditor")
    ca, signer = trust_files(operator, tmp_path)
    data = tmp_path / "data.csv"
    data.write_text("amount\n5\n")
    monkeypatch.setenv("KUBECONFIG", str(kubectl.kubeconfig))
    runner = CliRunner()
    args = ["submit", "--session", name, "-n", ns, "--node", trio[0].url, "--ca", str(ca), "--plan-signer",
            str(signer), "--identity", str(tmp_path / "bank-e.json"), str(data)]
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and f"MPCSession {ns}/{name} has no status.sessionId yet" in flat(r.output), r.output

    kubectl("patch", "mpcs", name, "-n", ns, "--subresource=status", "--type=merge", "-p",
            json.dumps({"status": {"sessionId": sid}}))
    plan = operator.plan(sid, trio, program={"aggregate": [{"op": "sum", "field": "amount"}]}, owners=[owner],
                         fields=[FieldDecl("amount", 0, 100)], recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, trio)
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert f"MPCSession {ns}/{name} is session {sid}" in flat(r.stderr) and f"session {sid}" in flat(r.stdout)
    status = operator.http.get(f"{trio[0].url}/v1/sessions/{sid}").json()
    assert status["inputs"][0]["received"] is True
