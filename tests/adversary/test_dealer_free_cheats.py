"""A cheating party in a dealer-free (PRSS) session is caught before any output.

The cheater runs the node's own engine (``execute``) with the honest-majority provider
and rewrites its messages in one step: the degree reduction of a product or of a MAC
(resharing), the product check that verifies them, the square-and-open of random bits,
the input mask it opens to an owner. Every honest party must end with a
:class:`MacCheckError` naming the check that caught it, and none may have started
delivering outputs. Without the attack the same run gives the plaintext answer.
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
from pqmpc_node.mpc.errors import MacCheckError  # noqa: E402
from pqmpc_node.mpc.outputs import verify_delivered  # noqa: E402

N3 = EngineConfig(3, threshold=1, sharing="shamir", security="malicious")  # n = 2t + 1: no redundancy
N4 = EngineConfig(4, threshold=1, sharing="shamir", security="malicious")  # n > 2t + 1: redundant shares


def add_at(label: str, fraction: tuple[int, int], delta: int = 1) -> Tamper:
    """Add ``delta`` (mod p) to the element at ``num/den`` of every message of rounds labelled ``label``."""
    num, den = fraction

    def tamper(tag: str, peer: int, data: bytes) -> bytes:
        if label_of(tag) != label or len(data) < 8:
            return data
        arr = np.frombuffer(data, dtype=np.uint64).copy()
        i = arr.size * num // den
        arr[i] = np.uint64((int(arr[i]) + delta) % (2**61 - 1))
        return arr.tobytes()

    return tamper


def test_honest_dealer_free_run_gives_the_plaintext_answer() -> None:
    r = run(N3, dealer_free=True)
    ctx = r.contexts[0]
    delivered = {p: out.delivered["auditor"]["sum(amount)"] for p, out in r.outcomes.items()}  # type: ignore[union-attr]
    y = verify_delivered(ctx.domain, ctx.scheme, delivered, authenticated=True)
    assert decoded("sum(amount)", y, ctx.domain) == plaintext()["sum(amount)"]


# Every product round ("dn/mul") reduces [values..., MACs...]: 0/2 is the first value,
# 1/2 the first MAC. The product check runs at the next MAC check, before any opening no
# random mask hides and before any output.
PRODUCT_CHECKS = {"product-check", "peer-abort"}


@pytest.mark.parametrize(("where", "what"), [((0, 2), "a product's value"), ((1, 2), "a product's MAC")])
def test_deviation_in_a_product_is_caught_by_the_product_check(where: tuple[int, int], what: str) -> None:
    r = run(N3, cheater=2, tamper=add_at("dn/mul", where), dealer_free=True)
    assert_caught(r, 2, PRODUCT_CHECKS)
    assert any(r.error_at(p).check == "product-check" for p in r.honest(2)), what  # type: ignore[attr-defined]


def test_a_shift_consistent_with_a_guessed_mac_key_is_caught() -> None:
    """The cheater shifts a product by 1 and its MAC by a guess g of alpha: it passes only if g = alpha."""
    guess = 0x1234_5678_9ABC_DEF
    tampers = [add_at("dn/mul", (0, 2)), add_at("dn/mul", (1, 2), delta=guess)]

    def both(tag: str, peer: int, data: bytes) -> bytes:
        for t in tampers:
            data = t(tag, peer, data)
        return data

    r = run(N3, cheater=1, tamper=both, dealer_free=True)
    assert_caught(r, 1, PRODUCT_CHECKS)


@pytest.mark.parametrize("label", ["dn/product-check", "dn/product-check-zero", "dn/product-check-open"])
def test_deviation_in_the_product_check_itself_is_caught(label: str) -> None:
    r = run(N3, cheater=0, tamper=add_to_first(label, 1), dealer_free=True)
    assert_caught(r, 0, PRODUCT_CHECKS | {"product-check-consistency"})


def test_wrong_mac_of_a_random_value_is_caught() -> None:
    """The MACs of a triple's random a and b ("dn/triple") are reduced too: a wrong one only
    changes a MAC, and the opening of ``a - b`` for random bits fails its MAC check."""
    r = run(N3, cheater=1, tamper=add_at("dn/triple", (0, 2)), dealer_free=True)
    assert_caught(r, 1, {"bits", "bits-zero-square", "product-check", "peer-abort"})


def test_deviation_in_resharing_with_redundant_shares_is_caught_at_once() -> None:
    """n = 4 > 2t + 1: the degree-2t shares are redundant and a wrong one is off the polynomial."""
    r = run(N4, cheater=3, tamper=add_at("dn/mul", (0, 2)), dealer_free=True)
    assert_caught(r, 3, {"degree-reduction", "peer-abort"})
    assert any(r.error_at(p).check == "degree-reduction" for p in r.honest(3))  # type: ignore[attr-defined]


@pytest.mark.parametrize("label", ["bit-square", "bit-open"])
def test_deviation_in_bit_generation_is_caught(label: str) -> None:
    r = run(N3, cheater=1, tamper=add_to_first(label, 1), dealer_free=True)
    assert_caught(r, 1, {"bit-square", "bits", "opening-consistency", "peer-abort"})


def test_wrong_input_mask_share_sent_to_its_owner_is_caught() -> None:
    """Only the owner sees the shares of its mask: it stops (a node then sends its peers an abort
    notice; the in-process hub has none, so the other honest party is left waiting — and never
    reaches the outputs either)."""
    r = run(N3, cheater=2, tamper=add_to_first("mask/0", 1), dealer_free=True, timeout=30.0)
    err = r.error_at(0)
    assert isinstance(err, MacCheckError) and err.check == "input-mask-consistency", err
    for p in r.honest(2):
        assert not any("output" in label_of(t) for t in r.sent[p]), f"party {p} started delivering outputs"
        assert not hasattr(r.outcomes[p], "delivered")
