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


# -- fragmentation ------------------------------------------------------------------------

from pqmpc_node.net.framing import Frame, Reassembler, fragment_message, iter_fragments  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64), st.integers(min_value=1, max_value=97))
def test_fragments_reassemble_in_any_chunking(payload: bytes, max_payload: int, chunk: int) -> None:
    frames = fragment_message(9, payload, max_payload=max_payload)
    assert len(frames) == max(1, -(-len(payload) // max_payload))
    wire = b"".join(frames)
    d, r, out = FrameDecoder(max_payload=max_payload), Reassembler(max_message=300), []
    for i in range(0, len(wire), chunk):
        for f in d.feed(wire[i : i + chunk]):
            assert len(f.payload) <= max_payload
            m = r.add(f)
            if m is not None:
                out.append(m)
    d.close()
    r.close()
    assert out == [payload] and r.pending == 0


def test_interleaved_tags_reassemble_separately() -> None:
    r = Reassembler()
    assert r.add(Frame(FrameKind.FRAGMENT, 1, b"a1")) is None
    assert r.add(Frame(FrameKind.FRAGMENT, 2, b"b1")) is None
    assert r.add(Frame(FrameKind.DATA, 2, b"b2")) == b"b1b2"
    assert r.add(Frame(FrameKind.DATA, 1, b"a2")) == b"a1a2"
    assert r.pending == 0


def test_truncated_fragment_stream_refused() -> None:
    r = Reassembler()
    r.add(Frame(FrameKind.FRAGMENT, 4, b"part"))
    with pytest.raises(FrameError) as e:
        r.close()
    assert e.value.reason == "truncated_message"


def test_oversized_total_refused_across_tags() -> None:
    r = Reassembler(max_message=10)
    r.add(Frame(FrameKind.FRAGMENT, 1, b"x" * 6))
    with pytest.raises(FrameError) as e:
        r.add(Frame(FrameKind.FRAGMENT, 2, b"y" * 5))  # 11 pending over two tags
    assert e.value.reason == "oversized_message"
    r2 = Reassembler(max_message=10)
    r2.add(Frame(FrameKind.FRAGMENT, 1, b"x" * 6))
    with pytest.raises(FrameError):
        r2.add(Frame(FrameKind.DATA, 1, b"x" * 5))  # the final frame pushes it over
    with pytest.raises(FrameError):
        Reassembler(max_message=3).add(Frame(FrameKind.DATA, 1, b"four"))


def test_empty_fragment_refused_and_sender_limit() -> None:
    with pytest.raises(FrameError) as e:
        Reassembler().add(Frame(FrameKind.FRAGMENT, 1, b""))
    assert e.value.reason == "bad_frame"
    with pytest.raises(FrameError) as e2:
        iter_fragments(1, b"z" * 11, max_payload=4, max_message=10)
    assert e2.value.reason == "oversized_message"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([FrameKind.DATA, FrameKind.FRAGMENT]), st.integers(0, 3),
                          st.binary(max_size=8)), max_size=20))
def test_fuzz_reassembler_never_exceeds_its_bound(frames: list[tuple[FrameKind, int, bytes]]) -> None:
    r = Reassembler(max_message=16)
    for kind, tag, payload in frames:
        try:
            m = r.add(Frame(kind, tag, payload))
        except FrameError as exc:
            assert exc.reason in {"oversized_message", "bad_frame"}
            return
        assert r.pending <= 16 and (m is None or len(m) <= 16)
