"""A node process with fault-injection hooks; it exists only in the tests.

``PQMPC_TEST_FAULT`` selects the faults; several combine with commas
(``PQMPC_TEST_FAULT=die-after:9,shift-input``). A round tag is the engine's
(``"<round>:<label>"``, e.g. ``"3:input/2"``, ``"7:beaver"``); "the first element" is
the first uint64 word of a payload (payloads shorter than 8 bytes are sent unchanged).

``tamper``
    Add 1 to the first element of every payload this node sends under a round tag
    containing ``outputs`` (a party changing what it contributes to the output phase).
``die-after:N``
    Exit abruptly (status 17, like a killed pod) on the N-th send of the session, counting
    the inputs agreement's two (proposal, commit: :mod:`pqmpc_node.input_agreement`) that
    open every attempt, so the first MPC send is the third.
``add:<substring>``
    Add 1 (mod p = 2^61 - 1, so a field element stays canonical) to the first element
    of every payload this node sends under a round tag containing ``<substring>``. Only
    the wire changes: the node's own state still holds what it computed (e.g. with
    ``add:input/2`` party 2's record of its masked input broadcast, and its MAC share of
    the re-input, are of the unshifted ``d``, so the MAC check's broadcast-consistency
    step catches it before the owner-input key check runs).
``shift-input``
    A self-consistent cheater on owners' inputs: when this node re-inputs its raw shares
    of the owners' inputs (the masked input protocol, round ``input/<own index>``), it
    inputs its share of the first value plus 1 (mod p) instead. Its broadcast, its own
    shares, MACs and broadcast record all agree, so only the owner-input key check can
    catch it.
``split:<substring>``
    Equivocation: like ``add``, but only the payload for the lowest-indexed peer is
    changed (the other peers get the true value), so peers see different broadcasts.
``noncanonical:<substring>``
    Add p = 2^61 - 1 to the first element under matching tags: the word stays equal
    modulo p but is not a canonical field element (``>= p``).
``wrong-kind``
    Seal every output as fixed point, histogram counts included (a node lying about how
    its shares decode: counts would read 2^-f times too small).
``forge-output``
    After the run, add 1 (mod p) to the first element of this node's share of every
    output it seals for recipients (the key and tag shares are left alone): the nodes
    cannot see it, only the recipient's check can.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from pqmpc_node.__main__ import main
from pqmpc_node.engine import RunOutcome
from pqmpc_node.mpc import protocols
from pqmpc_node.mpc.backend import to_host
from pqmpc_node.mpc.outputs import DeliveredShare
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.domain import Array
from pqmpc_node.mpc.field import P61
from pqmpc_node.mpc.shares import Shared
from pqmpc_node.net import pq_channel
from pqmpc_node.sessions import SessionManager, SessionRuntime

_original = pq_channel.PqChannel.send_many
_original_seal = SessionManager._seal_outputs
_original_share_input = protocols.share_input
_sends = 0
_MASK64 = (1 << 64) - 1


def _faults() -> list[tuple[str, str]]:
    """The configured faults as ``(name, argument)``."""
    out = []
    for item in os.environ.get("PQMPC_TEST_FAULT", "").split(","):
        item = item.strip()
        if item:
            name, _, arg = item.partition(":")
            out.append((name, arg))
    return out


def _bump(data: Any, delta: int, *, mod_p: bool) -> bytes:
    """``data`` with ``delta`` added to its first uint64 word (mod p for field elements if ``mod_p``)."""
    raw = bytes(data)
    if len(raw) < 8:
        return raw
    word = int(np.frombuffer(raw[:8], dtype=np.uint64)[0])
    new = (word + delta) % P61 if mod_p and word < P61 else (word + delta) & _MASK64
    return np.array([new], dtype=np.uint64).tobytes() + raw[8:]


async def _faulty_send_many(self: pq_channel.PqChannel, tag: str, payloads: Mapping[int, bytes]) -> None:
    global _sends
    _sends += 1
    for name, arg in _faults():
        if name == "die-after" and _sends >= int(arg):
            os._exit(17)
        if name == "tamper" and "outputs" in tag:
            payloads = {peer: _bump(data, 1, mod_p=False) for peer, data in payloads.items()}
        elif name == "add" and arg in tag:
            payloads = {peer: _bump(data, 1, mod_p=True) for peer, data in payloads.items()}
        elif name == "split" and arg in tag and payloads:
            first = min(payloads)
            payloads = {peer: _bump(data, 1, mod_p=True) if peer == first else data for peer, data in payloads.items()}
        elif name == "noncanonical" and arg in tag:
            payloads = {peer: _bump(data, P61, mod_p=False) for peer, data in payloads.items()}
    await _original(self, tag, payloads)


async def _shifted_share_input(ctx: MPCContext, owner: int, values: Array | None, shape: tuple[int, ...]) -> Shared:
    if values is not None and owner == ctx.party and any(name == "shift-input" for name, _ in _faults()):
        shifted = np.array(to_host(values), dtype=np.uint64, copy=True)
        flat = shifted.reshape(-1)
        if flat.size:
            flat[0] = np.uint64((int(flat[0]) + 1) % P61)
        values = ctx.xp.asarray(shifted)
    return await _original_share_input(ctx, owner, values, shape)


def _forged_seal_outputs(self: SessionManager, rt: SessionRuntime, outcome: RunOutcome) -> None:
    if any(name == "wrong-kind" for name, _ in _faults()):
        outcome = RunOutcome(replace(outcome.result, integer_outputs=frozenset()), outcome.delivered)
    if any(name == "forge-output" for name, _ in _faults()):
        delivered: dict[str, dict[str, DeliveredShare]] = {}
        for recipient, shares in outcome.delivered.items():
            delivered[recipient] = {}
            for output, share in shares.items():
                value = np.array(to_host(share.value), dtype=np.uint64, copy=True)
                flat = value.reshape(-1)
                if flat.size:
                    flat[0] = np.uint64((int(flat[0]) + 1) % P61)
                delivered[recipient][output] = replace(share, value=value)
        outcome = RunOutcome(outcome.result, delivered)
    _original_seal(self, rt, outcome)


pq_channel.PqChannel.send_many = _faulty_send_many  # type: ignore[method-assign]
SessionManager._seal_outputs = _forged_seal_outputs  # type: ignore[method-assign]
protocols.share_input = _shifted_share_input

if __name__ == "__main__":
    sys.exit(main())
