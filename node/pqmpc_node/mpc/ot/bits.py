"""Transposing the 128-column bit matrix of OT extension, fast, in numpy.

IKNP produces its matrix column by column (one PRG stream per base OT) and consumes it row
by row (one 128-bit value per extended OT), so every extension transposes a 128 × n bit
matrix. Layouts, both packed LSB-first (bit ``k`` of a byte is ``(byte >> k) & 1``, as
``np.packbits(..., bitorder="little")``):

* *columns*: ``(128, n/8)`` uint8; bit ``j`` of row ``i`` is entry (row ``j``, column ``i``);
* *rows*: ``(n, 16)`` uint8; bit ``i`` of row ``j`` is the same entry.

Method (Eklundh's recursive transpose, vectorized over all 128 × 128 blocks at once): a
transpose swaps, for every ``s`` in 1, 2, …, 64, bit ``s`` of the row index with bit ``s``
of the column index. For ``s < 64`` that is one masked-shift exchange between the uint64
words of rows ``i`` and ``i + s``: ``d = ((A >> s) ^ B) & mask_s; B ^= d; A ^= d << s``
(for ``s = 1, 2, 4`` this is the classic 3-step 8 × 8 bit transpose; ``s = 8, 16, 32``
move whole bytes the same way). Done in the column layout every operand is a long
contiguous run, so each step is six in-place numpy passes, no Python loop over rows. The
``s = 64`` exchange and the block-to-row layout change are one numpy transpose of uint64
words at the end. The swaps commute and are involutions, so the inverse runs the same
steps after the inverse layout change.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["KAPPA", "columns_to_rows", "rows_to_columns", "transpose"]

KAPPA = 128

U8 = np.ndarray[Any, np.dtype[np.uint8]]
U64 = np.ndarray[Any, np.dtype[np.uint64]]

_MASKS = ((1, 0x5555555555555555), (2, 0x3333333333333333), (4, 0x0F0F0F0F0F0F0F0F),
          (8, 0x00FF00FF00FF00FF), (16, 0x0000FFFF0000FFFF), (32, 0x00000000FFFFFFFF))


def _swap_levels(words: U64) -> None:
    """Exchange bit ``s`` of the row index with bit ``s`` of the bit position, ``s`` = 1 … 32, in place.

    ``words`` is ``(128, w)`` uint64, C-contiguous: row ``i`` is one column of the OT matrix.
    """
    width = words.shape[1]
    scratch = np.empty(64 * width, dtype=np.uint64)
    for s, mask in _MASKS:
        pairs = words.reshape(KAPPA // (2 * s), 2, s, width)
        low, high = pairs[:, 0], pairs[:, 1]  # rows with index bit s clear / set
        d = scratch.reshape(KAPPA // (2 * s), s, width)
        np.right_shift(low, np.uint64(s), out=d)
        np.bitwise_xor(d, high, out=d)
        np.bitwise_and(d, np.uint64(mask), out=d)
        np.bitwise_xor(high, d, out=high)
        np.left_shift(d, np.uint64(s), out=d)
        np.bitwise_xor(low, d, out=low)


def columns_to_rows_inplace(words: U64) -> U8:
    """:func:`columns_to_rows` on ``(128, n/64)`` uint64 words, which it overwrites (``n % 128 == 0``).

    For callers that own a scratch copy (the extension's PRG output): saves one copy.
    """
    if words.ndim != 2 or words.shape[0] != KAPPA or words.shape[1] % 2 or not words.flags.c_contiguous:
        raise ValueError(f"expected C-contiguous (128, 2k) uint64 column words, got shape {words.shape}")
    _swap_levels(words)
    blocks = words.shape[1] // 2
    # After the swaps, row 128b + 64h + i of the result, word w, sits in words[64w + i, 2b + h]
    # (the s = 64 exchange is this index map).
    rows = words.reshape(2, 64, blocks, 2).transpose(2, 3, 1, 0)
    return np.ascontiguousarray(rows).reshape(blocks * KAPPA, 2).view(np.uint8)


def columns_to_rows(columns: U8) -> U8:
    """The ``(n, 16)`` row layout of a ``(128, n/8)`` column-layout bit matrix (see the module docstring)."""
    if columns.ndim != 2 or columns.shape[0] != KAPPA or columns.dtype != np.uint8:
        raise ValueError(f"expected a (128, n/8) uint8 column matrix, got {columns.dtype} {columns.shape}")
    nbytes = columns.shape[1]
    padded = -(-nbytes // 16) * 16
    words = np.zeros((KAPPA, padded), dtype=np.uint8)
    words[:, :nbytes] = columns
    return columns_to_rows_inplace(words.view(np.uint64))[: nbytes * 8]


def rows_to_columns(rows: U8) -> U8:
    """The ``(128, n/8)`` column layout of an ``(n, 16)`` row-layout bit matrix; ``n % 8 == 0``."""
    if rows.ndim != 2 or rows.shape[1] != KAPPA // 8 or rows.dtype != np.uint8 or rows.shape[0] % 8:
        raise ValueError(f"expected an (n, 16) uint8 row matrix with n a multiple of 8, got {rows.dtype} {rows.shape}")
    n = rows.shape[0]
    padded = -(-n // KAPPA) * KAPPA
    full = np.zeros((padded, 16), dtype=np.uint8)
    full[:n] = rows
    blocks = padded // KAPPA
    # the inverse of the index map in columns_to_rows_inplace
    words = np.ascontiguousarray(full.view(np.uint64).reshape(blocks, 2, 64, 2).transpose(3, 2, 0, 1)).reshape(KAPPA, 2 * blocks)
    _swap_levels(words)
    return words.view(np.uint8)[:, : n // 8]


def transpose(matrix: U8) -> U8:
    """Transpose a packed bit matrix with 128 rows (-> rows layout) or 128 columns (-> columns layout).

    A ``(128, 16)`` matrix is 128 × 128 and both readings agree.
    """
    if matrix.ndim == 2 and matrix.shape[0] == KAPPA:
        return columns_to_rows(matrix)
    return rows_to_columns(matrix)
