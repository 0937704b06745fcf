"""Correcting an input and large inputs, against real node processes and the CLI (issue 17, CLI items).

- ``pqmpc submit --replace`` before the session computes: "replaced version 2 at 3/3
  nodes"; the same command again changes nothing; the result is the new data's; a
  stale version (older, other content) is refused; once the session ran, a replacement
  finds the inputs closed;
- a replacement that reached only one node: the parties do not compute (each reports the
  owner and the versions it saw, inputs reopen), and re-running the same command
  completes it at the other nodes, after which the session finishes on the new data;
- a table sent in ≥ 3 parts (``--part-size``), as a replacement of a one-envelope input,
  gives the result of its plaintext; a
  missing part keeps the input incomplete (the status shows the parts) and the session
  waiting; a part signed with another key than the owner's is refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness import Operator
from pqmpc_node.cli import app
from pqmpc_node.client import Identity, SessionClient, read_csv
from pqmpc_node.crypto.envelopes import SealedEnvelope
from pqmpc_node.input_agreement import RETRY_S
from pqmpc_node.input_ids import InputId
from pqmpc_node.plan import FieldDecl
from test_cli import trust_files
from test_cli_user_path import flat, identities

PROGRAM = {"aggregate": [{"op": "sum", "field": "amount"}, {"op": "count", "field": "amount"}]}
FIELDS = [FieldDecl("amount", 0, 1000, 2)]
RESULT = ["sum(amount)", "count(amount)"]


def _csv(path: Path, values: list[str]) -> Path:
    path.write_text("amount\n" + "".join(f"{v}\n" for v in values))
    return path


def _status(operator: Operator, node: Any, sid: str) -> dict[str, Any]:
    return dict(operator.http.get(f"{node.url}/v1/sessions/{sid}").json())


def _owner_status(operator: Operator, node: Any, sid: str, owner: str) -> dict[str, Any]:
    return next(i for i in _status(operator, node, sid)["inputs"] if i["owner"] == owner)


def _wait(what: str, check: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _client(operator: Operator, node: Any, sid: str) -> SessionClient:
    return SessionClient(node_url=node.url, session_id=sid, ca_certificate=operator.ca.certificate,
                         plan_signer=operator.signer.public_key())


def test_replace_before_compute_stale_refused_and_closed_after(operator: Operator, trio: Any, tmp_path: Path) -> None:
    runner = CliRunner()
    ca, signer = trust_files(operator, tmp_path)
    owner, second, auditor = identities(tmp_path, "bank-a", "bank-b", "auditor")
    sid = "default.replace.1a2b3c4d"
    plan = operator.plan(sid, trio, program=PROGRAM, owners=[owner, second], fields=FIELDS,
                         recipients={auditor: RESULT})
    operator.post_plan(plan, trio)
    common = ["--session", sid, "--node", trio[0].url, "--ca", str(ca), "--plan-signer", str(signer)]
    submit_a = ["submit", *common, "--identity", str(tmp_path / "bank-a.json")]

    wrong = _csv(tmp_path / "wrong.csv", ["1.00", "2.00"])
    r = runner.invoke(app, [*submit_a, str(wrong)])
    assert r.exit_code == 0 and "submitted to 3 nodes" in r.stdout, r.output
    right = _csv(tmp_path / "right.csv", ["100.25", "200.50", "300.75"])
    r = runner.invoke(app, [*submit_a, str(right)])  # without --replace: refused, nothing sent
    assert r.exit_code == 1 and "--replace" in flat(r.output), r.output
    r = runner.invoke(app, [*submit_a, "--replace", str(right)])
    assert r.exit_code == 0, r.output
    assert "replaced version 2 at 3/3 nodes" in flat(r.stdout), r.output
    r = runner.invoke(app, [*submit_a, "--replace", str(right)])  # the same command again: idempotent
    assert r.exit_code == 0 and "already submitted" in r.stdout and "version 2" in r.stdout, r.output
    for n in trio:
        st = _owner_status(operator, n, sid, "bank-a")
        assert (st["received"], st["version"], st["arriving"]) == (True, 2, None), st

    # A stale version (version 1 with other content, as an old client run would send) is refused by every node.
    with _client(operator, trio[0], sid) as c:
        c.choose_version = lambda *_a, **_k: 1  # type: ignore[method-assign]
        stale = c.seal_rows(owner, read_csv(_csv(tmp_path / "old.csv", ["5.00"])))
        for party, envelope in stale:
            r2 = party.client.post_input(sid, envelope)
            assert (r2.status_code, r2.json()["error"]["reason"]) == (409, "stale_input"), r2.text
            assert "older than version 2" in r2.json()["error"]["message"]

    r = runner.invoke(app, ["submit", *common, "--identity", str(tmp_path / "bank-b.json"),
                            str(_csv(tmp_path / "b.csv", ["0.50"]))])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["result", *common, "--identity", str(tmp_path / "auditor.json"), "--json", "--wait", "90"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["outputs"] == {"sum(amount)": 602.0, "count(amount)": 4}  # 601.50 + 0.50: the new data

    r = runner.invoke(app, [*submit_a, "--replace", str(wrong)])  # after the run: too late
    assert r.exit_code == 1 and "inputs are closed" in flat(r.output), r.output
    with _client(operator, trio[0], sid) as c:  # a client that skips its own check meets the node's refusal
        c.choose_version = lambda *_a, **_k: 3  # type: ignore[method-assign]
        late = c.seal_rows(owner, read_csv(wrong))
        r2 = late[0][0].client.post_input(sid, late[0][1])
        assert (r2.status_code, r2.json()["error"]["reason"]) == (409, "inputs_closed"), r2.text


def test_replacement_at_one_node_blocks_computing_until_completed(operator: Operator, trio: Any,
                                                                   tmp_path: Path) -> None:
    runner = CliRunner()
    ca, signer = trust_files(operator, tmp_path)
    owner, second, auditor = identities(tmp_path, "bank-c", "bank-d", "auditor")
    sid = "default.halfway.2b3c4d5e"
    plan = operator.plan(sid, trio, program=PROGRAM, owners=[owner, second], fields=FIELDS,
                         recipients={auditor: RESULT})
    operator.post_plan(plan, trio)
    common = ["--session", sid, "--node", trio[0].url, "--ca", str(ca), "--plan-signer", str(signer)]
    submit_c = ["submit", *common, "--identity", str(tmp_path / "bank-c.json")]
    r = runner.invoke(app, [*submit_c, str(_csv(tmp_path / "old.csv", ["1.00", "2.00"]))])
    assert r.exit_code == 0, r.output
    new = _csv(tmp_path / "new.csv", ["10.00", "20.00"])  # same row count: the dealt material fits both
    with _client(operator, trio[0], sid) as c:
        sealed = c.seal_rows(owner, read_csv(new), replace=True)
        c.post_sealed(sealed[:1])  # the replacement reaches the first node only
    r = runner.invoke(app, ["submit", *common, "--identity", str(tmp_path / "bank-d.json"),
                            str(_csv(tmp_path / "d.csv", ["0.25"]))])
    assert r.exit_code == 0, r.output

    # Every node holds every input, the material is dealt, they link, compare, and do not compute.
    def all_waiting() -> list[dict[str, Any]] | None:
        sts = [_status(operator, n, sid) for n in trio]
        return sts if all(s["inputsAgreement"] for s in sts) else None

    for st in _wait("the parties to report the disagreement", all_waiting):
        assert st["phase"] == "AwaitingInputs", st
        why = st["inputsAgreement"]
        assert "'bank-c'" in why and "'bank-d'" not in why, why
        assert f"version 2 (2 rows) at party 0 ({trio[0].node_id})" in why, why
        assert f"version 1 (2 rows) at party 1 ({trio[1].node_id})" in why, why
        assert "re-run the same `pqmpc submit`, with --replace" in why
        assert st["message"] == why
    assert _status(operator, trio[0], sid)["phase"] == "AwaitingInputs"  # still nobody computed

    r = runner.invoke(app, [*submit_c, "--replace", str(new)])  # the owner re-runs: completes it
    assert r.exit_code == 0, r.output
    assert "replaced version 2 at 3/3 nodes" in flat(r.stdout) and "(1 held it already)" in flat(r.stdout), r.output
    r = runner.invoke(app, ["result", *common, "--identity", str(tmp_path / "auditor.json"), "--json", "--wait", "90"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["outputs"] == {"sum(amount)": 30.25, "count(amount)": 3}
    for n in trio:
        st = _status(operator, n, sid)
        assert (st["phase"], st["inputsAgreement"]) == ("Succeeded", ""), st


def test_a_table_in_parts_and_a_missing_or_forged_part(operator: Operator, trio: Any, tmp_path: Path) -> None:
    runner = CliRunner()
    ca, signer = trust_files(operator, tmp_path)
    owner, late, mallory, auditor = identities(tmp_path, "bank-e", "bank-f", "mallory", "auditor")
    sid = "default.parts.3c4d5e6f"
    plan = operator.plan(sid, trio, program=PROGRAM, owners=[owner, late], fields=FIELDS,
                         recipients={auditor: RESULT})
    operator.post_plan(plan, trio)
    common = ["--session", sid, "--node", trio[0].url, "--ca", str(ca), "--plan-signer", str(signer)]
    values = [f"{(i * 37) % 1000}.{i % 100:02d}" for i in range(600)]
    big = _csv(tmp_path / "big.csv", values)
    expected_sum = sum(int(v.replace(".", "")) for v in values) / 100

    # bank-e submits a wrong file, then replaces it with its 600 rows, in parts, with a bar over them: the
    # replacement replaces the whole input (one envelope) by all parts.
    submit_e = ["submit", *common, "--identity", str(tmp_path / "bank-e.json")]
    r = runner.invoke(app, [*submit_e, str(_csv(tmp_path / "e-wrong.csv", ["999.99"]))])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*submit_e, "--replace", "--part-size", "2048", "--progress", str(big)])
    assert r.exit_code == 0, r.output
    assert "replaced version 2 at 3/3 nodes" in flat(r.stdout), r.output
    assert "parts" in r.stderr and "posting" in r.stderr and "sealing" in r.stderr, r.output
    for n in trio:
        st = _owner_status(operator, n, sid, "bank-e")
        assert (st["received"], st["version"], st["arriving"]) == (True, 2, None), st
        assert _status(operator, n, sid)["inputRows"]["bank-e"] == 600

    # bank-f's table in parts, one of them never reaching the first node (party 0: nobody dials it, the started
    # parties wake it): its input stays incomplete there, while
    # the other two nodes hold everything, get their material and start.
    with _client(operator, trio[0], sid) as c:
        sealed = c.seal_rows(late, read_csv(_csv(tmp_path / "f.csv", [str(i) for i in range(400)])), part_bytes=2048)
        ids = [InputId.parse(SealedEnvelope.from_bytes(env).header.input_id, "bank-f") for _, env in sealed]
        parts = ids[0].parts
        assert parts >= 3 and len(sealed) == 3 * parts
        held_back = [(p, env) for (p, env), iid in zip(sealed, ids) if p.plan.index == 0 and iid.part == 2]
        c.post_sealed([(p, env) for (p, env), iid in zip(sealed, ids) if not (p.plan.index == 0 and iid.part == 2)])
        # The missing part, forged: named bank-f's part 2 but signed with mallory's key. Refused.
        impostor = Identity("bank-f", mallory.suite, mallory.signing_seed, mallory.kem_seed)
        forged = c._seal(impostor, c.parties()[0], b"{}", ids[1].text())
        r = c.parties()[0].client.post_input(sid, forged)
        assert (r.status_code, r.json()["error"]["reason"]) == (403, "unknown_sender"), r.text
        st = _owner_status(operator, trio[0], sid, "bank-f")
        assert st["received"] is False and st["arriving"]["parts"] == parts, st
        assert st["arriving"]["partsReceived"] == parts - 1 and st["arriving"]["version"] == 1, st
        assert _owner_status(operator, trio[1], sid, "bank-f")["received"] is True

        def all_waiting() -> list[dict[str, Any]] | None:
            sts = [_status(operator, n, sid) for n in trio]
            return sts if all(s["inputsAgreement"] for s in sts) else None

        for st in _wait("the parties to wait for the missing part", all_waiting):
            assert st["phase"] == "AwaitingInputs", st
            assert f"its version 1 there still incomplete ({parts - 1} of {parts} parts)" in st["inputsAgreement"]
            assert f"nothing yet at party 0 ({trio[0].node_id})" in st["inputsAgreement"], st
        time.sleep(3 * RETRY_S)  # a steady state, not an ordering: rounds go on, nobody fails or computes
        assert {_status(operator, n, sid)["phase"] for n in trio} == {"AwaitingInputs"}
        c.post_sealed(held_back)  # the missing part arrives: complete at every node, the session runs
    st = _owner_status(operator, trio[0], sid, "bank-f")
    assert st["received"] is True and st["arriving"] is None and st["version"] == 1, st

    r = runner.invoke(app, ["result", *common, "--identity", str(tmp_path / "auditor.json"), "--json", "--wait", "90"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)["outputs"]
    assert out["count(amount)"] == 1000
    assert out["sum(amount)"] == pytest.approx(expected_sum + sum(range(400)), abs=0.005)
