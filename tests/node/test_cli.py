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


def test_cli_round_trip(operator: Operator, trio: Any, tmp_path: Path) -> None:
    runner = CliRunner()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(operator.ca.certificate.public_bytes(Encoding.PEM))
    signer = tmp_path / "plan-signer.pub"
    signer.write_bytes(operator.signer.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
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
    assert r.exit_code == 1 and "column 'amount' is missing" in r.output
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
