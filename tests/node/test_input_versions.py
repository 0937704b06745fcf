"""The pure parts of input replacement and inputs in parts (no processes).

- the signed input id ``input/<owner>/<tag>/v<N>[/part-i-of-k]``: formats, parses, refuses;
- the node's decision on an envelope against what it holds (idempotent re-runs, stale and
  duplicate versions, inputs closed, parts that do not fit together);
- splitting a table's shares into parts and assembling them back (rows in order, one key);
- the parties' agreement on the inputs: agreed at once when they hold the same, waiting
  (with the owner and versions named) while they do not, agreed once the owner completes.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pqmpc_node.input_agreement import OwnerView, PartyView, agree_inputs, decode_view, disagreement, encode_view
from pqmpc_node.input_ids import InputId, InputIdError
from pqmpc_node.input_parts import assemble, split_rows
from pqmpc_node.input_versions import Pending, decide
from pqmpc_node.mpc.channel import InProcessHub
from pqmpc_node.payloads import InputPayload, PayloadError

TAG, OTHER = "ab" * 16, "cd" * 16


# -- input ids ------------------------------------------------------------------------


def test_input_id_formats_and_parses() -> None:
    assert InputId("bank-a", TAG, 3).text() == f"input/bank-a/{TAG}/v3"
    assert InputId("bank-a", TAG, 3, 2, 5).text() == f"input/bank-a/{TAG}/v3/part-2-of-5"
    for iid in (InputId("bank-a"), InputId("bank-a", TAG, 1), InputId("bank-a", TAG, 7, 4, 4)):
        assert InputId.parse(iid.text(), "bank-a") == iid
    assert InputId.parse(f"input/bank-a/{TAG}", "bank-a") == InputId("bank-a", TAG, 1)  # older clients: version 1
    assert InputId("bank-a", TAG, 2, 3, 4).whole() == InputId("bank-a", TAG, 2)
    assert not InputId("bank-a").same_content(InputId("bank-a"))  # untagged: content unknown


@pytest.mark.parametrize("text", [
    f"input/bank-b/{TAG}/v1",          # another owner's name
    f"input/bank-a/{TAG}/v0",          # versions start at 1
    f"input/bank-a/{TAG}/v1/part-3-of-2",
    f"input/bank-a/{TAG}/v1/part-0-of-2",
    f"input/bank-a/{TAG}/1",
    "input/bank-a/NOTHEX",
    f"input/bank-a/{TAG}/v1/part-1-of-2/x",
])
def test_malformed_input_ids_are_refused(text: str) -> None:
    with pytest.raises(InputIdError):
        InputId.parse(text, "bank-a")


# -- the node's decision --------------------------------------------------------------


def test_same_content_is_idempotent_even_when_closed() -> None:
    held = InputId("bank-a", TAG, 2)
    d = decide(InputId("bank-a", TAG, 1), held=held, pending=None, open_for_inputs=False, closed_because="x")
    assert d.action == "already"


def test_versions_must_increase_and_inputs_must_be_open() -> None:
    held = InputId("bank-a", TAG, 2)
    stale = decide(InputId("bank-a", OTHER, 1), held=held, pending=None, open_for_inputs=True)
    assert (stale.action, stale.reason) == ("refuse", "stale_input")
    dup = decide(InputId("bank-a", OTHER, 2), held=held, pending=None, open_for_inputs=True)
    assert (dup.action, dup.reason) == ("refuse", "duplicate_input") and "--replace" in dup.message
    assert decide(InputId("bank-a", OTHER, 3), held=held, pending=None, open_for_inputs=True).action == "accept"
    closed = decide(InputId("bank-a", OTHER, 3), held=held, pending=None, open_for_inputs=False,
                    closed_because="session s is Computing")
    assert (closed.reason, closed.status) == ("inputs_closed", 409) and "Computing" in closed.message


def test_parts_against_a_version_arriving() -> None:
    pending = Pending(InputId("bank-a", TAG, 2, 1, 3), frozenset({1, 2}))
    here = decide(InputId("bank-a", TAG, 2, 2, 3), held=None, pending=pending, open_for_inputs=True)
    assert here.action == "already"
    assert decide(InputId("bank-a", TAG, 2, 3, 3), held=None, pending=pending, open_for_inputs=True).action == "accept"
    other_total = decide(InputId("bank-a", TAG, 2, 3, 4), held=None, pending=pending, open_for_inputs=True)
    assert other_total.reason == "inconsistent_parts"
    other_content = decide(InputId("bank-a", OTHER, 2, 3, 3), held=None, pending=pending, open_for_inputs=True)
    assert other_content.reason == "inconsistent_parts"
    assert decide(InputId("bank-a", OTHER, 1), held=None, pending=pending, open_for_inputs=True).reason == "stale_input"
    assert decide(InputId("bank-a", OTHER, 3), held=None, pending=pending, open_for_inputs=True).action == "accept"


# -- parts ------------------------------------------------------------------------------


def _table(rows: int, keyed: bool) -> InputPayload:
    rng = np.random.default_rng(7)
    cols = {f: rng.integers(0, 2**61 - 1, rows, dtype=np.uint64) for f in ("amount", "age")}
    tags = {f: rng.integers(0, 2**61 - 1, rows, dtype=np.uint64) for f in cols} if keyed else None
    key = rng.integers(0, 2**61 - 1, 2, dtype=np.uint64) if keyed else None
    return InputPayload("rows", "mersenne61", cols, {}, rows, tags, key)


@pytest.mark.parametrize("keyed", [False, True])
def test_a_table_splits_into_parts_that_fit_and_assemble_in_order(keyed: bool) -> None:
    table = _table(1000, keyed)
    limit = 8192
    parts = split_rows(table, limit)
    assert len(parts) >= 3
    assert all(len(p.encode()) <= limit for p in parts)
    assert sum(p.rows for p in parts) == 1000
    whole = assemble(parts)
    for f in table.columns:
        assert np.array_equal(whole.columns[f], table.columns[f])
        if keyed:
            assert whole.tags is not None and table.tags is not None
            assert np.array_equal(whole.tags[f], table.tags[f])
    assert whole.rows == 1000
    assert split_rows(table, 10 * 2**20) == [table]  # fits: one part
    with pytest.raises(PayloadError):
        assemble([parts[1], InputPayload("rows", "mersenne61", {"amount": parts[0].columns["amount"]}, {}, parts[0].rows)])
    if keyed:
        forged = InputPayload("rows", "mersenne61", parts[0].columns, {}, parts[0].rows, parts[0].tags,
                              np.zeros(2, dtype=np.uint64))
        with pytest.raises(PayloadError, match="another input key share"):
            assemble([forged, *parts[1:]])


# -- agreement ----------------------------------------------------------------------------


def test_views_round_trip_and_disagreement_names_owner_and_versions() -> None:
    a = PartyView({"bank-a": OwnerView(2, TAG, 3), "bank-b": OwnerView(1, OTHER, 5)})
    b = PartyView({"bank-a": OwnerView(1, OTHER, 3), "bank-b": OwnerView(1, OTHER, 5)})
    assert decode_view(encode_view(a)) == a
    assert disagreement({0: a, 1: a}, str) == ""
    same_content_other_number = PartyView({"bank-a": OwnerView(5, TAG, 3), "bank-b": OwnerView(1, OTHER, 5)})
    assert disagreement({0: a, 1: same_content_other_number}, str) == ""  # same shares: one input
    why = disagreement({0: a, 1: b}, lambda p: f"node-{p}")
    assert "'bank-a'" in why and "'bank-b'" not in why
    assert "version 2 (3 rows) at party 0 (node-0)" in why and "version 1 (3 rows) at party 1 (node-1)" in why
    arriving = PartyView({**a.owners, "bank-b": OwnerView(1, OTHER, 5, pending_version=2, parts_here=1, parts=3)})
    assert "version 2 there still incomplete (1 of 3 parts)" in disagreement({0: arriving, 1: arriving}, str)
    missing = PartyView({"bank-a": OwnerView(2, TAG, 3), "bank-b": OwnerView(0, "", 0)}, ready=False)
    why = disagreement({0: a, 1: missing}, lambda p: f"node-{p}")
    assert "nothing yet at party 1 (node-1)" in why and "party 1 (node-1) has no preprocessing material yet" in why
    with pytest.raises(ValueError):
        decode_view(b'{"ready": true, "owners": {"bank-a": [1, 2]}}')


def test_parties_wait_until_the_owner_completes_its_replacement() -> None:
    async def run() -> tuple[list[int], list[str], list[str]]:
        hub = InProcessHub(2)
        views = [PartyView({"bank-a": OwnerView(2, TAG, 3)}), PartyView({"bank-a": OwnerView(1, OTHER, 3)})]
        changed = [asyncio.Event(), asyncio.Event()]
        waits: list[str] = []
        frozen: list[str] = []

        def party(i: int) -> asyncio.Task[int]:
            async def wait_change(timeout: float) -> None:
                try:
                    await asyncio.wait_for(changed[i].wait(), timeout)
                except TimeoutError:
                    pass
                changed[i].clear()

            return asyncio.ensure_future(agree_inputs(
                hub.channel(i), peers=[1 - i], view=lambda: encode_view(views[i]),
                freeze=lambda on: frozen.append(f"{i}:{on}"), waiting=waits.append, changed=wait_change,
                node_of=lambda p: f"node-{p}"))

        tasks = [party(0), party(1)]
        while len(waits) < 2:  # both saw the mismatch in round 0 and wait
            await asyncio.sleep(0.01)
        assert not any(t.done() for t in tasks)
        views[1] = PartyView({"bank-a": OwnerView(2, TAG, 3)})  # the owner completes its replacement at party 1
        changed[1].set()
        rounds = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return list(rounds), waits, frozen

    rounds, waits, frozen = asyncio.run(run())
    assert rounds[0] == rounds[1] >= 2
    assert "'bank-a'" in waits[0] and "re-run the same `pqmpc submit`" in waits[0]
    assert frozen[-2:] in (["0:True", "1:True"], ["1:True", "0:True"])  # agreed: both still frozen for the caller


def test_an_input_landing_during_the_proposals_is_caught_by_the_commit() -> None:
    async def run() -> int:
        hub = InProcessHub(2)
        calls = {"n": 0}

        def changing_view() -> bytes:  # party 0's inputs change between its proposal and its commit check
            calls["n"] += 1
            return encode_view(PartyView({"bank-a": OwnerView(1, TAG, 3)})) if calls["n"] != 2 else b"{}"

        async def no_wait(_timeout: float) -> None:
            return None

        t0 = agree_inputs(hub.channel(0), peers=[1], view=changing_view, freeze=lambda _on: None,
                          waiting=lambda _w: None, changed=no_wait, node_of=str)
        t1 = agree_inputs(hub.channel(1), peers=[0], view=lambda: encode_view(PartyView({"bank-a": OwnerView(1, TAG, 3)})),
                          freeze=lambda _on: None, waiting=lambda _w: None, changed=no_wait, node_of=str)
        r0, r1 = await asyncio.wait_for(asyncio.gather(t0, t1), 10)
        assert r0 == r1
        return r0

    assert asyncio.run(run()) == 2  # round 0's commit said "changed": round 1 agreed


# -- what submit says ---------------------------------------------------------------------


def test_submit_summaries_and_the_partial_submit_message() -> None:
    from pqmpc_node.cli import submit_summary
    from pqmpc_node.client import ClientError, PartialSubmitError

    replaced = [{"node": "n0", "version": 2, "replaced": 1, "complete": True},
                {"node": "n1", "version": 2, "alreadyAccepted": True, "complete": True},
                {"node": "n2", "version": 2, "replaced": 1, "complete": True}]
    assert "replaced[/green] version 2 at 3/3 nodes of session s (1 held it already)" in submit_summary(replaced, "s")
    again = [{"node": n, "version": 2, "alreadyAccepted": True} for n in ("n0", "n1")]
    assert "already submitted" in submit_summary(again, "s") and "version 2" in submit_summary(again, "s")
    first = [{"node": n, "version": 1, "replaced": None, "complete": True} for n in ("n0", "n1")]
    assert "submitted[/green] to 2 nodes of session s" in submit_summary(first, "s")
    err = PartialSubmitError(replaced[:1], {"n1": ClientError("https://n1: unreachable", "unreachable")}, 2)
    assert err.reason == "unreachable" and err.held == ["n0"]
    assert "held at 1/2 nodes (n0); not at n1" in str(err) and "Run the same command again to complete it" in str(err)


def test_the_client_picks_the_version_from_what_the_nodes_hold() -> None:
    from types import SimpleNamespace

    from pqmpc_node.client import ClientError, Identity, SessionClient

    me = Identity.generate("bank-a")

    def pick(held: dict[str, list[tuple[InputId, int]]], *, replace: bool, parts: int = 1,
             phase: str = "AwaitingInputs") -> int:
        fake = SimpleNamespace(session_id="s", phases={n: phase for n in held}, held_inputs=lambda _owner: held)
        return SessionClient.choose_version(fake, me, TAG, replace=replace, parts=parts)  # type: ignore[arg-type]

    assert pick({"n0": [], "n1": []}, replace=False) == 1
    assert pick({"n0": [(InputId("bank-a", TAG, 2), 1)], "n1": []}, replace=False) == 2  # completes version 2
    assert pick({"n0": [(InputId("bank-a", OTHER, 1), 1)]}, replace=True) == 2
    # a replacement that reached n0 only: the re-run keeps its version 2 (n0 answers "already", n1 takes it)
    assert pick({"n0": [(InputId("bank-a", TAG, 2), 1)], "n1": [(InputId("bank-a", OTHER, 1), 1)]}, replace=True) == 2
    # a race: another content as version 2 somewhere needs version 3
    assert pick({"n0": [(InputId("bank-a", TAG, 2), 1)], "n1": [(InputId("bank-a", OTHER, 2), 1)]}, replace=True) == 3
    # this content arriving in 4 parts, now sent in 2: a higher version supersedes the parts
    assert pick({"n0": [(InputId("bank-a", TAG, 1), 4)]}, replace=False, parts=2) == 2
    with pytest.raises(ClientError) as err:
        pick({"n0": [(InputId("bank-a", OTHER, 1), 1)]}, replace=False)
    assert err.value.reason == "duplicate_input" and "--replace" in str(err.value)
    with pytest.raises(ClientError) as err:
        pick({"n0": [(InputId("bank-a", OTHER, 1), 1)]}, replace=True, phase="Succeeded")
    assert err.value.reason == "inputs_closed"
