"""A malicious OT-extension receiver is caught by the KOS check, or its message is refused.

The cheater is written from the protocol's pure steps (:mod:`pqmpc_node.mpc.ot.extension`)
and talks to an honest :class:`OtExtensionSender` over an in-process channel. Covered:

* a different choice vector in one column — the attack that, unchecked, tells the receiver
  one bit of Δ (shown first, with the check skipped): caught exactly when its guess of
  that bit is wrong, so each bit it learns costs it probability 1/2 of being caught;
* a lie in X or in T: always caught;
* a truncated u, a u for the wrong chunk, a short response, and (against the receiver) a
  short challenge: refused as malformed, naming the sender of the bad message;
* honest runs with the all-zero and the all-one choice vectors pass.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pqmpc_node.mpc.channel import InProcessHub
from pqmpc_node.mpc.errors import BlamedCheckError
from pqmpc_node.mpc.ot.extension import (
    CHALLENGE_BYTES, KAPPA, Chunk, OtConsistencyError, OtExtensionReceiver, OtExtensionSender, OtMessageError,
    check_response, check_verify, column_keys, delta_bits, hash_rows, padded_rows, receiver_columns, sender_rows,
    tweak_label, u_message,
)
from pqmpc_node.mpc.ot.ghash import poly_hash

CONTEXT = b"cheats"
COUNT = 2000
SENDER, RECEIVER = 0, 1

Bits = np.ndarray[Any, np.dtype[np.bool_]]
U8 = np.ndarray[Any, np.dtype[np.uint8]]


class Setup:
    """Ideal base OTs: Δ, the seed pairs, and the derived column keys of both sides."""

    def __init__(self, seed: int) -> None:
        rnd = random.Random(seed)
        self.delta = rnd.randbytes(16)
        self.bits = delta_bits(self.delta)
        self.pairs = [(rnd.randbytes(32), rnd.randbytes(32)) for _ in range(KAPPA)]
        self.keys0 = column_keys([k0 for k0, _ in self.pairs], CONTEXT)
        self.keys1 = column_keys([k1 for _, k1 in self.pairs], CONTEXT)
        self.x = np.random.default_rng(seed).integers(0, 2, padded_rows(COUNT)).astype(np.bool_)

    def sender(self) -> OtExtensionSender:
        chosen = [pair[bit] for pair, bit in zip(self.pairs, self.bits, strict=True)]
        return OtExtensionSender(self.delta, chosen, context=CONTEXT)

    def column(self, bit: bool) -> int:
        return self.bits.index(bit)


def flip_column(u: U8, column: int, x: Bits, x_other: Bits) -> U8:
    """u with column ``column`` computed from choices ``x_other`` instead of ``x``."""
    u = u.copy()
    u[column] ^= np.packbits(x ^ x_other, bitorder="little")
    return u


def unit_rows(column: int, rows: Bits) -> U8:
    """(n, 16) rows that are e_column where ``rows`` is set, else 0."""
    out = np.zeros((rows.shape[0], 16), dtype=np.uint8)
    out[rows, column // 8] = 1 << (column % 8)
    return out


async def run_against_sender(setup: Setup, *, tamper_u: Callable[[U8], U8] = lambda u: u,
                             tamper_response: Callable[[bytes, bytes, U8, Bits], bytes] = lambda r, c, t, x: r,
                             raw_u: Callable[[bytes], bytes] = lambda m: m) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """An honest sender against a receiver built from the pure steps, with its messages rewritten."""
    hub = InProcessHub(2)
    channel = hub.channel(RECEIVER)
    chunk = Chunk(stream=0, first_row=0, rows=COUNT)

    async def receiver() -> None:
        u, t = receiver_columns(setup.keys0, setup.keys1, chunk.stream, setup.x)
        await channel.send_many("t/0/u", {SENDER: raw_u(u_message(chunk, tamper_u(u)))})
        challenge = (await channel.receive_many("t/0/challenge", [SENDER]))[SENDER]
        response = check_response(challenge, t, setup.x)
        await channel.send_many("t/0/response", {SENDER: tamper_response(response, challenge, t, setup.x)})

    task = asyncio.ensure_future(receiver())
    try:
        return await setup.sender().extend(hub.channel(SENDER), RECEIVER, "t", COUNT)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_unchecked_column_flip_reveals_a_bit_of_delta() -> None:
    """Why the check exists. With it skipped, a receiver that flips row 0's choice in column i only
    makes the sender's q_0 = t_0 ⊕ x_0·Δ ⊕ Δ_i·e_i: its true message m^{x_0} is TCCR(t_0) if
    Δ_i = 0 and TCCR(t_0 ⊕ e_i) if Δ_i = 1. Whichever candidate later works (say, decrypts the
    sender's derandomized message) tells it Δ_i; 128 such rows give all of Δ, hence every m^{1-x}."""
    setup = Setup(1)
    label = tweak_label(CONTEXT)
    flipped = setup.x.copy()
    flipped[0] ^= True
    keys = column_keys([pair[b] for pair, b in zip(setup.pairs, setup.bits, strict=True)], CONTEXT)
    for bit in (False, True):
        i = setup.column(bit)
        u, t = receiver_columns(setup.keys0, setup.keys1, 0, setup.x)
        q = sender_rows(keys, setup.delta, 0, flip_column(u, i, setup.x, flipped))
        delta = np.frombuffer(setup.delta, dtype=np.uint8)
        true_message = hash_rows(q[:1] ^ delta if setup.x[0] else q[:1], 0, label)
        if_zero = hash_rows(t[:1], 0, label)
        if_one = hash_rows(t[:1] ^ unit_rows(i, np.array([True])), 0, label)
        assert np.array_equal(if_zero, true_message) == (not bit)
        assert np.array_equal(if_one, true_message) == bit


@pytest.mark.parametrize("guess", [False, True])
@pytest.mark.parametrize("delta_bit", [False, True])
async def test_different_choices_in_one_column_are_caught_unless_the_guess_is_right(delta_bit: bool,
                                                                                    guess: bool) -> None:
    """Column i uses x' ≠ x. If Δ_i = 1 the sender's q shifts by e_i on the flipped rows; a receiver
    betting on Δ_i = 1 adds that shift to T, one betting on 0 leaves T alone. The check passes
    exactly when the bet is right: each learned bit of Δ costs probability 1/2 of abort."""
    setup = Setup(2)
    i = setup.column(delta_bit)
    other = setup.x.copy()
    flips = np.zeros_like(other)
    flips[[0, 5, 700]] = True
    other ^= flips

    def response(r: bytes, challenge: bytes, t: U8, x: Bits) -> bytes:
        if not guess:
            return r
        shift = poly_hash(challenge, unit_rows(i, flips).reshape(-1).data)
        return r[:16] + (int.from_bytes(r[16:], "big") ^ shift).to_bytes(16, "big")

    run = run_against_sender(setup, tamper_u=lambda u: flip_column(u, i, setup.x, other), tamper_response=response)
    if guess == delta_bit:
        m0, m1 = await run
        assert m0.shape == m1.shape == (COUNT, 2)
    else:
        with pytest.raises(OtConsistencyError) as caught:
            await run
        assert caught.value.blamed_parties == (RECEIVER,)
        assert isinstance(caught.value, BlamedCheckError)


@pytest.mark.parametrize("part", ["X", "T"])
async def test_a_lie_in_x_or_t_is_caught(part: str) -> None:
    setup = Setup(3)

    def lie(r: bytes, challenge: bytes, t: U8, x: Bits) -> bytes:
        b = bytearray(r)
        b[0 if part == "X" else 16] ^= 0x01
        return bytes(b)

    with pytest.raises(OtConsistencyError, match="KOS check") as caught:
        await run_against_sender(setup, tamper_response=lie)
    assert caught.value.blamed_parties == (RECEIVER,)


def test_response_for_other_choices_fails_the_check() -> None:
    """X must match the x that u was built with: answering for a different x (same t) fails."""
    setup = Setup(4)
    keys = column_keys([pair[b] for pair, b in zip(setup.pairs, setup.bits, strict=True)], CONTEXT)
    u, t = receiver_columns(setup.keys0, setup.keys1, 0, setup.x)
    q = sender_rows(keys, setup.delta, 0, u)
    challenge = random.Random(4).randbytes(CHALLENGE_BYTES)
    assert check_verify(challenge, q, setup.delta, check_response(challenge, t, setup.x))
    other = setup.x.copy()
    other[3] ^= True
    assert not check_verify(challenge, q, setup.delta, check_response(challenge, t, other))


@pytest.mark.parametrize("how", ["truncated", "one byte more", "empty"])
async def test_malformed_u_is_refused_naming_the_receiver(how: str) -> None:
    def cut(m: bytes) -> bytes:
        return {"truncated": m[: len(m) // 2], "one byte more": m + b"\x00", "empty": b""}[how]

    with pytest.raises(OtMessageError, match="bytes of u") as caught:
        await run_against_sender(Setup(5), raw_u=cut)
    assert caught.value.blamed_parties == (RECEIVER,)


async def test_u_for_another_chunk_is_refused() -> None:
    def restamp(m: bytes) -> bytes:
        return (7).to_bytes(8, "little") + m[8:]  # stream 7: keystream of another chunk

    with pytest.raises(OtMessageError, match="same order") as caught:
        await run_against_sender(Setup(6), raw_u=restamp)
    assert caught.value.blamed_parties == (RECEIVER,)


async def test_short_response_is_refused() -> None:
    with pytest.raises(OtMessageError, match="response") as caught:
        await run_against_sender(Setup(7), tamper_response=lambda r, c, t, x: r[:31])
    assert caught.value.blamed_parties == (RECEIVER,)


async def test_short_challenge_is_refused_by_the_receiver_naming_the_sender() -> None:
    setup = Setup(8)
    receiver = OtExtensionReceiver(setup.pairs, context=CONTEXT)
    hub = InProcessHub(2)
    channel = hub.channel(SENDER)

    async def sender() -> None:
        await channel.receive_many("t/0/u", [RECEIVER])
        await channel.send_many("t/0/challenge", {RECEIVER: bytes(CHALLENGE_BYTES - 1)})

    task = asyncio.ensure_future(sender())
    with pytest.raises(OtMessageError, match="challenge") as caught:
        await receiver.extend(hub.channel(RECEIVER), SENDER, "t", np.zeros(10, dtype=np.bool_))
    await task
    assert caught.value.blamed_parties == (SENDER,)


@pytest.mark.parametrize("choice", [False, True])
async def test_honest_constant_choices_pass(choice: bool) -> None:
    setup = Setup(9)
    receiver = OtExtensionReceiver(setup.pairs, context=CONTEXT)
    hub = InProcessHub(2)
    x = np.full(COUNT, choice, dtype=np.bool_)
    (m0, m1), mx = await asyncio.gather(setup.sender().extend(hub.channel(SENDER), RECEIVER, "t", COUNT),
                                        receiver.extend(hub.channel(RECEIVER), SENDER, "t", x))
    assert np.array_equal(mx, m1 if choice else m0)
