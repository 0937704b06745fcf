"""Before computing, the live parties agree on exactly which version of each owner's input they hold.

An owner may replace its input while the session awaits inputs
(:mod:`pqmpc_node.input_versions`); a replacement that reached only some nodes would
otherwise let the session compute on a mix of two versions. So every attempt begins
with this step, over the attempt's authenticated peer channel, in rounds ``r = 0, 1, …``:

1. *Propose*: each party sends every other its view (:class:`PartyView`): ``{owner:
   [version, tag, rows, pending version, parts here, parts]}`` and whether its
   preprocessing is there (public to the parties: versions, content
   tags that only say "same content or not", and row counts the status shows anyway),
   on tag ``inputs/propose/<r>``.
   A re-run's replacement (:mod:`pqmpc_node.input_resharing`) holds no envelopes: its view
   says ``reshared`` and its owners are left out of the comparison (it adopts what the
   holders agreed, by resharing right after this step).
2. If some party lacks an owner's input or (dealt sessions) its preprocessing material,
   or the held contents differ (the content tag and row count; the same content held as
   different version numbers is the same input, since the client derives the shares from
   the content), or any owner's replacement is still arriving in parts at some
   party: nobody computes. Each party reports which owner and which versions it saw
   (:func:`disagreement`), reopens its inputs so the owner can complete the
   replacement, waits until its own inputs change or :data:`RETRY_S` passes, and goes
   to round ``r + 1``. Every party received the same set of views, so all take the
   same branch in the same round.
3. If all views agree: *commit*. Each party freezes its inputs (an envelope
   arriving now gets a retryable 503) and sends whether its inputs are still exactly
   what it proposed (an input may have landed while the proposals travelled) on
   ``inputs/commit/<r>``. All yes: agreed, inputs close, the engine runs on them. Any
   no: the next round.

The session's deadline bounds the wait; the node then fails the session naming the
owner and the versions each party holds (reason ``inputs_disagree``). The step checks
honest parties' consistency; it is no defence against a lying node (which could stall
the session as it could abort it), and the engine's own checks still authenticate
every input.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from pqmpc_node.mpc.channel import Channel

__all__ = ["OwnerView", "PartyView", "RETRY_S", "agree_inputs", "decode_view", "disagreement", "encode_view"]

RETRY_S = 1.0
"""How long a party waits between rounds while the views differ (sooner when its own inputs change)."""

_MAX_VIEW = 1 << 20


@dataclass(frozen=True)
class OwnerView:
    """What one party holds of one owner's input."""

    version: int
    tag: str
    rows: int
    pending_version: int = 0
    """A newer version arriving in parts (0: none), with ``parts_here`` of its ``parts``."""
    parts_here: int = 0
    parts: int = 0

    def as_list(self) -> list[int | str]:
        return [self.version, self.tag, self.rows, self.pending_version, self.parts_here, self.parts]


@dataclass(frozen=True)
class PartyView:
    """One party's view: every owner's input as held there, and whether its preprocessing is there to start."""

    owners: Mapping[str, OwnerView]
    ready: bool = True
    """Dealt material received (always true for a dealer-free session)."""
    reshared: bool = False
    """A re-run's replacement: it gets every owner's input by resharing after this step, so its owners do not count."""


def encode_view(view: PartyView) -> bytes:
    """The canonical bytes of a view (equal views are equal bytes)."""
    body: dict[str, object] = {"ready": view.ready,
                               "owners": {o: view.owners[o].as_list() for o in sorted(view.owners)}}
    if view.reshared:  # only a re-run's replacement says so; every other view keeps its bytes
        body["reshared"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def decode_view(data: bytes) -> PartyView:
    """A peer's view, strictly parsed; ``ValueError`` on anything else."""
    if len(data) > _MAX_VIEW:
        raise ValueError("input view too large")
    raw = json.loads(data)
    if not isinstance(raw, dict) or not isinstance(raw.get("ready"), bool) or not isinstance(raw.get("owners"), dict):
        raise ValueError("an input view is {ready: bool, owners: {owner: [...]}}")
    if not isinstance(raw.get("reshared", False), bool):
        raise ValueError("an input view's reshared is a boolean")
    out = {}
    for owner, v in raw["owners"].items():
        if (not isinstance(v, list) or len(v) != 6 or not isinstance(v[1], str)
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in (v[0], *v[2:]))):
            raise ValueError(f"the view of {owner!r} is not [version, tag, rows, pending, partsHere, parts]")
        out[str(owner)] = OwnerView(v[0], v[1], v[2], v[3], v[4], v[5])
    return PartyView(out, raw["ready"], raw.get("reshared", False))


def disagreement(views: Mapping[int, PartyView], node_of: Callable[[int], str]) -> str:
    """Why the parties may not compute yet ("" when they agree): each owner whose input differs, is missing or
    arrives in parts at some party, and each party still without its preprocessing material."""
    problems = [f"party {p} ({node_of(p)}) has no preprocessing material yet" for p, v in sorted(views.items())
                if not v.ready]
    holders = {p: v for p, v in views.items() if not v.reshared}  # a replacement adopts the holders' inputs
    if not holders:
        problems.append("every party is a re-run's replacement: nobody holds the owners' inputs")
    owners = sorted({o for v in holders.values() for o in v.owners})
    for owner in owners:
        seen = {p: v.owners.get(owner) for p, v in sorted(holders.items())}
        # Same content (tag) is the same input whatever its version number: the client derives the shares
        # from the content, so every node holds shares of one sharing. An untagged input compares by version.
        held = {p: (o.tag or f"v{o.version}", o.rows) if o is not None and o.version else None
                for p, o in seen.items()}
        incomplete = {p: o for p, o in seen.items() if o is not None and o.pending_version}
        if len(set(held.values())) == 1 and not incomplete:
            continue
        where = []
        for p, o in seen.items():
            if o is None or not o.version:
                text = f"nothing yet at party {p} ({node_of(p)})"
            else:
                text = f"version {o.version} ({o.rows} rows) at party {p} ({node_of(p)})"
            if o is not None and o.pending_version:
                text += f", its version {o.pending_version} there still incomplete ({o.parts_here} of {o.parts} parts)"
            where.append(text)
        problems.append(f"{owner!r}: " + "; ".join(where))
    if not problems:
        return ""
    return ("the parties do not hold the same inputs yet (an input or replacement reached only some of them, or is "
            "incomplete), so nobody computes: " + " | ".join(problems) + ". The session waits, until its deadline, "
            "for the owner to complete it at every party (re-run the same `pqmpc submit`, with --replace if it "
            "was a replacement)")


async def agree_inputs(channel: Channel, *, peers: Sequence[int], view: Callable[[], bytes],
                       freeze: Callable[[bool], None], waiting: Callable[[str], None],
                       changed: Callable[[float], Awaitable[None]], node_of: Callable[[int], str]) -> int:
    """Run the agreement rounds (module docstring); returns the number of rounds it took.

    ``view()``: this party's current view (:func:`encode_view`); ``freeze(True/False)``:
    hold / release incoming inputs; ``waiting(message)``: the views differ, reopen inputs
    and report why; ``changed(timeout)``: wait until this party's inputs change or
    ``timeout`` seconds pass.
    """
    r = 0
    while True:
        proposal = view()
        await channel.send_many(f"inputs/propose/{r}", {p: proposal for p in peers})
        got = await channel.receive_many(f"inputs/propose/{r}", peers)
        views = {channel.party: decode_view(proposal), **{p: decode_view(b) for p, b in got.items()}}
        why = disagreement(views, node_of)
        if why:
            waiting(why)
            await changed(RETRY_S)
            r += 1
            continue
        freeze(True)
        unchanged = b"1" if view() == proposal else b"0"
        try:
            await channel.send_many(f"inputs/commit/{r}", {p: unchanged for p in peers})
            commits = await channel.receive_many(f"inputs/commit/{r}", peers)
        except BaseException:
            freeze(False)
            raise
        if unchanged == b"1" and all(c == b"1" for c in commits.values()):
            return r + 1  # still frozen: the caller closes inputs before anything else runs
        freeze(False)
        r += 1
