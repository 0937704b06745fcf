"""Behavioural anomaly scores of a pool's nodes, and the quarantine decisions they lead to.

Pure: this module takes parsed scrapes (:class:`NodeSample`), finished sessions
(:class:`SessionEvidence`) and the history the operator kept (:class:`AnomalyState`),
and returns a new history, scores and decisions. No I/O and no clock: ``now`` (seconds
since the epoch) is passed in. :mod:`pqmpc_operator.node_signals` does the scraping.

Method of :func:`score_nodes`
-----------------------------

Every signal becomes *evidence* ``E_s >= 0`` (already weighted, see
:class:`AnomalyWeights`) held per node and signal; the score is

    score = 1 - exp(-sum_s E_s)                       (in [0, 1), monotone in each E_s)

so one unit of evidence gives 0.63, 2.3 units cross the default quarantine score 0.9.
All evidence decays with half-life ``AnomalyPolicy.half_life_s`` (default 1 h):
``E <- E * 2^(-dt / half_life)`` before new evidence is added, so a node that stops
misbehaving falls back under the release score. Counters are turned into per-pass
increments by differencing against the previous scrape (a counter that went down means
the node restarted: the new value is the increment).

Threat model of the scoring. Every signal here is *reported by a node* — its own
``/metrics`` and its own session reports — and a malicious node controls both. The
scoring must therefore never let one node's word move another node's score, and never
hold a correct refusal against the node that made it:

* a node's own refusals (replayed or forged envelopes, stale or foreign plans, input
  rows outside the declared ranges) are evidence about their *senders* — data owners or
  the operator, never nodes — so they count against nobody here (they stay metrics, for
  alerts): an outsider replaying a captured envelope 1,000 times moves no score;
* an accusation of a node by a node (a handshake refusal naming the peer, a lost peer, a
  downgraded link, traffic that departs from the protocol, being named as a culprit) is
  *corroborated*: it counts only when at least two different nodes make it, and then
  only as much as the weaker of the two largest accusers says (:func:`corroborated`),
  each accuser capped per peer and signal per pass (``accusation_cap``);
* a node that accuses too much becomes a suspect: one that alone accuses more distinct
  peers in a pass than ``accusation_free`` (accusations no other node makes; a real
  outage is seen by many) gains ``accuses_many_peers``, capped below the quarantine
  score;
* a failed session that only one of its parties reports is not attributed at all: a
  liar could fabricate it (an honest detector's abort notice makes its co-parties report
  the failure too, so real aborts have several reporters), so it is held against nobody;
* only a node's own authenticated message names it (``blamedParties`` from a reveal that
  does not open its commitment, or a non-canonical element): "party i saw different
  public inputs" names a victim of someone's inconsistent broadcast, never a culprit.

What it does not stop (known gaps): two colluding nodes corroborate each other (run
parties of different trust domains; the placement's ``distinctTrustDomains`` does); a
cheater that always runs with the same honest node cannot be told apart from it by
attribution (2 below) until placement rotates them; attribution divides by sessions run,
so a cheater with many clean sessions that fails only sessions with a newer node shifts
the blame towards that node; failures in two-party sessions are never attributed (one
party's word against the other's); round latency (7) is measured by the co-parties a
slow cheater makes wait (capped below the quarantine score).

Hard signals (events; each adds evidence once):

1. **Named culprits.** A MAC check that fails on a party's own authenticated message (a
   reveal that does not match its commitment, a non-canonical element) names that party
   in the structured ``blamedParties`` of the honest parties' reports;
   :meth:`SessionEvidence.from_reports` turns those into ``blamed``. A node named in a
   failed session by at least two distinct co-parties gets
   ``w.named_by_coparties * k / (n - 1)`` (``k`` co-parties name it): a cheater's
   counter-accusation is a single voice and adds nothing.
2. **Failed sessions, attributed by participation.** The node-local counter
   ``mac_check_failures_total`` counts aborts *seen* at a node, not who caused them: in a
   3-party session every honest party sees the abort, so one session alone cannot tell
   the parties apart (unless someone is named, see 1). Over several sessions with
   different co-parties the common party stands out. The method is EM for a
   one-culprit-per-failed-session model: node ``i`` causes failures at rate ``pi_i``;
   the responsibility of ``i`` for failed session ``s`` is
   ``gamma_is = pi_i / sum_{j in s} pi_j``; ``pi_i = sum_s w_s gamma_is / (ran_i + 1)``,
   where ``ran_i`` is the (decayed) number of sessions ``i`` took part in (normalising by
   sessions run; the ``+ 1`` is a prior pseudo-session) and ``w_s`` the session's decay
   factor. Starting from equal rates, 50 iterations. Evidence is
   ``w.mac_failure * sum_s w_s gamma_is``: the expected number of failures the node
   caused. With one failed session among parties {A, B, T} each gets 1/3; with
   {A, B, T}, {A, C, T}, {B, C, T} T gets ~3 and A, B, C ~0. Only outcomes in
   ``AnomalyPolicy.attributable_outcomes`` (``mac_check_failed``) count, and in sessions
   of three or more parties only failures reported by at least two parties (a lone
   report counts against its reporter, see above): a lost peer is counted by 4, a
   preprocessing mismatch is the dealer's (the operator's) business.
3. **Handshake refusals** (``pqmpc_node_handshake_failures_total{reason[,peer]}``): a
   refusal made *by* a node of an authenticated peer is an accusation of that peer,
   weighted ``w.handshake[reason]`` and corroborated as above. A refusal before the peer
   authenticated (no ``peer`` label, or an empty one) names nobody and scores nothing:
   anyone who can open a connection can cause it at every node.
4. **Peers lost** (``peers_lost_total{peer}``): an accusation of the named peer, corroborated
   as above (every co-party sees one crash, so a real loss has several reporters).
5. **Downgraded links** (``peer_link_info``): a link whose TLS group or signature
   algorithm is not post-quantum is held against the peer as a level (like soft
   signals) once two nodes report it.

Soft signals (levels; robust deviation from the fleet):

6. **Traffic deviation**: the protocols prescribe equal bytes both ways per peer, so
   every node reports ``|received - sent| / sent`` of each peer. The value of node ``P``
   is the *lower median* of what at least two peers report about it (one lying peer
   cannot frame it).
7. **Round latency**: the node's mean wait per MPC round over the last scrape interval.
   Caveat: a slow party makes its *co-parties* wait, so this flags nodes with slow links
   or overloaded hosts rather than a slow cheater; it has a low cap and never
   quarantines alone.

For each, over the nodes observed in this pass (at least ``min_fleet``):
``z = (x - median) / max(1.4826 * MAD, floor_abs + floor_rel * |median|)`` and the level is
``min(cap, w * max(0, z - z_threshold))`` (3.5 is Iglewicz and Hoaglin's cutoff for the
MAD-based modified z-score). A fleet-wide slowdown moves the median, not the z-scores.
A soft level is kept as ``max(decayed level, new level)``.

Quarantine (:func:`quarantine_decisions`): a node enters at ``score >= quarantine_score``;
it leaves after its score stayed below ``release_score`` for ``clean_period_s``, or at
once when the operator passes it in ``cleared`` (the clear annotation), which also wipes
its evidence and excludes it from the attribution of older failed sessions. With
``auto_replace`` an entering node is also marked for replacement.

Evidence on one 3-party session (``tests/anomaly/test_real_nodes.py``): with the
test-only tampering hook, the two honest parties abort with ``mac_check_failed``
naming the tamperer's party index, while the tamperer reports ``peer_lost`` (it sees
the others hang up). So one session suffices when the reports are collected; the
node metrics alone (``mac_check_failures_total``) would not single it out. The name
appears because the hook also alters its commit-and-reveal messages of the output MAC
check; a cheater that only shifts its share of an opened value makes the check fail
with "the MAC shares do not match the opened values", which names nobody. Such a
cheater is singled out by 2 over sessions with rotated co-parties (three failed 3-party
sessions on four nodes suffice; the same test file shows it on real nodes), never by
one session: every party of an anonymous failure is equally likely to be the culprit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "AnomalyPolicy",
    "AnomalyState",
    "AnomalyWeights",
    "FailedSession",
    "NodeHistory",
    "NodeSample",
    "NodeScore",
    "QuarantineDecision",
    "QuarantineDecisions",
    "SessionEvidence",
    "attribute_failures",
    "forget_node",
    "quarantine_decisions",
    "corroborated",
    "robust_z",
    "score_nodes",
]

PQ_GROUPS = frozenset({"X25519MLKEM768", "SecP256r1MLKEM768", "SecP384r1MLKEM1024", "X25519Kyber768Draft00"})
PQ_SIGNATURES = frozenset({"ML-DSA-44", "ML-DSA-65", "ML-DSA-87"})


# -- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSample:
    """One scrape of one node's ``/metrics`` at time ``at`` (seconds since the epoch), parsed.

    Counter values are cumulative as the node exports them; :func:`score_nodes` takes the
    differences. ``handshake_failures`` is keyed by ``(reason, peer)``, ``peer`` ``None``
    when the metric does not say whom the node refused.
    """

    node: str
    at: float
    mac_check_failures: float = 0.0
    handshake_failures: Mapping[tuple[str, str | None], float] = field(default_factory=dict)
    envelopes_refused: Mapping[str, float] = field(default_factory=dict)
    plans_refused: Mapping[str, float] = field(default_factory=dict)
    input_rows_rejected: float = 0.0
    peers_lost: Mapping[str, float] = field(default_factory=dict)
    sessions: Mapping[str, float] = field(default_factory=dict)
    traffic_deviation: Mapping[str, float] = field(default_factory=dict)
    link_info: frozenset[tuple[str, str, str]] = frozenset()  # (peer, group, signature_algorithm)
    round_latency_sum: float = 0.0
    round_latency_count: float = 0.0
    peer_bytes: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (peer, direction)

    def known_peers(self) -> frozenset[str]:
        """Peers this node has per-peer metrics about."""
        peers = {p for p, _, _ in self.link_info} | set(self.traffic_deviation) | {p for p, _ in self.peer_bytes}
        peers |= {p for _, p in self.handshake_failures if p is not None}
        peers.discard(self.node)
        return frozenset(peers)


_PARTY_NAMED = re.compile(r"\bparty (\d+)\b")
# Only messages that name the sender of a bad message of its own; "party i saw different
# public inputs" names a *victim* of someone else's inconsistent broadcast, never a culprit.
_CULPRIT_PHRASES = ("does not match its commitment",)


@dataclass(frozen=True)
class SessionEvidence:
    """A finished session as its parties reported it.

    ``parties``: node names by party index. ``outcome``: ``succeeded`` or the failure
    reason (``mac_check_failed``, ``peer_lost``, ...). ``blamed``: for each reporting
    node, the nodes its report names as culprits (empty when nothing identifies one).
    """

    session_id: str
    parties: tuple[str, ...]
    outcome: str
    finished_at: float
    blamed: Mapping[str, frozenset[str]] = field(default_factory=dict)
    failure_reporters: frozenset[str] = frozenset()  # nodes that reported mac_check_failed (empty: unknown)

    @classmethod
    def from_reports(cls, session_id: str, parties: Iterable[str], reports: Mapping[str, Mapping[str, Any]], *,
                     finished_at: float) -> SessionEvidence:
        """Build evidence from each node's ``GET /v1/sessions/{id}`` document (``phase``, ``reason``, ``message``).

        The outcome is ``mac_check_failed`` if any party reports it, else the first other
        failure reason (in party order), else ``succeeded``. In a ``mac_check_failed``
        report the structured ``blamedParties`` (party indexes) names the culprits; when it
        is absent or malformed, a message that names ``party i`` for a commitment mismatch
        blames that party's node (reports of older nodes); an empty list names nobody. Indexes
        outside the session and the reporter itself are ignored.
        """
        names = tuple(parties)
        reasons: list[str] = []
        reporters: set[str] = set()
        blamed: dict[str, frozenset[str]] = {}
        for node in names:
            doc = reports.get(node)
            if doc is None or doc.get("phase") != "Failed":
                continue
            reason = str(doc.get("reason") or "failed")
            reasons.append(reason)
            if reason != "mac_check_failed":
                continue
            reporters.add(node)
            raw = doc.get("blamedParties")
            indexes: list[int] = []
            if isinstance(raw, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
                indexes = list(raw)
            if not isinstance(raw, list) or indexes != raw:  # absent or malformed: an older node's message
                message = str(doc.get("message") or "")
                if any(p in message for p in _CULPRIT_PHRASES):
                    indexes = [int(m) for m in _PARTY_NAMED.findall(message)]
            named = {names[i] for i in indexes if 0 <= i < len(names)}
            named.discard(node)
            if named:
                blamed[node] = frozenset(named)
        if "mac_check_failed" in reasons:
            outcome = "mac_check_failed"
        elif reasons:
            outcome = reasons[0]
        else:
            outcome = "succeeded"
        return cls(session_id, names, outcome, finished_at, blamed, frozenset(reporters))


# -- policy ---------------------------------------------------------------------------------


def _handshake_weights() -> dict[str, float]:
    # Presenting someone else's identity or a foreign CA is an impersonation attempt;
    # no_shared_group is a downgrade attempt (or an old build); the rest is noise-prone.
    return {"wrong_identity": 1.0, "wrong_fingerprint": 1.0, "wrong_ca": 0.8, "bad_certificate": 0.8,
            "not_in_log": 0.8, "no_shared_group": 0.5, "unexpected_session": 0.2}


@dataclass(frozen=True)
class AnomalyWeights:
    """Evidence per event (hard signals) or per z-unit above the threshold (soft signals)."""

    named_by_coparties: float = 2.5   # named by all co-parties in one session: score 0.92 alone
    mac_failure: float = 1.0          # per failed session attributed (expected count)
    handshake: Mapping[str, float] = field(default_factory=_handshake_weights)
    handshake_default: float = 0.2
    peer_lost: float = 0.3
    accusation_cap: float = 1.0       # one accuser's units against one peer per signal per pass
    over_accusing: float = 0.4        # per distinct peer accused alone beyond accusation_free in a pass
    over_accusing_cap: float = 1.5    # 1 - e^-1.5 = 0.78: never quarantines alone
    accusation_free: int = 2
    downgraded_link: float = 1.0
    traffic_deviation: float = 0.5
    traffic_deviation_cap: float = 3.0
    round_latency: float = 0.25
    round_latency_cap: float = 1.5     # 1 - e^-1.5 = 0.78: latency alone never quarantines


@dataclass(frozen=True)
class AnomalyPolicy:
    """How evidence becomes scores and decisions; see the module docstring for the method."""

    quarantine_score: float = 0.9
    release_score: float = 0.45
    clean_period_s: float = 1800.0
    half_life_s: float = 3600.0
    auto_replace: bool = False
    weights: AnomalyWeights = field(default_factory=AnomalyWeights)
    z_threshold: float = 3.5
    min_fleet: int = 3
    traffic_floor_abs: float = 0.05
    latency_floor_abs: float = 0.001
    latency_floor_rel: float = 0.25
    attributable_outcomes: frozenset[str] = frozenset({"mac_check_failed"})
    em_iterations: int = 50
    max_failed_sessions: int = 512
    count_history_on_first_sample: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.release_score <= self.quarantine_score <= 1.0:
            raise ValueError(f"anomaly policy needs 0 <= release_score ({self.release_score}) <= quarantine_score "
                             f"({self.quarantine_score}) <= 1")
        if self.half_life_s <= 0 or self.clean_period_s < 0:
            raise ValueError(f"half_life_s must be > 0 and clean_period_s >= 0 (got {self.half_life_s}, "
                             f"{self.clean_period_s})")
        if self.min_fleet < 3:
            raise ValueError(f"min_fleet must be at least 3 for a median/MAD to mean anything (got {self.min_fleet})")

    @classmethod
    def from_spec(cls, anomaly: Mapping[str, Any] | None, **overrides: Any) -> AnomalyPolicy:
        """From a NodePool's ``spec.anomaly`` block (``quarantineScore``, ``autoReplace``).

        The release score is ``min(0.5, quarantineScore / 2)``; other knobs keep their
        defaults unless given as keyword ``overrides``.
        """
        block = anomaly or {}
        score = block.get("quarantineScore", 0.9)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= float(score) <= 1.0:
            raise ValueError(f"anomaly.quarantineScore: {score!r} is not a number in [0, 1]")
        auto = block.get("autoReplace", False)
        if not isinstance(auto, bool):
            raise ValueError(f"anomaly.autoReplace: {auto!r} is not a boolean")
        q = float(score)
        values: dict[str, Any] = {"quarantine_score": q, "release_score": min(0.5, q / 2), "auto_replace": auto}
        values.update(overrides)
        return cls(**values)


# -- state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeHistory:
    """What the operator keeps about one node between passes."""

    last_sample: NodeSample | None = None
    hard: Mapping[str, float] = field(default_factory=dict)   # decayed evidence by signal
    soft: Mapping[str, float] = field(default_factory=dict)   # decayed levels by signal
    ran: float = 0.0                                          # decayed sessions taken part in
    updated_at: float | None = None
    quarantined_since: float | None = None
    clean_since: float | None = None                          # quarantined and below release since
    cleared_at: float | None = None


@dataclass(frozen=True)
class FailedSession:
    """A failed session kept for attribution (see the module docstring, 2)."""

    session_id: str
    parties: tuple[str, ...]
    at: float


@dataclass(frozen=True)
class AnomalyState:
    """Per-node history plus recent failed sessions; replaced, never mutated."""

    nodes: Mapping[str, NodeHistory] = field(default_factory=dict)
    failed_sessions: tuple[FailedSession, ...] = ()
    seen_sessions: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def restore(cls, quarantined: Mapping[str, float]) -> AnomalyState:
        """A fresh state for an operator that restarted: nodes quarantined since the given times."""
        return cls(nodes={n: NodeHistory(quarantined_since=t) for n, t in quarantined.items()})

    def quarantined(self) -> frozenset[str]:
        """Nodes currently in quarantine."""
        return frozenset(n for n, h in self.nodes.items() if h.quarantined_since is not None)


def forget_node(state: AnomalyState, node: str) -> AnomalyState:
    """Drop a node (its pod was replaced or removed); its failed sessions stay for its co-parties."""
    return replace(state, nodes={n: h for n, h in state.nodes.items() if n != node})


# -- outputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeScore:
    """A node's score and the evidence behind it (signal name -> evidence units)."""

    node: str
    score: float
    evidence: Mapping[str, float]

    def explain(self, top: int = 3) -> str:
        """The largest contributions, e.g. ``named_by_coparties=2.50, peers_lost=0.30``."""
        parts = sorted(((v, k) for k, v in self.evidence.items() if v > 0.005), reverse=True)[:top]
        return ", ".join(f"{k}={v:.2f}" for v, k in parts) or "no evidence"


@dataclass(frozen=True)
class QuarantineDecision:
    """One action on one node, with a reason a human can read in an Event."""

    node: str
    action: Literal["enter", "leave", "replace"]
    reason: str


@dataclass(frozen=True)
class QuarantineDecisions:
    """What the operator should do this pass."""

    enter: tuple[QuarantineDecision, ...] = ()
    leave: tuple[QuarantineDecision, ...] = ()
    replace: tuple[QuarantineDecision, ...] = ()


# -- maths ----------------------------------------------------------------------------------


def _decay(policy: AnomalyPolicy, since: float | None, now: float) -> float:
    if since is None or now <= since:
        return 1.0
    return float(math.pow(0.5, (now - since) / policy.half_life_s))


def _inc(cur: float, prev: float | None) -> float:
    """Counter increment; a counter that went down was reset by a restart."""
    if prev is None:
        return cur
    return cur - prev if cur >= prev else cur


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def robust_z(values: Mapping[str, float], *, floor_abs: float, floor_rel: float = 0.0) -> dict[str, float]:
    """Modified z-scores ``(x - median) / max(1.4826 MAD, floor_abs + floor_rel |median|)``."""
    if not values:
        return {}
    xs = list(values.values())
    med = _median(xs)
    mad = _median([abs(x - med) for x in xs])
    scale = max(1.4826 * mad, floor_abs + floor_rel * abs(med))
    if scale <= 0:
        return {k: 0.0 for k in values}
    return {k: (x - med) / scale for k, x in values.items()}


def attribute_failures(failed: Iterable[tuple[tuple[str, ...], float]], ran: Mapping[str, float], *,
                       iterations: int = 50) -> dict[str, float]:
    """EM responsibilities: for ``(parties, weight)`` failed sessions, each node's expected failures caused.

    See the module docstring, 2. Sessions with no parties are ignored.
    """
    sessions = [(tuple(dict.fromkeys(p)), w) for p, w in failed if p and w > 0]
    nodes = {n for p, _ in sessions for n in p}
    pi = dict.fromkeys(nodes, 1.0)
    caused = dict.fromkeys(nodes, 0.0)
    for _ in range(max(1, iterations)):
        caused = dict.fromkeys(nodes, 0.0)
        for parties, w in sessions:
            total = sum(pi[j] for j in parties)
            for j in parties:
                caused[j] += w * (pi[j] / total if total > 0 else 1.0 / len(parties))
        pi = {n: caused[n] / (ran.get(n, 0.0) + 1.0) for n in nodes}
    return caused


# -- scoring --------------------------------------------------------------------------------


def _add(target: dict[str, dict[str, float]], node: str, signal: str, amount: float) -> None:
    if amount > 0:
        bucket = target.setdefault(node, {})
        bucket[signal] = bucket.get(signal, 0.0) + amount


def corroborated(contributions: Mapping[str, float]) -> float:
    """What at least two independent accusers agree on: the second-largest contribution (0 with one accuser).

    One lying node can therefore add nothing on its own, and two accusers add only what
    the weaker of them reports.
    """
    ranked = sorted(contributions.values(), reverse=True)
    return ranked[1] if len(ranked) >= 2 else 0.0


def _hard_from_samples(state: AnomalyState, samples: Iterable[NodeSample],
                       policy: AnomalyPolicy) -> dict[str, dict[str, float]]:
    w = policy.weights
    new: dict[str, dict[str, float]] = {}
    # (accused, signal) -> accuser -> units: node-to-node accusations, corroborated below.
    accusations: dict[tuple[str, str], dict[str, float]] = {}
    accused_by: dict[str, set[str]] = {}

    def accuse(accuser: str, accused: str, signal: str, units: float, *, named: bool = True) -> None:
        if units <= 0 or accused == accuser:
            return
        bucket = accusations.setdefault((accused, signal), {})
        bucket[accuser] = bucket.get(accuser, 0.0) + units
        if named:
            accused_by.setdefault(accuser, set()).add(accused)

    for s in samples:
        hist = state.nodes.get(s.node)
        prev = hist.last_sample if hist is not None else None
        if prev is None and not policy.count_history_on_first_sample:
            continue
        for (reason, peer), count in s.handshake_failures.items():
            d = _inc(count, prev.handshake_failures.get((reason, peer)) if prev else None)
            units = d * w.handshake.get(reason, w.handshake_default)
            if peer:
                accuse(s.node, peer, "handshake_refusals", units)
            # A refusal before the peer authenticated names nobody: anyone who can open a
            # connection can cause it at every node, so it stays a metric and scores nothing.
        for peer, count in s.peers_lost.items():
            d = _inc(count, prev.peers_lost.get(peer) if prev else None)
            accuse(s.node, peer, "peers_lost", d * w.peer_lost)
        # A node's own refusals (replayed or forged envelopes, stale plans, rejected input
        # rows) are evidence about their senders, who are data owners or the operator, not
        # nodes: they never count against the node that correctly refused.
    lone: dict[str, set[str]] = {}
    for (accused, signal), by in accusations.items():
        _add(new, accused, signal, corroborated({a: min(u, w.accusation_cap) for a, u in by.items()}))
        if len(by) == 1:
            lone.setdefault(next(iter(by)), set()).add(accused)
    # Breadth counts only accusations no other node made (a real outage is seen by many),
    # and is capped below the quarantine score: it raises suspicion, never quarantines alone.
    for accuser, targets in lone.items():
        if accuser in accused_by:
            _add(new, accuser, "accuses_many_peers",
                 min(w.over_accusing_cap, w.over_accusing * max(0, len(targets) - w.accusation_free)))
    return new


def _mean_latency(s: NodeSample, prev: NodeSample | None) -> float | None:
    if prev is not None and s.round_latency_count >= prev.round_latency_count:
        dc = s.round_latency_count - prev.round_latency_count
        ds = s.round_latency_sum - prev.round_latency_sum
    else:
        dc, ds = s.round_latency_count, s.round_latency_sum
    return ds / dc if dc > 0 else None


def _soft_levels(state: AnomalyState, samples: list[NodeSample], policy: AnomalyPolicy) -> dict[str, dict[str, float]]:
    w = policy.weights
    levels: dict[str, dict[str, float]] = {}
    reports: dict[str, list[float]] = {}
    downgraded: dict[str, set[str]] = {}
    for s in samples:
        for peer, ratio in s.traffic_deviation.items():
            if peer != s.node and math.isfinite(ratio):
                reports.setdefault(peer, []).append(max(ratio, 0.0))
        for peer, group, sig in s.link_info:
            if peer != s.node and (group not in PQ_GROUPS or sig not in PQ_SIGNATURES):
                downgraded.setdefault(peer, set()).add(s.node)
    for peer, reporters in downgraded.items():
        if len(reporters) >= 2:  # corroborated: one node's claim about a peer's link is not enough
            _add(levels, peer, "downgraded_link", w.downgraded_link)
    # Lower median of at least two reports: one lying peer cannot frame a node.
    traffic = {n: sorted(v)[(len(v) - 1) // 2] for n, v in reports.items() if len(v) >= 2}
    latency: dict[str, float] = {}
    for s in samples:
        hist = state.nodes.get(s.node)
        m = _mean_latency(s, hist.last_sample if hist is not None else None)
        if m is not None and math.isfinite(m):
            latency[s.node] = m
    if len(traffic) >= policy.min_fleet:
        for n, z in robust_z(traffic, floor_abs=policy.traffic_floor_abs).items():
            _add(levels, n, "traffic_deviation",
                 min(w.traffic_deviation_cap, w.traffic_deviation * max(0.0, z - policy.z_threshold)))
    if len(latency) >= policy.min_fleet:
        for n, z in robust_z(latency, floor_abs=policy.latency_floor_abs, floor_rel=policy.latency_floor_rel).items():
            _add(levels, n, "round_latency",
                 min(w.round_latency_cap, w.round_latency * max(0.0, z - policy.z_threshold)))
    for bucket in levels.values():
        if "downgraded_link" in bucket:
            bucket["downgraded_link"] = min(bucket["downgraded_link"], w.downgraded_link)
    return levels


def score_nodes(state: AnomalyState, samples: Iterable[NodeSample], sessions: Iterable[SessionEvidence],
                policy: AnomalyPolicy, now: float) -> tuple[AnomalyState, dict[str, NodeScore]]:
    """One scoring pass: decay, add this pass's evidence, attribute failed sessions, score.

    ``samples``: this pass's scrapes (nodes that could not be scraped are simply absent).
    ``sessions``: finished sessions; one already seen is ignored. Returns the new state and
    a score for every node known to the state, the samples or the sessions.
    """
    sample_list = sorted(samples, key=lambda s: s.node)
    w = policy.weights
    hard_new = _hard_from_samples(state, sample_list, policy)
    soft_new = _soft_levels(state, sample_list, policy)

    seen = dict(state.seen_sessions)
    failed = list(state.failed_sessions)
    ran_new: dict[str, float] = {}
    for ev in sorted(sessions, key=lambda e: (e.finished_at, e.session_id)):
        if ev.session_id in seen or not ev.parties:
            continue
        seen[ev.session_id] = ev.finished_at
        f = _decay(policy, ev.finished_at, now)
        parties = tuple(dict.fromkeys(ev.parties))
        for p in parties:
            ran_new[p] = ran_new.get(p, 0.0) + f
        if ev.outcome not in policy.attributable_outcomes:
            continue
        reporters = ev.failure_reporters & set(parties)
        if len(parties) >= 2 and len(reporters) == 1:
            # One party's word: a liar could fabricate it against its co-parties, and a cheater
            # can make a single honest party abort alone (nodes do not tell each other why
            # they stop), so neither its co-parties nor the reporter are held to it.
            continue
        failed.append(FailedSession(ev.session_id, parties, ev.finished_at))
        if len(parties) > 1:
            for culprit in parties:
                accusers = {r for r, named in ev.blamed.items() if culprit in named and r != culprit and r in parties}
                if len(accusers) >= 2:  # corroborated: one co-party's word alone names nobody
                    _add(hard_new, culprit, "named_by_coparties",
                         f * w.named_by_coparties * len(accusers) / (len(parties) - 1))
    # Keep failed sessions while they still weigh something, at most max_failed_sessions.
    failed = [fs for fs in failed if _decay(policy, fs.at, now) >= 0.01][-policy.max_failed_sessions:]
    horizon = now - 20 * policy.half_life_s
    seen = {k: t for k, t in seen.items() if t >= horizon}

    names = set(state.nodes) | {s.node for s in sample_list} | set(hard_new) | set(soft_new) | set(ran_new)
    names |= {p for fs in failed for p in fs.parties}
    by_sample = {s.node: s for s in sample_list}
    histories: dict[str, NodeHistory] = {}
    for n in sorted(names):
        h = state.nodes.get(n, NodeHistory())
        f = _decay(policy, h.updated_at, now)
        hard = {k: v * f for k, v in h.hard.items()}
        for k, v in hard_new.get(n, {}).items():
            hard[k] = hard.get(k, 0.0) + v
        soft = {k: v * f for k, v in h.soft.items()}
        for k, v in soft_new.get(n, {}).items():
            soft[k] = max(soft.get(k, 0.0), v)
        histories[n] = replace(
            h, last_sample=by_sample.get(n, h.last_sample),
            hard={k: v for k, v in hard.items() if v > 1e-9}, soft={k: v for k, v in soft.items() if v > 1e-9},
            ran=h.ran * f + ran_new.get(n, 0.0), updated_at=now if h.updated_at is None else max(now, h.updated_at))

    # A node cleared by annotation is not a suspect for sessions that ended before the clear.
    def suspects(fs: FailedSession) -> tuple[str, ...]:
        return tuple(p for p in fs.parties if (c := histories[p].cleared_at) is None or fs.at > c)

    caused = attribute_failures(((suspects(fs), _decay(policy, fs.at, now)) for fs in failed),
                                {n: h.ran for n, h in histories.items()}, iterations=policy.em_iterations)
    scores: dict[str, NodeScore] = {}
    for n, h in histories.items():
        evidence = {**h.hard}
        for k, v in h.soft.items():
            evidence[k] = evidence.get(k, 0.0) + v
        if caused.get(n, 0.0) > 0:
            evidence["mac_failures_attributed"] = w.mac_failure * caused[n]
        total = sum(evidence.values())
        scores[n] = NodeScore(n, 1.0 - math.exp(-total), evidence)
    return AnomalyState(nodes=histories, failed_sessions=tuple(failed), seen_sessions=seen), scores


# -- decisions ------------------------------------------------------------------------------


def quarantine_decisions(state: AnomalyState, scores: Mapping[str, NodeScore], policy: AnomalyPolicy, now: float,
                         cleared: Set[str] = frozenset()) -> tuple[AnomalyState, QuarantineDecisions]:
    """Who enters quarantine, who leaves, who is to be replaced; returns the updated state too.

    ``cleared``: nodes whose clear annotation the operator saw this pass (it should remove
    the annotation after acting, else the node is cleared again on every pass).
    """
    nodes = dict(state.nodes)
    enter: list[QuarantineDecision] = []
    leave: list[QuarantineDecision] = []
    repl: list[QuarantineDecision] = []
    for n in sorted(set(nodes) | set(scores) | set(cleared)):
        h = nodes.get(n, NodeHistory())
        sc = scores.get(n)
        score = sc.score if sc is not None else 0.0
        if n in cleared:
            if h.quarantined_since is not None:
                leave.append(QuarantineDecision(n, "leave", "quarantine cleared by annotation"))
            nodes[n] = replace(h, hard={}, soft={}, quarantined_since=None, clean_since=None, cleared_at=now)
            continue
        if h.quarantined_since is not None:
            if score >= policy.release_score:
                nodes[n] = replace(h, clean_since=None)
                continue
            since = h.clean_since if h.clean_since is not None else now
            if now - since >= policy.clean_period_s:
                leave.append(QuarantineDecision(
                    n, "leave", f"anomaly score {score:.2f} stayed below {policy.release_score:.2f} for "
                                f"{now - since:.0f}s (clean period {policy.clean_period_s:.0f}s)"))
                nodes[n] = replace(h, quarantined_since=None, clean_since=None)
            else:
                nodes[n] = replace(h, clean_since=since)
        elif score >= policy.quarantine_score:
            why = f"anomaly score {score:.2f} >= {policy.quarantine_score:.2f} ({sc.explain() if sc else ''})"
            enter.append(QuarantineDecision(n, "enter", why))
            if policy.auto_replace:
                repl.append(QuarantineDecision(n, "replace", f"autoReplace: {why}"))
            nodes[n] = replace(h, quarantined_since=now, clean_since=None)
    return replace(state, nodes=nodes), QuarantineDecisions(tuple(enter), tuple(leave), tuple(repl))
