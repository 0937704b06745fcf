"""Review: a re-run plan may push the session's deadline arbitrarily far, so the kept inputs outlive the
owners' consent.

The ordinary re-plan path in :meth:`SessionManager.accept_plan` keeps accepted inputs only for a plan with
the same terms *and no later deadline* ("the owners consented to these terms"). The re-run path
(:func:`pqmpc_node.rerun.check_rerun`) excludes ``deadline`` and ``notAfter`` from the compared terms
and never compares them, and ``_end`` keeps the inputs of a failed re-run until the *new* deadline.
A malicious operator issues generation 2 with a deadline years later, lets it fail again (kills the
replacement) and the survivors keep every owner's shares and sealed envelopes (with their KEM-key
fence) until then -- and can keep re-running with them (see test_review_rerun_index_hopping.py).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from pqmpc_node.plan import PlanParty
from pqmpc_node.rerun import RerunMismatchError, check_rerun
from test_plan_providers import plan


def test_a_rerun_cannot_extend_the_deadline_the_owners_consented_to() -> None:
    held = plan(3, sharing="shamir", threshold=1, preprocessing="prss")
    parties = list(held.parties)
    parties[2] = PlanParty(2, "node-new", "127.0.0.99", "node-new.svc", 9443, 8443, "cd" * 32, 1)
    ten_years = 10 * 365 * 24 * 3600
    gen2 = replace(held, generation=2, issued_at=held.issued_at + 1, parties=tuple(parties), inputs_held_by=(0, 1),
                   deadline=held.deadline + ten_years, not_after=held.not_after + ten_years)
    with pytest.raises(RerunMismatchError):
        check_rerun(gen2, held, party=0)
