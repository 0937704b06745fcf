"""Review of the base OTs: a corrupted ciphertext is a selective failure on a bit of the peer's Delta.

The base-OT sender is the OT-extension *receiver*; the base-OT receiver is the extension
*sender*, whose choice bits are its secret Delta. A cheating base-OT sender that replaces
one ciphertext, of OT ``i`` at position ``b``, by garbage (and computes its outputs over
the transcript it really sent) changes the honest receiver's output only if its choice
``Delta_i`` is ``b``; every other output still agrees. The first extension's KOS check at
the honest side then fails exactly when ``Delta_i = b``: whether the honest party aborts
tells the cheater one bit of Delta, at the price of a 1/2 chance of being caught. That is
the same leak the KOS check already allows for an inconsistent column (each bit of Delta
learned halves the cheater's chance), so the composition stays within the extension's
bound; but base.py's docstring claimed "nothing selects on it". Pinned both ways here,
with the real base OT and OT extension over an in-process hub.
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from pqmpc_node.mpc.channel import InProcessHub
from pqmpc_node.mpc.ot import base as B
from pqmpc_node.mpc.ot.extension import OtConsistencyError, OtExtensionReceiver, OtExtensionSender, delta_bits

EXT_SENDER, CHEATER = 0, 1  # the honest extension sender is the base-OT receiver
CONTEXT = b"review|cheater-is-base-sender"
TARGET_OT = 5


def _garbage_at(row: int) -> Any:
    """An ``mlkem`` stand-in whose ``row``-th encapsulation returns a random ciphertext (the real shared secret)."""
    real = B.mlkem
    calls = [0]

    class Key:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def encapsulate(self) -> tuple[bytes, bytes]:
            shared, ct = self._inner.encapsulate()
            index, calls[0] = calls[0], calls[0] + 1
            return (shared, random.Random(row).randbytes(len(ct))) if index == row else (shared, ct)

    public = SimpleNamespace(from_public_bytes=lambda raw: Key(real.MLKEM768PublicKey.from_public_bytes(raw)))
    return SimpleNamespace(MLKEM768PublicKey=public, MLKEM768PrivateKey=real.MLKEM768PrivateKey)


async def _base_then_extend(delta: bytes, position: int, monkeypatch: pytest.MonkeyPatch) -> BaseException | None:
    hub = InProcessHub(2)
    honest, cheater = hub.channel(EXT_SENDER), hub.channel(CHEATER)

    async def cheating_base_sender() -> list[tuple[bytes, bytes]]:
        message = (await cheater.receive_many("base/r", [EXT_SENDER]))[EXT_SENDER]
        with monkeypatch.context() as m:
            m.setattr(B, "mlkem", _garbage_at(2 * TARGET_OT + position))
            outputs, reply = B.sender_respond(message, B.BASE_OT_COUNT, context=CONTEXT, peer=EXT_SENDER)
        await cheater.send_many("base/s", {EXT_SENDER: reply})
        return outputs

    pairs, chosen = await asyncio.gather(
        cheating_base_sender(), B.base_ot_receive(honest, CHEATER, "base", delta_bits(delta), context=CONTEXT))
    sender = OtExtensionSender(delta, chosen, context=CONTEXT)
    receiver = OtExtensionReceiver(pairs, context=CONTEXT)  # the cheater then extends honestly
    choices = np.random.default_rng(7).integers(0, 2, 500).astype(np.bool_)
    results = await asyncio.gather(sender.extend(honest, CHEATER, "ext", 500),
                                   receiver.extend(cheater, EXT_SENDER, "ext", choices), return_exceptions=True)
    sent = results[0]
    if isinstance(sent, BaseException):
        return sent
    got = results[1]
    assert not isinstance(got, BaseException)
    m0, m1 = sent
    assert np.array_equal(np.where(choices[:, None], m1, m0), got), "a passing extension must give correct OTs"
    return None


@pytest.mark.parametrize("seed", [1, 2])
def test_corrupted_ciphertext_at_the_other_position_goes_unnoticed(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    delta = random.Random(seed).randbytes(16)
    bit = int(delta_bits(delta)[TARGET_OT])
    assert asyncio.run(_base_then_extend(delta, 1 - bit, monkeypatch)) is None


@pytest.mark.parametrize("seed", [1, 2])
def test_corrupted_ciphertext_at_the_chosen_position_fails_the_kos_check(seed: int,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    delta = random.Random(seed).randbytes(16)
    bit = int(delta_bits(delta)[TARGET_OT])
    err = asyncio.run(_base_then_extend(delta, bit, monkeypatch))
    assert isinstance(err, OtConsistencyError) and err.blamed_parties == (CHEATER,), err
