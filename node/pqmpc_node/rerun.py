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
shares they held before. :func:`check_rerun` refuses anything else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from pqmpc_node.plan import PlanError, SessionPlan, canonical_bytes

__all__ = ["RerunMismatchError", "check_rerun", "rerun_terms_digest"]


class RerunMismatchError(PlanError):
    """A re-run plan that does not continue the failed session this node kept inputs for."""

    reason = "rerun_mismatch"


_NOT_TERMS = ("generation", "issuedAt", "notAfter", "deadline", "parties", "inputsHeldBy")


def rerun_terms_digest(plan: SessionPlan) -> str:
    """SHA-256 of the terms a re-run must keep: the plan without its generation, times, parties and holders."""
    terms = {k: v for k, v in plan.to_json().items() if k not in _NOT_TERMS}
    return hashlib.sha256(canonical_bytes(terms)).hexdigest()


def check_rerun(new: SessionPlan, held: SessionPlan, *, survivors: Sequence[int], party: int) -> None:
    """Refuse (:class:`RerunMismatchError`) a re-run plan this node, party ``party`` of ``held``, may not take.

    ``survivors``: the parties this node saw alive when the session failed (itself among them).
    """
    if not new.inputs_held_by:
        raise RerunMismatchError(f"session {new.session_id} failed here and keeps its inputs for a re-run; a plan "
                                 "that does not name the holders (inputsHeldBy) cannot replace it")
    if new.generation <= held.generation:
        raise RerunMismatchError(f"a re-run needs a generation above {held.generation}, got {new.generation}")
    if rerun_terms_digest(new) != rerun_terms_digest(held) or len(new.parties) != len(held.parties):
        raise RerunMismatchError(f"the re-run plan of session {new.session_id} changes the session's terms (program, "
                                 "inputs, outputs, sharing or party count); the kept inputs are only for the same terms")
    if party not in new.inputs_held_by:
        raise RerunMismatchError(f"this node (party {party}) kept the inputs of session {new.session_id}, but the "
                                 f"re-run plan names only parties {list(new.inputs_held_by)} as holders")
    gone = sorted(set(new.inputs_held_by) - set(survivors))
    if gone:
        raise RerunMismatchError(f"the re-run plan names parties {gone} as holders, but they were lost when session "
                                 f"{new.session_id} failed here (survivors: {list(survivors)})")
    for p in new.inputs_held_by:
        a, b = new.parties[p], held.parties[p]
        if (a.node_id, a.cert_fingerprint) != (b.node_id, b.cert_fingerprint):
            raise RerunMismatchError(f"holder party {p} must stay node {b.node_id} with its certificate in a re-run; "
                                     f"the plan puts {a.node_id} there")
