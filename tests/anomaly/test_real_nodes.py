"""Scoring real node processes: three ``python -m pqmpc_node`` processes (the node tests'
harness plays the operator), one of them started with the test-only tampering hook; after a
malicious-security session the three are scraped and their session reports fetched, and
the tampering node scores highest and is quarantined under the default policy. The node
metrics alone do not single it out (every party counts the abort, or a lost peer): the
reports, where the honest parties name the party whose commitment did not open, do. A
cheater that leaves no name (reports stripped of ``blamed`` here) is singled out across
sessions with rotated co-parties by the participation attribution."""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from pqmpc_node.net.https import async_pq_transport
from pqmpc_operator.anomaly import AnomalyPolicy, AnomalyState, quarantine_decisions, score_nodes
from pqmpc_operator.node_signals import fetch_session_evidence, scrape_node

NODE_TESTS = Path(__file__).resolve().parent.parent / "node"


def load_harness() -> ModuleType:
    """The node tests' harness, loaded by path (shared with tests/node if it is loaded already)."""
    if "harness" in sys.modules:
        return sys.modules["harness"]
    spec = importlib.util.spec_from_file_location("harness", NODE_TESTS / "harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["harness"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def operator(tmp_path: Path) -> Iterator[Any]:
    op = load_harness().Operator(tmp_path)
    try:
        yield op
    finally:
        op.stop_all()


def run_session(operator: Any, sid: str, nodes: list[Any]) -> set[str]:
    """One malicious-security sum over ``nodes``; returns the phases the parties ended in."""
    from pqmpc_node.client import Identity, SessionClient
    from pqmpc_node.plan import FieldDecl

    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = operator.plan(sid, nodes, program={"aggregate": [{"op": "sum", "field": "amount"}]},
                         owners=[owner], fields=[FieldDecl("amount", 0, 1000)],
                         recipients={auditor: ["sum(amount)"]}, security="malicious")
    operator.post_plan(plan, nodes)
    with SessionClient(node_url=nodes[0].url, session_id=sid, ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as c:
        c.submit_rows(owner, {"amount": ["5", "6", "7"]})
    return {operator.wait_phase(n, sid, {"Succeeded", "Failed"})["phase"] for n in nodes}


FAULTY = [sys.executable, str(NODE_TESTS / "faulty_node.py")]


def _pq_client(operator: Any) -> httpx.AsyncClient:
    """An async PQ-TLS client for the node APIs of the harness's pool."""
    return httpx.AsyncClient(transport=async_pq_transport(operator.ca.certificate, operator.suite))


async def test_tampering_node_is_quarantined(operator: Any) -> None:
    nodes = operator.start_nodes(3, command=FAULTY, per_node_env={2: {"PQMPC_TEST_FAULT": "tamper"}})
    operator.certify(nodes)
    tamperer = nodes[2].node_id
    assert run_session(operator, "tamper-a", nodes) == {"Failed"}

    now = time.time()
    urls = {n.node_id: n.url for n in nodes}
    async with httpx.AsyncClient() as plain, _pq_client(operator) as client:
        scraped = [await scrape_node(plain, n.node_id, n.metrics_url, at=now) for n in nodes]
        evidence = await fetch_session_evidence(client, "tamper-a", [n.node_id for n in nodes], urls, finished_at=now)
    assert all(s is not None for s, _ in scraped), [why for _, why in scraped]
    samples = [s for s, _ in scraped if s is not None]
    assert evidence.outcome == "mac_check_failed"
    assert {r: set(b) for r, b in evidence.blamed.items()} == {nodes[0].node_id: {tamperer}, nodes[1].node_id: {tamperer}}

    policy = AnomalyPolicy.from_spec({})
    # Metrics alone: the honest parties counted the abort, the tamperer only a lost peer.
    _, metric_scores = score_nodes(AnomalyState(), samples, [], policy, now)
    assert max(metric_scores.values(), key=lambda s: s.score).node != tamperer

    state, scores = score_nodes(AnomalyState(), samples, [evidence], policy, now)
    ranked = sorted(scores.values(), key=lambda s: s.score, reverse=True)
    assert ranked[0].node == tamperer and ranked[0].score >= policy.quarantine_score, ranked
    assert all(s.score < policy.quarantine_score for s in ranked[1:]), ranked
    state, decisions = quarantine_decisions(state, scores, policy, now)
    assert [d.node for d in decisions.enter] == [tamperer]
    assert state.quarantined() == {tamperer}


async def test_unnamed_cheater_singled_out_across_rotated_sessions(operator: Any) -> None:
    nodes = operator.start_nodes(4, command=FAULTY, per_node_env={3: {"PQMPC_TEST_FAULT": "tamper"}})
    operator.certify(nodes)
    a, b, c, t = nodes
    rotation = {"rot-1": [a, b, t], "rot-2": [t, a, c], "rot-3": [b, t, c], "rot-4": [a, b, c]}
    urls = {n.node_id: n.url for n in nodes}
    policy = AnomalyPolicy.from_spec({})
    evidence = []
    async with _pq_client(operator) as client:
        for sid, parties in rotation.items():
            phases = run_session(operator, sid, parties)
            assert phases == ({"Failed"} if t in parties else {"Succeeded"}), (sid, phases)
            ev = await fetch_session_evidence(client, sid, [n.node_id for n in parties], urls, finished_at=time.time())
            evidence.append(replace(ev, blamed={}))  # as if the cheater left no name
    # After the first failed session alone the three parties are indistinguishable.
    _, first = score_nodes(AnomalyState(), [], evidence[:1], policy, time.time())
    assert max(first.values(), key=lambda s: s.score).score < policy.quarantine_score
    state, scores = score_nodes(AnomalyState(), [], evidence, policy, time.time())
    assert scores[t.node_id].score >= policy.quarantine_score, scores
    assert all(scores[n.node_id].score < policy.release_score for n in (a, b, c)), scores
    _, decisions = quarantine_decisions(state, scores, policy, time.time())
    assert [d.node for d in decisions.enter] == [t.node_id]
