"""A split view of the transparency log is refused by clients (issue 12, finding 5, client side).

The pool CA signs the log's tree heads; a compromised CA (or operator) could sign two
different histories and show each to different people, e.g. logging a rogue key for one
audience only. Clients therefore keep the history they have seen per pool CA (on disk,
across runs) and require every node's view to share it. Real node processes; the forked
view is what one node serves (through a transport that rewrites that node's answers —
the only way to have a node serve a CA-signed fork, since nodes refuse a log that does
not extend their own).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Operator, now
from pqmpc_node.net.https import pq_transport
from pqmpc_node.client import ClientError, Identity, SessionClient
from pqmpc_node.crypto.transparency import EntryKind, LogBundle, TransparencyLog
from pqmpc_node.plan import FieldDecl


@pytest.fixture(scope="module")
def trio(operator: Operator) -> list[Any]:
    nodes = operator.start_nodes(3)
    operator.certify(nodes)
    return nodes


def forked_bundle(operator: Operator, marker: bytes) -> dict[str, Any]:
    """The real history plus one extra entry of our choosing, CA-signed: a view no other party was shown."""
    fork = TransparencyLog(operator.ca)
    fork._entries = list(operator.log.entries)  # noqa: SLF001 - the same history up to here
    fork.append(EntryKind.KEM_KEY_CERTIFICATE, marker, now=now())
    return LogBundle(fork.entries, fork.signed_tree_head(now=now())).to_json()


def serving(real: httpx.BaseTransport, logs: dict[str, dict[str, Any]]) -> httpx.MockTransport:
    """Every request goes to the real nodes, except that the node at each URL of ``logs`` serves that log."""

    def handle(request: httpx.Request) -> httpx.Response:
        response = real.handle_request(request)
        for url, bundle in logs.items():
            if str(request.url).startswith(url) and request.url.path == "/v1/keys":
                response.read()
                doc = json.loads(response.content)
                doc["log"] = bundle
                return httpx.Response(200, json=doc)
        return response

    return httpx.MockTransport(handle)


def test_a_forked_log_is_refused_across_nodes_and_across_runs(operator: Operator, trio: Any, tmp_path: Path,
                                                              request: pytest.FixtureRequest) -> None:
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = operator.plan("fork-1", trio, program={"aggregate": [{"op": "sum", "field": "amount"}]}, owners=[owner],
                         fields=[FieldDecl("amount", 0, 10)], recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, trio, dealer=False)
    history = tmp_path / "config"
    real = pq_transport(operator.ca.certificate, operator.suite)
    https: list[httpx.Client] = []

    def client(transport: httpx.BaseTransport) -> SessionClient:
        https.append(httpx.Client(transport=transport))
        return SessionClient(node_url=trio[0].url, session_id="fork-1", ca_certificate=operator.ca.certificate,
                             plan_signer=operator.signer.public_key(), http=https[-1], history_dir=history)

    def close_all() -> None:
        for h in https:
            h.close()
        real.close()

    request.addfinalizer(close_all)
    # One run sees the honest log at every node: accepted, and remembered on disk.
    with client(real) as c:
        assert len(c.parties()) == 3
    stored = next((history / "transparency").glob("*.json"))
    assert len(json.loads(stored.read_text())["entryHashes"]) == len(operator.log.entries)

    # Node 2 shows one entry more than the others: an extension of what was seen, accepted (a node
    # that is ahead is not a fork).
    view_a = forked_bundle(operator, b"view A")
    with client(serving(real, {trio[2].url: view_a})) as c:
        assert len(c.parties()) == 3

    # Another run is shown a different extension of the same history: the CA signed two histories.
    view_b = forked_bundle(operator, b"view B")
    with client(serving(real, {trio[1].url: view_b})) as c, pytest.raises(ClientError) as err:
        c.parties()
    assert err.value.reason == "log_fork", err.value
    assert f"node {trio[1].node_id}: the transparency log forks at entry {len(operator.log.entries)}" in str(err.value)
    assert "Report it to the pool's operators" in str(err.value)


def test_two_nodes_showing_different_forks_in_one_run_are_refused(operator: Operator, trio: Any, tmp_path: Path) -> None:
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = operator.plan("fork-2", trio, program={"aggregate": [{"op": "sum", "field": "amount"}]}, owners=[owner],
                         fields=[FieldDecl("amount", 0, 10)], recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, trio, dealer=False)
    a, b = forked_bundle(operator, b"for node 0's audience"), forked_bundle(operator, b"for node 1's audience")

    with pq_transport(operator.ca.certificate, operator.suite) as real, httpx.Client(transport=serving(real, {trio[0].url: a, trio[1].url: b})) as http, \
            SessionClient(node_url=trio[0].url, session_id="fork-2", ca_certificate=operator.ca.certificate,
                          plan_signer=operator.signer.public_key(), http=http, history_dir=tmp_path / "fresh") as c, \
            pytest.raises(ClientError) as err:
        c.parties()
    assert err.value.reason == "log_fork"


def test_nodes_shown_different_histories_refuse_to_link(operator: Operator) -> None:
    """Node-side: each link's hellos carry the sender's log head; a fork refuses the link and is counted."""
    nodes = operator.start_nodes(2, extra_env={"PQMPC_MESH_TIMEOUT": "5"})
    operator.certify(nodes)
    for node, marker in ((nodes[0], b"history shown to node 0"), (nodes[1], b"history shown to node 1")):
        r = operator.http.post(node.url + "/v1/log", json=forked_bundle(operator, marker))
        assert r.status_code == 200, r.text  # each is a valid, CA-signed extension of that node's own view
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = operator.plan("fork-3", nodes, program={"aggregate": [{"op": "sum", "field": "amount"}]}, owners=[owner],
                         fields=[FieldDecl("amount", 0, 10)], recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, nodes)
    with SessionClient(node_url=nodes[0].url, session_id="fork-3", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as c:
        # An owner who met each node from a different machine never saw both views at once.
        c.history.observe = lambda node_id, chain: None  # type: ignore[method-assign]
        c.submit_rows(owner, {"amount": ["1", "2"]})
    for n in nodes:
        st = operator.wait_phase(n, "fork-3", {"Succeeded", "Failed"}, timeout=120)
        assert st["phase"] == "Failed" and st["reason"] == "peer_lost", st
    assert sum(operator.metric(n, "pqmpc_node_log_forks_total") for n in nodes) >= 1
