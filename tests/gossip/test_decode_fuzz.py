"""Long fuzzing of ``decode``: hostile bytes raise ``DecodeError`` and nothing else.

Two sources of frames, 10,000 examples each: arbitrary bytes (mostly stopped by the msgpack
layer) and valid frames with bytes flipped, overwritten, inserted, deleted, cut off or appended
(which reach the field, dtype, shape and size checks behind it).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossiplearn.errors import DecodeError
from gossiplearn.gossip.messages import (
    DECLINE_REASONS,
    WIRE_DTYPES,
    Accept,
    Decline,
    Limits,
    Message,
    ModelOffer,
    PeerRecord,
    PeersReply,
    PeersRequest,
    Propose,
    decode,
    encode,
)

LIMITS = Limits()
LONG = settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))

U64 = st.integers(min_value=0, max_value=2**64 - 1)
TEXT = st.text(min_size=1, max_size=20)


@st.composite
def small_tensors(draw: st.DrawFn) -> np.ndarray:
    dtype = WIRE_DTYPES[draw(st.sampled_from(sorted(WIRE_DTYPES)))]
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    size = math.prod(shape) * dtype.itemsize
    return np.frombuffer(draw(st.binary(min_size=size, max_size=size)), dtype).reshape(shape)


records = st.builds(PeerRecord, peer_id=TEXT, addrs=st.lists(TEXT, max_size=3).map(tuple))
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Propose, fingerprint=st.binary(max_size=32), samples=U64, model_bytes=U64),
    st.just(Accept()),
    st.builds(Decline, reason=st.sampled_from(sorted(DECLINE_REASONS)), detail=TEXT),
    st.builds(
        ModelOffer,
        fingerprint=st.binary(max_size=32),
        samples=U64,
        steps=U64,
        accuracy=st.none() | st.floats(allow_nan=False, allow_infinity=False),
        loss=st.none() | st.floats(allow_nan=False, allow_infinity=False),
        tensors=st.dictionaries(TEXT, small_tensors(), max_size=3),
    ),
    st.builds(PeersRequest, sender=records),
    st.builds(PeersReply, peers=st.lists(records, max_size=4).map(tuple)),
)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with 1 to 6 edits."""
    frame = bytearray(encode(draw(messages)))
    for _ in range(draw(st.integers(1, 6))):
        edit = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]))
        pos = draw(st.integers(0, max(0, len(frame) - 1)))
        if edit == "flip" and frame:
            frame[pos] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set" and frame:
            frame[pos] = draw(st.integers(0, 255))
        elif edit == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete" and frame:
            del frame[pos : pos + draw(st.integers(1, 8))]
        elif edit == "truncate":
            del frame[pos:]
        else:
            frame += draw(st.binary(min_size=1, max_size=16))
    return bytes(frame)


def decode_raises_only_decode_error(frame: bytes) -> None:
    try:
        msg = decode(frame, limits=LIMITS)
    except DecodeError:
        return
    # what decodes is a well-formed message: it encodes, and decodes to the same bytes again
    again = encode(msg)
    assert encode(decode(again, limits=LIMITS)) == again


@pytest.mark.slow
@LONG
@given(st.binary(max_size=4096))
def test_decode_of_arbitrary_bytes_raises_only_decode_error(frame: bytes) -> None:
    decode_raises_only_decode_error(frame)


@pytest.mark.slow
@LONG
@given(mutated_frames())
def test_decode_of_mutated_valid_frames_raises_only_decode_error(frame: bytes) -> None:
    decode_raises_only_decode_error(frame)
