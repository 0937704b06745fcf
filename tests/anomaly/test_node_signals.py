"""The scraping shell: exposition text (as the node's own registry writes it) parsed into a
NodeSample; scrape errors, HTTP errors and garbage come back as ``None`` with a reason;
session reports fetched into SessionEvidence. HTTP is faked with httpx.MockTransport."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from pqmpc_node.metrics import NodeMetrics
from pqmpc_operator.node_signals import fetch_session_evidence, parse_metrics, scrape_node


def exposition() -> str:
    reg = CollectorRegistry()
    m = NodeMetrics(reg, refusals=lambda: {"wrong_ca": 3, "no_shared_group": 1})
    m.mac_failures.inc()
    m.envelopes_refused.labels("replay").inc(2)
    m.plans_refused.labels("stale").inc()
    m.rows_rejected.inc(5)
    m.peers_lost.labels("node-2").inc()
    m.sessions.labels("succeeded").inc(4)
    m.traffic_deviation.labels("node-2").set(0.25)
    m.link_info.labels("node-2", "X25519MLKEM768", "ML-DSA-65").set(1)
    m.round_latency.observe(0.5)
    m.round_latency.observe(1.5)
    m.peer_bytes.labels("node-2", "sent").inc(100)
    return generate_latest(reg).decode()


def test_parse_metrics_reads_every_signal() -> None:
    s = parse_metrics("node-1", exposition(), at=7.0)
    assert s.node == "node-1" and s.at == 7.0
    assert s.mac_check_failures == 1.0
    assert dict(s.handshake_failures) == {("wrong_ca", None): 3.0, ("no_shared_group", None): 1.0}
    assert dict(s.envelopes_refused) == {"replay": 2.0} and dict(s.plans_refused) == {"stale": 1.0}
    assert s.input_rows_rejected == 5.0 and dict(s.peers_lost) == {"node-2": 1.0}
    assert dict(s.sessions) == {"succeeded": 4.0} and dict(s.traffic_deviation) == {"node-2": 0.25}
    assert s.link_info == {("node-2", "X25519MLKEM768", "ML-DSA-65")}
    assert (s.round_latency_sum, s.round_latency_count) == (2.0, 2.0)
    assert dict(s.peer_bytes) == {("node-2", "sent"): 100.0}
    assert s.known_peers() == {"node-2"}


def test_handshake_failures_with_peer_label_are_keyed_by_peer() -> None:
    text = '# TYPE pqmpc_node_handshake_failures counter\npqmpc_node_handshake_failures_total{reason="wrong_identity",peer="node-9"} 4\n'
    assert dict(parse_metrics("n", text, at=0.0).handshake_failures) == {("wrong_identity", "node-9"): 4.0}


async def test_scrape_ok_and_failures() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host == "ok":
            return httpx.Response(200, text=exposition())
        if host == "down":
            raise httpx.ConnectError("refused", request=request)
        if host == "garbage":
            return httpx.Response(200, text="this is { not prometheus\n")
        return httpx.Response(503, text="no")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        sample, why = await scrape_node(client, "a", "http://ok:9000", at=1.0)
        assert sample is not None and why == "" and sample.mac_check_failures == 1.0
        for host, expect in (("down", "ConnectError"), ("garbage", "do not parse"), ("busy", "HTTP 503")):
            sample, why = await scrape_node(client, host, f"http://{host}:9000", at=1.0)
            assert sample is None and expect in why, why


async def test_fetch_session_evidence() -> None:
    msg = "MAC check 'outputs/broadcast' failed over openings []: party 2 opened a value that does not match its commitment"
    docs = {"a": {"phase": "Failed", "reason": "mac_check_failed", "message": msg},
            "b": {"phase": "Failed", "reason": "mac_check_failed", "message": msg}}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/sessions/s1"
        doc = docs.get(request.url.host)
        return httpx.Response(200, json=doc) if doc else httpx.Response(404, json={})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        ev = await fetch_session_evidence(client, "s1", ["a", "b", "t"],
                                          {"a": "http://a", "b": "http://b", "t": "http://t"}, finished_at=3.0)
    assert ev.outcome == "mac_check_failed" and dict(ev.blamed) == {"a": {"t"}, "b": {"t"}}
