"""GF(2^128) in GCM's convention and the linear polynomial hash the KOS check uses, via AES-GCM.

Elements are 16-byte blocks read as GCM does (NIST SP 800-38D §6.3): bit 7 of byte 0 (the
most significant bit of the block as a big-endian integer) is the coefficient of x^0, so
the field's one is ``0x80 00 … 00``; the modulus is x^128 + x^7 + x^2 + x + 1.

:func:`poly_hash` evaluates P_H(v_1 … v_n) = Σ_j v_j · H^(n+2−j) at the speed of OpenSSL's
GHASH (tens of GB/s with carry-less multiply instructions): ``AESGCM(K).encrypt(nonce, b"",
associated_data=v)`` returns the tag E_K(J0) ⊕ GHASH_H(v ‖ L) with H = E_K(0^128), J0 =
nonce ‖ 0x00000001 and L the length block; GHASH_H(v ‖ L) = P_H(v) ⊕ L·H. Removing
E_K(J0) (one AES block) and L·H (one field product) leaves P_H(v).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["CHALLENGE_BYTES", "gf128_mul", "poly_hash", "hash_key"]

KEY_BYTES = 16
NONCE_BYTES = 12
CHALLENGE_BYTES = KEY_BYTES + NONCE_BYTES  # (K, nonce): names one hash P_H of the family

_R = 0xE1 << 120  # x^128 = x^7 + x^2 + x + 1, reflected


def gf128_mul(x: int, y: int) -> int:
    """The product of two GCM field elements given as big-endian block integers (SP 800-38D, Algorithm 1)."""
    if not (0 <= x < 1 << 128 and 0 <= y < 1 << 128):
        raise ValueError("GF(2^128) elements are 128-bit integers")
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def _split(challenge: bytes) -> tuple[bytes, bytes]:
    if len(challenge) != CHALLENGE_BYTES:
        raise ValueError(f"a hash challenge is {CHALLENGE_BYTES} bytes (AES key, GCM nonce), got {len(challenge)}")
    return challenge[:KEY_BYTES], challenge[KEY_BYTES:]


def hash_key(challenge: bytes) -> int:
    """H = AES_K(0^128), the point P_H is evaluated at, as a block integer."""
    key, _ = _split(challenge)
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return int.from_bytes(enc.update(bytes(16)) + enc.finalize(), "big")


def poly_hash(challenge: bytes, blocks: bytes | memoryview) -> int:
    """P_H(blocks) = Σ_j block_j · H^(n+2−j) over the n 16-byte blocks, H = AES_K(0^128); a block integer.

    ``challenge`` is K (16 bytes) followed by a 12-byte GCM nonce.
    """
    key, nonce = _split(challenge)
    if len(blocks) % 16:
        raise ValueError(f"the hash takes whole 16-byte blocks, got {len(blocks)} bytes")
    tag = AESGCM(key).encrypt(nonce, b"", blocks)
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    raw = enc.update(bytes(16) + nonce + b"\x00\x00\x00\x01") + enc.finalize()
    h, ek_j0 = int.from_bytes(raw[:16], "big"), int.from_bytes(raw[16:], "big")
    length_block = (8 * len(blocks)) << 64  # [len(A) in bits]_64 ‖ [len(C) = 0]_64
    return int.from_bytes(tag, "big") ^ ek_j0 ^ gf128_mul(length_block, h)
