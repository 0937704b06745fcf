"""Review: the operator's own re-run placement (honest operator) can put a lost node back at ANOTHER lost
index, so one node ends up with the shares of two indexes.

:func:`place_replacements` only sorts the lost parties' nodes (``avoid``) last; it does not remember
which index each of them held. At n = 5, t = 2 with parties 3 (node d) and 4 (node e) lost and no
other free node, d and e come back swapped when d is more loaded: e gets f(4) by resharing and
still has f(5) from its own envelope; d the same. Two nodes now hold four distinct shares (> t = 2):
any one of them compromised later, together with one other party, reconstructs. Across generations
it is worse: ``session_decide`` passes only the current generation's lost nodes as ``avoid``, so a
node lost in generation 1 is a fresh candidate for any index later (see
test_review_rerun_index_hopping.py for what a single such node then learns).
"""

from __future__ import annotations

from pqmpc_operator.placement import NodeCandidate, NodeName, Placement, PlacementRequest, place_replacements


def node(name: str, td: str, zone: str, *, load: int = 0) -> NodeCandidate:
    return NodeCandidate(NodeName(name), group=td, region="eu", zone=zone, trust_domain=td, ready=True, load=load)


def test_a_lost_node_never_comes_back_at_another_index() -> None:
    a, b, c = node("a", "td-a", "z1"), node("b", "td-b", "z2"), node("c", "td-c", "z3")
    d, e = node("d", "td-d", "z4", load=5), node("e", "td-e", "z5", load=0)  # d held index 3, e index 4
    got = place_replacements([a, b, c, d, e], PlacementRequest(parties=5), {0: a, 1: b, 2: c}, [3, 4],
                             placed_before={"a": 0, "b": 1, "c": 2, "d": 3, "e": 4})
    assert isinstance(got, Placement)
    placed = {a_.party: str(a_.node) for a_ in got.assignments}
    held_before = {"d": 3, "e": 4}
    moved = {n: (held_before[n], i) for i, n in placed.items() if n in held_before and held_before[n] != i}
    assert not moved, f"lost nodes re-placed at another index (node: (old, new)): {moved}"
