"""The group-round codec: every message round-trips; hostile bytes raise only DecodeError."""

from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossiplearn.crypto.masking import KeyAnnouncement
from gossiplearn.errors import DecodeError
from gossiplearn.gossip.group_messages import (
    MAX_GROUP,
    GroupAbort,
    GroupDecline,
    GroupInvite,
    GroupJoin,
    GroupKeys,
    GroupLimits,
    GroupMessage,
    GroupShare,
    GroupStatsShare,
    GroupStatsSum,
    GroupSum,
    decode,
    encode,
    words_limits,
)
from gossiplearn.gossip.messages import DECLINE_REASONS

LIMITS = GroupLimits()  # 64 KiB: every control frame, and vectors of up to 8,000 words
FAST = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

ROUND = st.binary(min_size=16, max_size=16)
PEER = st.text(min_size=1, max_size=60)
U64 = st.integers(0, 2**64 - 1)
DIGEST = st.binary(max_size=64)
WORDS = st.lists(U64, max_size=64).map(lambda xs: np.array(xs, dtype=np.uint64))
ENTRY = st.builds(
    KeyAnnouncement,
    PEER,
    st.binary(min_size=32, max_size=32),
    U64,
    st.binary(min_size=64, max_size=64),
)
messages: st.SearchStrategy[GroupMessage] = st.one_of(
    st.builds(
        GroupInvite,
        ROUND,
        st.lists(PEER, max_size=MAX_GROUP).map(tuple),
        DIGEST,
        DIGEST,
        U64,
        st.none() | st.integers(1, 1 << 24),
    ),
    st.builds(
        GroupJoin,
        ROUND,
        st.binary(min_size=32, max_size=32),
        U64,
        st.binary(min_size=64, max_size=64),
    ),
    st.builds(GroupDecline, ROUND, st.sampled_from(sorted(DECLINE_REASONS)), st.text(max_size=50)),
    st.builds(GroupKeys, ROUND, st.lists(ENTRY, max_size=MAX_GROUP).map(tuple)),
    st.builds(GroupShare, ROUND, WORDS),
    st.builds(GroupSum, ROUND, WORDS),
    st.builds(GroupStatsShare, ROUND, WORDS),
    st.builds(GroupStatsSum, ROUND, WORDS),
    st.builds(GroupAbort, ROUND, st.text(max_size=64)),
)


def same(a: GroupMessage, b: GroupMessage) -> bool:
    if isinstance(a, GroupShare | GroupSum | GroupStatsShare | GroupStatsSum):
        return (
            type(a) is type(b)
            and a.round_id == b.round_id  # type: ignore[union-attr]
            and np.array_equal(a.words, b.words)  # type: ignore[union-attr]
        )
    return a == b


@FAST
@given(messages)
def test_every_message_round_trips(msg: GroupMessage) -> None:
    back = decode(encode(msg), limits=LIMITS)
    assert same(back, msg)


@FAST
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_decode_error(frame: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(frame, limits=LIMITS)


@FAST
@given(messages, st.data())
def test_damaged_frames_raise_only_decode_error(msg: GroupMessage, data: st.DataObject) -> None:
    frame = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(frame)))
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if op == "flip" and at < len(frame):
            frame[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del frame[at:]
        elif op == "insert":
            frame[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif at < len(frame):
            del frame[at]
    with contextlib.suppress(DecodeError):
        decode(bytes(frame), limits=LIMITS)


def body(**fields: object) -> bytes:
    return msgpack.packb({"v": 1, **fields}, use_bin_type=True)  # type: ignore[no-any-return]


R = bytes(16)


@pytest.mark.parametrize(
    "frame",
    [
        body(t="g-share", round=R, len=2, words=bytes(8)),  # fewer bytes than declared
        body(t="g-share", round=R, len=1, words=bytes(16)),  # more
        body(t="g-sum", round=R, len=2**40, words=b""),  # more words than the frame can hold
        body(t="g-share", round=bytes(15), len=0, words=b""),  # a short round id
        body(t="g-join", round=R, key=bytes(31), n=1, sig=bytes(64)),
        body(t="g-join", round=R, key=bytes(32), n=-1, sig=bytes(64)),
        body(t="g-join", round=R, key=bytes(32), n=True, sig=bytes(64)),
        body(t="g-invite", round=R, group=["a"] * 17, fp=b"", task=b"", n=1),
        body(t="g-invite", round=R, group=["a", ""], fp=b"", task=b"", n=1),
        body(t="g-invite", round=R, group=["a"], fp=bytes(65), task=b"", n=1),
        body(t="g-invite", round=R, group=["a"], fp=b"", task=b"", n=1, stats=0),
        body(t="g-invite", round=R, group=["a"], fp=b"", task=b"", n=1, stats=-3),
        body(t="g-invite", round=R, group=["a"], fp=b"", task=b"", n=1, stats=2**24 + 1),
        body(t="g-invite", round=R, group=["a"], fp=b"", task=b"", n=1, stats=True),
        body(t="g-stats-share", round=R, len=1, words=bytes(16)),
        body(t="g-keys", round=R, keys=[["a", bytes(32), 1]]),
        body(t="g-decline", round=R, reason="tired", detail=""),
        body(t="g-abort", round=R, reason="x" * 65),
        body(t="g-hello", round=R),
        body(t="g-abort", reason="x"),
        msgpack.packb({"v": 2, "t": "g-abort", "round": R, "reason": ""}),
        msgpack.packb(["g-abort"]),
    ],
)
def test_invalid_frames_are_decode_errors(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(frame, limits=LIMITS)


def test_a_frame_beyond_the_limit_is_refused_before_parsing() -> None:
    frame = encode(GroupShare(R, np.zeros(64, np.uint64)))
    assert len(frame) <= words_limits(64).max_frame
    decode(frame, limits=words_limits(64))
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode(frame, limits=GroupLimits(max_frame=len(frame) - 1))


def test_words_travel_as_little_endian_uint64() -> None:
    frame = encode(GroupSum(R, np.array([1, 2**64 - 1], np.uint64)))
    raw = msgpack.unpackb(frame)
    assert raw["len"] == 2
    assert raw["words"] == (1).to_bytes(8, "little") + b"\xff" * 8


def test_an_invite_says_whether_the_round_sums_statistics_first() -> None:
    """Without statistics the invite is the frame it always was (no ``stats`` key); with them
    it carries their length, and a nil ``stats`` reads as none."""
    invite = GroupInvite(R, ("a", "b", "c"), b"f", b"t", 5)
    assert encode(invite) == body(
        t="g-invite", round=R, group=["a", "b", "c"], fp=b"f", task=b"t", n=5
    )
    two = GroupInvite(R, ("a", "b", "c"), b"f", b"t", 5, stats=12)
    assert msgpack.unpackb(encode(two))["stats"] == 12
    assert decode(encode(two), limits=LIMITS) == two
    nil = body(t="g-invite", round=R, group=["a"], fp=b"", task=b"", n=1, stats=None)
    assert decode(nil, limits=LIMITS) == GroupInvite(R, ("a",), b"", b"", 1)


def test_statistics_shares_and_sums_have_types_of_their_own() -> None:
    words = np.array([7, 2**63], np.uint64)
    for cls, kind in ((GroupStatsShare, "g-stats-share"), (GroupStatsSum, "g-stats-sum")):
        frame = encode(cls(R, words))
        assert msgpack.unpackb(frame)["t"] == kind
        back = decode(frame, limits=words_limits(2))
        assert type(back) is cls and np.array_equal(back.words, words)  # type: ignore[union-attr]
