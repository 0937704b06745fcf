"""Place an MPCSession's parties on a NodePool's nodes: a pure, optimal solver.

Contract: pure. Node candidates and a placement request go in; a :class:`Placement`
or a :class:`PlacementInfeasible` explanation comes out. No I/O, no clock, no
randomness: the same nodes and request (in any order) give the same answer.

Model
-----
A node is *eligible* when it is ready, not quarantined, in a region that **every**
input allows, and (with ``requireGPU``) has at least one GPU. Every input is secret
shared to every party, so every party holds a share of every input: a party may only sit
where all inputs' locality rules allow, which makes the allowed regions the
*intersection* of the inputs' ``locality.regions`` (an input without a locality rule
allows every region). A zone is the pair (region, zone), so equal zone names in two
regions never count as one zone.

Choose ``n = parties`` distinct eligible nodes such that

* with ``distinctTrustDomains`` no two parties share a trust domain, and
* no zone holds more than ``maxSharesPerZone`` parties.

Objective
---------
Among feasible placements, minimise lexicographically (:class:`PlacementScore`):

1. the largest number of parties in one trust domain (collusion exposure; always 1
   with ``distinctTrustDomains``);
2. the largest number of parties in one zone (exposure to a zone outage);
3. the total load: the sum over chosen nodes of their running sessions;
4. the number of GPU nodes used by a session that does not need GPUs (keep them free);
5. the sum of the chosen nodes' ranks in the name order of the eligible nodes, so that
   equally good placements prefer nodes whose names sort first.

Parties 0..n-1 go to the chosen nodes in name order.

Solution method
---------------
Levels 3-4 fold into one integer cost per node, ``load * (n + 1) + unneeded GPU``
(a placement has at most n GPU nodes, so load always dominates). Three steps, the
search in each done by a scipy solver:

A. Caps. T* (level 1) and Z* (level 2) are at least ceil(n / trust domains) and
   ceil(n / zones). A max flow (:func:`scipy.sparse.csgraph.maximum_flow`: source ->
   trust domain -> zone -> sink over the nodes collapsed into (trust domain, zone)
   cells) shows whether those bounds admit n parties; if they do they are optimal, if
   not HiGHS (:func:`scipy.optimize.milp`) minimises ``(n + 1) * T + Z`` over integer
   cell counts. Infeasible there means distinct trust domains and the zone cap cannot
   hold together; the same max flow says how many parties would fit.
B. Cost. Nodes are pruned by exchange arguments that keep every optimum (see
   :func:`_prune`): in (cost, name rank) order only the first min(T*, Z*) of a cell,
   the first n + T* of a trust domain and the first n + Z* of a zone survive, so
   however large the pool, at most min(trust domains * (n + T*), zones * (n + Z*))
   variables remain. HiGHS dual simplex (:func:`scipy.optimize.linprog`) minimises the cost
   under the caps; the constraint matrix (a row per trust domain, per zone, and the
   party count) is totally unimodular, so the optimum is integral and, with integer
   costs, so are its duals.
C. Names. Complementary slackness with B's duals fixes the nodes every B-optimal
   placement must (or must not) use and the rows that must stay tight; over the rest,
   with B's optimal cost as an explicit bound so that the answer stays exact whatever
   the duals' rounding, HiGHS minimises the name-rank sum as an integer program.

Before any solve, a funnel of counts (ready nodes, locality, GPUs, trust domains, zone
capacity) explains an infeasible request by the first constraint that leaves too few
nodes, with the numbers.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from operator import attrgetter
from typing import Any, NewType

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse.csgraph import maximum_flow

from pqmpc_operator.model import GroupSpec, SpecError

__all__ = [
    "SOLVER_NAME",
    "InputLocality",
    "NodeCandidate",
    "NodeName",
    "PartyAssignment",
    "Placement",
    "PlacementConstraint",
    "PlacementInfeasible",
    "PlacementInputError",
    "PlacementRequest",
    "PlacementScore",
    "PlacementSolverError",
    "allowed_regions",
    "candidates_from_pool_status",
    "check_placement",
    "place_parties",
    "place_replacements",
    "placement_request_from_spec",
    "score_placement",
]

SOLVER_NAME = "scipy-highs"

NodeName = NewType("NodeName", str)

# Longest list of names quoted in an explanation; the rest are counted.
_MAX_LISTED = 8


class PlacementInputError(ValueError):
    """Node candidates or a request the solver cannot work with; the message says why."""


class PlacementSolverError(RuntimeError):
    """HiGHS returned neither an optimum nor a proof of infeasibility (a solver fault)."""


class PlacementConstraint(str, Enum):
    """The rule an infeasible request breaks; values are the spec's own words."""

    READY_NODES = "readyNodes"
    LOCALITY = "locality"
    REQUIRE_GPU = "requireGPU"
    DISTINCT_TRUST_DOMAINS = "distinctTrustDomains"
    MAX_SHARES_PER_ZONE = "maxSharesPerZone"
    TRUST_DOMAINS_AND_ZONES = "distinctTrustDomains+maxSharesPerZone"

    @property
    def reason(self) -> str:
        """A CamelCase reason for Events, conditions and metric labels."""
        return _REASONS[self]


_REASONS = {
    PlacementConstraint.READY_NODES: "NotEnoughReadyNodes",
    PlacementConstraint.LOCALITY: "LocalityUnsatisfiable",
    PlacementConstraint.REQUIRE_GPU: "NotEnoughGPUNodes",
    PlacementConstraint.DISTINCT_TRUST_DOMAINS: "NotEnoughTrustDomains",
    PlacementConstraint.MAX_SHARES_PER_ZONE: "NotEnoughZones",
    PlacementConstraint.TRUST_DOMAINS_AND_ZONES: "TrustDomainsAndZonesConflict",
}


@dataclass(frozen=True)
class NodeCandidate:
    """One node pod as placement sees it; ``load`` is its number of running sessions."""

    name: NodeName
    group: str
    region: str
    zone: str
    trust_domain: str
    ready: bool = True
    quarantined: bool = False
    gpus: int = 0
    load: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            raise PlacementInputError("a node candidate has an empty name; every node needs its pod name")
        if self.gpus < 0 or self.load < 0:
            raise PlacementInputError(
                f"node {self.name}: gpus={self.gpus} and load={self.load} must both be >= 0"
            )


@dataclass(frozen=True)
class InputLocality:
    """Where the shares of one owner's input may live; ``None`` allows every region."""

    owner: str
    regions: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.regions is not None and not self.regions:
            raise PlacementInputError(
                f"input of {self.owner}: locality.regions is empty; list at least one region or drop the rule"
            )


@dataclass(frozen=True)
class PlacementRequest:
    """What a session asks of placement (the MPCSession's parties, inputs and placement)."""

    parties: int
    inputs: tuple[InputLocality, ...] = ()
    distinct_trust_domains: bool = True
    max_shares_per_zone: int = 1
    require_gpu: bool = False

    def __post_init__(self) -> None:
        if self.parties < 1:
            raise PlacementInputError(f"parties={self.parties}: a session needs at least one party")
        if self.max_shares_per_zone < 1:
            raise PlacementInputError(
                f"maxSharesPerZone={self.max_shares_per_zone}: must be at least 1"
            )


@dataclass(frozen=True, order=True)
class PlacementScore:
    """The objective of a placement; smaller is better, compared field by field."""

    max_parties_per_trust_domain: int
    max_parties_per_zone: int
    total_load: int
    unneeded_gpu_nodes: int


@dataclass(frozen=True)
class PartyAssignment:
    """Party ``party`` runs on node ``node``."""

    party: int
    node: NodeName
    group: str
    region: str
    zone: str
    trust_domain: str

    def to_status(self) -> dict[str, Any]:
        """The MPCSession ``status.placement[]`` entry."""
        return {"party": self.party, "node": str(self.node), "region": self.region, "zone": self.zone,
                "trustDomain": self.trust_domain}


@dataclass(frozen=True)
class Placement:
    """An optimal assignment of party indexes 0..n-1 to distinct nodes."""

    assignments: tuple[PartyAssignment, ...]
    score: PlacementScore
    solver: str = SOLVER_NAME

    @property
    def nodes(self) -> tuple[NodeName, ...]:
        """Node names in party order."""
        return tuple(a.node for a in self.assignments)

    def to_status(self) -> list[dict[str, Any]]:
        """The MPCSession ``status.placement`` list."""
        return [a.to_status() for a in self.assignments]


@dataclass(frozen=True)
class PlacementInfeasible:
    """Why no placement exists: the constraint, what it needs and what the pool has."""

    constraint: PlacementConstraint
    message: str
    needed: int
    available: int

    @property
    def reason(self) -> str:
        """CamelCase reason for Events, conditions and metrics."""
        return self.constraint.reason

    def __str__(self) -> str:
        return self.message


def allowed_regions(inputs: Iterable[InputLocality]) -> frozenset[str] | None:
    """Regions every input allows (the intersection); ``None`` when no input restricts."""
    allowed: frozenset[str] | None = None
    for item in inputs:
        if item.regions is not None:
            allowed = item.regions if allowed is None else allowed & item.regions
    return allowed


def _zone_key(node: NodeCandidate) -> tuple[str, str]:
    return (node.region, node.zone)


def score_placement(chosen: Sequence[NodeCandidate], request: PlacementRequest) -> PlacementScore:
    """The objective value (levels 1-4) of a set of chosen nodes."""
    per_td: dict[str, int] = defaultdict(int)
    per_zone: dict[tuple[str, str], int] = defaultdict(int)
    for node in chosen:
        per_td[node.trust_domain] += 1
        per_zone[_zone_key(node)] += 1
    return PlacementScore(
        max_parties_per_trust_domain=max(per_td.values(), default=0),
        max_parties_per_zone=max(per_zone.values(), default=0),
        total_load=sum(node.load for node in chosen),
        unneeded_gpu_nodes=0 if request.require_gpu else sum(1 for node in chosen if node.gpus > 0),
    )


def check_placement(chosen: Sequence[NodeCandidate], request: PlacementRequest) -> tuple[str, ...]:
    """Every rule the chosen nodes break (empty when the placement is valid).

    The operator can use it to re-check a placement read back from status, for example
    after a node was quarantined.
    """
    problems: list[str] = []
    if len(chosen) != request.parties:
        problems.append(f"parties: {len(chosen)} nodes chosen, need {request.parties}")
    names = [node.name for node in chosen]
    if len(set(names)) != len(names):
        problems.append("nodes: a node holds more than one party")
    regions = allowed_regions(request.inputs)
    for node in chosen:
        if not node.ready:
            problems.append(f"readyNodes: {node.name} is not ready")
        if node.quarantined:
            problems.append(f"readyNodes: {node.name} is quarantined")
        if regions is not None and node.region not in regions:
            problems.append(f"locality: {node.name} is in {node.region}, allowed {_fmt_list(sorted(regions))}")
        if request.require_gpu and node.gpus < 1:
            problems.append(f"requireGPU: {node.name} has no GPU")
    score = score_placement(chosen, request)
    if request.distinct_trust_domains and score.max_parties_per_trust_domain > 1:
        problems.append(
            f"distinctTrustDomains: a trust domain holds {score.max_parties_per_trust_domain} parties"
        )
    if score.max_parties_per_zone > request.max_shares_per_zone:
        problems.append(
            f"maxSharesPerZone={request.max_shares_per_zone}: a zone holds {score.max_parties_per_zone} parties"
        )
    return tuple(problems)


# --------------------------------------------------------------------------- explanations


def _fmt_list(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f", +{len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def _scope(regions: frozenset[str] | None, require_gpu: bool) -> str:
    kind = "ready, unquarantined GPU nodes" if require_gpu else "ready, unquarantined nodes"
    where = "in any region" if regions is None else f"in regions {_fmt_list(sorted(regions))}"
    return f"{kind} {where}"


def _locality_conflict(inputs: Sequence[InputLocality]) -> PlacementInfeasible:
    rules = list(dict.fromkeys((i.owner, tuple(sorted(i.regions))) for i in inputs if i.regions is not None))
    for i, (owner_a, regions_a) in enumerate(rules):
        for owner_b, regions_b in rules[i + 1:]:
            if not set(regions_a) & set(regions_b):
                second = "" if owner_b == owner_a else f"of {owner_b} allow "
                detail = f"inputs of {owner_a} allow {_fmt_list(regions_a)} and {second}{_fmt_list(regions_b)}"
                return PlacementInfeasible(
                    PlacementConstraint.LOCALITY, f"locality: {detail}: no region allowed by all", 1, 0
                )
    parts = [f"of {owner} allow {_fmt_list(regions)}" for owner, regions in rules]
    listed = ", ".join(parts[:-1]) + " and " + parts[-1]
    return PlacementInfeasible(
        PlacementConstraint.LOCALITY, f"locality: inputs {listed}: no region allowed by all", 1, 0
    )


def _zone_labels(zones: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    keys = sorted(set(zones))
    names = [z for _, z in keys]
    return {k: (k[1] if names.count(k[1]) == 1 else f"{k[0]}/{k[1]}") for k in keys}


def _funnel(
    nodes: Sequence[NodeCandidate], request: PlacementRequest, regions: frozenset[str] | None
) -> list[NodeCandidate] | PlacementInfeasible:
    """Filter to eligible nodes, or explain which count falls short first."""
    n = request.parties
    healthy = [nd for nd in nodes if nd.ready and not nd.quarantined]
    if len(healthy) < n:
        not_ready = sum(1 for nd in nodes if not nd.ready)
        quarantined = sum(1 for nd in nodes if nd.quarantined)
        return PlacementInfeasible(
            PlacementConstraint.READY_NODES,
            f"readyNodes: need {n} ready, unquarantined nodes, the pool has {len(healthy)} "
            f"({len(nodes)} nodes: {not_ready} not ready, {quarantined} quarantined)",
            n, len(healthy),
        )
    local = healthy if regions is None else [nd for nd in healthy if nd.region in regions]
    if regions is not None and len(local) < n:
        elsewhere = sorted({nd.region for nd in healthy} - regions)
        return PlacementInfeasible(
            PlacementConstraint.LOCALITY,
            f"locality: need {n} ready, unquarantined nodes in regions {_fmt_list(sorted(regions))} "
            f"(the regions every input allows), only {len(local)} there; "
            f"{len(healthy) - len(local)} more are in {_fmt_list(elsewhere)}",
            n, len(local),
        )
    eligible = [nd for nd in local if nd.gpus > 0] if request.require_gpu else local
    if len(eligible) < n:
        return PlacementInfeasible(
            PlacementConstraint.REQUIRE_GPU,
            f"requireGPU: {len(eligible)} GPU nodes eligible, need {n} "
            f"(among {len(local)} {_scope(regions, False)})",
            n, len(eligible),
        )
    if request.distinct_trust_domains:
        tds = sorted({nd.trust_domain for nd in eligible})
        if len(tds) < n:
            return PlacementInfeasible(
                PlacementConstraint.DISTINCT_TRUST_DOMAINS,
                f"distinctTrustDomains: need {n} trust domains among {_scope(regions, request.require_gpu)}, "
                f"only {len(tds)} available ({_fmt_list(tds)[1:-1]})",
                n, len(tds),
            )
    m = request.max_shares_per_zone
    per_zone = Counter((nd.region, nd.zone) for nd in eligible)
    capacity = sum(min(m, count) for count in per_zone.values())
    if capacity < n:
        labels = _zone_labels(per_zone)
        if all(count >= m for count in per_zone.values()):
            need = math.ceil(n / m)
            message = (f"maxSharesPerZone={m}: need {need} zones, have {len(per_zone)} "
                       f"{_fmt_list([labels[k] for k in sorted(per_zone)])} among "
                       f"{_scope(regions, request.require_gpu)}")
            return PlacementInfeasible(PlacementConstraint.MAX_SHARES_PER_ZONE, message, need, len(per_zone))
        parts = [f"{labels[k]}: {min(m, per_zone[k])}" for k in sorted(per_zone)]
        message = (f"maxSharesPerZone={m}: the {len(per_zone)} zones with {_scope(regions, request.require_gpu)} "
                   f"hold at most {capacity} parties {_fmt_list(parts)}, need {n}")
        return PlacementInfeasible(PlacementConstraint.MAX_SHARES_PER_ZONE, message, n, capacity)
    return eligible


# --------------------------------------------------------------------------- solver


@dataclass(frozen=True)
class _Pool:
    """Eligible nodes in name order (a node's index is its name rank), as arrays."""

    nodes: Sequence[NodeCandidate]
    td: npt.NDArray[np.int64]  # trust-domain index per node
    zone: npt.NDArray[np.int64]  # zone index per node
    cost: npt.NDArray[np.float64]  # levels 3-4 per node: load * (n + 1) + unneeded GPU
    trust_domains: int
    zones: int

    @classmethod
    def build(cls, eligible: Sequence[NodeCandidate], request: PlacementRequest) -> _Pool:
        ordered = sorted(eligible, key=attrgetter("name"))
        # "\0" sorts below every printable character, so zones sort as (region, zone).
        td_names, zone_names, loads, gpus = zip(
            *[(nd.trust_domain, f"{nd.region}\0{nd.zone}", nd.load, nd.gpus > 0) for nd in ordered]
        )
        tds, td = np.unique(np.array(td_names), return_inverse=True)
        zones, zone = np.unique(np.array(zone_names), return_inverse=True)
        waste = 0 if request.require_gpu else 1
        cost = np.array(loads, dtype=np.float64) * (request.parties + 1) + waste * np.array(gpus, dtype=np.float64)
        return cls(nodes=ordered, td=td.astype(np.int64), zone=zone.astype(np.int64), cost=cost,
                   trust_domains=len(tds), zones=len(zones))

    def cells(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(trust domain, zone, node count) per non-empty (trust domain, zone) cell."""
        pair, size = np.unique(self.td * self.zones + self.zone, return_counts=True)
        return pair // self.zones, pair % self.zones, size.astype(np.int64)


def _incidence(rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64], shape: tuple[int, int]) -> sparse.csr_array:
    """Sparse 0/1 matrix with a one at each (row, col)."""
    return sparse.csr_array((np.ones(len(rows)), (rows, cols)), shape=shape)


def _max_parties(pool: _Pool, td_cap: int, zone_cap: int) -> int:
    """Most parties placeable with at most td_cap per trust domain and zone_cap per zone.

    A max flow source -> trust domain (td_cap) -> zone (cell size) -> sink (zone_cap).
    """
    td, zone, size = pool.cells()
    nt, nz = pool.trust_domains, pool.zones
    sink = nt + nz + 1
    tails = np.concatenate([np.zeros(nt, np.int64), 1 + td, 1 + nt + np.arange(nz)])
    heads = np.concatenate([1 + np.arange(nt), 1 + nt + zone, np.full(nz, sink)])
    caps = np.concatenate([np.full(nt, td_cap), np.minimum(size, min(td_cap, zone_cap)), np.full(nz, zone_cap)])
    graph = sparse.csr_array((caps.astype(np.int32), (tails, heads)), shape=(sink + 1, sink + 1))
    return int(maximum_flow(graph, 0, sink).flow_value)


def _solve_caps(pool: _Pool, request: PlacementRequest) -> tuple[int, int] | None:
    """Stage A: the smallest (per-trust-domain, per-zone) caps, in that order, or None.

    The counting bounds ceil(n / trust domains) and ceil(n / zones) are optimal
    whenever a max flow shows they admit n parties; otherwise HiGHS solves the integer
    program min (n + 1) T + Z over the cell counts.
    """
    n = request.parties
    t_max = 1 if request.distinct_trust_domains else n
    z_max = min(request.max_shares_per_zone, n)
    t_low = min(t_max, -(-n // pool.trust_domains))
    z_low = min(z_max, -(-n // pool.zones))
    if _max_parties(pool, t_low, z_low) >= n:
        return t_low, z_low
    td, zone, size = pool.cells()
    nc, nt, nz = len(size), pool.trust_domains, pool.zones
    t_col, z_col = nc, nc + 1
    cols = np.arange(nc)
    rows = np.concatenate([np.zeros(nc, np.int64), 1 + td, 1 + nt + zone, 1 + np.arange(nt), 1 + nt + np.arange(nz)])
    cols_all = np.concatenate([cols, cols, cols, np.full(nt, t_col), np.full(nz, z_col)])
    data = np.concatenate([np.ones(3 * nc), -np.ones(nt + nz)])
    matrix = sparse.csr_array((data, (rows, cols_all)), shape=(1 + nt + nz, nc + 2))
    lower = np.full(1 + nt + nz, -np.inf)
    upper = np.zeros(1 + nt + nz)
    lower[0] = upper[0] = n
    cost = np.zeros(nc + 2)
    cost[t_col], cost[z_col] = n + 1, 1
    lb = np.concatenate([np.zeros(nc), [t_low, z_low]])
    ub = np.concatenate([np.minimum(size, n), [t_max, z_max]]).astype(np.float64)
    res = milp(cost, constraints=LinearConstraint(matrix, lower, upper), integrality=np.ones(nc + 2),
               bounds=Bounds(lb, ub), options={"mip_rel_gap": 0.0})
    if res.status == 2:
        return None
    if res.status != 0 or res.x is None:
        raise PlacementSolverError(f"HiGHS stage A ended with status {res.status}: {res.message}")
    counts = np.rint(res.x[:nc])
    return int(np.bincount(td, counts, nt).max()), int(np.bincount(zone, counts, nz).max())


def _position_in_group(groups: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """For items in a given order, each item's position among the earlier items of its group."""
    order = np.argsort(groups, kind="stable")
    ranked = groups[order]
    first = np.concatenate([[True], ranked[1:] != ranked[:-1]])
    start = np.maximum.accumulate(np.where(first, np.arange(len(ranked)), 0))
    position = np.empty(len(ranked), np.int64)
    position[order] = np.arange(len(ranked)) - start
    return position


def _prune(pool: _Pool, n: int, caps: tuple[int, int]) -> npt.NDArray[np.int64]:
    """Indexes of the nodes that can be in an optimal placement under the caps.

    In (cost, name rank) order, a node past the first min(T, Z) of its (trust domain,
    zone) cell, or past the first n + T of its trust domain, or past the first n + Z of
    its zone (counted among the cells' survivors) can always be swapped for an earlier,
    unused node of the same cell, trust domain or zone: the swap keeps the caps and
    strictly improves (cost, rank sum). So every optimum lies among the survivors.
    """
    t_cap, z_cap = caps
    order = np.lexsort((np.arange(len(pool.cost)), pool.cost))
    in_cell = _position_in_group((pool.td * pool.zones + pool.zone)[order]) < min(t_cap, z_cap, n)
    order = order[in_cell]
    keep = (_position_in_group(pool.td[order]) < n + t_cap) & (_position_in_group(pool.zone[order]) < n + z_cap)
    return np.sort(order[keep])


def _choose(pool: _Pool, request: PlacementRequest, caps: tuple[int, int]) -> list[NodeCandidate]:
    """Stages B and C: the nodes of the optimal placement under the caps."""
    n = request.parties
    kept = _prune(pool, n, caps)
    nt, nz, nv = pool.trust_domains, pool.zones, len(kept)
    a_ub = _incidence(np.concatenate([pool.td[kept], nt + pool.zone[kept]]), np.tile(np.arange(nv), 2), (nt + nz, nv))
    b_ub = np.concatenate([np.full(nt, float(caps[0])), np.full(nz, float(caps[1]))])
    a_eq = sparse.csr_array(np.ones((1, nv)))
    cost_b = pool.cost[kept]
    res_b = linprog(cost_b, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=np.array([float(n)]), bounds=(0, 1),
                    method="highs-ds")
    if res_b.status != 0:
        raise PlacementSolverError(f"HiGHS stage B ended with status {res_b.status}: {res_b.message}")
    # Complementary slackness: every B-optimal x keeps nodes with positive reduced cost
    # at 0, nodes with negative reduced cost at 1, and rows with a nonzero dual tight.
    # Duals of this totally unimodular program with integer costs are integers, hence
    # the 0.5 margins; B's objective bound below keeps stage C exact regardless.
    lb = np.where(np.asarray(res_b.upper.marginals) < -0.5, 1.0, 0.0)
    ub = np.where(np.asarray(res_b.lower.marginals) > 0.5, 0.0, 1.0)
    row_lower = np.where(np.asarray(res_b.ineqlin.marginals) < -0.5, b_ub, -np.inf)
    constraints = [
        LinearConstraint(a_ub, row_lower, b_ub),
        LinearConstraint(a_eq, n, n),
        LinearConstraint(sparse.csr_array(cost_b.reshape(1, -1)), -np.inf, round(res_b.fun) + 0.5),
    ]
    # The restricted system is small and already reduced; HiGHS presolve only costs time here.
    res_c = milp(kept.astype(np.float64), constraints=constraints, integrality=np.ones(nv), bounds=Bounds(lb, ub),
                 options={"mip_rel_gap": 0.0, "presolve": False})
    if res_c.status != 0 or res_c.x is None:
        raise PlacementSolverError(f"HiGHS stage C ended with status {res_c.status}: {res_c.message}")
    return [pool.nodes[i] for i in kept[res_c.x > 0.5]]


def place_parties(nodes: Sequence[NodeCandidate], request: PlacementRequest) -> Placement | PlacementInfeasible:
    """Place ``request.parties`` parties on distinct nodes, optimally (see the module docs).

    Returns a :class:`Placement`, or a :class:`PlacementInfeasible` naming the
    constraint that cannot be met and by how much. Raises
    :class:`PlacementInputError` for duplicate node names.
    """
    counts = Counter(nd.name for nd in nodes)
    if len(counts) != len(nodes):
        dupes = sorted(name for name, count in counts.items() if count > 1)
        raise PlacementInputError(f"node names must be unique; repeated: {_fmt_list(dupes)}")
    regions = allowed_regions(request.inputs)
    if regions is not None and not regions:
        return _locality_conflict(request.inputs)
    eligible = _funnel(nodes, request, regions)
    if isinstance(eligible, PlacementInfeasible):
        return eligible
    pool = _Pool.build(eligible, request)
    caps = _solve_caps(pool, request)
    if caps is None:
        m = request.max_shares_per_zone
        most = _max_parties(pool, 1 if request.distinct_trust_domains else request.parties, m)
        return PlacementInfeasible(
            PlacementConstraint.TRUST_DOMAINS_AND_ZONES,
            f"distinctTrustDomains with maxSharesPerZone={m}: at most {most} parties fit in distinct trust "
            f"domains with at most {m} per zone among {_scope(regions, request.require_gpu)}, need "
            f"{request.parties}",
            request.parties, most,
        )
    chosen = _choose(pool, request, caps)
    problems = check_placement(chosen, request)
    if problems:
        raise PlacementSolverError(f"HiGHS returned an invalid placement: {'; '.join(problems)}")
    assignments = tuple(
        PartyAssignment(party=i, node=nd.name, group=nd.group, region=nd.region, zone=nd.zone,
                        trust_domain=nd.trust_domain)
        for i, nd in enumerate(chosen)
    )
    return Placement(assignments=assignments, score=score_placement(chosen, request))


def place_replacements(nodes: Sequence[NodeCandidate], request: PlacementRequest,
                       kept: Mapping[int, NodeCandidate], fill: Sequence[int],
                       placed_before: Mapping[str, int] | None = None) -> Placement | PlacementInfeasible:
    """Keep the parties of ``kept`` (index -> node) in place and put a new node at each index of ``fill``.

    For a re-run whose survivors hold the owners' inputs (their indexes and nodes must
    not change): party by party in index order, the eligible node not already used that
    keeps every rule of ``request`` with the parties placed so far — nodes named in
    ``placed_before`` (the earlier generations' pods, which may still be down) last, then
    least loaded, then by name (greedy, not the solver's optimum: the kept parties are
    fixed anyway, and one replacement is the usual case). :class:`PlacementInfeasible`
    names the rule no free node can keep.

    ``placed_before``: node name -> the index it held in an earlier generation of the
    session. Shares are not re-randomised between re-runs, so such a node is only ever
    placed back at that index (at another it would hold two shares of every input, and
    the holders refuse the plan); a kept party elsewhere is a :class:`PlacementInputError`.
    """
    if sorted([*kept, *fill]) != list(range(request.parties)):
        raise PlacementInputError(f"kept parties {sorted(kept)} and parties to fill {sorted(fill)} must cover "
                                  f"0..{request.parties - 1} once each")
    before = dict(placed_before or {})
    moved = sorted(f"{nd.name} at {i} (held {before[nd.name]})" for i, nd in kept.items()
                   if before.get(nd.name, i) != i)
    if moved:
        raise PlacementInputError(f"kept parties must stay at the index they held before: {', '.join(moved)}")
    regions = allowed_regions(request.inputs)
    used = {nd.name for nd in kept.values()}
    chosen: dict[int, NodeCandidate] = dict(kept)
    for party in sorted(fill):
        free = sorted((nd for nd in nodes if nd.name not in used and before.get(nd.name, party) == party),
                      key=lambda nd: (nd.name in before, nd.load, nd.name))
        eligible = [nd for nd in free if nd.ready and not nd.quarantined
                    and (regions is None or nd.region in regions) and (nd.gpus > 0 or not request.require_gpu)]
        fits = None
        for nd in eligible:
            trial = [*chosen.values(), nd]
            if not check_placement(trial, replace(request, parties=len(trial))):
                fits = nd
                break
        if fits is None:
            constraint = PlacementConstraint.READY_NODES if not eligible else (
                PlacementConstraint.DISTINCT_TRUST_DOMAINS if request.distinct_trust_domains
                else PlacementConstraint.MAX_SHARES_PER_ZONE)
            return PlacementInfeasible(
                constraint, f"no free node can replace party {party}: {len(eligible)} eligible node(s) besides the "
                f"kept parties' ({_fmt_list(sorted(str(nd.name) for nd in kept.values()))}) and the nodes that held "
                f"another index of this session, none keeps {constraint.value} with them", 1, 0)
        chosen[party] = fits
        used.add(fits.name)
    ordered = [chosen[i] for i in range(request.parties)]
    assignments = tuple(PartyAssignment(party=i, node=nd.name, group=nd.group, region=nd.region, zone=nd.zone,
                                        trust_domain=nd.trust_domain) for i, nd in enumerate(ordered))
    return Placement(assignments=assignments, score=score_placement(ordered, request))


# --------------------------------------------------------------------------- adapters


def candidates_from_pool_status(
    entries: Iterable[Mapping[str, Any]],
    groups: Iterable[GroupSpec],
    loads: Mapping[str, int] | None = None,
) -> tuple[NodeCandidate, ...]:
    """Node candidates from a NodePool's ``status.nodes[]`` and its spec's groups.

    ``loads`` maps node names to their running sessions (missing: 0). A node whose
    group is no longer in the spec keeps gpus=0; a terminating node counts as not ready.
    """
    gpus = {g.name: g.gpus for g in groups}
    loads = loads or {}
    out: list[NodeCandidate] = []
    for entry in entries:
        name = str(entry.get("name") or "")
        if not name:
            raise PlacementInputError("a NodePool status.nodes[] entry has no name; the pool status is malformed")
        group = str(entry.get("group") or "")
        out.append(NodeCandidate(
            name=NodeName(name),
            group=group,
            region=str(entry.get("region") or ""),
            zone=str(entry.get("zone") or ""),
            trust_domain=str(entry.get("trustDomain") or ""),
            ready=bool(entry.get("ready", False)) and entry.get("phase") != "Terminating",
            quarantined=bool(entry.get("quarantined", False)),
            gpus=int(gpus.get(group, 0)),
            load=int(loads.get(name, 0)),
        ))
    return tuple(out)


def placement_request_from_spec(spec: Mapping[str, Any]) -> PlacementRequest:
    """A :class:`PlacementRequest` from an MPCSession ``spec`` (defaults as in the CRD)."""
    parties = spec.get("parties")
    if not isinstance(parties, int) or isinstance(parties, bool) or parties < 1:
        raise SpecError("parties", f"{parties!r} is not a positive party count", "set spec.parties to 2..64")
    inputs: list[InputLocality] = []
    for i, item in enumerate(spec.get("inputs") or []):
        owner = str(item.get("owner") or f"inputs[{i}]")
        regions = (item.get("locality") or {}).get("regions")
        if regions is not None and (not isinstance(regions, list) or not regions):
            raise SpecError(f"inputs[{i}].locality.regions", f"{regions!r} is not a non-empty list of regions",
                            "list the regions where this input's shares may live, or drop locality")
        inputs.append(InputLocality(owner=owner, regions=None if regions is None else frozenset(map(str, regions))))
    rules = spec.get("placement") or {}
    zone_cap = rules.get("maxSharesPerZone", 1)
    if not isinstance(zone_cap, int) or isinstance(zone_cap, bool) or zone_cap < 1:
        raise SpecError("placement.maxSharesPerZone", f"{zone_cap!r} is not a positive count", "set it to 1..64")
    return PlacementRequest(
        parties=parties,
        inputs=tuple(inputs),
        distinct_trust_domains=bool(rules.get("distinctTrustDomains", True)),
        max_shares_per_zone=zone_cap,
        require_gpu=bool(rules.get("requireGPU", False)),
    )
