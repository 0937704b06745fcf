"""Post-quantum base oblivious transfer: Masny-Rindal endemic OT from ML-KEM-768.

The construction is the KEM-based OT of Masny and Rindal, "Endemic Oblivious Transfer"
(ACM CCS 2019, ePrint 2019/706; the figure "OT from a KEM with a group structure on
public keys", which libOTe instantiates with Kyber as ``MasnyRindalKyber``), here with
ML-KEM-768 from FIPS 203 through pyca/cryptography. One call runs ``count`` random
1-out-of-2 OTs in one message each way.

Group on public keys. An ML-KEM-768 encapsulation key is ``ek = ByteEncode12(t) || rho``
(FIPS 203, Alg. 13): ``t`` is 3 x 256 = 768 NTT-domain coefficients mod q = 3329 (1152
bytes), ``rho`` the 32-byte seed of the matrix A. Under MLWE, ``t`` is pseudo-random in
Z_q^768. The group acts on ``t`` by coefficient-wise addition mod q; ``rho`` is carried
along. ``H(i, b, r)`` maps a key to Z_q^768: SHAKE-256 over the session context, the OT
index ``i``, the position ``b`` and the key's bytes, parsed 12 bits at a time with
rejection of values >= q (as FIPS 203 SampleNTT, Alg. 7), so its output is uniform.

Steps, for OT ``i`` with receiver choice ``c``:

1. Receiver: ``(ek, dk) = ML-KEM.KeyGen()``; ``r_{1-c}`` = uniform ``t`` and uniform
   ``rho``; ``r_c = ek - H(i, c, r_{1-c})`` on ``t`` (``rho`` of ``ek``). Sends
   ``(r_0, r_1)`` in encapsulation-key encoding.
2. Sender: checks both keys are canonical (every coefficient < q, exact length);
   ``pk_b = r_b + H(i, b, r_{1-b})``; ``(K_b, ct_b) = ML-KEM.Encaps(pk_b)``; sends
   ``(ct_0, ct_1)``; outputs ``m_b = KDF(transcript, i, b, K_b)``.
3. Receiver: checks the ciphertext lengths; ``K_c = ML-KEM.Decaps(dk, ct_c)``; outputs
   ``m_c = KDF(transcript, i, c, K_c)``.

``transcript`` is SHA3-256 over the context (which binds the session and the ordered
pair of parties) and both messages, so outputs of one run are useless in another.

Security (static corruption, random-oracle H and KDF, MLWE for ML-KEM-768):

* Receiver privacy: ``r_{1-c}`` is uniform; ``r_c = ek - H(...)`` is ``ek`` shifted by a
  random-oracle value, and ``ek``'s ``t`` is pseudo-random under MLWE, so the pair looks
  the same for either choice (and ``rho`` is uniform in both positions).
* Sender privacy: for the receiver to know decapsulation keys for both ``pk_0`` and
  ``pk_1`` it would have to fix ``r_0, r_1`` so that both sums, each depending on the
  other key through H, are keys it generated: a random-oracle fixed point, infeasible.
  ML-KEM's IND-CCA security then hides ``K_{1-c}``. ``H`` is also separated by position
  (defence in depth), so ``r_0 = r_1`` does not even make ``pk_0 = pk_1``.
* Endemic, not uniform, OT: a corrupt party may influence its own outputs (a corrupt
  sender picks its encapsulation randomness, a corrupt receiver its keys). That is what
  OT-extension seeds need (IKNP/KOS use base-OT outputs only as PRG seeds); it is not a
  chosen-message OT.
* A malformed message (wrong length, a coefficient >= q) names its sender
  (:class:`BaseOtError`). A well-formed but wrong ciphertext is accepted: by ML-KEM's
  implicit rejection it decapsulates to an unrelated secret, and since the outputs bind
  the whole transcript, a sender that computes its outputs over the reply it sent has
  chosen, for that one position, an output it does not know itself. In endemic OT that is
  a corrupt sender choosing its outputs, but it is *selective*: the receiver's output
  changes only if its choice bit is that position. Here the choices are the extension
  sender's Delta, and the first KOS check fails exactly when the bit was hit, so the
  cheater learns a bit of Delta at the price of a 1/2 chance of being caught: the same
  leak the KOS check allows for an inconsistent column (:mod:`.extension`, "Why the
  check"), within its bound (pinned by ``tests/adversary/test_review_ot_base_selective.py``).
  This module cannot notice it; the extension's check does.

Level: ML-KEM-768, NIST category 3 (about AES-192 against classical and quantum
attacks); outputs are 32 bytes. Randomness is the OS CSPRNG (``os.urandom``) and
OpenSSL's for ML-KEM key generation and encapsulation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric import mlkem

from pqmpc_node.mpc.channel import Channel
from pqmpc_node.mpc.errors import BlamedCheckError

__all__ = [
    "BASE_OT_COUNT",
    "BaseOtError",
    "CIPHERTEXT_BYTES",
    "KEY_BYTES",
    "OUTPUT_BYTES",
    "Q",
    "ReceiverState",
    "base_ot_receive",
    "base_ot_send",
    "receiver_finish",
    "receiver_start",
    "sender_respond",
]

BASE_OT_COUNT = 128
"""Base OTs per ordered pair: one per bit of the OT-extension security parameter."""

Q = 3329
"""The ML-KEM modulus q."""
COEFFICIENTS = 3 * 256
"""Coefficients of ``t`` in an ML-KEM-768 encapsulation key (k = 3 polynomials)."""
T_BYTES = COEFFICIENTS * 12 // 8
RHO_BYTES = 32
KEY_BYTES = T_BYTES + RHO_BYTES
"""An ML-KEM-768 encapsulation key: 1184 bytes."""
CIPHERTEXT_BYTES = 1088
"""An ML-KEM-768 ciphertext."""
OUTPUT_BYTES = 32

_LABEL = b"pqmpc/base-ot/masny-rindal/ml-kem-768/v1"
# SHAKE output for H: 12 bits a candidate, accepted with probability q/4096 ~ 0.81, so
# 1152 candidates give 936 accepted on average; fewer than 768 is ~12 standard deviations
# out, and then _xof_to_zq squeezes more (the XOF's longer output extends the shorter).
_SAMPLE_BYTES = 1728

Coefficients = npt.NDArray[np.uint16]


class BaseOtError(BlamedCheckError):
    """A base-OT message from ``peer`` is malformed (wrong length, a non-canonical key); abort and blame it."""

    def __init__(self, detail: str, *, peer: int, labels: Sequence[str] = ()) -> None:
        super().__init__("base-ot", list(labels), detail, blamed_parties=[peer])
        self.peer = peer
        self.detail = detail


@dataclass(frozen=True)
class ReceiverState:
    """What the receiver keeps between its message and the sender's reply (secret: not shown in repr)."""

    context: bytes = field(repr=False)
    choices: tuple[bool, ...] = field(repr=False)
    keys: tuple[mlkem.MLKEM768PrivateKey, ...] = field(repr=False)
    message: bytes = field(repr=False)

    @property
    def count(self) -> int:
        """Number of OTs in this batch."""
        return len(self.choices)

    def __repr__(self) -> str:
        return f"ReceiverState(count={self.count}, <secret choices and keys hidden>)"


# --- key encoding and the group (pure, vectorized over a batch) -------------------------

def _unpack12(packed: npt.NDArray[np.uint8]) -> Coefficients:
    """12-bit little-endian values, two per 3 bytes (FIPS 203 ByteDecode_12 without the
    reduction, Alg. 6, and SampleNTT's parse, Alg. 7): ``(..., 3m)`` bytes -> ``(..., 2m)``."""
    lead = packed.shape[:-1]
    b = packed.reshape(*lead, -1, 3).astype(np.uint16)
    out = np.empty((*b.shape[:-1], 2), dtype=np.uint16)
    out[..., 0] = b[..., 0] | ((b[..., 1] & 0x0F) << 8)
    out[..., 1] = (b[..., 1] >> 4) | (b[..., 2] << 4)
    return out.reshape(*lead, -1)


def _pack12(values: Coefficients) -> npt.NDArray[np.uint8]:
    """ByteEncode_12 (FIPS 203 Alg. 5), the inverse of :func:`_unpack12`: ``(..., 2m)`` -> ``(..., 3m)`` bytes."""
    lead = values.shape[:-1]
    a = values.reshape(*lead, -1, 2)
    out = np.empty((*a.shape[:-1], 3), dtype=np.uint8)
    out[..., 0] = a[..., 0] & 0xFF
    out[..., 1] = (a[..., 0] >> 8) | ((a[..., 1] & 0x0F) << 4)
    out[..., 2] = a[..., 1] >> 4
    return out.reshape(*lead, -1)


def _xof_to_zq(inputs: list[bytes]) -> Coefficients:
    """SHAKE-256 of each input as a uniform vector in Z_q^768, rejection-sampled as in SampleNTT.

    Returns shape ``(len(inputs), 768)``.
    """
    length = _SAMPLE_BYTES
    while True:
        raw = np.frombuffer(b"".join(hashlib.shake_256(x).digest(length) for x in inputs), dtype=np.uint8)
        candidates = _unpack12(raw.reshape(len(inputs), length))
        accepted = candidates < Q
        if bool((accepted.sum(axis=1) >= COEFFICIENTS).all()):
            keep = accepted & (np.cumsum(accepted, axis=1, dtype=np.int32) <= COEFFICIENTS)
            return candidates[keep].reshape(len(inputs), COEFFICIENTS)
        length *= 2  # a longer XOF output extends the shorter one: same values, more of them


def _context_digest(context: bytes) -> bytes:
    return hashlib.sha3_256(_LABEL + b"/context" + len(context).to_bytes(8, "big") + context).digest()


def _hash_keys(ctx: bytes, items: Sequence[tuple[int, int, bytes]]) -> Coefficients:
    """``H(i, b, r)`` for each ``(i, b, r)``: OT index, the position of the key it shifts, the other key."""
    prefix = _LABEL + b"/H" + ctx
    return _xof_to_zq([prefix + i.to_bytes(4, "big") + bytes([b]) + key for i, b, key in items])


def _transcript(ctx: bytes, message: bytes, reply: bytes) -> bytes:
    h = hashlib.sha3_256(_LABEL + b"/transcript" + ctx)
    h.update(len(message).to_bytes(8, "big"))
    h.update(message)
    h.update(reply)
    return h.digest()


def _output(transcript: bytes, index: int, position: int, shared_secret: bytes) -> bytes:
    """``m_b = KDF(transcript, i, b, K_b)``: SHA3-256, 32 bytes."""
    return hashlib.sha3_256(_LABEL + b"/output" + transcript + index.to_bytes(4, "big")
                            + bytes([position]) + shared_secret).digest()


def _check_choices(choices: Sequence[bool]) -> tuple[bool, ...]:
    if len(choices) == 0:
        raise ValueError("base OT needs at least one choice bit, got none")
    out = []
    for i, c in enumerate(choices):
        if c not in (0, 1) or isinstance(c, float):
            raise ValueError(f"choice {i} is {c!r}; choices are bools (or 0/1)")
        out.append(bool(c))
    return tuple(out)


# --- the three pure steps ---------------------------------------------------------------

def receiver_start(choices: Sequence[bool], *, context: bytes) -> tuple[ReceiverState, bytes]:
    """Step 1: the receiver's keys and its message ``(r_0, r_1)`` per OT, for the sender."""
    bits = _check_choices(choices)
    count = len(bits)
    ctx = _context_digest(context)
    keys = tuple(mlkem.MLKEM768PrivateKey.generate() for _ in range(count))
    ek = np.frombuffer(b"".join(k.public_key().public_bytes_raw() for k in keys),
                       dtype=np.uint8).reshape(count, KEY_BYTES)
    # r_{1-c}: uniform t (SHAKE of a fresh 32-byte seed, rejection-sampled) and uniform rho
    other_t = _xof_to_zq([_LABEL + b"/random-key" + os.urandom(32) for _ in range(count)])
    other = np.empty((count, KEY_BYTES), dtype=np.uint8)
    other[:, :T_BYTES] = _pack12(other_t)
    other[:, T_BYTES:] = np.frombuffer(os.urandom(RHO_BYTES * count), dtype=np.uint8).reshape(count, RHO_BYTES)
    chosen_pos = [int(c) for c in bits]
    shift = _hash_keys(ctx, [(i, c, other[i].tobytes()) for i, c in enumerate(chosen_pos)])
    chosen_t = (_unpack12(ek[:, :T_BYTES]).astype(np.int32) - shift) % Q
    chosen = np.empty_like(other)
    chosen[:, :T_BYTES] = _pack12(chosen_t.astype(np.uint16))
    chosen[:, T_BYTES:] = ek[:, T_BYTES:]
    pair = np.empty((count, 2, KEY_BYTES), dtype=np.uint8)
    c = np.array(chosen_pos)
    rows = np.arange(count)
    pair[rows, c] = chosen
    pair[rows, 1 - c] = other
    message = pair.tobytes()
    return ReceiverState(context=context, choices=bits, keys=keys, message=message), message


def sender_respond(message: bytes, count: int, *, context: bytes, peer: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Step 2: check the receiver ``peer``'s message, encapsulate to both keys of each OT.

    Returns the sender's outputs ``(m_0, m_1)`` per OT and its reply. Raises
    :class:`BaseOtError` blaming ``peer`` for a message of the wrong length or a key with a
    coefficient >= q.
    """
    if count < 1:
        raise ValueError(f"base OT count must be at least 1, got {count}")
    expected = count * 2 * KEY_BYTES
    if len(message) != expected:
        raise BaseOtError(
            f"party {peer}'s base-OT receiver message is {len(message)} bytes, expected {expected} "
            f"({count} OTs x 2 ML-KEM-768 encapsulation keys of {KEY_BYTES} bytes)", peer=peer)
    pair = np.frombuffer(message, dtype=np.uint8).reshape(count, 2, KEY_BYTES)
    t = _unpack12(pair[:, :, :T_BYTES])
    bad = np.argwhere(t >= Q)
    if bad.size:
        i, b, j = (int(v) for v in bad[0])
        raise BaseOtError(
            f"party {peer}'s base-OT receiver message is not canonical: OT {i}, key r_{b}, coefficient {j} "
            f"is {int(t[i, b, j])}, not < q = {Q} ({len(bad)} such coefficients in all)", peer=peer)
    ctx = _context_digest(context)
    keys = [pair[i, b].tobytes() for i in range(count) for b in (0, 1)]
    # pk_b = r_b + H(i, b, r_{1-b}); row 2i+b of the flattened batch is (i, b)
    shift = _hash_keys(ctx, [(i, b, keys[2 * i + 1 - b]) for i in range(count) for b in (0, 1)])
    pk_t = (t.reshape(2 * count, COEFFICIENTS).astype(np.int32) + shift) % Q
    pk = np.empty((2 * count, KEY_BYTES), dtype=np.uint8)
    pk[:, :T_BYTES] = _pack12(pk_t.astype(np.uint16))
    pk[:, T_BYTES:] = pair.reshape(2 * count, KEY_BYTES)[:, T_BYTES:]
    shared_secrets: list[bytes] = []
    ciphertexts: list[bytes] = []
    for row in pk:
        shared, ct = mlkem.MLKEM768PublicKey.from_public_bytes(row.tobytes()).encapsulate()
        shared_secrets.append(shared)
        ciphertexts.append(ct)
    reply = b"".join(ciphertexts)
    transcript = _transcript(ctx, message, reply)
    outputs = [(_output(transcript, i, 0, shared_secrets[2 * i]), _output(transcript, i, 1, shared_secrets[2 * i + 1]))
               for i in range(count)]
    return outputs, reply


def receiver_finish(state: ReceiverState, reply: bytes, *, peer: int) -> list[bytes]:
    """Step 3: decapsulate the chosen ciphertext of each OT; the receiver's outputs ``m_{c_i}``.

    Raises :class:`BaseOtError` blaming the sender ``peer`` for a reply of the wrong length.
    A wrong ciphertext of the right length is not detected here (ML-KEM's implicit
    rejection yields an unrelated secret, so the output of that OT, if chosen, differs
    from the sender's); the OT-extension check catches it, but only when the choice bit
    hit the wrong ciphertext (a selective failure; module docstring).
    """
    expected = state.count * 2 * CIPHERTEXT_BYTES
    if len(reply) != expected:
        raise BaseOtError(
            f"party {peer}'s base-OT sender reply is {len(reply)} bytes, expected {expected} "
            f"({state.count} OTs x 2 ML-KEM-768 ciphertexts of {CIPHERTEXT_BYTES} bytes)", peer=peer)
    transcript = _transcript(_context_digest(state.context), state.message, reply)
    outputs = []
    for i, (c, key) in enumerate(zip(state.choices, state.keys, strict=True)):
        start = (2 * i + int(c)) * CIPHERTEXT_BYTES
        shared = key.decapsulate(reply[start:start + CIPHERTEXT_BYTES])
        outputs.append(_output(transcript, i, int(c), shared))
    return outputs


# --- thin async shells ------------------------------------------------------------------

async def base_ot_send(channel: Channel, peer: int, tag: str, count: int, *,
                       context: bytes) -> list[tuple[bytes, bytes]]:
    """Run ``count`` base OTs as the sender with receiver ``peer``; its ``(m_0, m_1)`` pairs.

    Messages: the receiver's keys on ``{tag}/r``, this party's ciphertexts on ``{tag}/s``.
    """
    message = (await channel.receive_many(f"{tag}/r", [peer]))[peer]
    try:
        outputs, reply = sender_respond(message, count, context=context, peer=peer)
    except BaseOtError as exc:
        raise BaseOtError(exc.detail, peer=peer, labels=[f"{tag}/r"]) from None
    await channel.send_many(f"{tag}/s", {peer: reply})
    return outputs


async def base_ot_receive(channel: Channel, peer: int, tag: str, choices: Sequence[bool], *,
                          context: bytes) -> list[bytes]:
    """Run ``len(choices)`` base OTs as the receiver with sender ``peer``; its outputs ``m_{c_i}``."""
    state, message = receiver_start(choices, context=context)
    await channel.send_many(f"{tag}/r", {peer: message})
    reply = (await channel.receive_many(f"{tag}/s", [peer]))[peer]
    try:
        return receiver_finish(state, reply, peer=peer)
    except BaseOtError as exc:
        raise BaseOtError(exc.detail, peer=peer, labels=[f"{tag}/s"]) from None
