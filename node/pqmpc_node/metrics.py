"""The node's Prometheus metrics: behavioural signals the operator turns into anomaly scores.

One :class:`NodeMetrics` per process, on its own registry (no global default registry).
Names follow ``pqmpc_node_<what>_<unit>``; counters end in ``_total``.

Traffic deviation: MPC protocols here are symmetric (every party sends each peer the
same amount per round, input rounds aside, which are symmetric over a whole session),
so for each peer the session compares bytes received with bytes sent;
``pqmpc_node_peer_traffic_deviation_ratio`` is ``|received - sent| / sent`` of the last
session — 0 for an honest peer, anything else a signal.

Per-peer signals: ``pqmpc_node_handshake_failures_total{reason,peer}`` names the refused
peer where the node knows it (the node it dialed, or the authenticated peer of an
established link; ``""`` otherwise), and ``pqmpc_node_peer_wait_seconds{peer}`` is how
long each round waited for that peer's message (a slow or stalling peer stands out from
its co-parties, where ``pqmpc_node_round_latency_seconds`` only shows the slowest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["NodeMetrics"]


class _RefusalCollector(Collector):
    """Exports the transport's in-memory refusal counters as a counter labelled by reason and peer."""

    def __init__(self, snapshot: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(
            "pqmpc_node_handshake_failures",
            "Peer-link handshakes and frames refused, by reason (wrong_ca, wrong_identity, no_shared_group, ...) "
            "and refused peer node (\"\" when not known); node-API handshakes refused count as api_<reason> "
            "(e.g. api_no_shared_group: a classical-only client).",
            labels=["reason", "peer"],
        )
        for (reason, peer), count in sorted(self._snapshot().items()):
            family.add_metric([reason, peer], count)
        yield family


def _unattributed(snapshot: Callable[[], Mapping[str, int]]) -> Callable[[], dict[tuple[str, str], int]]:
    return lambda: {(reason, ""): n for reason, n in snapshot().items()}


class NodeMetrics:
    """All metrics of one node process."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        refusals: Callable[[], Mapping[str, int]],
        refusals_by_peer: Callable[[], Mapping[tuple[str, str], int]] | None = None,
    ) -> None:
        """``refusals_by_peer`` (``(reason, peer)`` counts) labels refusals by peer; without it
        every refusal from ``refusals`` is exported with ``peer=""``."""
        self.registry = registry
        self.info = Gauge("pqmpc_node_info", "Static facts about this node (value is always 1).",
                          ["pool", "node", "group", "region", "zone", "trust_domain", "suite"], registry=registry)
        self.certified = Gauge("pqmpc_node_certified", "1 once the node holds a verified certificate.", registry=registry)
        self.sessions = Counter("pqmpc_node_sessions_total", "Sessions finished at this node, by outcome.",
                                ["outcome"], registry=registry)
        self.session_duration = Histogram(
            "pqmpc_node_session_duration_seconds", "Wall time from plan acceptance to the end of a session.",
            ["outcome"], buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800), registry=registry)
        self.peer_bytes = Counter("pqmpc_node_peer_bytes_total", "MPC payload bytes per peer node and direction.",
                                  ["peer", "direction"], registry=registry)
        self.traffic_deviation = Gauge(
            "pqmpc_node_peer_traffic_deviation_ratio",
            "|received - sent| / sent per peer in the last session; the protocols prescribe 0.",
            ["peer"], registry=registry)
        self.mac_failures = Counter("pqmpc_node_mac_check_failures_total",
                                    "Sessions aborted because a MAC or consistency check failed.", registry=registry)
        self.envelopes_accepted = Counter("pqmpc_node_envelopes_accepted_total", "Input envelopes accepted.",
                                          registry=registry)
        self.envelopes_refused = Counter(
            "pqmpc_node_envelopes_refused_total",
            "Input envelopes refused, by reason (replay, bad_signature, wrong_session, decrypt_failed, ...).",
            ["reason"], registry=registry)
        self.plans_refused = Counter("pqmpc_node_plans_refused_total",
                                     "Session plans refused, by reason (unsigned, bad_signature, stale, ...).",
                                     ["reason"], registry=registry)
        self.rows_rejected = Counter("pqmpc_node_input_rows_rejected_total",
                                     "Input rows excluded by the in-MPC range checks (only their count is opened).",
                                     registry=registry)
        self.round_latency = Histogram(
            "pqmpc_node_round_latency_seconds", "Time a party waits for the messages of one MPC round.",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30), registry=registry)
        self.peer_wait = Histogram(
            "pqmpc_node_peer_wait_seconds",
            "Time from the start of an MPC round until this peer's message arrived, per peer node.",
            ["peer"], buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30), registry=registry)
        self.kem_epoch = Gauge("pqmpc_node_kem_key_epoch", "Epoch of the current KEM key.", registry=registry)
        self.kem_age = Gauge("pqmpc_node_kem_key_age_seconds", "Age of the current KEM key.", registry=registry)
        self.kem_duration = Gauge("pqmpc_node_kem_key_duration_seconds",
                                  "Configured KEM key lifetime (PQMPC_KEM_KEY_DURATION): rotation is overdue past it.",
                                  registry=registry)
        self.link_info = Gauge("pqmpc_node_peer_link_info",
                               "Negotiated transport per peer link (value 1): TLS group and signature algorithm.",
                               ["peer", "group", "signature_algorithm"], registry=registry)
        self.log_forks = Counter("pqmpc_node_log_forks_total",
                                 "Peers whose CA-signed transparency log forks from this node's (link refused).",
                                 ["peer"], registry=registry)
        self.ot_base_seconds = Histogram(
            "pqmpc_node_ot_base_seconds",
            "Wall time of the ML-KEM base OTs with one peer (128 each way, both directions at once, over the "
            "PQ peer link), per peer and attempt of an ot session.",
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=registry)
        self.preprocessing_material = Counter(
            "pqmpc_node_preprocessing_material_total",
            "Correlated randomness this node made or consumed, by provider (dealer: dealt by the operator; "
            "prss and ot: made by the parties, no dealer) and kind (triples, bits; prss: reduced, degree-reduced "
            "elements; ot: base_ots, ML-KEM base OTs, and extended_ots, OTs from the extension).",
            ["provider", "kind"], registry=registry)
        self.preprocessing_sessions = Counter(
            "pqmpc_node_preprocessing_sessions_total", "Session attempts started, by preprocessing provider.",
            ["provider"], registry=registry)
        self.peers_lost = Counter("pqmpc_node_peers_lost_total", "Peers lost during a session.", ["peer"],
                                  registry=registry)
        registry.register(_RefusalCollector(refusals_by_peer or _unattributed(refusals)))
