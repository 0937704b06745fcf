"""Frame parsing: round trips in arbitrary chunks, truncated, oversized and garbage frames."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from pqmpc_node.net.framing import HEADER_SIZE, FrameDecoder, FrameError, FrameKind, encode_frame


def test_round_trip_in_small_chunks() -> None:
    data = encode_frame(FrameKind.DATA, 7, b"abc") + encode_frame(FrameKind.DATA, 2**64 - 1, b"")
    d = FrameDecoder()
    frames = []
    for i in range(len(data)):
        frames += d.feed(data[i : i + 1])
    d.close()
    assert [(f.tag, f.payload) for f in frames] == [(7, b"abc"), (2**64 - 1, b"")]


def test_truncated_frame_refused() -> None:
    d = FrameDecoder()
    assert d.feed(encode_frame(FrameKind.DATA, 1, b"hello")[:-1]) == []
    with pytest.raises(FrameError) as e:
        d.close()
    assert e.value.reason == "truncated_frame"


def test_oversized_frame_refused_before_buffering() -> None:
    big = encode_frame(FrameKind.DATA, 1, b"x" * 100, max_payload=1000)
    d = FrameDecoder(max_payload=50)
    with pytest.raises(FrameError) as e:
        d.feed(big[:HEADER_SIZE])  # the header alone is enough to refuse
    assert e.value.reason == "oversized_frame"
    with pytest.raises(FrameError):
        encode_frame(FrameKind.DATA, 1, b"x" * 51, max_payload=50)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=256), st.integers(min_value=1, max_value=64))
def test_fuzz_decoder_never_crashes(data: bytes, chunk: int) -> None:
    d = FrameDecoder(max_payload=128)
    try:
        frames = []
        for i in range(0, len(data), chunk):
            frames += d.feed(data[i : i + chunk])
        d.close()
    except FrameError as exc:
        assert exc.reason in {"bad_frame", "oversized_frame", "truncated_frame"}
        return
    # accepted only if it re-encodes to exactly the input
    assert b"".join(encode_frame(f.kind, f.tag, f.payload) for f in frames) == data
