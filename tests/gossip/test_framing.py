"""Length-prefixed framing: reassembly from any split, and the size limit on headers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.errors import DecodeError
from gossiplearn.gossip.framing import HEADER_SIZE, MAX_FRAME_LIMIT, FrameDecoder, frame_header

MAX = 64
bodies = st.lists(st.binary(max_size=MAX), max_size=8)


def stream_of(frames: list[bytes]) -> bytes:
    return b"".join(frame_header(len(b)) + b for b in frames)


def feed_in_pieces(decoder: FrameDecoder, stream: bytes, cuts: list[int]) -> list[bytes]:
    out: list[bytes] = []
    start = 0
    for end in [*sorted(cuts), len(stream)]:
        out += decoder.feed(stream[start:end])
        start = end
    return out


@settings(deadline=None)
@given(bodies, st.data())
def test_frames_split_anywhere_reassemble(frames: list[bytes], data: st.DataObject) -> None:
    stream = stream_of(frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    decoder = FrameDecoder(MAX)
    assert feed_in_pieces(decoder, stream, cuts) == frames
    assert decoder.buffered == 0
    assert decoder.wanted() == HEADER_SIZE


def test_every_single_split_point_reassembles() -> None:
    frames = [b"hello", b"", b"\x00\x01\x02", bytes(range(40))]
    stream = stream_of(frames)
    for cut in range(len(stream) + 1):
        assert feed_in_pieces(FrameDecoder(MAX), stream, [cut]) == frames, cut


def test_a_frame_is_returned_by_the_feed_that_completes_it() -> None:
    frames = [b"abc", b"", b"de"]
    stream = stream_of(frames)
    decoder = FrameDecoder(MAX)
    completed_at = {}
    for i in range(len(stream)):
        for body in decoder.feed(stream[i : i + 1]):
            completed_at[body] = i
    # "abc" ends at byte 6; the empty frame is complete with its header (byte 10); "de" at 16.
    assert completed_at == {b"abc": 6, b"": 10, b"de": 16}


def test_wanted_and_buffered_track_progress() -> None:
    decoder = FrameDecoder(MAX)
    assert decoder.wanted() == 4
    assert decoder.feed(frame_header(10)[:2]) == []
    assert (decoder.wanted(), decoder.buffered) == (2, 2)
    assert decoder.feed(frame_header(10)[2:] + b"xyz") == []
    assert (decoder.wanted(), decoder.buffered) == (7, 3)
    assert decoder.feed(b"0123456" + frame_header(1)) == [b"xyz0123456"]
    assert (decoder.wanted(), decoder.buffered) == (1, 0)


def test_oversized_header_fails_before_the_body_arrives() -> None:
    decoder = FrameDecoder(100)
    header = frame_header(101)
    assert decoder.feed(header[:3]) == []  # an incomplete header is not judged yet
    with pytest.raises(DecodeError, match="101"):
        decoder.feed(header[3:])
    assert decoder.buffered <= HEADER_SIZE  # nothing proportional to the declared size


def test_largest_possible_header_fails_at_once() -> None:
    decoder = FrameDecoder(1 << 20)
    with pytest.raises(DecodeError):
        decoder.feed(frame_header(MAX_FRAME_LIMIT))


def test_header_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(100)
    assert decoder.feed(stream_of([b"x" * 100])) == [b"x" * 100]


def test_decoder_is_unusable_after_failure() -> None:
    decoder = FrameDecoder(10)
    with pytest.raises(DecodeError):
        decoder.feed(frame_header(11))
    with pytest.raises(DecodeError, match="already failed"):
        decoder.feed(b"")
    with pytest.raises(DecodeError, match="already failed"):
        decoder.feed(stream_of([b"ok"]))
    decoder.set_max_frame(1000)  # raising the limit does not restore lost framing
    with pytest.raises(DecodeError):
        decoder.feed(stream_of([b"ok"]))


def test_frames_before_a_bad_header_in_an_earlier_feed_are_delivered() -> None:
    decoder = FrameDecoder(10)
    assert decoder.feed(stream_of([b"fine"])) == [b"fine"]
    with pytest.raises(DecodeError):
        decoder.feed(frame_header(11))


def test_set_max_frame_applies_to_headers_not_yet_arrived() -> None:
    decoder = FrameDecoder(10)
    assert decoder.max_frame == 10
    decoder.set_max_frame(50)
    assert decoder.max_frame == 50
    assert decoder.feed(stream_of([b"a" * 50])) == [b"a" * 50]

    # A header already accepted keeps its body even if the limit drops meanwhile.
    assert decoder.feed(frame_header(40)) == []
    decoder.set_max_frame(10)
    assert decoder.feed(b"b" * 40) == [b"b" * 40]

    with pytest.raises(DecodeError):
        decoder.feed(frame_header(11))


@pytest.mark.parametrize("length", [-1, MAX_FRAME_LIMIT + 1])
def test_frame_header_refuses_unframeable_lengths(length: int) -> None:
    with pytest.raises(ValueError, match="cannot be framed"):
        frame_header(length)


def test_frame_header_is_big_endian() -> None:
    assert frame_header(0) == b"\x00\x00\x00\x00"
    assert frame_header(0x01020304) == b"\x01\x02\x03\x04"
    assert frame_header(MAX_FRAME_LIMIT) == b"\xff\xff\xff\xff"
