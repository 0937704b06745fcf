"""A re-run with kept inputs, without node processes: the plan's ``inputsHeldBy`` (signed only where set, checked
for consistency), which re-run plans a survivor takes (:func:`pqmpc_node.rerun.check_rerun`), the inputs agreement
leaving a replacement's empty view out, and the resharing step over in-process channels
(:mod:`pqmpc_node.input_resharing`): replacements end up with exactly the shares the owner would have sealed them,
and a malformed or inconsistent resharing is refused; a replacement learns the session's earlier placements from
the holders, so no node ever moves to another index across re-runs."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from pqmpc_node.input_agreement import OwnerView, PartyView, decode_view, disagreement, encode_view
from pqmpc_node.input_ids import InputId
from pqmpc_node.input_resharing import (
    PLACEMENTS_TAG,
    SHARES_TAG,
    HeldInput,
    ReshareError,
    exchange_placements,
    flatten,
    rebuild,
    reshare_inputs,
)
from pqmpc_node.mpc.channel import InProcessHub
from pqmpc_node.mpc.field import MersenneField61
from pqmpc_node.mpc.inputs import share_owner_input
from pqmpc_node.mpc.randomness import AesCtrRandom
from pqmpc_node.mpc.sharing import ShamirScheme
from pqmpc_node.payloads import InputPayload
from pqmpc_node.plan import MalformedPlanError, PlanParty, SessionPlan
from pqmpc_node.rerun import CONFLICTING_INDEX, RerunMismatchError, check_rerun, merge_placements, record_placements
from test_plan_providers import parsed, plan

FIELD = MersenneField61(np)


def prss_plan(n: int = 3, t: int = 1) -> SessionPlan:
    return plan(n, sharing="shamir", threshold=t, preprocessing="prss")


# -- the plan ---------------------------------------------------------------------------------------------


def test_inputs_held_by_is_signed_only_where_set() -> None:
    p = prss_plan()
    assert "inputsHeldBy" not in p.to_json()  # every other plan keeps its canonical bytes and digest
    rerun = replace(p, generation=2, inputs_held_by=(0, 1))
    assert rerun.to_json()["inputsHeldBy"] == [0, 1]
    back = parsed(rerun)
    assert back.inputs_held_by == (0, 1) and back.digest() == rerun.digest()
    assert back.is_replacement(2) and not back.is_replacement(0) and not p.is_replacement(2)


@pytest.mark.parametrize(("held", "match"), [
    ([1, 0], "ascending"), ([0, 0], "ascending"), ([0, 3], "ascending"),
    ([0], "t \\+ 1 = 2 holders"), ([0, 1, 2], "at least one replacement"),
])
def test_inconsistent_holders_are_refused(held: list[int], match: str) -> None:
    with pytest.raises(MalformedPlanError, match=match):
        parsed(prss_plan(), inputsHeldBy=held)


def test_holders_need_a_dealer_free_shamir_session() -> None:
    with pytest.raises(MalformedPlanError, match="Shamir sharing without a dealer"):
        parsed(plan(3, sharing="shamir", threshold=1, preprocessing="dealer"), inputsHeldBy=[0, 1])


# -- which re-run plan a survivor takes -----------------------------------------------------------------------


def _replacement(p: SessionPlan, index: int) -> SessionPlan:
    parties = list(p.parties)
    parties[index] = PlanParty(index, "node-new", "127.0.0.99", "node-new.svc", 9443, 8443, "cd" * 32, 1)
    return replace(p, generation=p.generation + 1, parties=tuple(parties), inputs_held_by=(0, 1))


def test_a_survivor_takes_a_rerun_that_keeps_the_terms_and_the_holders() -> None:
    held = prss_plan()
    check_rerun(_replacement(held, 2), held, party=0)


@pytest.mark.parametrize(("change", "match"), [
    (lambda p: replace(p, inputs_held_by=()), "does not name the holders"),
    (lambda p: replace(p, generation=1), "generation above 1"),
    (lambda p: replace(p, program={"aggregate": [{"op": "sum", "field": "amount"}]}), "changes the session's terms"),
    (lambda p: replace(p, threshold=2, parties=p.parties + (replace(p.parties[0], index=3, node_id="x"),)),
     "changes the session's terms"),
])
def test_a_rerun_that_changes_anything_else_is_refused(change: Any, match: str) -> None:
    held = prss_plan()
    with pytest.raises(RerunMismatchError, match=match):
        check_rerun(change(_replacement(held, 2)), held, party=0)


def test_holders_must_stay_in_place() -> None:
    held = prss_plan()
    new = _replacement(held, 2)
    # A holder this node saw as lost (a cascade: a party that stops drops its links) is the same
    # node with the same certificate, so the same shares: accepted.
    check_rerun(new, held, party=0)
    with pytest.raises(RerunMismatchError, match="names only parties \\[0, 1\\]"):
        check_rerun(new, held, party=2)
    moved = replace(new, parties=(new.parties[0], replace(new.parties[2], index=1), replace(new.parties[1], index=2)))
    with pytest.raises(RerunMismatchError, match="holder party 1 must stay node node-1"):
        check_rerun(moved, held, party=0)


def _at(p: SessionPlan, index: int, name: str) -> SessionPlan:
    parties = list(p.parties)
    parties[index] = PlanParty(index, name, f"127.0.0.{50 + index}", f"{name}.svc", 9443, 8443, name[-1] * 64, 1)
    return replace(p, parties=tuple(parties))


def test_no_generation_places_a_node_at_another_index_or_moves_the_deadline() -> None:
    gen1 = prss_plan()  # node-0, node-1, node-2
    gen2 = replace(_at(gen1, 2, "node-c"), generation=2, inputs_held_by=(0, 1))
    seen = record_placements({}, gen1)
    check_rerun(gen2, gen1, party=0, placed_before=seen)
    back = replace(_at(gen2, 1, "node-2"), generation=3, inputs_held_by=(0, 2))  # node-2 held index 2 in gen 1
    with pytest.raises(RerunMismatchError, match="places node node-2 at index 1, but it held index 2"):
        check_rerun(back, gen2, party=0, placed_before=record_placements(seen, gen2))
    check_rerun(replace(back, parties=gen1.parties[:2] + gen2.parties[2:]), gen2, party=0,
                placed_before=record_placements(seen, gen2))  # node-1 back at its own index: fine
    with pytest.raises(RerunMismatchError, match="moves the deadline"):
        check_rerun(replace(gen2, deadline=gen1.deadline + 1), gen1, party=0)
    check_rerun(replace(gen2, deadline=gen1.deadline - 1), gen1, party=0)  # sooner is fine


def _exchange(live: list[int], replacements: list[int], placements: dict[int, dict[str, int]],
              rewrite: Any = None) -> list[dict[int, dict[str, int]]]:
    hub = InProcessHub(len(placements))

    async def party(p: int) -> dict[int, dict[str, int]]:
        channel = hub.channel(p)
        if rewrite is not None and p not in replacements:
            channel.send_many = rewrite(channel.send_many)  # type: ignore[method-assign]
        return await exchange_placements(channel, live=live, replacements=replacements, placements=placements[p])

    async def main() -> list[dict[int, dict[str, int]]]:
        return list(await asyncio.gather(*(party(p) for p in range(len(placements)))))

    return asyncio.run(main())


def test_a_replacement_learns_the_generations_it_never_saw() -> None:
    """n = 3, t = 1: gen 1 A(0) B(1) E(2); gen 2 C at 2 (holders A, B); gen 3 D at 0 (holders B, C); gen 4 would
    put E at 1 with holders C, D. Neither C nor D was in gen 1: only what B passed on in gen 3 lets them refuse."""
    gen1 = _at(_at(_at(prss_plan(), 0, "node-a"), 1, "node-b"), 2, "node-e")
    gen2 = replace(_at(gen1, 2, "node-c"), generation=2, inputs_held_by=(0, 1))
    gen3 = replace(_at(gen2, 0, "node-d"), generation=3, inputs_held_by=(1, 2))
    gen4 = replace(_at(gen3, 1, "node-e"), generation=4, inputs_held_by=(0, 2))
    b = record_placements(record_placements(record_placements({}, gen1), gen2), gen3)
    c_own = record_placements(record_placements({}, gen2), gen3)  # C took gen 2 as a fresh session
    d_own = record_placements({}, gen3)
    # A replacement's own record (the plans it took) lets gen 4 through: E's gen 1 index is not in it.
    check_rerun(gen4, gen3, party=2, placed_before=c_own)
    # gen 3's resharing: B and C hold, D (index 0) is the replacement and hears both records.
    got = _exchange([0, 1, 2], [0], {0: d_own, 1: b, 2: c_own})
    assert got[1] == got[2] == {} and got[0] == {1: b, 2: c_own}
    d = merge_placements(d_own, got[0])
    assert d["node-e"] == 2
    with pytest.raises(RerunMismatchError, match="node-e at index 1, but it held index 2"):
        check_rerun(gen4, gen3, party=0, placed_before=d)


def test_reports_that_disagree_bar_the_node_from_every_index() -> None:
    merged = merge_placements({"node-a": 0}, {1: {"node-e": 2, "node-a": 0}, 2: {"node-e": 1}})
    assert merged == {"node-a": 0, "node-e": CONFLICTING_INDEX}
    p = prss_plan()
    gen2 = replace(_at(p, 2, "node-e"), generation=2, inputs_held_by=(0, 1))
    with pytest.raises(RerunMismatchError, match="reported it at different indexes"):
        check_rerun(gen2, p, party=0, placed_before=merged)


@pytest.mark.parametrize("data", [b"not json", b"[1]", b'{"node-x": 3}', b'{"node-x": -1}', b'{"node-x": "1"}',
                                  b'{"node-x": true}'])
def test_a_malformed_placements_report_is_refused(data: bytes) -> None:
    def rewrite(send: Any) -> Any:
        async def wrapped(tag: str, payloads: Any) -> None:
            await send(tag, {j: data for j in payloads} if tag == PLACEMENTS_TAG else payloads)
        return wrapped

    with pytest.raises(ReshareError, match="placements report"):
        _exchange([0, 1, 2], [2], {0: {}, 1: {}, 2: {}}, rewrite)


# -- the inputs agreement -------------------------------------------------------------------------------------


def test_a_replacements_view_is_left_out_of_the_agreement() -> None:
    a = PartyView({"bank-a": OwnerView(1, "t1", 4)})
    blank = PartyView({"bank-a": OwnerView(0, "", 0)}, reshared=True)
    assert decode_view(encode_view(blank)) == blank
    assert b"reshared" not in encode_view(a)  # other views keep their bytes
    assert disagreement({0: a, 1: a, 2: blank}, str) == ""
    assert "nothing yet at party 2" in disagreement({0: a, 1: a, 2: replace(blank, reshared=False)}, str)
    assert "nobody holds" in disagreement({0: blank, 1: blank}, str)
    with pytest.raises(ValueError, match="reshared is a boolean"):
        decode_view(json.dumps({"ready": True, "owners": {}, "reshared": 1}).encode())


# -- resharing over in-process channels ------------------------------------------------------------------------


def _owner_shares(n: int, t: int, seed: int) -> tuple[list[InputPayload], list[InputPayload]]:
    """What a data owner (2 fields, 3 rows) and a model owner seal to each of ``n`` parties (keyed)."""
    scheme, rng = ShamirScheme(n, t), AesCtrRandom(bytes([seed]) * 32)
    rows = FIELD.asarray(np.arange(6, dtype=np.uint64) + np.uint64(seed))
    data = share_owner_input(FIELD, scheme, rows, rng, keyed=True)
    model = share_owner_input(FIELD, scheme, FIELD.asarray(np.arange(4, dtype=np.uint64)), rng, keyed=True)
    d_out, m_out = [], []
    for x, tag, key in data:
        assert tag is not None and key is not None
        d_out.append(InputPayload("rows", "f61", {"a": x[:3], "b": x[3:]}, {}, 3, {"a": tag[:3], "b": tag[3:]}, key))
    for x, tag, key in model:
        assert tag is not None and key is not None
        m_out.append(InputPayload("model", "f61", {}, {"w": x.reshape(2, 2)}, 0, {"w": tag.reshape(2, 2)}, key))
    return d_out, m_out


def _same(a: InputPayload, b: InputPayload) -> bool:
    return flatten(a)[0] == flatten(b)[0] and np.array_equal(flatten(a)[1], flatten(b)[1]) and a.rows == b.rows


def test_flatten_and_rebuild_round_trip() -> None:
    data, model = _owner_shares(3, 1, 1)
    for p in (data[0], model[2]):
        layout, flat = flatten(p)
        assert _same(rebuild(p, layout, flat), p)
    with pytest.raises(ReshareError, match="holds 5 field words, its layout 4"):
        rebuild(model[0], [("params", "w", (2, 2))], np.zeros(5, dtype=np.uint64))


def _run(n: int, t: int, live: list[int], replacements: list[int], data: list[InputPayload],
         model: list[InputPayload], tamper: Any = None) -> dict[int, Any]:
    hub = InProcessHub(n)
    ids = {"bank-a": InputId("bank-a", "a1" * 8, 2), "modeller": InputId("modeller", "b2" * 8, 1)}
    seen: list[str] = []

    def validate(owner: str, payload: InputPayload) -> InputPayload:
        seen.append(owner)
        return payload

    async def party(p: int) -> Any:
        channel = hub.channel(p)
        if tamper is not None:
            channel = tamper(p, channel)
        held = {} if p in replacements else {"bank-a": HeldInput(ids["bank-a"], data[p]),
                                              "modeller": HeldInput(ids["modeller"], model[p])}
        return await reshare_inputs(channel, threshold=t, live=live, replacements=replacements,
                                    owners=["bank-a", "modeller"], held=held, rng=AesCtrRandom.from_os(),
                                    validate=validate)

    async def main() -> list[Any]:
        return list(await asyncio.gather(*(party(p) for p in live), return_exceptions=True))

    out = dict(zip(live, asyncio.run(main()), strict=True))
    assert seen.count("bank-a") == sum(1 for p in replacements if not isinstance(out[p], BaseException))
    return out


@pytest.mark.parametrize(("n", "t", "live", "replacements"), [
    (3, 1, [0, 1, 2], [2]), (3, 1, [0, 1, 2], [0]), (5, 2, [0, 1, 2, 3, 4], [1, 4]), (5, 2, [0, 2, 3, 4], [0]),
])
def test_replacements_get_the_owners_shares(n: int, t: int, live: list[int], replacements: list[int]) -> None:
    data, model = _owner_shares(n, t, 7)
    out = _run(n, t, live, replacements, data, model)
    for p in live:
        if p not in replacements:
            assert out[p] is None
            continue
        got = out[p]
        assert got["bank-a"].id == InputId("bank-a", "a1" * 8, 2) and got["modeller"].id == InputId("modeller", "b2" * 8, 1)
        assert _same(got["bank-a"].payload, data[p]) and _same(got["modeller"].payload, model[p])


class _Tampering:
    """A holder's channel that rewrites its resharing messages."""

    def __init__(self, inner: Any, rewrite: Any) -> None:
        self.inner, self.rewrite = inner, rewrite

    @property
    def party(self) -> int:
        return int(self.inner.party)

    async def send_many(self, tag: str, payloads: Any) -> None:
        if tag == SHARES_TAG:
            payloads = {p: self.rewrite(b) for p, b in payloads.items()}
        await self.inner.send_many(tag, payloads)

    async def receive_many(self, tag: str, peers: Any) -> Any:
        return await self.inner.receive_many(tag, peers)


@pytest.mark.parametrize(("rewrite", "match"), [
    (lambda b: b[:-8 - 2] + b"]]" + b[-8:], "different input layouts"),
    (lambda b: b"\xff" * 8 + b[8:], "not a field element"),
    (lambda b: b[:3], "shorter than its length field"),
])
def test_a_malformed_resharing_is_refused(rewrite: Any, match: str) -> None:
    data, model = _owner_shares(3, 1, 3)
    out = _run(3, 1, [0, 1, 2], [2], data, model,
               tamper=lambda p, ch: _Tampering(ch, rewrite) if p == 1 else ch)
    assert isinstance(out[2], ReshareError) and match in str(out[2]), out[2]


def test_a_wrong_contribution_gives_a_share_off_the_polynomial() -> None:
    """The attack the engine's degree check catches (tests/node/test_dealer_free_rerun.py runs it for real)."""
    data, model = _owner_shares(3, 1, 5)

    def bump(b: bytes) -> bytes:
        word = (int.from_bytes(b[:8], "little") + 1) % ((1 << 61) - 1)
        return word.to_bytes(8, "little") + b[8:]

    out = _run(3, 1, [0, 1, 2], [2], data, model, tamper=lambda p, ch: _Tampering(ch, bump) if p == 1 else ch)
    got = out[2]["bank-a"].payload
    assert not _same(got, data[2])
    scheme = ShamirScheme(3, 1)
    with pytest.raises(ValueError, match="not on the degree-1 polynomial"):
        scheme.reconstruct(FIELD, {0: data[0].columns["a"], 1: data[1].columns["a"], 2: got.columns["a"]}, check=True)
