"""Base OT from ML-KEM-768 (Masny-Rindal endemic OT): correctness over real in-process
channels, the receiver's message (canonical FIPS 203 keys, the chosen and the random key
alike uniform), context binding, and the checks on local arguments."""

from __future__ import annotations

import asyncio
import secrets

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem
from scipy import stats

from pqmpc_node.mpc.channel import InProcessHub
from pqmpc_node.mpc.ot import base as B

Q = 3329


def random_choices(count: int) -> list[bool]:
    return [secrets.randbits(1) == 1 for _ in range(count)]


def unpack_key(key: bytes) -> list[int]:
    """FIPS 203 ByteDecode_12 of ``t`` written out bit by bit (independent of the module's numpy code)."""
    bits = int.from_bytes(key[:1152], "little")
    return [(bits >> (12 * j)) & 0xFFF for j in range(768)]


async def run_pair(choices: list[bool], *, send_context: bytes, receive_context: bytes,
                   tag: str = "base-ot") -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    hub = InProcessHub(2)
    sent, received = await asyncio.gather(
        B.base_ot_send(hub.channel(0), 1, tag, len(choices), context=send_context),
        B.base_ot_receive(hub.channel(1), 0, tag, choices, context=receive_context),
    )
    return sent, received


async def test_receiver_learns_exactly_its_choice() -> None:
    choices = random_choices(300)
    sent, received = await run_pair(choices, send_context=b"s|0->1", receive_context=b"s|0->1")
    assert len(sent) == len(received) == 300
    for c, (m0, m1), mc in zip(choices, sent, received, strict=True):
        assert len(m0) == len(m1) == len(mc) == B.OUTPUT_BYTES
        assert mc == (m1 if c else m0)
        assert mc != (m0 if c else m1)
    assert len({m for pair in sent for m in pair}) == 600  # all sender outputs distinct


async def test_every_ordered_pair_at_once() -> None:
    """Three parties, each ordered pair runs its base OTs concurrently on one hub, tags kept apart."""
    hub = InProcessHub(3)
    pairs = [(s, r) for s in range(3) for r in range(3) if s != r]
    choices = {p: random_choices(B.BASE_OT_COUNT) for p in pairs}

    def context(s: int, r: int) -> bytes:
        return f"session-7|{s}->{r}".encode()

    sent, received = await asyncio.gather(
        asyncio.gather(*(B.base_ot_send(hub.channel(s), r, f"bot/{s}-{r}", B.BASE_OT_COUNT, context=context(s, r))
                         for s, r in pairs)),
        asyncio.gather(*(B.base_ot_receive(hub.channel(r), s, f"bot/{s}-{r}", choices[(s, r)], context=context(s, r))
                         for s, r in pairs)),
    )
    for p, pair_sent, pair_received in zip(pairs, sent, received, strict=True):
        assert pair_received == [m[int(c)] for m, c in zip(pair_sent, choices[p], strict=True)]


async def test_outputs_are_bound_to_the_context() -> None:
    """Mismatched contexts (another session, or the pair reversed) agree on nothing."""
    choices = random_choices(64)
    sent, received = await run_pair(choices, send_context=b"session-a|0->1", receive_context=b"session-a|1->0")
    assert all(mc not in pair for pair, mc in zip(sent, received, strict=True))


def test_contexts_change_outputs_for_the_same_message() -> None:
    """The same receiver message answered under two contexts: different keys, different outputs."""
    state, message = B.receiver_start(random_choices(16), context=b"A")
    sent_a, reply_a = B.sender_respond(message, 16, context=b"A", peer=1)
    sent_b, _ = B.sender_respond(message, 16, context=b"B", peer=1)
    received = B.receiver_finish(state, reply_a, peer=0)
    assert received == [pair[int(c)] for pair, c in zip(sent_a, state.choices, strict=True)]
    assert all(mc not in pair for pair, mc in zip(sent_b, received, strict=True))
    assert not set(m for p in sent_a for m in p) & set(m for p in sent_b for m in p)


def test_receiver_message_is_canonical_ml_kem_keys() -> None:
    """Both keys of every OT are canonical ML-KEM-768 encapsulation keys (pyca's FIPS 203 check accepts them)."""
    count = 40
    _, message = B.receiver_start(random_choices(count), context=b"canon")
    assert len(message) == count * 2 * B.KEY_BYTES == count * 2 * 1184
    for k in range(2 * count):
        key = message[k * B.KEY_BYTES:(k + 1) * B.KEY_BYTES]
        assert max(unpack_key(key)) < Q
        assert mlkem.MLKEM768PublicKey.from_public_bytes(key).public_bytes_raw() == key


def test_chosen_and_random_keys_look_alike() -> None:
    """With every choice 0 (then 1), position c holds the shifted real key and 1-c the random one:
    both positions' coefficients are uniform on Z_q (chi-square, mean) and their rho bytes uniform.

    False-failure rate per check is below 1e-6."""
    count = 256
    for choice in (False, True):
        _, message = B.receiver_start([choice] * count, context=b"uniform")
        keys = np.frombuffer(message, dtype=np.uint8).reshape(count, 2, B.KEY_BYTES)
        for position in (0, 1):
            coeffs = np.array([unpack_key(keys[i, position].tobytes()) for i in range(count)]).ravel()
            assert coeffs.max() < Q
            # 32 bins over [0, q): expected counts from the exact bin widths
            edges = np.linspace(0, Q, 33).astype(int)
            observed = np.histogram(coeffs, bins=edges)[0]
            expected = np.diff(edges) / Q * coeffs.size
            chi2 = float(((observed - expected) ** 2 / expected).sum())
            assert stats.chi2.sf(chi2, df=31) > 1e-6, (choice, position, chi2)
            sd = Q / np.sqrt(12) / np.sqrt(coeffs.size)
            assert abs(coeffs.mean() - (Q - 1) / 2) < 5 * sd, (choice, position, coeffs.mean())
            rho = keys[:, position, 1152:].ravel()
            rho_chi2 = float(((np.bincount(rho, minlength=256) - rho.size / 256) ** 2 / (rho.size / 256)).sum())
            assert stats.chi2.sf(rho_chi2, df=255) > 1e-6, (choice, position, rho_chi2)
        # and the two positions against each other (two-sample chi-square on the same bins)
        both = [np.histogram(np.array([unpack_key(keys[i, p].tobytes()) for i in range(count)]).ravel(),
                             bins=np.linspace(0, Q, 33).astype(int))[0] for p in (0, 1)]
        _, p_value, _, _ = stats.chi2_contingency(np.array(both))
        assert p_value > 1e-6


def test_the_chosen_key_is_not_the_real_key() -> None:
    """The message never carries the receiver's actual encapsulation key (it is shifted by H)."""
    state, message = B.receiver_start([True, False, True], context=b"shift")
    real = {k.public_key().public_bytes_raw() for k in state.keys}
    sent = {message[k * B.KEY_BYTES:(k + 1) * B.KEY_BYTES] for k in range(6)}
    assert not real & sent
    # but the rho of the chosen key is the real key's (only t is shifted)
    for i, (c, key) in enumerate(zip(state.choices, state.keys, strict=True)):
        start = (2 * i + int(c)) * B.KEY_BYTES
        assert message[start + 1152:start + B.KEY_BYTES] == key.public_key().public_bytes_raw()[1152:]


def test_receiver_state_hides_its_secrets() -> None:
    state, _ = B.receiver_start([True, False, True, True], context=b"secret-ctx")
    shown = repr(state) + str(state)
    assert "count=4" in shown
    assert "True" not in shown and "False" not in shown and "secret-ctx" not in shown
    assert "MLKEM" not in shown


@pytest.mark.parametrize("choices", [[], [2], ["yes"], [0.0]])
def test_bad_choices_are_refused(choices: list[object]) -> None:
    with pytest.raises(ValueError, match="choice"):
        B.receiver_start(choices, context=b"x")  # type: ignore[arg-type]


def test_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        B.sender_respond(b"", 0, context=b"x", peer=1)


def test_choices_as_ints_are_accepted() -> None:
    state, message = B.receiver_start([0, 1], context=b"ints")  # type: ignore[list-item]
    sent, reply = B.sender_respond(message, 2, context=b"ints", peer=1)
    assert B.receiver_finish(state, reply, peer=0) == [sent[0][0], sent[1][1]]
