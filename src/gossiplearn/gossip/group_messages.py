"""Messages of a secure group-averaging round and their msgpack codec (docs/protocol.md 16).

A round, led by one member (the leader, first in the group), on one stream per member:

    leader → member  GroupInvite(round, group, fp, task, n[, stats])
    member → leader  GroupJoin(round, key, n, sig) | GroupDecline(round, reason, detail)
    leader → member  GroupKeys(round, every member's [peer, key, n, sig])
  for a task with statistics (the invite's ``stats``: their length), first:
    member → leader  GroupStatsShare(round, masked words)
    leader → member  GroupStatsSum(round, summed words)
  then, for every task:
    member → leader  GroupShare(round, masked words)
    leader → member  GroupSum(round, summed words)
    either way       GroupAbort(round, reason), at any point: the round is over

Invariants (as ``gossip.messages``):
- ``decode`` raises ``DecodeError`` and nothing else, whatever the bytes.
- Sizes are checked against ``GroupLimits`` before anything proportional to them is built: the
  msgpack reader is bounded (frame, bin, str and array lengths), and a word vector's byte length
  must equal 8 × its declared length before a view is made.
- Fixed-size fields (round id 16 bytes, X25519 key 32, Ed25519 signature 64) are checked here;
  what depends on the round (group rules, expected vector length, signatures) is checked by
  the state machines in ``gossip.group``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from gossiplearn.crypto.fixedpoint import WORD
from gossiplearn.crypto.masking import (
    PUBLIC_KEY_BYTES,
    ROUND_ID_BYTES,
    SIGNATURE_BYTES,
    KeyAnnouncement,
)
from gossiplearn.errors import DecodeError
from gossiplearn.gossip.messages import (
    DECLINE_REASONS,
    MAX_DIGEST,
    PROTOCOL_VERSION,
    check_version,
    decode_frame,
)

MIN_GROUP = 3  # with two members, each would learn the other's model from the sum
MAX_GROUP = 16
CONTROL_FRAME = 64 * 1024  # invite, join, decline, keys, abort: bytes
MAX_REASON = 64  # characters of an abort reason
MAX_STATS = 1 << 24  # words of a statistics vector an invite may announce


@dataclass(frozen=True, slots=True)
class GroupLimits:
    """Bounds applied while decoding one frame. Sizes in bytes unless stated."""

    max_frame: int = CONTROL_FRAME
    max_group: int = MAX_GROUP  # members in an invite or in GroupKeys
    max_name: int = 256  # characters of a peer ID
    max_text: int = 1024  # characters of a decline's detail


def words_limits(length: int) -> GroupLimits:
    """The limits for a vector of ``length`` words (GroupShare, GroupSum, and the statistics'
    GroupStatsShare, GroupStatsSum)."""
    return GroupLimits(max_frame=length * WORD.itemsize + 1024)


@dataclass(frozen=True, slots=True)
class GroupInvite:
    """Leader → member: join this round of this group, on this model and task?"""

    round_id: bytes
    group: tuple[str, ...]  # peer IDs, leader first, no duplicates, MIN_GROUP..MAX_GROUP
    fingerprint: bytes
    task: bytes
    samples: int  # the leader's
    stats: int | None = None  # the statistics' length: the round sums them first; None: no stats


@dataclass(frozen=True, slots=True)
class GroupJoin:
    """Member → leader: yes, with my signed ephemeral key (``crypto.masking.announce``)."""

    round_id: bytes
    public_key: bytes
    samples: int
    signature: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class GroupDecline:
    """Member → leader: no (``reason`` in ``DECLINE_REASONS``: busy, incompatible, closing)."""

    round_id: bytes
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class GroupKeys:
    """Leader → every member: every member's announcement, in group order, leader's first."""

    round_id: bytes
    keys: tuple[KeyAnnouncement, ...]


@dataclass(frozen=True, slots=True, eq=False)
class GroupShare:
    """Member → leader: its masked fixed-point vector (uint64 words)."""

    round_id: bytes
    words: np.ndarray = field(repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class GroupSum:
    """Leader → every member: the sum of all masked vectors, which is the unmasked sum."""

    round_id: bytes
    words: np.ndarray = field(repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class GroupStatsShare:
    """Member → leader, a task with statistics: its masked statistics vector (uint64 words)."""

    round_id: bytes
    words: np.ndarray = field(repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class GroupStatsSum:
    """Leader → every member: the sum of all masked statistics vectors."""

    round_id: bytes
    words: np.ndarray = field(repr=False)


WordsMessage = GroupShare | GroupSum | GroupStatsShare | GroupStatsSum
_WORDS_KINDS: dict[type, str] = {
    GroupShare: "g-share",
    GroupSum: "g-sum",
    GroupStatsShare: "g-stats-share",
    GroupStatsSum: "g-stats-sum",
}


@dataclass(frozen=True, slots=True)
class GroupAbort:
    """Either way: the round is over, nothing is merged (``reason``: a short key)."""

    round_id: bytes
    reason: str


GroupMessage = (
    GroupInvite
    | GroupJoin
    | GroupDecline
    | GroupKeys
    | GroupShare
    | GroupSum
    | GroupStatsShare
    | GroupStatsSum
    | GroupAbort
)


def encode(msg: GroupMessage) -> bytes:
    """Serialise one message to a msgpack body (without the length prefix)."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION}
    match msg:
        case GroupInvite():
            body |= {"t": "g-invite", "round": msg.round_id, "group": list(msg.group)}
            body |= {"fp": msg.fingerprint, "task": msg.task, "n": msg.samples}
            if msg.stats is not None:  # absent without statistics: the frame is as before
                body["stats"] = msg.stats
        case GroupJoin():
            body |= {"t": "g-join", "round": msg.round_id, "key": msg.public_key}
            body |= {"n": msg.samples, "sig": msg.signature}
        case GroupDecline():
            body |= {"t": "g-decline", "round": msg.round_id}
            body |= {"reason": msg.reason, "detail": msg.detail}
        case GroupKeys():
            keys = [[k.peer_id, k.public_key, k.samples, k.signature] for k in msg.keys]
            body |= {"t": "g-keys", "round": msg.round_id, "keys": keys}
        case GroupShare() | GroupSum() | GroupStatsShare() | GroupStatsSum():
            kind = _WORDS_KINDS[type(msg)]
            words = np.ascontiguousarray(msg.words, dtype=WORD)
            body |= {"t": kind, "round": msg.round_id, "len": int(words.size)}
            body["words"] = words.tobytes()
        case GroupAbort():
            body |= {"t": "g-abort", "round": msg.round_id, "reason": msg.reason}
        case _:  # pragma: no cover - exhaustive over GroupMessage
            raise TypeError(f"not a group message: {msg!r}")
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def decode(frame: bytes, *, limits: GroupLimits) -> GroupMessage:
    """Parse one frame body. Raises ``DecodeError``, and only ``DecodeError``, on anything
    invalid."""
    return decode_frame(
        frame,
        max_frame=limits.max_frame,
        max_str=max(limits.max_text, limits.max_name),
        max_array=max(limits.max_group, 4),
        parse=lambda body: _decode_body(body, limits),
    )


def _decode_body(body: Any, limits: GroupLimits) -> GroupMessage:
    body = check_version(body)
    kind = body.get("t")
    if kind not in _KINDS:
        raise DecodeError(f"unknown group message type {kind!r}")
    round_id = _fixed(body.get("round"), ROUND_ID_BYTES, "round")
    if kind == "g-invite":
        group = _list(body.get("group"), limits, "group")
        return GroupInvite(
            round_id,
            tuple(_peer(p, limits) for p in group),
            _digest(body, "fp"),
            _digest(body, "task"),
            _uint(body.get("n"), "n"),
            _stats_length(body.get("stats")),
        )
    if kind == "g-join":
        return GroupJoin(
            round_id,
            _fixed(body.get("key"), PUBLIC_KEY_BYTES, "key"),
            _uint(body.get("n"), "n"),
            _fixed(body.get("sig"), SIGNATURE_BYTES, "sig"),
        )
    if kind == "g-decline":
        reason = body.get("reason")
        if reason not in DECLINE_REASONS:
            raise DecodeError(f"unknown decline reason {reason!r}")
        return GroupDecline(round_id, str(reason), _text(body.get("detail"), limits.max_text))
    if kind == "g-keys":
        entries = _list(body.get("keys"), limits, "keys")
        return GroupKeys(round_id, tuple(_announcement(e, limits) for e in entries))
    if kind in _BY_KIND:
        length = _uint(body.get("len"), "len")
        if length > limits.max_frame // WORD.itemsize:
            raise DecodeError(f"a vector of {length} words exceeds the frame limit")
        data = body.get("words")
        if not isinstance(data, bytes) or len(data) != length * WORD.itemsize:
            raise DecodeError(f"field 'words' must be bin of exactly {length * WORD.itemsize}")
        return _BY_KIND[kind](round_id, np.frombuffer(data, dtype=WORD))
    return GroupAbort(round_id, _text(body.get("reason"), MAX_REASON))


_BY_KIND: dict[str, type[WordsMessage]] = {kind: cls for cls, kind in _WORDS_KINDS.items()}
_KINDS = ("g-invite", "g-join", "g-decline", "g-keys", *_BY_KIND, "g-abort")


def _stats_length(value: Any) -> int | None:
    """An invite's ``stats``: absent or nil, or the statistics' length (≥ 1 words)."""
    if value is None:
        return None
    length = _uint(value, "stats")
    if not 0 < length <= MAX_STATS:
        raise DecodeError(f"field 'stats' must be 1 to {MAX_STATS}")
    return length


def _fixed(value: Any, size: int, key: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise DecodeError(f"field {key!r} must be bin of exactly {size} bytes")
    return value


def _digest(body: dict[str, Any], key: str) -> bytes:
    value = body.get(key)
    if not isinstance(value, bytes) or len(value) > MAX_DIGEST:
        raise DecodeError(f"field {key!r} must be bin of at most {MAX_DIGEST} bytes")
    return value


def _uint(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DecodeError(f"field {key!r} must be a non-negative integer")
    return value


def _text(value: Any, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise DecodeError(f"a text field must be a string of at most {limit} characters")
    return value


def _list(value: Any, limits: GroupLimits, key: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > limits.max_group:
        raise DecodeError(f"field {key!r} must be an array of at most {limits.max_group}")
    return value


def _peer(value: Any, limits: GroupLimits) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limits.max_name:
        raise DecodeError("a peer ID must be a non-empty string within the length limit")
    return value


def _announcement(item: Any, limits: GroupLimits) -> KeyAnnouncement:
    if not isinstance(item, list) or len(item) != 4:
        raise DecodeError("a key entry must be [peer_id, key, n, sig]")
    peer, key, samples, sig = item
    return KeyAnnouncement(
        _peer(peer, limits),
        _fixed(key, PUBLIC_KEY_BYTES, "key"),
        _uint(samples, "n"),
        _fixed(sig, SIGNATURE_BYTES, "sig"),
    )
