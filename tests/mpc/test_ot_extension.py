"""OT extension (IKNP + KOS, :mod:`pqmpc_node.mpc.ot.extension`) between honest parties.

Over an in-process channel with ideal base OTs (the test draws the seed pairs and hands
the sender the seeds its Δ selects): the receiver gets exactly m_{x_j} and never the other
message, over ~100k OTs in several calls and chunks; the hash breaks the sender's
correlation (m0 ⊕ m1 is not Δ, not even constant); outputs are fresh across calls and
balanced bit by bit. Also the pieces: the bit-matrix transpose against numpy's
unpackbits/packbits, the GCM field and GHASH-based polynomial hash against SP 800-38D, and
the TCCR hash against its definition.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pqmpc_node.mpc.channel import InProcessHub
from pqmpc_node.mpc.ot.bits import columns_to_rows, rows_to_columns, transpose
from pqmpc_node.mpc.ot.extension import (
    KAPPA, OtExtensionReceiver, OtExtensionSender, OtMessageError, delta_bits, padded_rows, xor_rows,
)
from pqmpc_node.mpc.ot.ghash import gf128_mul, hash_key, poly_hash
from pqmpc_node.mpc.ot.tccr import TCCR_KEY, tccr_hash


def ideal_base_ots(seed: int, context: bytes = b"test", **kw: Any) -> tuple[OtExtensionSender, OtExtensionReceiver, bytes]:
    """A sender and a receiver as ideal base OTs would leave them (the receiver was the base-OT sender)."""
    rnd = random.Random(seed)
    delta = rnd.randbytes(16)
    pairs = [(rnd.randbytes(32), rnd.randbytes(32)) for _ in range(KAPPA)]
    chosen = [pair[bit] for pair, bit in zip(pairs, delta_bits(delta), strict=True)]
    return (OtExtensionSender(delta, chosen, context=context, **kw),
            OtExtensionReceiver(pairs, context=context, **kw), delta)


async def run_extend(sender: OtExtensionSender, receiver: OtExtensionReceiver, tag: str,
                     choices: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    hub = InProcessHub(2)
    (m0, m1), mx = await asyncio.gather(sender.extend(hub.channel(0), 1, tag, len(choices)),
                                        receiver.extend(hub.channel(1), 0, tag, choices))
    return m0, m1, mx


def random_choices(rng: np.random.Generator, n: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
    return rng.integers(0, 2, n).astype(np.bool_)


# ---------------------------------------------------------------- the transpose

def reference_columns_to_rows(columns: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.packbits(np.unpackbits(columns, axis=1, bitorder="little").T, axis=1, bitorder="little")


@pytest.mark.parametrize("n", [8, 64, 128, 136, 1000 * 8, (1 << 14) + 8])
def test_transpose_matches_unpackbits(n: int) -> None:
    rng = np.random.default_rng(n)
    columns = rng.integers(0, 256, (KAPPA, n // 8), dtype=np.uint8)
    rows = columns_to_rows(columns)
    assert rows.shape == (n, 16)
    assert np.array_equal(rows, reference_columns_to_rows(columns))
    back = rows_to_columns(rows)
    assert back.shape == columns.shape and np.array_equal(back, columns)
    assert np.array_equal(transpose(columns), rows) and np.array_equal(transpose(rows), columns)


def test_transpose_of_a_square_matrix_is_an_involution() -> None:
    m = np.random.default_rng(1).integers(0, 256, (KAPPA, 16), dtype=np.uint8)
    assert np.array_equal(transpose(m), reference_columns_to_rows(m))
    assert np.array_equal(transpose(transpose(m)), m)
    ones = np.zeros((KAPPA, 16), dtype=np.uint8)
    ones[3, 0] = 1 << 5  # entry (row 5, column 3)
    t = transpose(ones)
    assert t[5, 0] == 1 << 3 and np.count_nonzero(t) == 1


@pytest.mark.parametrize("shape", [(127, 16), (KAPPA, 16, 1)])
def test_transpose_refuses_other_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        transpose(np.zeros(shape, dtype=np.uint8))


# ---------------------------------------------------------------- GF(2^128), GHASH, TCCR

def test_gf128_mul_matches_gcm_test_case_2() -> None:
    """McGrew-Viega GCM test case 2 (key 0, IV 0, one zero block): GHASH(H, {}, C) by Algorithm 1."""
    h = int("66e94bd4ef8a2c3b884cfa59ca342b2e", 16)
    c = int("0388dace60b6a392f328c2b971b2fe78", 16)
    length = (0 << 64) | 128
    assert gf128_mul(gf128_mul(c, h) ^ length, h) == int("f38cbb1ad69223dcc3457ae5b6b0f885", 16)
    one = 1 << 127
    assert gf128_mul(one, h) == h and gf128_mul(h, one) == h and gf128_mul(0, h) == 0


def test_poly_hash_is_the_power_sum() -> None:
    rnd = random.Random(7)
    challenge = rnd.randbytes(28)
    h = hash_key(challenge)
    blocks = [rnd.getrandbits(128) for _ in range(9)]
    expected, power = 0, gf128_mul(h, h)  # the last block gets H^2
    for b in reversed(blocks):
        expected ^= gf128_mul(b, power)
        power = gf128_mul(power, h)
    data = b"".join(b.to_bytes(16, "big") for b in blocks)
    assert poly_hash(challenge, data) == expected
    assert poly_hash(challenge, bytes(16 * 9)) == 0  # linear: the length block and E_K(J0) are removed
    with pytest.raises(ValueError):
        poly_hash(challenge, bytes(15))


def test_tccr_is_pi_of_pi_xor_tweak_xor_pi() -> None:
    rows = np.random.default_rng(3).integers(0, 256, (5, 16), dtype=np.uint8)
    out = tccr_hash(rows, 1000, 77)

    def pi(block: bytes) -> bytes:
        enc = Cipher(algorithms.AES(TCCR_KEY), modes.ECB()).encryptor()
        return enc.update(block) + enc.finalize()

    for j in range(5):
        px = pi(rows[j].tobytes())
        tweaked = (int.from_bytes(px, "little") ^ (77 << 64 | (1000 + j))).to_bytes(16, "little")
        assert out[j].tobytes() == bytes(a ^ b for a, b in zip(pi(tweaked), px, strict=True))


def test_xor_rows_matches_broadcast() -> None:
    for m in (1, 255, 256, 1000):
        rows = np.random.default_rng(m).integers(0, 256, (m, 16), dtype=np.uint8)
        value = bytes(range(16))
        assert np.array_equal(xor_rows(rows, value), rows ^ np.frombuffer(value, dtype=np.uint8))


# ---------------------------------------------------------------- the extension

def test_delta_bits_are_lsb_first() -> None:
    bits = delta_bits(bytes([0b0000_0101, 0x80]) + bytes(14))
    assert [i for i, b in enumerate(bits) if b] == [0, 2, 15]
    with pytest.raises(ValueError):
        delta_bits(bytes(15))


async def test_receiver_gets_exactly_the_chosen_message_over_many_calls() -> None:
    sender, receiver, delta = ideal_base_ots(1, chunk_rows=1 << 15)  # small chunks: several checks per call
    rng = np.random.default_rng(1)
    sizes = [1, 7, 1000, 40_000, 59_000]  # ~100k OTs, one call spanning two chunks
    all0, all1 = [], []
    for k, size in enumerate(sizes):
        x = random_choices(rng, size)
        m0, m1, mx = await run_extend(sender, receiver, f"call{k}", x)
        assert m0.shape == m1.shape == mx.shape == (size, 2) and mx.dtype == np.uint64
        chosen = np.where(x[:, None], m1, m0)
        other = np.where(x[:, None], m0, m1)
        assert np.array_equal(mx, chosen)
        assert np.all(np.any(mx != other, axis=1))
        all0.append(m0)
        all1.append(m1)
    assert sender.extended == receiver.extended == sum(sizes)
    m0, m1 = np.concatenate(all0), np.concatenate(all1)
    # the hash breaks the correlation: m0 ⊕ m1 is neither Δ nor any constant
    diff = m0 ^ m1
    assert len({d.tobytes() for d in diff}) == len(diff)
    assert not np.any(np.all(diff == np.frombuffer(delta, dtype=np.uint64), axis=1))
    # fresh outputs: no 128-bit message repeats, within or across calls
    messages = np.concatenate([m0, m1])
    assert len(np.unique(messages.view(np.dtype((np.void, 16))))) == len(messages)


async def test_outputs_are_balanced_bit_by_bit() -> None:
    sender, receiver, _ = ideal_base_ots(2)
    n = 100_000
    m0, m1, mx = await run_extend(sender, receiver, "bal", random_choices(np.random.default_rng(2), n))
    for msgs in (m0, m1, mx):
        bits = np.unpackbits(msgs.view(np.uint8), axis=1)  # (n, 128)
        ones = bits.mean(axis=0)
        sigma = 0.5 / np.sqrt(n)
        assert np.all(np.abs(ones - 0.5) < 6 * sigma), ones  # each of the 128 positions
        assert abs(bits.mean() - 0.5) < 6 * sigma / np.sqrt(KAPPA)


@pytest.mark.parametrize("choice", [0, 1])
async def test_constant_choice_vectors_pass(choice: int) -> None:
    sender, receiver, _ = ideal_base_ots(3)
    x = np.full(5000, choice, dtype=np.uint8)
    m0, m1, mx = await run_extend(sender, receiver, "const", x)
    assert np.array_equal(mx, m1 if choice else m0)
    assert np.all(np.any(mx != (m0 if choice else m1), axis=1))


async def test_empty_request_is_a_no_op() -> None:
    sender, receiver, _ = ideal_base_ots(4)
    m0, m1, mx = await run_extend(sender, receiver, "empty", np.zeros(0, dtype=np.bool_))
    assert m0.shape == m1.shape == mx.shape == (0, 2)


async def test_context_separates_instances_with_the_same_seeds() -> None:
    s1, r1, _ = ideal_base_ots(5, context=b"session-a/0-1")
    s2, r2, _ = ideal_base_ots(5, context=b"session-b/0-1")
    x = random_choices(np.random.default_rng(5), 1000)
    a0, _, ax = await run_extend(s1, r1, "t", x)
    b0, _, bx = await run_extend(s2, r2, "t", x)
    assert not np.any(np.all(a0 == b0, axis=1)) and not np.any(np.all(ax == bx, axis=1))


async def test_mismatched_counts_are_refused_and_break_the_instance() -> None:
    sender, receiver, _ = ideal_base_ots(6)
    hub = InProcessHub(2)
    receiving = asyncio.ensure_future(receiver.extend(hub.channel(1), 0, "t", np.zeros(100, dtype=np.bool_)))
    with pytest.raises(OtMessageError) as caught:
        await sender.extend(hub.channel(0), 1, "t", 99)
    assert caught.value.blamed_parties == (1,)
    receiving.cancel()
    await asyncio.gather(receiving, return_exceptions=True)
    with pytest.raises(RuntimeError, match="failed earlier"):
        await sender.extend(hub.channel(0), 1, "t2", 10)


def test_private_values_stay_out_of_repr() -> None:
    rnd = random.Random(8)
    delta = rnd.randbytes(16)
    pairs = [(rnd.randbytes(32), rnd.randbytes(32)) for _ in range(KAPPA)]
    chosen = [pair[bit] for pair, bit in zip(pairs, delta_bits(delta), strict=True)]
    shown = repr(OtExtensionSender(delta, chosen, context=b"c")) + repr(OtExtensionReceiver(pairs, context=b"c"))
    for secret in [delta, pairs[0][0], pairs[0][1]]:
        assert secret.hex() not in shown and repr(secret) not in shown
    assert "extended=0" in shown


def test_constructors_check_their_inputs() -> None:
    seeds = [bytes([i]) * 32 for i in range(KAPPA)]
    with pytest.raises(ValueError, match="Δ = 0"):
        OtExtensionSender(bytes(16), seeds, context=b"c")
    with pytest.raises(ValueError, match="128 base-OT seeds"):
        OtExtensionSender(b"\x01" * 16, seeds[:-1], context=b"c")
    with pytest.raises(ValueError, match="32"):
        OtExtensionSender(b"\x01" * 16, [b"short"] + seeds[1:], context=b"c")
    with pytest.raises(ValueError, match="equal seeds"):
        OtExtensionReceiver([(s, s) for s in seeds], context=b"c")
    with pytest.raises(ValueError, match="chunk_rows"):
        OtExtensionSender(b"\x01" * 16, seeds, context=b"c", chunk_rows=0)


async def test_choices_must_be_bits() -> None:
    _, receiver, _ = ideal_base_ots(9)
    with pytest.raises(ValueError, match="0/1"):
        await receiver.extend(InProcessHub(2).channel(1), 0, "t", np.array([0, 2]))


def test_padding_is_at_least_kappa_plus_40_rows() -> None:
    for m in (1, 127, 128, 1000, 1 << 20):
        n = padded_rows(m)
        assert n % KAPPA == 0 and n - m >= KAPPA + 40

