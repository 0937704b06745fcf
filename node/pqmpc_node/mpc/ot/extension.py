"""Random-OT extension: IKNP with the KOS consistency check, secure against a malicious receiver.

From κ = 128 base OTs, two parties make any number of random 1-out-of-2 OTs with symmetric
crypto only: IKNP (Ishai, Kilian, Nissim, Petrank, CRYPTO 2003), made actively secure by
the consistency check of KOS (Keller, Orsini, Scholl, CRYPTO 2015). KOS's original proof
had a gap; Roy's SoftSpokenOT (CRYPTO 2022) gives a new proof of the check, and
SoftSpokenOT with k = 1 is exactly IKNP, so that proof covers this protocol.

Roles (note the swap against the base OTs):

* the extension **sender** holds Δ ∈ {0,1}^128 and the seeds k_i^{Δ_i}: it was the base-OT
  *receiver*, with choice bits Δ (:func:`delta_bits`: bit i is ``(delta[i // 8] >> (i % 8))
  & 1``, LSB first within each byte);
* the extension **receiver** holds both seeds (k_i^0, k_i^1) of every base OT: it was the
  base-OT *sender*. Seeds are 32 bytes.

Each column i has its own PRG: AES-256-CTR under a key derived from (``context``, i, seed);
each chunk of an extension uses a fresh nonce (the chunk's stream number), so no keystream
is ever used twice. Steps for one chunk of m choices x (a request of any size is cut into
chunks of at most ``chunk_rows`` rows, default 2^20, to bound memory; each chunk is one
check):

1. Receiver: appends m_pad ≥ 168 = κ + 40 random padding choices (rounding the chunk up to
   m' rows, a multiple of 128); for each column i: t_i = PRG(k_i^0), u_i = t_i ⊕ PRG(k_i^1) ⊕ x.
   Sends every u_i (:func:`receiver_columns`).
2. Sender, on receiving u: draws a fresh random challenge (K, nonce) and sends it at once;
   then q_i = PRG(k_i^{Δ_i}) ⊕ Δ_i·u_i, so that row j is q_j = t_j ⊕ x_j·Δ (:func:`sender_rows`).
3. Receiver: returns X = Σ_j χ_j·x_j and T = Σ_j χ_j·t_j in GF(2^128), χ_j = H^(m'+2−j),
   H = AES_K(0^128) (:func:`check_response`).
4. Sender: checks Σ_j χ_j·q_j = T ⊕ X·Δ (:func:`check_verify`), else raises
   :class:`OtConsistencyError` naming the receiver; only then does it compute outputs.
5. Outputs (padding rows dropped), with TCCR the fixed-key-AES hash of Guo, Katz, Wang and
   Yu (S&P 2020) and j the row's index counted over the instance's whole life (a tweak is
   never reused; the tweak's high word is a label of ``context``): sender m_j^0 =
   TCCR(j, q_j), m_j^1 = TCCR(j, q_j ⊕ Δ); receiver m_j^{x_j} = TCCR(j, t_j) (:func:`hash_rows`).

Why the check. A malicious receiver may use a different choice vector in some columns;
then q_j = t_j ⊕ x_j·Δ ⊕ (e_j ∗ Δ) for an error e_j it chose, and its output would equal
m^0 or m^1 depending on the bits of Δ under e_j: it would learn Δ bit by bit and with it
every sender message. The check compresses all rows with one linear hash drawn *after* u
is fixed; for the receiver to answer (X, T) consistently it must guess the bits of Δ
its errors touch, each wrong guess caught, so learning c bits of Δ passes the check with
probability about 2^-c (plus the hash's collision bound), and the 128 − c bits it does not
know keep the hashed outputs random (the KOS bound, as re-proved by SoftSpokenOT).

Why powers of one H instead of 128-bit χ_j drawn independently. The proof uses only that
the challenge selects a GF(2^128)-linear map from an ε-almost-universal family: for every
fixed non-zero error vector (e_1 … e_m'), Pr_H[Σ_j e_j·H^(m'+2−j) = 0] ≤ (m'+1)/2^128,
since that is a non-zero polynomial of degree ≤ m'+1 in H (at most 2^-107 for a 2^20-row
chunk). Powers make the hash a GHASH evaluation: OpenSSL computes it at tens of GB/s via
``AESGCM`` (:mod:`.ghash`), where independent χ_j would cost a field product per row.

Why the padding. X and T are sent in the clear. T adds nothing (the sender could compute
it as Σχ_j·q_j ⊕ X·Δ); X = Σ χ_j·x_j would leak a linear function of the real choices,
but the padding rows carry the lowest powers H^2 … H^(m_pad+1); for H ≠ 0 any d
consecutive powers span the field GF(2)[H] (d ≤ 128 the degree of H), which contains every
χ_j, so the padding's uniform bits make X uniform on that field whatever the real choices
are (H = 0 makes X = 0). This holds for any H, so a sender picking K maliciously learns
nothing either; m_pad = κ + 40 follows KOS (which needs the 40 for independent χ_j).

A malicious *sender* gains nothing: u_i is masked by PRG(k_i^{1−Δ_i}), which it cannot
compute, and its outputs are random OTs whatever it does.

Both parties must call ``extend`` in the same order with the same counts (the u message's
header carries the chunk's stream and first row, and the sender refuses a mismatch).
After any failure an instance refuses further use: its counters may have diverged.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pqmpc_node.mpc.channel import Channel
from pqmpc_node.mpc.errors import BlamedCheckError
from pqmpc_node.mpc.ot.bits import KAPPA, columns_to_rows_inplace
from pqmpc_node.mpc.ot.ghash import CHALLENGE_BYTES, gf128_mul, poly_hash
from pqmpc_node.mpc.ot.tccr import tccr_hash
from pqmpc_node.mpc.randomness import AesCtrRandom, RandomSource

__all__ = [
    "KAPPA", "SEED_BYTES", "PAD_ROWS", "CHUNK_ROWS", "MAX_CHUNK_ROWS", "CHALLENGE_BYTES", "RESPONSE_BYTES",
    "OtConsistencyError", "OtMessageError", "OtExtensionSender", "OtExtensionReceiver", "Chunk",
    "delta_bits", "column_keys", "tweak_label", "chunk_plan", "padded_rows", "receiver_columns",
    "sender_rows", "choice_blocks", "check_response", "check_verify", "hash_rows", "xor_rows", "u_message",
]

SEED_BYTES = 32
STATISTICAL = 40
PAD_ROWS = KAPPA + STATISTICAL  # the fewest padding rows a chunk gets
CHUNK_ROWS = 1 << 20  # real rows per check, by default
MAX_CHUNK_ROWS = 1 << 24  # 256 MiB of u per chunk; well inside AES-GCM's limit on associated data
RESPONSE_BYTES = 32  # X ‖ T
_HEADER = struct.Struct("<QQQ")  # stream, first row (global index), real rows

U8 = np.ndarray[Any, np.dtype[np.uint8]]
U64 = np.ndarray[Any, np.dtype[np.uint64]]
Bits = np.ndarray[Any, np.dtype[np.bool_]]


class OtMessageError(BlamedCheckError):
    """An OT-extension message from ``blamed_parties`` has the wrong length or a header that does not match."""


class OtConsistencyError(BlamedCheckError):
    """The receiver's KOS consistency check failed: it used inconsistent choice bits (or lied in X, T)."""


# ---------------------------------------------------------------- keys and layout

def delta_bits(delta: bytes) -> list[bool]:
    """The 128 base-OT choice bits of the sender holding ``delta``: bit i = ``(delta[i // 8] >> (i % 8)) & 1``."""
    if len(delta) != KAPPA // 8:
        raise ValueError(f"Δ is {KAPPA // 8} bytes, got {len(delta)}")
    return [bool((delta[i // 8] >> (i % 8)) & 1) for i in range(KAPPA)]


def column_keys(seeds: Sequence[bytes], context: bytes) -> list[bytes]:
    """The AES-256 key of each column's PRG: SHA-256 over (domain, ``context``, column index, seed)."""
    if len(seeds) != KAPPA:
        raise ValueError(f"OT extension takes {KAPPA} base-OT seeds, got {len(seeds)}")
    keys = []
    for i, seed in enumerate(seeds):
        if len(seed) != SEED_BYTES:
            raise ValueError(f"base-OT seed {i} is {len(seed)} bytes, expected {SEED_BYTES}")
        h = hashlib.sha256(b"pqmpc/mpc/ot/extension/prg/v1")
        h.update(len(context).to_bytes(4, "big") + context + i.to_bytes(2, "big") + seed)
        keys.append(h.digest())
    return keys


def tweak_label(context: bytes) -> int:
    """The 64-bit label of ``context`` in every TCCR tweak's high word (instances never share tweaks)."""
    return int.from_bytes(hashlib.sha256(b"pqmpc/mpc/ot/extension/tweak/v1" + context).digest()[:8], "little")


def padded_rows(rows: int) -> int:
    """Rows of a chunk with ``rows`` real ones: at least :data:`PAD_ROWS` more, rounded up to a multiple of 128."""
    return -(-(rows + PAD_ROWS) // KAPPA) * KAPPA


@dataclass(frozen=True)
class Chunk:
    """One checked piece of an extension: its PRG stream, first global row index and real rows."""

    stream: int
    first_row: int
    rows: int

    @property
    def padded(self) -> int:
        return padded_rows(self.rows)


def chunk_plan(count: int, *, first_row: int, first_stream: int, chunk_rows: int) -> list[Chunk]:
    """Cut ``count`` OTs into chunks of at most ``chunk_rows``, numbering streams and rows on from the given ones."""
    chunks: list[Chunk] = []
    done = 0
    while done < count:
        rows = min(chunk_rows, count - done)
        chunks.append(Chunk(first_stream + len(chunks), first_row + done, rows))
        done += rows
    return chunks


def _prg(key: bytes, stream: int, data: U8, out: U8) -> None:
    """out = data ⊕ AES-256-CTR(key, nonce = stream ‖ 0^64): PRG output XORed into ``data`` by OpenSSL."""
    enc = Cipher(algorithms.AES(key), modes.CTR(stream.to_bytes(8, "big") + bytes(8))).encryptor()
    enc.update_into(data.data, out.data)
    enc.finalize()


def _pack(x: Bits) -> U8:
    return np.packbits(x, bitorder="little")


# ---------------------------------------------------------------- the protocol's steps (pure)

def receiver_columns(keys0: Sequence[bytes], keys1: Sequence[bytes], stream: int, x: Bits) -> tuple[U8, U8]:
    """Step 1: (u, t) for the padded choices ``x`` (n bools, n % 128 == 0).

    u is the (128, n/8) column matrix to send; t the (n, 16) rows t_j the receiver keeps.
    """
    n = x.shape[0]
    if x.ndim != 1 or n % KAPPA or n == 0:
        raise ValueError(f"padded choices are a non-empty vector of a multiple of {KAPPA} bits, got shape {x.shape}")
    nbytes = n // 8
    zeros = np.zeros(nbytes, dtype=np.uint8)
    t = np.empty((KAPPA, nbytes), dtype=np.uint8)
    for i in range(KAPPA):
        _prg(keys0[i], stream, zeros, t[i])
    u = np.bitwise_xor(t, _pack(x)[None, :])
    for i in range(KAPPA):
        _prg(keys1[i], stream, u[i], u[i])
    return u, columns_to_rows_inplace(t.view(np.uint64))


def sender_rows(keys: Sequence[bytes], delta: bytes, stream: int, u: U8) -> U8:
    """Step 2: the (n, 16) rows q_j = t_j ⊕ x_j·Δ from the received (128, n/8) columns ``u``."""
    if u.ndim != 2 or u.shape[0] != KAPPA or u.shape[1] % 16:
        raise ValueError(f"u is a (128, n/8) column matrix with n % 128 == 0, got shape {u.shape}")
    zeros = np.zeros(u.shape[1], dtype=np.uint8)
    q = np.empty(u.shape, dtype=np.uint8)
    for i, bit in enumerate(delta_bits(delta)):
        _prg(keys[i], stream, u[i] if bit else zeros, q[i])
    return columns_to_rows_inplace(q.view(np.uint64))


def choice_blocks(x: Bits) -> U8:
    """The (n, 16) blocks x_j·1 in GCM's field (one is 0x80 00 … 00), the hash input for X."""
    blocks = np.zeros((x.shape[0], 16), dtype=np.uint8)
    blocks[:, 0] = x.astype(np.uint8) << 7
    return blocks


def check_response(challenge: bytes, t: U8, x: Bits) -> bytes:
    """Step 3: X ‖ T = P_H(x_j·1) ‖ P_H(t_j) over all n padded rows, 16 bytes each (GCM block order)."""
    big_x = poly_hash(challenge, choice_blocks(x).reshape(-1).data)
    big_t = poly_hash(challenge, np.ascontiguousarray(t).reshape(-1).data)
    return big_x.to_bytes(16, "big") + big_t.to_bytes(16, "big")


def check_verify(challenge: bytes, q: U8, delta: bytes, response: bytes) -> bool:
    """Step 4: whether P_H(q_j) = T ⊕ X·Δ for the receiver's ``response`` X ‖ T."""
    if len(response) != RESPONSE_BYTES:
        raise ValueError(f"a check response is {RESPONSE_BYTES} bytes, got {len(response)}")
    big_x, big_t = int.from_bytes(response[:16], "big"), int.from_bytes(response[16:], "big")
    expected = big_t ^ gf128_mul(big_x, int.from_bytes(delta, "big"))
    return poly_hash(challenge, np.ascontiguousarray(q).reshape(-1).data) == expected


def hash_rows(rows: U8, first_index: int, label: int, *, out: U64 | None = None) -> U64:
    """Step 5: TCCR over (m, 16) rows, tweaks ``first_index`` + j; (m, 2) uint64 messages (into ``out`` if given)."""
    return tccr_hash(rows, first_index, label, out=out)


def xor_rows(rows: U8, value: bytes) -> U8:
    """Each (m, 16) row XOR the 16-byte ``value`` (q_j ⊕ Δ), as long uint64 runs rather than a 16-byte broadcast."""
    m = rows.shape[0]
    words = np.ascontiguousarray(rows).view(np.uint64).reshape(-1)
    out = np.empty(2 * m, dtype=np.uint64)
    run = 256  # rows per broadcast line
    split = m - m % run
    pattern = np.tile(np.frombuffer(value, dtype=np.uint64), run)
    np.bitwise_xor(words[: 2 * split].reshape(-1, 2 * run), pattern, out=out[: 2 * split].reshape(-1, 2 * run))
    np.bitwise_xor(words[2 * split:].reshape(-1, 2), pattern[:2], out=out[2 * split:].reshape(-1, 2))
    return out.view(np.uint8).reshape(m, 16)


def u_message(chunk: Chunk, u: U8) -> bytes:
    """The step-1 message: header (stream, first row, real rows) then the columns."""
    return b"".join([_HEADER.pack(chunk.stream, chunk.first_row, chunk.rows), np.ascontiguousarray(u).data])


def _parse_u(payload: bytes, chunk: Chunk, *, peer: int, label: str) -> U8:
    expected = _HEADER.size + KAPPA * chunk.padded // 8
    if len(payload) != expected:
        raise OtMessageError("ot-extension-u", [label], f"party {peer} sent {len(payload)} bytes of u, "
                             f"expected {expected} for {chunk.rows} OTs", blamed_parties=[peer])
    header = _HEADER.unpack_from(payload)
    if header != (chunk.stream, chunk.first_row, chunk.rows):
        raise OtMessageError("ot-extension-u", [label], f"party {peer} sent u for (stream, first row, rows) = "
                             f"{header}, expected {(chunk.stream, chunk.first_row, chunk.rows)}: both sides must "
                             "call extend in the same order with the same counts", blamed_parties=[peer])
    return np.frombuffer(payload, dtype=np.uint8, offset=_HEADER.size).reshape(KAPPA, -1)


def _expect_length(payload: bytes, size: int, *, what: str, peer: int, label: str) -> bytes:
    if len(payload) != size:
        raise OtMessageError(f"ot-extension-{what}", [label], f"party {peer} sent {len(payload)} bytes of "
                             f"{what}, expected {size}", blamed_parties=[peer])
    return payload


# ---------------------------------------------------------------- the two parties (thin I/O shells)

class _Instance:
    """Counters shared by both roles: the next stream and global row; refuses use after a failure."""

    def __init__(self, context: bytes, chunk_rows: int) -> None:
        if not 1 <= chunk_rows <= MAX_CHUNK_ROWS:
            raise ValueError(f"chunk_rows must be between 1 and {MAX_CHUNK_ROWS}, got {chunk_rows}")
        self._label = tweak_label(context)
        self._chunk_rows = chunk_rows
        self._next_stream = 0
        self._next_row = 0
        self._broken = False

    @property
    def extended(self) -> int:
        """OTs made so far (planned ones included)."""
        return self._next_row

    def _plan(self, count: int) -> list[Chunk]:
        """Reserve streams and rows for ``count`` OTs now, before any await (concurrent calls never share)."""
        if self._broken:
            raise RuntimeError("this OT extension instance failed earlier; make a new one (new base OTs)")
        if count < 0:
            raise ValueError(f"count must be non-negative, got {count}")
        plan = chunk_plan(count, first_row=self._next_row, first_stream=self._next_stream, chunk_rows=self._chunk_rows)
        self._next_row += count
        self._next_stream += len(plan)
        return plan

    def __repr__(self) -> str:
        return f"{type(self).__name__}(extended={self._next_row}, broken={self._broken})"


class OtExtensionSender(_Instance):
    """The extension sender: holds Δ and the seeds k_i^{Δ_i}; gets both messages of every random OT."""

    def __init__(self, delta: bytes, chosen_seeds: Sequence[bytes], *, context: bytes,
                 rng: RandomSource | None = None, chunk_rows: int = CHUNK_ROWS) -> None:
        bits = delta_bits(delta)
        if not any(bits):
            raise ValueError("Δ = 0 would make both messages equal; draw it at random")
        super().__init__(context, chunk_rows)
        self._delta = bytes(delta)
        self._keys = column_keys(chosen_seeds, context)
        self._rng = rng if rng is not None else AesCtrRandom.from_os()

    async def extend(self, channel: Channel, peer: int, tag: str, count: int) -> tuple[U64, U64]:
        """``count`` random OTs with receiver ``peer``: (m0, m1), each (count, 2) uint64 (128-bit messages).

        Raises :class:`OtConsistencyError` or :class:`OtMessageError` naming ``peer`` if it cheats.
        """
        plan = self._plan(count)
        m0 = np.empty((count, 2), dtype=np.uint64)
        m1 = np.empty((count, 2), dtype=np.uint64)
        try:
            done = 0
            for k, chunk in enumerate(plan):
                label = f"{tag}/{k}"
                payload = (await channel.receive_many(f"{label}/u", [peer]))[peer]
                u = _parse_u(payload, chunk, peer=peer, label=label)
                challenge = self._rng.bytes(CHALLENGE_BYTES)
                await channel.send_many(f"{label}/challenge", {peer: challenge})
                q = sender_rows(self._keys, self._delta, chunk.stream, u)
                response = (await channel.receive_many(f"{label}/response", [peer]))[peer]
                _expect_length(response, RESPONSE_BYTES, what="response", peer=peer, label=label)
                if not check_verify(challenge, q, self._delta, response):
                    raise OtConsistencyError("ot-extension-consistency", [label],
                                             f"party {peer}'s choice bits are not consistent across the "
                                             f"{KAPPA} columns (KOS check)", blamed_parties=[peer])
                real = q[: chunk.rows]
                hash_rows(real, chunk.first_row, self._label, out=m0[done: done + chunk.rows])
                hash_rows(xor_rows(real, self._delta), chunk.first_row, self._label, out=m1[done: done + chunk.rows])
                done += chunk.rows
        except BaseException:
            self._broken = True
            raise
        return m0, m1


class OtExtensionReceiver(_Instance):
    """The extension receiver: holds both seeds of every base OT; gets m_{x_j} for its choices x."""

    def __init__(self, seed_pairs: Sequence[tuple[bytes, bytes]], *, context: bytes,
                 rng: RandomSource | None = None, chunk_rows: int = CHUNK_ROWS) -> None:
        if len(seed_pairs) != KAPPA:
            raise ValueError(f"OT extension takes {KAPPA} base-OT seed pairs, got {len(seed_pairs)}")
        if any(k0 == k1 for k0, k1 in seed_pairs):
            raise ValueError("a base-OT seed pair has two equal seeds: the base OTs are broken")
        super().__init__(context, chunk_rows)
        self._keys0 = column_keys([k0 for k0, _ in seed_pairs], context)
        self._keys1 = column_keys([k1 for _, k1 in seed_pairs], context)
        self._rng = rng if rng is not None else AesCtrRandom.from_os()

    async def extend(self, channel: Channel, peer: int, tag: str, choices: np.ndarray[Any, Any]) -> U64:
        """Random OTs with sender ``peer`` for ``choices`` ((count,) bool or 0/1 integers): m_{x_j}, (count, 2) uint64."""
        x = _choice_vector(choices)
        plan = self._plan(x.shape[0])
        out = np.empty((x.shape[0], 2), dtype=np.uint64)
        try:
            done = 0
            for k, chunk in enumerate(plan):
                label = f"{tag}/{k}"
                padded = np.empty(chunk.padded, dtype=np.bool_)
                padded[: chunk.rows] = x[done: done + chunk.rows]
                pad = chunk.padded - chunk.rows
                padded[chunk.rows:] = np.unpackbits(np.frombuffer(self._rng.bytes(-(-pad // 8)), dtype=np.uint8),
                                                    count=pad).astype(np.bool_)
                u, t = receiver_columns(self._keys0, self._keys1, chunk.stream, padded)
                await channel.send_many(f"{label}/u", {peer: u_message(chunk, u)})
                challenge = (await channel.receive_many(f"{label}/challenge", [peer]))[peer]
                _expect_length(challenge, CHALLENGE_BYTES, what="challenge", peer=peer, label=label)
                await channel.send_many(f"{label}/response", {peer: check_response(challenge, t, padded)})
                hash_rows(t[: chunk.rows], chunk.first_row, self._label, out=out[done: done + chunk.rows])
                done += chunk.rows
        except BaseException:
            self._broken = True
            raise
        return out


def _choice_vector(choices: np.ndarray[Any, Any]) -> Bits:
    arr = np.asarray(choices)
    if arr.ndim != 1:
        raise ValueError(f"choices are a vector, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.integer) or (arr.size and (arr.min() < 0 or arr.max() > 1)):
        raise ValueError("choices are bools or 0/1 integers")
    return arr.astype(np.bool_)
