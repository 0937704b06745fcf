"""A re-run's replacement party gets its shares of every owner's input from the survivors, not from the owners.

When a dealer-free Shamir session fails because too few parties remain to multiply, the
survivors keep every owner's input (:mod:`pqmpc_node.sessions`), and the operator re-plans
with a replacement node at each lost index (the plan's ``inputsHeldBy`` names the holders,
:mod:`pqmpc_node.rerun`). At the start of each attempt of that re-run, right after the
inputs agreement, the live parties run this step over the attempt's authenticated PQ
channel (the share redistribution of :mod:`pqmpc_node.mpc.resharing`):

1. ``S`` = the ``t + 1`` lowest live holders. For each pair ``i < i'`` in ``S``, ``i``
   sends ``i'`` a fresh 32-byte mask key (tag ``input-reshare/keys``).
2. Each ``i`` in ``S`` sends each replacement ``j`` one message (tag
   ``input-reshare/shares``): the masked contributions ``lambda_i^S(j + 1) * share + m_i``
   of every array of every owner's input (values, tags, key and its tag; in plan order)
   as little-endian field words, then the public layout (owner, input id, rows, array
   names and shapes) as JSON, then the JSON's length (8 bytes, big-endian).
3. ``j`` checks that every sender sent the same layout and canonical field words of the
   right count, sums the contributions into its own shares, and validates each owner's
   result exactly as an owner's envelope is validated (the caller's ``validate``). From
   then on it holds the input like any other party.
4. Every live holder sends each replacement (tag ``input-reshare/placements``,
   :func:`exchange_placements`) every node it has seen hold a share of the session, in
   any generation, with its index (:func:`pqmpc_node.rerun.record_placements`). The
   replacement merges them into its own record (:func:`pqmpc_node.rerun.merge_placements`),
   so as a holder in a later re-run it refuses a plan that moves an earlier node to
   another index even where it never saw that node's generation. At least one of the
   ``t + 1`` or more holders is honest and knows the whole history, so the merge misses
   nothing; a false report can only make the replacement refuse more plans later.

Nothing here authenticates the result: a holder that sends a wrong contribution moves the
replacement's share off the owner's polynomial, and the attempt's input authentication
(:func:`pqmpc_node.mpc.inputs.authenticate_inputs`: degree check over all live parties,
owner-key check in malicious sessions) catches that before anything is opened, naming the
owner. Resharing again in a later attempt gives the same shares (the masks cancel, the
weights interpolate the same polynomial), so every attempt of a re-run runs it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pqmpc_node.input_ids import InputId
from pqmpc_node.mpc.channel import Channel
from pqmpc_node.mpc.field import MersenneField61
from pqmpc_node.mpc.randomness import RandomSource
from pqmpc_node.mpc.resharing import combine, contribution, resharing_senders
from pqmpc_node.payloads import U64, InputPayload

__all__ = ["HeldInput", "ReshareError", "exchange_placements", "flatten", "rebuild", "reshare_inputs"]

KEYS_TAG = "input-reshare/keys"
SHARES_TAG = "input-reshare/shares"
PLACEMENTS_TAG = "input-reshare/placements"
_MAX_LAYOUT = 1 << 20
_MAX_PLACEMENTS = 4096

Layout = list[tuple[str, str, tuple[int, ...]]]
"""Where each array of an input sits in its flat vector: (group, name, shape), in order."""


class ReshareError(ValueError):
    """A resharing message that cannot be used (malformed, or the senders disagree on the public layout)."""


@dataclass(frozen=True)
class HeldInput:
    """One owner's input as a party holds it: the agreed version's id and this party's shares."""

    id: InputId
    payload: InputPayload


def flatten(p: InputPayload) -> tuple[Layout, U64]:
    """Every array of ``p`` in one canonical order (columns, params, tags by name; then the key) and its layout."""
    parts: list[tuple[str, str, U64]] = [("columns", k, p.columns[k]) for k in sorted(p.columns)]
    parts += [("params", k, p.params[k]) for k in sorted(p.params)]
    if p.tags is not None:
        parts += [("tags", k, p.tags[k]) for k in sorted(p.tags)]
    if p.key is not None:
        parts.append(("key", "", p.key))
    layout = [(g, k, tuple(int(d) for d in a.shape)) for g, k, a in parts]
    flat = np.concatenate([np.asarray(a, dtype=np.uint64).reshape(-1) for _, _, a in parts]) if parts else \
        np.zeros(0, dtype=np.uint64)
    return layout, flat


def rebuild(template: InputPayload, layout: Layout, flat: U64) -> InputPayload:
    """``template``'s kind, domain and rows with the arrays cut from ``flat`` along ``layout``."""
    groups: dict[str, dict[str, U64]] = {"columns": {}, "params": {}, "tags": {}}
    key: U64 | None = None
    at = 0
    for group, name, shape in layout:
        size = math.prod(shape)
        arr = np.ascontiguousarray(flat[at:at + size], dtype=np.uint64).reshape(shape)
        at += size
        if group == "key":
            key = arr
        elif group in groups:
            groups[group][name] = arr
        else:
            raise ReshareError(f"unknown array group {group!r} in a resharing layout")
    if at != flat.size:
        raise ReshareError(f"the resharing message holds {flat.size} field words, its layout {at}")
    return InputPayload(template.kind, template.domain, groups["columns"], groups["params"], template.rows,
                        groups["tags"] if layout and any(g == "tags" for g, _, _ in layout) else None, key)


def _encode(words: U64, layout: list[dict[str, Any]]) -> bytes:
    meta = json.dumps(layout, separators=(",", ":"), sort_keys=True).encode()
    return np.ascontiguousarray(words, dtype="<u8").tobytes() + meta + len(meta).to_bytes(8, "big")


def _decode(data: bytes) -> tuple[U64, bytes]:
    if len(data) < 8:
        raise ReshareError("a resharing message is shorter than its length field")
    size = int.from_bytes(data[-8:], "big")
    if size > min(_MAX_LAYOUT, len(data) - 8) or (len(data) - 8 - size) % 8:
        raise ReshareError("a resharing message's layout length does not fit the message")
    body = data[: len(data) - 8 - size]
    return np.frombuffer(body, dtype="<u8").astype(np.uint64), data[len(body): len(data) - 8]


async def reshare_inputs(channel: Channel, *, threshold: int, live: Sequence[int], replacements: Sequence[int],
                         owners: Sequence[str], held: Mapping[str, HeldInput], rng: RandomSource,
                         validate: Callable[[str, InputPayload], InputPayload]) -> dict[str, HeldInput] | None:
    """Run the resharing (module docstring) as this party; a replacement gets every owner's input back.

    ``live``: the attempt's live parties; ``replacements``: those of them that get shares
    (the others hold ``held``, every owner of ``owners``); ``validate(owner, payload)``:
    the checks an owner's envelope gets, raising ``ValueError``. Returns the replacement's
    inputs, or None at a holder.
    """
    field = MersenneField61(np)
    me = channel.party
    holders = [p for p in live if p not in replacements]
    senders = resharing_senders(holders, threshold)
    targets = [j for j in live if j in replacements]
    if not targets:
        return None
    if me in senders:
        later = [p for p in senders if p > me]
        fresh = {p: rng.bytes(32) for p in later}
        await channel.send_many(KEYS_TAG, fresh)
        earlier = [p for p in senders if p < me]
        keys = {**fresh, **await channel.receive_many(KEYS_TAG, earlier)}
        if any(len(k) != 32 for k in keys.values()):
            raise ReshareError("a resharing mask key is not 32 bytes")
        layout_meta: list[dict[str, Any]] = []
        flats = []
        for owner in owners:
            h = held[owner]
            layout, flat = flatten(h.payload)
            layout_meta.append({"owner": owner, "inputId": h.id.text(), "kind": h.payload.kind,
                                "domain": h.payload.domain, "rows": h.payload.rows,
                                "layout": [[g, k, list(s)] for g, k, s in layout]})
            flats.append(flat)
        whole = field.asarray(np.concatenate(flats) if flats else np.zeros(0, dtype=np.uint64))
        messages = {j: _encode(contribution(field, whole, me=me, senders=senders, recipient=j, keys=keys,
                                            label=f"{j}"), layout_meta) for j in targets}
        await channel.send_many(SHARES_TAG, messages)
    if me not in targets:
        return None
    got = await channel.receive_many(SHARES_TAG, senders)
    decoded = {p: _decode(data) for p, data in got.items()}
    metas = {meta for _, meta in decoded.values()}
    if len(metas) != 1:
        raise ReshareError(f"the resharing parties {list(senders)} sent different input layouts (owners, versions or "
                           "shapes); the holders do not hold the same inputs")
    try:
        entries = json.loads(metas.pop())
    except ValueError:
        raise ReshareError("a resharing layout is not JSON") from None
    if not isinstance(entries, list) or [e.get("owner") if isinstance(e, dict) else None for e in entries] != list(owners):
        raise ReshareError(f"the resharing layout must list the owners {list(owners)} in plan order")
    for words, _ in decoded.values():
        if not field.is_canonical(words):
            raise ReshareError("a resharing contribution holds a word that is not a field element (>= p)")
    total = combine(field, {p: w for p, (w, _) in decoded.items()}, senders)
    out: dict[str, HeldInput] = {}
    at = 0
    for e in entries:
        try:
            cut: Layout = [(str(g), str(k), tuple(int(d) for d in s)) for g, k, s in e["layout"]]
            template = InputPayload(e["kind"], e["domain"], {}, {}, int(e["rows"]))
            input_id = InputId.parse(str(e["inputId"]), e["owner"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReshareError(f"a resharing layout entry is malformed: {exc}") from None
        size = sum(math.prod(s) for _, _, s in cut)
        if at + size > total.size:
            raise ReshareError("the resharing contributions are shorter than their layout")
        payload = rebuild(template, cut, np.asarray(total[at:at + size], dtype=np.uint64))
        at += size
        out[e["owner"]] = HeldInput(input_id, validate(e["owner"], payload))
    if at != total.size:
        raise ReshareError("the resharing contributions are longer than their layout")
    return out


async def exchange_placements(channel: Channel, *, live: Sequence[int], replacements: Sequence[int],
                              placements: Mapping[str, int]) -> dict[int, dict[str, int]]:
    """Step 4 (module docstring): each live holder sends each live replacement ``placements`` (node id -> index).

    Returns, at a replacement, each holder's report; at a holder, nothing (``{}``).
    :class:`ReshareError` for a report that is not a JSON object of node ids to indexes.
    """
    me = channel.party
    holders = [p for p in live if p not in replacements]
    targets = [j for j in live if j in replacements]
    if me in holders and targets:
        data = json.dumps(dict(sorted(placements.items())), separators=(",", ":")).encode()
        await channel.send_many(PLACEMENTS_TAG, {j: data for j in targets})
    if me not in targets:
        return {}
    got = await channel.receive_many(PLACEMENTS_TAG, holders)
    return {p: _decode_placements(p, data, channel.n) for p, data in sorted(got.items())}


def _decode_placements(sender: int, data: bytes, n: int) -> dict[str, int]:
    try:
        report = json.loads(data)
    except ValueError:
        raise ReshareError(f"party {sender}'s placements report is not JSON") from None
    if (not isinstance(report, dict) or len(report) > _MAX_PLACEMENTS
            or not all(isinstance(k, str) and type(v) is int and 0 <= v < n for k, v in report.items())):
        raise ReshareError(f"party {sender}'s placements report must map at most {_MAX_PLACEMENTS} node ids to "
                           f"indexes 0..{n - 1}")
    return {str(k): int(v) for k, v in report.items()}
