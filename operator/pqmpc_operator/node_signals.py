"""The I/O shell of anomaly scoring: scrape a node's ``/metrics`` and fetch session reports.

Thin on purpose: parsing of the exposition text is :func:`parse_metrics` (pure, tested on
its own), everything else is in :mod:`pqmpc_operator.anomaly`. Errors never raise: a
scrape that fails returns ``(None, reason)`` so the operator can log it and move on
(a node that cannot be scraped is simply absent from the pass).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pqmpc_operator.anomaly import NodeSample, SessionEvidence

__all__ = ["fetch_session_evidence", "parse_metrics", "scrape_node"]

DEFAULT_TIMEOUT = httpx.Timeout(2.0)


def parse_metrics(node: str, text: str, *, at: float) -> NodeSample:
    """Parse a node's Prometheus exposition text into a :class:`NodeSample`; raises ``ValueError`` if malformed."""
    handshake: dict[tuple[str, str | None], float] = {}
    env: dict[str, float] = {}
    plans: dict[str, float] = {}
    lost: dict[str, float] = {}
    sessions: dict[str, float] = {}
    traffic: dict[str, float] = {}
    links: set[tuple[str, str, str]] = set()
    peer_bytes: dict[tuple[str, str], float] = {}
    scalars = {"mac": 0.0, "rows": 0.0, "lat_sum": 0.0, "lat_count": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, float(s.value)
            if name == "pqmpc_node_mac_check_failures_total":
                scalars["mac"] = value
            elif name == "pqmpc_node_handshake_failures_total":
                key = (labels.get("reason", ""), labels.get("peer") or None)
                handshake[key] = handshake.get(key, 0.0) + value
            elif name == "pqmpc_node_envelopes_refused_total":
                env[labels.get("reason", "")] = value
            elif name == "pqmpc_node_plans_refused_total":
                plans[labels.get("reason", "")] = value
            elif name == "pqmpc_node_input_rows_rejected_total":
                scalars["rows"] = value
            elif name == "pqmpc_node_peers_lost_total":
                lost[labels.get("peer", "")] = value
            elif name == "pqmpc_node_sessions_total":
                sessions[labels.get("outcome", "")] = value
            elif name == "pqmpc_node_peer_traffic_deviation_ratio":
                traffic[labels.get("peer", "")] = value
            elif name == "pqmpc_node_peer_link_info" and value > 0:
                links.add((labels.get("peer", ""), labels.get("group", ""), labels.get("signature_algorithm", "")))
            elif name == "pqmpc_node_round_latency_seconds_sum":
                scalars["lat_sum"] = value
            elif name == "pqmpc_node_round_latency_seconds_count":
                scalars["lat_count"] = value
            elif name == "pqmpc_node_peer_bytes_total":
                peer_bytes[(labels.get("peer", ""), labels.get("direction", ""))] = value
    return NodeSample(node=node, at=at, mac_check_failures=scalars["mac"], handshake_failures=handshake,
                      envelopes_refused=env, plans_refused=plans, input_rows_rejected=scalars["rows"],
                      peers_lost=lost, sessions=sessions, traffic_deviation=traffic, link_info=frozenset(links),
                      round_latency_sum=scalars["lat_sum"], round_latency_count=scalars["lat_count"],
                      peer_bytes=peer_bytes)


async def scrape_node(client: httpx.AsyncClient, node: str, base_url: str, *, at: float,
                      timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> tuple[NodeSample | None, str]:
    """GET ``{base_url}/metrics``; returns ``(sample, "")`` or ``(None, reason)``. ``at`` is the caller's clock."""
    try:
        r = await client.get(base_url.rstrip("/") + "/metrics", timeout=timeout)
    except httpx.HTTPError as exc:
        return None, f"scrape of {node} failed: {type(exc).__name__}: {exc}"
    if r.status_code != 200:
        return None, f"scrape of {node} answered HTTP {r.status_code}"
    try:
        return parse_metrics(node, r.text, at=at), ""
    except ValueError as exc:
        return None, f"metrics of {node} do not parse: {exc}"


async def fetch_session_evidence(client: httpx.AsyncClient, session_id: str, parties: Iterable[str],
                                 urls: Mapping[str, str], *, finished_at: float,
                                 timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> SessionEvidence:
    """Each party's ``GET /v1/sessions/{id}`` turned into :class:`SessionEvidence`; unreachable parties are skipped."""
    names = tuple(parties)
    reports: dict[str, Mapping[str, Any]] = {}
    for node in names:
        url = urls.get(node)
        if url is None:
            continue
        try:
            r = await client.get(f"{url.rstrip('/')}/v1/sessions/{session_id}", timeout=timeout)
            if r.status_code == 200:
                doc = r.json()
                if isinstance(doc, dict):
                    reports[node] = doc
        except (httpx.HTTPError, ValueError):
            continue
    return SessionEvidence.from_reports(session_id, names, reports, finished_at=finished_at)
