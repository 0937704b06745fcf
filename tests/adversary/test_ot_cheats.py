"""A cheating party in a dealer-free OT (additive, dishonest-majority) session is caught before any output.

The cheater runs the node's own engine (``execute``) with the OT provider and rewrites
its messages in one step of making the material: the Gilboa products (OLE corrections),
the COPE messages that make the MACs, the sacrifice that verifies the triples, the
square-and-open of random bits, the input-mask shares it sends an owner, the OT
extension and the base OTs. Every honest party must end with a :class:`MacCheckError`
naming the check that caught it, and none may have started delivering outputs. Without
the attack the same run gives the plaintext answer.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_cheats import Tamper, add_to_first, assert_caught, decoded, label_of, plaintext, run  # noqa: E402
from pqmpc_node.mpc.config import EngineConfig  # noqa: E402
from pqmpc_node.mpc.outputs import verify_delivered  # noqa: E402

P2 = EngineConfig(2, sharing="additive", security="malicious")
P3 = EngineConfig(3, sharing="additive", security="malicious")
TRIPLE_CHECKS = {"triple-sacrifice", "sacrifice", "peer-abort"}


def add_everywhere(label: str, delta: int = 1) -> Tamper:
    """Add ``delta`` (mod p) to every element of every message of rounds labelled ``label``.

    Touching every element makes the error independent of the receiver's secret choice
    bits, so the test does not depend on luck (a one-element change is a selective
    failure that shows only when the receiver's bit is 1).
    """

    def tamper(tag: str, peer: int, data: bytes) -> bytes:
        if label_of(tag) != label or len(data) < 8:
            return data
        arr = np.frombuffer(data, dtype=np.uint64).copy()
        arr = (arr + np.uint64(delta)) % np.uint64(2**61 - 1)
        return arr.tobytes()

    return tamper


@pytest.mark.parametrize("config", [P2, P3], ids=["2 parties", "3 parties"])
def test_honest_ot_run_gives_the_plaintext_answer(config: EngineConfig) -> None:
    r = run(config, dealer_free=True)
    ctx = r.contexts[0]
    delivered = {p: out.delivered["auditor"]["sum(amount)"] for p, out in r.outcomes.items()}  # type: ignore[union-attr]
    y = verify_delivered(ctx.domain, ctx.scheme, delivered, authenticated=True)
    assert decoded("sum(amount)", y, ctx.domain) == plaintext()["sum(amount)"]


@pytest.mark.parametrize("config", [P2, P3], ids=["2 parties", "3 parties"])
def test_deviation_in_gilboa_products_is_caught_by_the_sacrifice(config: EngineConfig) -> None:
    r = run(config, cheater=1, tamper=add_everywhere("mascot-multiply/corr"), dealer_free=True)
    assert_caught(r, 1, TRIPLE_CHECKS)
    assert any(r.error_at(p).check == "triple-sacrifice" for p in r.honest(1))  # type: ignore[attr-defined]


def test_deviation_in_cope_is_caught_by_the_mac_check() -> None:
    """A COPE message shifted by 1 authenticates another value than the share: the MACs are off by
    the peer's key share, which the sacrifice's MAC check sees."""
    r = run(P2, cheater=0, tamper=add_everywhere("cope/u"), dealer_free=True)
    assert_caught(r, 0, {"sacrifice", "peer-abort"})


@pytest.mark.parametrize("label", ["sacrifice", "sacrifice-check"])
def test_deviation_in_the_sacrifice_is_caught(label: str) -> None:
    r = run(P3, cheater=2, tamper=add_to_first(label, 1), dealer_free=True)
    assert_caught(r, 2, TRIPLE_CHECKS)


@pytest.mark.parametrize("label", ["bit-square", "bit-open"])
def test_deviation_in_bit_generation_is_caught(label: str) -> None:
    r = run(P2, cheater=1, tamper=add_to_first(label, 1), dealer_free=True)
    assert_caught(r, 1, {"bit-square", "bits", "peer-abort"})


def test_wrong_input_mask_share_is_caught_by_the_owner_key_check() -> None:
    """The owner cannot check an additive mask's shares; a wrong one shifts the owner's re-input,
    which the owner-keyed input check catches before anything is opened unmasked."""
    r = run(P2, cheater=1, tamper=add_to_first("mask/0", 1), dealer_free=True)
    assert_caught(r, 1, {"owner-input-key", "peer-abort"})


def flip_bits(label: str) -> Tamper:
    """Flip the low bit of every 8th byte of the messages of rounds labelled ``label`` (beyond any header)."""

    def tamper(tag: str, peer: int, data: bytes) -> bytes:
        if label_of(tag) != label or len(data) < 64:
            return data
        raw = bytearray(data)
        for i in range(len(raw) // 2, len(raw), 8):
            raw[i] ^= 1
        return bytes(raw)

    return tamper


def test_inconsistent_choice_bits_in_the_extension_are_caught_and_blamed() -> None:
    """The Gilboa receiver's extension columns changed (different choice bits per column, the attack
    that would leak bits of the sender's Delta): the KOS check fails at the honest sender, naming the cheater."""
    r = run(P2, cheater=1, tamper=flip_bits("mascot-multiply/ext/0/u"), dealer_free=True)
    assert_caught(r, 1, {"ot-extension-consistency", "ot-extension-u", "peer-abort"})
    err = r.error_at(0)
    assert err.check == "ot-extension-consistency" and err.blamed_parties == (1,), err  # type: ignore[attr-defined]


def test_deviation_in_the_base_ots_is_caught_before_any_triple() -> None:
    """A base-OT sender that corrupts its ciphertexts leaves the honest extension sender with wrong
    seeds: the first extension's KOS check fails there (the cheater is the extension receiver)."""
    r = run(P2, cheater=1, tamper=flip_bits("base/s"), dealer_free=True)
    assert_caught(r, 1, {"ot-extension-consistency", "base-ot", "peer-abort"})
    for p in r.honest(1):
        assert not any("mascot" in label_of(t) for t in r.sent[p]), "no triple work may start on broken base OTs"
