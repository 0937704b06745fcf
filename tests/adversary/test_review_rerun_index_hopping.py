"""Review: successive re-runs let ONE corrupted node collect shares at two indexes (t = 1), so it reconstructs.

docs/mpc.md: "the threshold counts every node that ever holds a share of the session ... at most t
of all those nodes may be corrupted". Nothing enforces that a node holds shares at one index only:
:func:`pqmpc_node.rerun.check_rerun` compares the new plan only with the runtime's *current* plan
(the last generation) and only for the holders' indexes; replacements are unconstrained.

Scenario (n = 3, t = 1; a malicious operator that places nodes and can make any node "lost"
-- kill its pod / drop its links -- plus a single corrupted pool node E):

* gen 1: A(0) B(1) E(2). E holds f(3) from the owner's envelope. E goes silent; A, B keep the inputs.
* gen 2: holders [0, 1], replacement C (honest) at index 2: C gets f(3) by resharing.
  The operator drops B's links; A and C survive (t + 1 = 2) and keep the inputs.
* gen 3: holders [0, 2] = A, C (same nodes, same indexes as in gen 2), replacement at index 1: E.
  A and C both accept (check_rerun) and reshare f(2) to E.

E now holds f(2) and f(3): two points of a degree-1 polynomial, so every owner input f(0).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np

from pqmpc_node.mpc.channel import InProcessHub
from pqmpc_node.mpc.field import MersenneField61
from pqmpc_node.mpc.resharing import lagrange_at
from pqmpc_node.rerun import RerunMismatchError, check_rerun, merge_placements, record_placements
from pqmpc_node.input_ids import InputId
from pqmpc_node.input_resharing import HeldInput, reshare_inputs
from pqmpc_node.mpc.inputs import share_owner_input
from pqmpc_node.mpc.randomness import AesCtrRandom
from pqmpc_node.mpc.sharing import ShamirScheme
from pqmpc_node.payloads import InputPayload
from pqmpc_node.plan import PlanParty
from test_plan_providers import plan

FIELD = MersenneField61(np)


def _node(index: int, name: str, fp: str) -> PlanParty:
    return PlanParty(index, name, f"127.0.0.{20 + index}", f"{name}.svc", 9443, 8443, fp * 32, 1)


def _reshare_to(replacement: int, holders: list[int], shares: dict[int, InputPayload]) -> InputPayload:
    """Run the real resharing step (in process) with ``holders`` and return what ``replacement`` gets."""
    hub = InProcessHub(3)
    iid = InputId("bank-a", "a1" * 8, 1)

    async def party(p: int):
        held = {} if p == replacement else {"bank-a": HeldInput(iid, shares[p])}
        return await reshare_inputs(hub.channel(p), threshold=1, live=[0, 1, 2], replacements=[replacement],
                                    owners=["bank-a"], held=held, rng=AesCtrRandom.from_os(),
                                    validate=lambda owner, payload: payload)

    async def main():
        return await asyncio.gather(*(party(p) for p in range(3)))

    return asyncio.run(main())[replacement]["bank-a"].payload


def test_one_corrupted_node_must_not_hold_shares_at_two_indexes() -> None:
    secret = FIELD.asarray(np.array([424242, 7], dtype=np.uint64))
    parts = share_owner_input(FIELD, ShamirScheme(3, 1), secret, AesCtrRandom(b"\x05" * 32), keyed=False)
    f = {i: InputPayload("rows", "f61", {"a": x}, {}, 2, None, None) for i, (x, _, _) in enumerate(parts)}

    a, b, e, c = _node(0, "node-A", "aa"), _node(1, "node-B", "bb"), _node(2, "node-E", "ee"), _node(2, "node-C", "cc")
    gen1 = replace(plan(3, sharing="shamir", threshold=1, preprocessing="prss"), parties=(a, b, e))
    e_share_gen1 = f[2]  # E's own envelope in gen 1

    # gen 2: E "lost"; A and B keep the inputs; C replaces index 2.
    gen2 = replace(gen1, generation=2, issued_at=gen1.issued_at + 1, parties=(a, b, c), inputs_held_by=(0, 1))
    check_rerun(gen2, gen1, party=0)
    check_rerun(gen2, gen1, party=1)
    f_c = _reshare_to(2, [0, 1], f)

    # gen 3: B "lost"; A and C keep the inputs; E comes back as the replacement at index 1.
    gen3 = replace(gen2, generation=3, issued_at=gen2.issued_at + 1,
                   parties=(a, replace(e, index=1), c), inputs_held_by=(0, 2))
    # What each holder remembers of the session's placements (SessionRuntime.placements): A took gen 1 and the
    # re-run gen 2; C joined in gen 2 as the replacement and heard A's and B's records in gen 2's resharing.
    a_seen = record_placements(record_placements({}, gen1), gen2)
    seen = {0: a_seen, 2: merge_placements(record_placements({}, gen2), {0: a_seen, 1: a_seen})}
    refused = []
    for party in (0, 2):
        try:
            check_rerun(gen3, gen2, party=party, placed_before=seen[party])
        except RerunMismatchError as exc:
            refused.append((party, str(exc)))
    e_share_gen3 = _reshare_to(1, [0, 2], {0: f[0], 2: f_c})

    # What E can do with its two shares (t = 1): reconstruct the owner's input.
    w = lagrange_at([1, 2], -1)  # weights at x = 0 (party index -1 -> point 0)
    rec = FIELD.add(FIELD.mul(e_share_gen3.columns["a"], FIELD.scalar(w[1])),
                    FIELD.mul(e_share_gen1.columns["a"], FIELD.scalar(w[2])))
    leaked = np.array_equal(np.asarray(rec), np.asarray(secret))
    assert [p for p, _ in refused] == [0, 2], refused
    assert refused, (f"both honest holders accept gen 3, which places node-E (party 2 in gen 1) at index 1; "
                     f"node-E alone reconstructs the input: {leaked}")
