"""Whether a surviving node may take a re-run plan for a session whose inputs it kept (pure).

A dealer-free Shamir session that loses a party below the ``2t + 1`` its multiplications
need, with at least ``t + 1`` parties left, ends ``Failed`` at the survivors, which keep
every owner's input (:mod:`pqmpc_node.sessions`). The operator may then re-plan: a new
generation that puts a replacement node at each lost index and names the holders in
``inputsHeldBy``; the replacements get their shares by resharing
(:mod:`pqmpc_node.input_resharing`) and no owner submits again.

The owners consented to the session's terms with the nodes the pool's CA certified and
the operator placed; a re-run keeps every term but the replacements (program, fields,
outputs, sharing, threshold, security, suite, preprocessing, row bound), and keeps each
holder where it was (same index, node and certificate), so the holders hold exactly the
shares they held before. :func:`check_rerun` refuses anything else, and also:

- a deadline later than the held plan's: the owners consented to keeping their inputs
  until the session's deadline, and each accepted re-run keeps it or shortens it, so no
  generation outlives the original session's deadline;
- a plan that puts a node this holder has seen in any generation of the session (the
  original plan's parties and every accepted re-run's, :func:`record_placements`) at
  another index. Shares are not re-randomised between re-runs, so a node placed at two
  indexes would hold two points of each owner's polynomial: one node at ``t + 1``
  indexes over the generations reconstructs every input alone. A node is only ever
  placed at one index of a session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pqmpc_node.plan import PlanError, SessionPlan, canonical_bytes

__all__ = ["CONFLICTING_INDEX", "Placements", "RerunMismatchError", "check_rerun", "merge_placements",
           "record_placements", "rerun_terms_digest"]

Placements = Mapping[str, int]
"""Node id -> the one index it held a share of a session at, over every generation seen."""


class RerunMismatchError(PlanError):
    """A re-run plan that does not continue the failed session this node kept inputs for."""

    reason = "rerun_mismatch"


_NOT_TERMS = ("generation", "issuedAt", "notAfter", "deadline", "parties", "inputsHeldBy")


def rerun_terms_digest(plan: SessionPlan) -> str:
    """SHA-256 of the terms a re-run must keep: the plan without its generation, times, parties and holders."""
    terms = {k: v for k, v in plan.to_json().items() if k not in _NOT_TERMS}
    return hashlib.sha256(canonical_bytes(terms)).hexdigest()


def record_placements(seen: Placements, plan: SessionPlan) -> dict[str, int]:
    """``seen`` with every party of ``plan`` added (node id -> index); a holder keeps this with its kept inputs."""
    out = dict(seen)
    for p in plan.parties:
        out.setdefault(p.node_id, p.index)
    return out


CONFLICTING_INDEX = -1
"""The index recorded for a node that reports place at two indexes: no plan may place it anywhere."""


def merge_placements(own: Placements, reports: Mapping[int, Placements]) -> dict[str, int]:
    """``own`` with the holders' ``reports`` (:func:`pqmpc_node.input_resharing.exchange_placements`) added.

    A re-run's replacement learns the generations it never saw this way. Reports that
    disagree on a node's index (a corrupted holder's, or ``own``) leave it at
    :data:`CONFLICTING_INDEX`, so no later plan may place it at all: a false report can
    only make this node refuse more, never let a node hold a second index.
    """
    out = dict(own)
    for _, report in sorted(reports.items()):
        for node, index in report.items():
            if out.setdefault(node, index) != index:
                out[node] = CONFLICTING_INDEX
    return out


def check_rerun(new: SessionPlan, held: SessionPlan, *, party: int,
                placed_before: Placements | None = None) -> None:
    """Refuse (:class:`RerunMismatchError`) a re-run plan this node, party ``party`` of ``held``, may not take.

    ``placed_before``: every node this node saw hold a share of the session in a generation
    before ``held`` and its index (:func:`record_placements`); ``held``'s parties always count.
    """
    if not new.inputs_held_by:
        raise RerunMismatchError(f"session {new.session_id} failed here and keeps its inputs for a re-run; a plan "
                                 "that does not name the holders (inputsHeldBy) cannot replace it")
    if new.generation <= held.generation:
        raise RerunMismatchError(f"a re-run needs a generation above {held.generation}, got {new.generation}")
    if new.deadline > held.deadline:
        raise RerunMismatchError(f"the re-run plan of session {new.session_id} moves the deadline from {held.deadline} "
                                 f"to {new.deadline}; the owners consented to keeping their inputs until the session's "
                                 "deadline only, so a re-run keeps it (or ends sooner)")
    if rerun_terms_digest(new) != rerun_terms_digest(held) or len(new.parties) != len(held.parties):
        raise RerunMismatchError(f"the re-run plan of session {new.session_id} changes the session's terms (program, "
                                 "inputs, outputs, sharing or party count); the kept inputs are only for the same terms")
    if party not in new.inputs_held_by:
        raise RerunMismatchError(f"this node (party {party}) kept the inputs of session {new.session_id}, but the "
                                 f"re-run plan names only parties {list(new.inputs_held_by)} as holders")
    # Not required: that every holder survived in *this* node's view. When one party stops, its
    # peers see its link drop and may count it lost too (a cascade), so the parties' views of who
    # survived differ; a holder that keeps its node and certificate (checked next) is the same
    # process with the same shares (keys live in memory only: a restart is a new certificate).
    for p in new.inputs_held_by:
        a, b = new.parties[p], held.parties[p]
        if (a.node_id, a.cert_fingerprint) != (b.node_id, b.cert_fingerprint):
            raise RerunMismatchError(f"holder party {p} must stay node {b.node_id} with its certificate in a re-run; "
                                     f"the plan puts {a.node_id} there")
    seen = record_placements(placed_before or {}, held)
    for entry in new.parties:
        before = seen.get(entry.node_id)
        if before is not None and before != entry.index:
            held_at = (f"it held index {before}" if before != CONFLICTING_INDEX
                       else "the holders reported it at different indexes")
            raise RerunMismatchError(f"the re-run plan of session {new.session_id} places node {entry.node_id} at "
                                     f"index {entry.index}, but {held_at} in an earlier generation: a node is "
                                     "only ever placed at one index of a session (two would give it two shares of "
                                     "every input)")
