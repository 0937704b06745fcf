"""Large tables in parts: split one node's row shares into envelopes that fit, and assemble them back.

One input envelope holds at most :data:`~pqmpc_node.crypto.envelopes.MAX_ENVELOPE_BYTES`
(16 MiB). A table whose share for one node is larger travels as ``k`` parts: part ``i``
holds rows ``[start_i, end_i)`` of every column (and, in malicious sessions, of every
column's tags); the owner's input key share (``key``: shares of ``k`` and ``k^2``) is
the same for the whole table and rides in every part. Each part is sealed and signed on
its own, its index and the total ``k`` bound in the signed input id
(:class:`~pqmpc_node.input_ids.InputId`). The node holds parts until all ``k`` are in,
then :func:`assemble` joins them in part order; it refuses parts that do not fit
together (other fields, other domain, another key share).

Pure: data in, data out; :class:`~pqmpc_node.payloads.PayloadError` on a mismatch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pqmpc_node.payloads import InputPayload, PayloadError

__all__ = ["DEFAULT_PART_BYTES", "PART_HEADROOM", "assemble", "rows_per_part", "split_rows"]

PART_HEADROOM = 64 * 1024
"""Room left in an envelope for its header, HPKE encapsulation and signature, and the payload's JSON."""

DEFAULT_PART_BYTES = 16 * 1024 * 1024 - PART_HEADROOM
"""The largest payload one part carries by default (the envelope limit minus :data:`PART_HEADROOM`)."""


def _row_bytes(payload: InputPayload) -> int:
    """Encoded bytes per row: base64 of one 8-byte word per column (and per tag), with slack for rounding."""
    words = len(payload.columns) + (len(payload.tags) if payload.tags is not None else 0)
    return (words * 8 * 4 + 2) // 3 + 1


def rows_per_part(payload: InputPayload, part_bytes: int) -> int:
    """How many rows of ``payload`` fit in a part of ``part_bytes`` encoded bytes (at least 1)."""
    fixed = len(InputPayload(payload.kind, payload.domain, {k: v[:0] for k, v in payload.columns.items()}, {}, 0,
                             None if payload.tags is None else {k: v[:0] for k, v in payload.tags.items()},
                             payload.key).encode()) + 32
    return max(1, (part_bytes - fixed) // _row_bytes(payload))


def split_rows(payload: InputPayload, part_bytes: int = DEFAULT_PART_BYTES) -> list[InputPayload]:
    """``payload`` (kind ``rows``) as parts of at most ``part_bytes`` encoded bytes each, rows in order.

    A payload that fits comes back whole (one part). Every node's share of one table has
    the same row count, so every node gets the same number of parts with the same rows.
    """
    if payload.kind != "rows":
        raise PayloadError("only a table (rows) is split into parts")
    per = rows_per_part(payload, part_bytes)
    if payload.rows <= per:
        return [payload]
    parts = []
    for start in range(0, payload.rows, per):
        end = min(start + per, payload.rows)
        parts.append(InputPayload(
            "rows", payload.domain, {k: v[start:end] for k, v in payload.columns.items()}, {}, end - start,
            None if payload.tags is None else {k: v[start:end] for k, v in payload.tags.items()}, payload.key))
    return parts


def assemble(parts: Sequence[InputPayload]) -> InputPayload:
    """The whole table from its parts, in the given (part) order; refuses parts that do not belong together."""
    if not parts:
        raise PayloadError("no parts to assemble")
    first = parts[0]
    if len(parts) == 1:
        return first
    for i, p in enumerate(parts, start=1):
        if p.kind != "rows" or p.domain != first.domain or sorted(p.columns) != sorted(first.columns):
            raise PayloadError(f"part {i} holds other fields or another domain than part 1")
        if (p.tags is None) != (first.tags is None) or (p.key is None) != (first.key is None):
            raise PayloadError(f"part {i} is keyed differently from part 1")
        if p.key is not None and first.key is not None and not np.array_equal(p.key, first.key):
            raise PayloadError(f"part {i} carries another input key share than part 1: the parts are not of one input")
    names = list(first.columns)
    columns = {k: np.concatenate([p.columns[k] for p in parts]) for k in names}
    tags = None
    if first.tags is not None:
        tags = {k: np.concatenate([p.tags[k] for p in parts if p.tags is not None]) for k in names}
    return InputPayload("rows", first.domain, columns, {}, sum(p.rows for p in parts), tags, first.key)
