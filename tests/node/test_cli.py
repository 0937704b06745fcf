"""The pqmpc CLI against real node processes: identity new, keys verify, submit (missing column, out of range: nothing sent), result as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner

from harness import Operator
from pqmpc_node.cli import app
from pqmpc_node.client import Identity
from pqmpc_node.plan import FieldDecl


def trust_files(operator: Operator, tmp_path: Path) -> tuple[Path, Path]:
    """The pool's ca.pem and plan-signer.pub, as a user extracts them from the <pool>-trust ConfigMap."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(operator.ca.certificate.public_bytes(Encoding.PEM))
    signer = tmp_path / "plan-signer.pub"
    signer.write_bytes(operator.signer.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return ca, signer


def test_cli_round_trip(operator: Operator, trio: Any, tmp_path: Path) -> None:
    runner = CliRunner()
    ca, signer = trust_files(operator, tmp_path)
    for name in ("bank-a", "auditor"):
        r = runner.invoke(app, ["identity", "new", name, "--out", str(tmp_path / f"{name}.json")])
        assert r.exit_code == 0, r.output
    assert runner.invoke(app, ["identity", "new", "bank-a", "--out", str(tmp_path / "bank-a.json")]).exit_code == 1
    owner, auditor = Identity.load(tmp_path / "bank-a.json"), Identity.load(tmp_path / "auditor.json")
    r = runner.invoke(app, ["keys", "verify", "--node", trio[0].url, "--ca", str(ca)])
    assert r.exit_code == 0 and "certified and logged" in r.output, r.output

    plan = operator.plan("cli-1", trio, program={"aggregate": [{"op": "max", "field": "amount"}]}, owners=[owner],
                         fields=[FieldDecl("amount", 0, 100)], recipients={auditor: ["max(amount)"]})
    operator.post_plan(plan, trio)
    common = ["--session", "cli-1", "--node", trio[0].url, "--ca", str(ca), "--plan-signer", str(signer)]
    bad = tmp_path / "bad.csv"
    bad.write_text("amt\n1\n")
    r = runner.invoke(app, ["submit", *common, "--identity", str(tmp_path / "bank-a.json"), str(bad)])
    assert r.exit_code == 1 and "column(s) ['amount'] are missing" in r.output
    bad.write_text("amount\n1\n101\n")
    r = runner.invoke(app, ["submit", *common, "--identity", str(tmp_path / "bank-a.json"), str(bad)])
    assert r.exit_code == 1 and "outside the declared range" in r.output
    status = operator.http.get(f"{trio[0].url}/v1/sessions/cli-1").json()
    assert status["inputs"][0]["received"] is False  # nothing half-submitted
    good = tmp_path / "good.csv"
    good.write_text("amount\n3\n42.5\n7\n")
    r = runner.invoke(app, ["submit", *common, "--identity", str(tmp_path / "bank-a.json"), str(good)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["result", *common, "--identity", str(tmp_path / "auditor.json"), "--json", "--wait", "20"])
    assert r.exit_code == 0, r.output
    assert abs(json.loads(r.stdout)["outputs"]["max(amount)"] - 42.5) < 1e-2
    r = runner.invoke(app, ["result", *common, "--identity", str(tmp_path / "bank-a.json")])
    assert r.exit_code == 1 and "not an output recipient" in r.output


def test_user_mistakes_get_one_line_and_no_traceback(operator: Operator, trio: Any, tmp_path: Path) -> None:
    """Missing or broken files and a CSV with an undeclared column: exit 1, one clear line, nothing sent."""
    runner = CliRunner()
    ca, signer = trust_files(operator, tmp_path)
    assert runner.invoke(app, ["identity", "new", "bank-a", "--out", str(tmp_path / "bank-a.json")]).exit_code == 0
    owner, auditor = Identity.load(tmp_path / "bank-a.json"), Identity.generate("auditor")
    plan = operator.plan("cli-2", trio, program={"aggregate": [{"op": "sum", "field": "amount"}]}, owners=[owner],
                         fields=[FieldDecl("amount", 0, 100)], recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, trio, dealer=False)
    data = tmp_path / "data.csv"
    data.write_text("amount,ssn\n3,123-45-6789\n")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "ca-as-signer.pub").write_bytes(ca.read_bytes())  # the wrong file of the trust bundle
    common = ["submit", "--session", "cli-2", "--node", trio[0].url, "--ca", str(ca)]
    cases = {
        "missing identity": ([*common, "--plan-signer", str(signer), "--identity", str(tmp_path / "nope.json"),
                              str(data)], "cannot read identity file"),
        "identity not JSON": ([*common, "--plan-signer", str(signer), "--identity", str(tmp_path / "broken.json"),
                               str(data)], "create one with `pqmpc identity new`"),
        "missing plan signer": ([*common, "--plan-signer", str(tmp_path / "nope.pub"), "--identity",
                                 str(tmp_path / "bank-a.json"), str(data)], "no such file"),
        "plan signer that is not a key": ([*common, "--plan-signer", str(tmp_path / "ca-as-signer.pub"), "--identity",
                                          str(tmp_path / "bank-a.json"), str(data)],
                                         "is not a PEM or base64 ML-DSA-65 key"),
        "undeclared column": ([*common, "--plan-signer", str(signer), "--identity", str(tmp_path / "bank-a.json"),
                               str(data)], "column(s) ['ssn'] are not fields of session cli-2"),
        "missing CSV": ([*common, "--plan-signer", str(signer), "--identity", str(tmp_path / "bank-a.json"),
                         str(tmp_path / "nope.csv")], "nope.csv"),
        "an MPCSession name instead of its id": (["submit", "--session", "fraud-stats", "--node", trio[0].url,
                                                  "--ca", str(ca), "--plan-signer", str(signer), "--identity",
                                                  str(tmp_path / "bank-a.json"), str(data)],
                                                 "jsonpath='{.status.sessionId}'"),
        "http URL": (["submit", "--session", "cli-2", "--node", trio[0].url.replace("https", "http"), "--ca", str(ca),
                      "--plan-signer", str(signer), "--identity", str(tmp_path / "bank-a.json"), str(data)],
                     "node URLs are https://"),
    }
    for what, (args, says) in cases.items():
        r = runner.invoke(app, args)
        assert r.exit_code == 1, (what, r.output, r.exception)
        assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output, (what, r.output, r.exception)
        assert says in " ".join(r.output.split()), (what, r.output)
    status = operator.http.get(f"{trio[0].url}/v1/sessions/cli-2").json()
    assert status["inputs"][0]["received"] is False  # nothing was sent
