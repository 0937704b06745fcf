"""A cheating party in the ML-KEM base OT (Masny-Rindal) over real in-process channels.

Malformed messages (a key coefficient >= q, a truncated key, a short ciphertext) are
refused with :class:`BaseOtError` naming the party that sent them. A well-formed but
corrupted ciphertext is not detectable here; it only changes the receiver's outputs. A
receiver that deviates to learn both of the sender's outputs learns no more than one.
"""

from __future__ import annotations

import asyncio
import secrets

import numpy as np
import pytest

from pqmpc_node.mpc.channel import InProcessHub
from pqmpc_node.mpc.errors import BlamedCheckError
from pqmpc_node.mpc.ot import base as B

SENDER, RECEIVER = 0, 1
CONTEXT = b"cheats|0->1"
TAG = "bot/0-1"
COUNT = 32


def random_choices(count: int = COUNT) -> list[bool]:
    return [secrets.randbits(1) == 1 for _ in range(count)]


def key_offset(ot: int, position: int) -> int:
    return (2 * ot + position) * B.KEY_BYTES


def set_coefficient(message: bytes, ot: int, position: int, index: int, value: int) -> bytes:
    """Write the 12-bit coefficient ``index`` of key ``r_position`` of OT ``ot`` (ByteEncode_12 layout)."""
    data = bytearray(message)
    start = key_offset(ot, position)
    bits = int.from_bytes(data[start:start + 1152], "little")
    bits = (bits & ~(0xFFF << (12 * index))) | (value << (12 * index))
    data[start:start + 1152] = bits.to_bytes(1152, "little")
    return bytes(data)


async def cheating_receiver(message: bytes) -> BaseException:
    """The receiver sends ``message``; the honest sender's failure (it must fail)."""
    hub = InProcessHub(2)
    await hub.channel(RECEIVER).send_many(f"{TAG}/r", {SENDER: message})
    with pytest.raises(B.BaseOtError) as info:
        await B.base_ot_send(hub.channel(SENDER), RECEIVER, TAG, COUNT, context=CONTEXT)
    return info.value


async def cheating_sender(tamper: object) -> tuple[list[bool], list[tuple[bytes, bytes]], list[bytes] | BaseException]:
    """An honest receiver against a sender that runs honestly but rewrites its reply with ``tamper``."""
    hub = InProcessHub(2)
    choices = random_choices()
    sender, receiver = hub.channel(SENDER), hub.channel(RECEIVER)

    async def sender_side() -> list[tuple[bytes, bytes]]:
        message = (await sender.receive_many(f"{TAG}/r", [RECEIVER]))[RECEIVER]
        outputs, reply = B.sender_respond(message, COUNT, context=CONTEXT, peer=RECEIVER)
        await sender.send_many(f"{TAG}/s", {RECEIVER: tamper(reply)})  # type: ignore[operator]
        return outputs

    sent, received = await asyncio.gather(
        sender_side(), B.base_ot_receive(receiver, SENDER, TAG, choices, context=CONTEXT), return_exceptions=True)
    assert isinstance(sent, list)
    assert isinstance(received, (list, BaseException))
    return choices, sent, received


def assert_blames(error: BaseException, culprit: int, *phrases: str) -> None:
    assert isinstance(error, B.BaseOtError) and isinstance(error, BlamedCheckError)
    assert error.blamed_parties == (culprit,)
    text = str(error)
    assert f"party {culprit}" in text
    for phrase in phrases:
        assert phrase in text, text


async def test_receiver_key_with_a_coefficient_of_q_or_more_is_refused() -> None:
    _, message = B.receiver_start(random_choices(), context=CONTEXT)
    for value in (B.Q, 4095):
        error = await cheating_receiver(set_coefficient(message, ot=5, position=1, index=700, value=value))
        assert_blames(error, RECEIVER, "not canonical", "OT 5", "r_1", "coefficient 700", f"is {value}", f"{TAG}/r")


async def test_receiver_q_minus_one_is_accepted() -> None:
    """The boundary: q - 1 is canonical (so the check above is exactly ``>= q``)."""
    _, message = B.receiver_start(random_choices(), context=CONTEXT)
    outputs, _ = B.sender_respond(set_coefficient(message, 3, 0, 0, B.Q - 1), COUNT, context=CONTEXT, peer=RECEIVER)
    assert len(outputs) == COUNT


@pytest.mark.parametrize("cut", [1, B.KEY_BYTES, 2 * B.KEY_BYTES])
async def test_truncated_receiver_message_is_refused(cut: int) -> None:
    _, message = B.receiver_start(random_choices(), context=CONTEXT)
    error = await cheating_receiver(message[:-cut])
    assert_blames(error, RECEIVER, f"{len(message) - cut} bytes", f"expected {len(message)}")


async def test_receiver_message_with_extra_bytes_is_refused() -> None:
    _, message = B.receiver_start(random_choices(), context=CONTEXT)
    assert_blames(await cheating_receiver(message + b"\0"), RECEIVER, "expected")


@pytest.mark.parametrize("cut", [1, B.CIPHERTEXT_BYTES])
async def test_short_sender_reply_is_refused(cut: int) -> None:
    _, _, received = await cheating_sender(lambda reply: reply[:-cut])
    assert isinstance(received, BaseException)
    assert_blames(received, SENDER, "sender reply", "expected", f"{TAG}/s")


async def test_corrupted_ciphertext_changes_the_receivers_outputs() -> None:
    """A flipped byte in one ciphertext is accepted (every 1088-byte string is an ML-KEM
    ciphertext; implicit rejection gives an unrelated secret) and raises nothing here; the
    receiver's outputs no longer match the sender's. Not just that OT's: the outputs are bound
    to the whole transcript, so every one differs, whatever the choice bits.

    This is caught downstream, not here: the OT-extension consistency check (KOS) and the MAC
    checks of the triples fail when the base-OT seeds disagree."""
    victim = 9

    def flip_both(reply: bytes) -> bytes:
        data = bytearray(reply)
        for position in (0, 1):  # whichever the receiver chose
            data[(2 * victim + position) * B.CIPHERTEXT_BYTES + 100] ^= 0x01
        return bytes(data)

    choices, sent, received = await cheating_sender(flip_both)
    assert isinstance(received, list) and len(received) == COUNT
    assert all(mc not in pair for pair, mc in zip(sent, received, strict=True))
    # the same run untampered agrees: the difference is the flipped byte
    choices, sent, received = await cheating_sender(lambda reply: reply)
    assert received == [pair[int(c)] for pair, c in zip(sent, choices, strict=True)]


async def run_against_honest_sender(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The receiver's ``message`` through a real channel to an honest sender; its outputs and reply."""
    hub = InProcessHub(2)
    sender, receiver = hub.channel(SENDER), hub.channel(RECEIVER)
    await receiver.send_many(f"{TAG}/r", {SENDER: message})
    sent = await B.base_ot_send(sender, RECEIVER, TAG, COUNT, context=CONTEXT)
    reply = (await receiver.receive_many(f"{TAG}/s", [SENDER]))[SENDER]
    return sent, reply


def decapsulate_both(state: B.ReceiverState, reply: bytes) -> tuple[list[bytes], list[bytes]]:
    """What the receiver's keys open: at the chosen positions and at the other ones."""
    flipped = B.ReceiverState(context=state.context, choices=tuple(not c for c in state.choices),
                              keys=state.keys, message=state.message)
    return B.receiver_finish(state, reply, peer=SENDER), B.receiver_finish(flipped, reply, peer=SENDER)


async def test_receiver_cannot_open_the_other_ciphertext() -> None:
    """An honest-looking receiver that also decapsulates ct_{1-c} with its key gets m_c and not m_{1-c}."""
    state, message = B.receiver_start(random_choices(), context=CONTEXT)
    sent, reply = await run_against_honest_sender(message)
    chosen, other = decapsulate_both(state, reply)
    for c, pair, mc, m_other in zip(state.choices, sent, chosen, other, strict=True):
        assert mc == pair[int(c)]
        assert m_other not in pair


async def test_equal_keys_do_not_give_both_outputs() -> None:
    """A receiver that sends r_0 = r_1 (hoping the sender encapsulates twice to one key it can open).
    Its keys open neither ciphertext: r_c was shifted against the real r_{1-c}, which it replaced,
    so neither pk_0 nor pk_1 is its key (finding r with r + H(r) = a key it holds is a random-oracle
    fixed point). It learns neither m_0 nor m_1, let alone both; the sender's two outputs differ."""
    honest, message = B.receiver_start(random_choices(), context=CONTEXT)
    keys = bytearray(message)
    for i, c in enumerate(honest.choices):  # copy the shifted real key over the random one
        src, dst = key_offset(i, int(c)), key_offset(i, 1 - int(c))
        keys[dst:dst + B.KEY_BYTES] = keys[src:src + B.KEY_BYTES]
    forged = bytes(keys)
    pairs = np.frombuffer(forged, dtype=np.uint8).reshape(COUNT, 2, B.KEY_BYTES)
    assert all((pairs[i, 0] == pairs[i, 1]).all() for i in range(COUNT))
    sent, reply = await run_against_honest_sender(forged)
    cheat = B.ReceiverState(context=honest.context, choices=honest.choices, keys=honest.keys, message=forged)
    chosen, other = decapsulate_both(cheat, reply)
    for pair, mc, m_other in zip(sent, chosen, other, strict=True):
        assert pair[0] != pair[1]
        assert mc not in pair and m_other not in pair


async def test_two_real_keys_do_not_give_both_outputs() -> None:
    """A receiver that sends two keys it generated as r_0 and r_1: the sender encapsulates to
    r_b + H(r_{1-b}), not to r_b, so neither of its keys opens either ciphertext."""
    first, message_0 = B.receiver_start([False] * COUNT, context=CONTEXT)
    second, message_1 = B.receiver_start([True] * COUNT, context=CONTEXT)
    real = [[k.public_key().public_bytes_raw() for k in s.keys] for s in (first, second)]
    forged = b"".join(real[0][i] + real[1][i] for i in range(COUNT))
    sent, reply = await run_against_honest_sender(forged)
    for state in (first, second):
        cheat = B.ReceiverState(context=CONTEXT, choices=state.choices, keys=state.keys, message=forged)
        for outputs in decapsulate_both(cheat, reply):
            assert all(m not in pair for m, pair in zip(outputs, sent, strict=True))
