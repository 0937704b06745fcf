"""A histogram's rows outside its edges, as the recipient sees them through ``pqmpc result`` on real nodes.

Values inside the field's declared range but below the first or above the last bin edge
used to vanish from the result; now ``histogram(amount).below`` and ``.above`` count
them, and the table says what each counts (``histogram(amount) below 100``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from harness import Operator
from pqmpc_node.cli import app
from pqmpc_node.plan import FieldDecl
from test_cli import trust_files
from test_cli_user_path import flat, identities


def test_result_shows_the_rows_below_and_above_the_histogram_edges(operator: Operator, trio: Any,
                                                                   tmp_path: Path) -> None:
    runner = CliRunner()
    ca, signer = trust_files(operator, tmp_path)
    owner, auditor = identities(tmp_path, "bank-h", "auditor")
    sid = "default.hist.0d1e2f3a"
    plan = operator.plan(sid, trio, program={"aggregate": [{"op": "histogram", "field": "amount",
                                                            "bins": [100, 500, 1000]}]},
                         owners=[owner], fields=[FieldDecl("amount", 0, 5000, 2)],
                         recipients={auditor: ["histogram(amount)"]})
    operator.post_plan(plan, trio)
    common = ["--session", sid, "--node", trio[0].url, "--ca", str(ca), "--plan-signer", str(signer)]
    data = tmp_path / "amounts.csv"
    # 3 below 100 (99.99 is one cent under the first edge), 100 and 499.99 in bin 0, 500 and
    # 1000 in the last bin (its upper edge included), 2 above 1000 (all inside the declared [0, 5000]).
    data.write_text("amount\n0\n12.5\n99.99\n100\n499.99\n500\n1000\n1000.01\n5000\n")
    r = runner.invoke(app, ["submit", *common, "--identity", str(tmp_path / "bank-h.json"), str(data)])
    assert r.exit_code == 0, r.output

    result = ["result", *common, "--identity", str(tmp_path / "auditor.json"), "--wait", "60"]
    r = runner.invoke(app, [*result, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["outputs"] == {"histogram(amount)": [2, 2], "histogram(amount).below": 3,
                              "histogram(amount).above": 2}
    assert doc["labels"] == {"histogram(amount).below": "histogram(amount) below 100",
                             "histogram(amount).above": "histogram(amount) above 1000"}
    r = runner.invoke(app, result)
    assert r.exit_code == 0, r.output
    rows = {" ".join(line.strip("│ ").split("│")[0].split()): line.split("│")[-2].strip()
            for line in r.stdout.splitlines() if line.count("│") >= 3}
    assert rows["histogram(amount) below 100"] == "3" and rows["histogram(amount) above 1000"] == "2", r.stdout
    assert "[2, 2]" in flat(r.stdout)
