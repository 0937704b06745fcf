"""The gateway's routing decisions: external names, the pod table, and which connections go nowhere."""

from __future__ import annotations

from typing import Any

from pqmpc_node.gateway.routing import Endpoint, Refusal, endpoints_from_pods, external_name, node_of, route


def pod(name: str, ip: str | None = "10.0.0.5", *, pool: str = "banks", phase: str = "Running",
        deleting: bool = False, app: str = "pqmpc-node") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"pqmpc.io/pool": pool, "app.kubernetes.io/name": app}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"phase": phase, **({"podIP": ip} if ip else {})}}


def test_external_name_round_trips() -> None:
    name = external_name("banks-bank-a-eu-0", "Banks.Example.COM.")
    assert name == "banks-bank-a-eu-0.banks.example.com"
    assert node_of(name, "banks.example.com") == "banks-bank-a-eu-0"
    assert node_of(name.upper() + ".", "banks.example.com") == "banks-bank-a-eu-0"


def test_names_outside_the_domain_or_deeper_are_not_nodes() -> None:
    assert node_of("banks.example.com", "banks.example.com") is None
    assert node_of("x.banks.example.org", "banks.example.com") is None
    assert node_of("a.b.banks.example.com", "banks.example.com") is None
    assert node_of("evilbanks.example.com", "banks.example.com") is None


def test_table_keeps_only_running_nodes_of_the_pool() -> None:
    table = endpoints_from_pods([
        pod("banks-a-0", "10.0.0.1"),
        pod("banks-a-1", None),                      # no IP yet
        pod("banks-a-2", phase="Pending"),
        pod("banks-a-3", deleting=True),
        pod("other-a-0", pool="other"),
        pod("banks-gateway-x", app="pqmpc-gateway"),  # same pool label, not a node
    ], pool="banks", api_port=8443)
    assert table == {"banks-a-0": Endpoint("banks-a-0", "10.0.0.1", 8443)}


def test_route_decisions() -> None:
    table = {"banks-a-0": Endpoint("banks-a-0", "10.0.0.1", 8443)}
    assert route("banks-a-0.banks.example.com", domain="banks.example.com", endpoints=table) == table["banks-a-0"]
    unknown = route("banks-a-9.banks.example.com", domain="banks.example.com", endpoints=table)
    assert isinstance(unknown, Refusal) and unknown.reason == "unknown_node" and "banks-a-9" in unknown.detail
    outside = route("banks-a-0.example.org", domain="banks.example.com", endpoints=table)
    assert isinstance(outside, Refusal) and outside.reason == "unknown_sni"
