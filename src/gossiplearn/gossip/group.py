"""Secure group averaging as pure state machines: one ``LeaderRound`` and one ``MemberRound``
per member, h11-style (docs/protocol.md 16; messages in ``gossip.group_messages``, the checks
they apply in ``gossip.group_rules``).

A round averages the models of ``g ≥ 3`` members so that no one sees another's model, only the
group's sum: each member sends its fixed-point vector (``crypto.fixedpoint``) masked with one
pairwise mask per other member (``crypto.masking``); the leader adds the masked vectors, the
masks cancel, and every member (the leader included) adopts the same result: the
sample-weighted average of the tensors and the plain average of the statistics vectors, so the
group's weighted sum of models and sum of statistics are conserved (as the pairwise merge).

The leader invites, collects every member's signed ephemeral key, sends all the keys to every
member, collects the masked shares, and sends back their sum. A member checks every key: the
announcements are exactly the invited group, in order; each is signed by its owner for this
round, group, model and task; its own entry is the one it sent; every sample count is > 0.

Invariants:
- Both sides take their model snapshot, and check that it can be encoded (finite, within the
  fixed-point bound: ``OutOfRange``), before they send anything.
- There is no dropout recovery: a decline, an abort, a refusal or ``abandon`` (a dropout or a
  deadline, told by the driver) ends the round, and nothing is ever unmasked or merged. The
  round then holds no key or seed; every later ``receive`` raises ``LocalProtocolError``.
- A remote that breaks the protocol raises ``GroupRefused`` (a ``RemoteProtocolError`` with a
  stable ``reason``) and moves the round to ERROR.
- A member derives its seeds, and sends its one share, only after every signature checks out;
  it sends at most one share per round and never answers a second ``GroupKeys``.
- Pure: no I/O, clocks or sleeps; the round id comes from the caller's ``rng``; ephemeral keys
  come from ``X25519PrivateKey.generate`` (the OS CSPRNG) unless the caller passes one.
"""

from __future__ import annotations

import contextlib
import enum
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gossiplearn.crypto import masking
from gossiplearn.crypto.fixedpoint import Contribution, OutOfRange, decode_sum
from gossiplearn.crypto.identity import Identity
from gossiplearn.crypto.masking import KeyAnnouncement, RoundContext
from gossiplearn.errors import LocalProtocolError, RemoteProtocolError
from gossiplearn.gossip.exchange import LocalModel
from gossiplearn.gossip.group_messages import (
    MAX_GROUP,
    GroupAbort,
    GroupDecline,
    GroupInvite,
    GroupJoin,
    GroupKeys,
    GroupMessage,
    GroupShare,
    GroupSum,
)
from gossiplearn.gossip.group_rules import (
    GroupRefused,
    check_invite_group,
    check_join,
    check_keys,
    check_length,
    group_problem,
    layout_of,
    masked_share,
    seed_with,
)


class Phase(enum.Enum):
    IDLE = "idle"  # member: waiting for an invite
    JOINING = "joining"  # leader: collecting joins; member: joined, waiting for the keys
    SHARING = "sharing"  # leader: collecting shares; member: share sent, waiting for the sum
    DONE = "done"  # the result was yielded
    DECLINED = "declined"  # member: it declined the invite
    ABANDONED = "abandoned"  # a decline, an abort or a dropout ended the round
    ERROR = "error"  # a refusal ended the round


ENDED = (Phase.DONE, Phase.DECLINED, Phase.ABANDONED, Phase.ERROR)


@dataclass(frozen=True, slots=True, eq=False)
class GroupResult:
    """What every member adopts: the group's average (tensors in our dtypes)."""

    tensors: Mapping[str, np.ndarray] = field(repr=False)  # sample-weighted average
    stats: np.ndarray | None = field(repr=False)  # plain average of the statistics vectors
    samples: int  # the group's total sample count
    size: int  # members, the leader included


@dataclass(frozen=True, slots=True, eq=False)
class Completed:
    """The leader's end of a round: send ``sum`` to every member, adopt ``result``."""

    sum: GroupSum
    result: GroupResult


class _Round:
    """What both roles share: the terminal phases, refusals and ``abandon``."""

    phase: Phase
    ended: str  # why the round ended early ("" while it runs or when it completed)
    ctx: RoundContext | None
    _key: X25519PrivateKey | None
    _seeds: dict[str, bytes]

    @contextlib.contextmanager
    def _step(self) -> Iterator[None]:
        """One input: none once the round is over; a refusal ends it in ERROR, a snapshot
        that cannot be encoded in ABANDONED (the exception propagates either way)."""
        if self.phase in ENDED:
            raise LocalProtocolError(f"the round is over ({self.phase.value}); nothing more")
        try:
            yield
        except RemoteProtocolError as exc:
            self._end(Phase.ERROR, getattr(exc, "reason", "refused"))
            raise
        except OutOfRange as exc:
            self._end(Phase.ABANDONED, exc.reason)
            raise

    def _end(self, phase: Phase, reason: str) -> None:
        self.phase = phase
        self.ended = reason
        self._key = None  # drop every secret: nothing of this round may be unmasked later
        self._seeds = {}

    def _check_round(self, msg: GroupMessage) -> None:
        assert self.ctx is not None
        if msg.round_id != self.ctx.round_id:
            raise GroupRefused("wrong-round", f"a {type(msg).__name__} for another round")

    @property
    def round_id(self) -> bytes:
        """The round's id (raises ``LocalProtocolError`` before a member saw an invite)."""
        if self.ctx is None:
            raise LocalProtocolError("no round yet")
        return self.ctx.round_id

    def abandon(self, reason: str) -> GroupAbort:
        """End the round (a dropout, a deadline, shutting down) and return the abort to send
        to the other side(s). Idempotent once the round failed; raises ``LocalProtocolError``
        after it completed or before a round exists."""
        if self.ctx is None or self.phase in (Phase.DONE, Phase.DECLINED, Phase.IDLE):
            raise LocalProtocolError(f"no round to abandon ({self.phase.value})")
        if self.phase not in ENDED:
            self._end(Phase.ABANDONED, reason)
        return GroupAbort(self.ctx.round_id, self.ended)


class LeaderRound(_Round):
    """Our side of a round we lead; ``members``: the others we invite, in group order.

    Raises ``OutOfRange`` (our snapshot cannot be encoded) or ``LocalProtocolError`` (a bad
    group) on construction, before anything is sent."""

    def __init__(
        self,
        local: LocalModel,
        identity: Identity,
        members: Sequence[str],
        *,
        rng: random.Random,
        tensors: Mapping[str, np.ndarray],
        stats: np.ndarray | None = None,
        key: X25519PrivateKey | None = None,
    ) -> None:
        group = (identity.peer_id, *members)
        problem = group_problem(group)
        if problem is not None:
            raise LocalProtocolError(problem)
        if local.samples <= 0:
            raise LocalProtocolError("a member without samples cannot weigh in an average")
        self.layout = layout_of(local)
        self._own = Contribution.of(self.layout, tensors, stats)
        self.ctx = RoundContext(rng.randbytes(16), group, local.fingerprint, local.task)
        self._key = X25519PrivateKey.generate() if key is None else key
        self._me = masking.announce(identity, self.ctx, self._key, local.samples)
        self._joins: dict[str, KeyAnnouncement] = {}
        self._seeds = {}
        self._shares: dict[str, np.ndarray] = {}
        self._masked: np.ndarray | None = None
        self.phase = Phase.JOINING
        self.ended = ""
        self.decline: tuple[str, GroupDecline] | None = None  # who declined, and how

    def invite(self) -> GroupInvite:
        """The invite to send to every member."""
        assert self.ctx is not None
        if self.phase is not Phase.JOINING:
            raise LocalProtocolError(f"no invites once the round is {self.phase.value}")
        c = self.ctx
        return GroupInvite(c.round_id, c.group, c.fingerprint, c.task, self._me.samples)

    def receive(self, sender: str, msg: GroupMessage) -> GroupKeys | GroupAbort | Completed | None:
        """Feed one message from member ``sender``. Returns ``GroupKeys`` to send to every
        member once all have joined; a ``GroupAbort`` to send to the others when a member
        declined or aborted (the round is ABANDONED); ``Completed`` once every share is in.
        Raises ``GroupRefused`` (the round moves to ERROR) or ``LocalProtocolError``."""
        with self._step():
            assert self.ctx is not None
            if sender not in self.ctx.group[1:]:
                raise LocalProtocolError(f"{sender} is not a member we invited")
            return self._receive(sender, msg)

    def _receive(self, sender: str, msg: GroupMessage) -> GroupKeys | GroupAbort | Completed | None:
        self._check_round(msg)
        if isinstance(msg, GroupAbort):
            self._end(Phase.ABANDONED, "aborted")
            return self.abandon("aborted")
        if self.phase is Phase.JOINING and isinstance(msg, GroupDecline):
            self.decline = (sender, msg)
            self._end(Phase.ABANDONED, "declined")
            return self.abandon("declined")
        if self.phase is Phase.JOINING and isinstance(msg, GroupJoin) and sender not in self._joins:
            return self._join(sender, msg)
        if self.phase is Phase.SHARING and isinstance(msg, GroupShare):
            if sender in self._shares:
                raise GroupRefused("unexpected", "a second share")
            return self._share(sender, msg)
        raise GroupRefused("unexpected", f"a {type(msg).__name__} while {self.phase.value}")

    def _join(self, sender: str, msg: GroupJoin) -> GroupKeys | None:
        assert self.ctx is not None and self._key is not None
        ann = KeyAnnouncement(sender, msg.public_key, msg.samples, msg.signature)
        seen = [self._me.public_key, *(j.public_key for j in self._joins.values())]
        check_join(ann, self.ctx, seen)
        self._seeds[sender] = seed_with(self._key, self.ctx, self._me.peer_id, ann)
        self._joins[sender] = ann
        if len(self._joins) < len(self.ctx.group) - 1:
            return None
        keys = (self._me, *(self._joins[p] for p in self.ctx.group[1:]))
        self._masked = masked_share(self._own, keys, self._me.peer_id, self._seeds)
        self._key = None  # our share is masked: the key and seeds have done their work
        self._seeds = {}
        self.phase = Phase.SHARING
        return GroupKeys(self.ctx.round_id, keys)

    def _share(self, sender: str, msg: GroupShare) -> Completed | None:
        assert self.ctx is not None and self._masked is not None
        check_length(msg, self.layout, "bad-share")
        self._shares[sender] = msg.words
        if len(self._shares) < len(self.ctx.group) - 1:
            return None
        total = masking.sum_words([self._masked, *self._shares.values()], self.layout.length)
        try:
            tensors, stats = decode_sum(self.layout, total)
        except OutOfRange as exc:  # some member sent garbage; the sum does not say who
            raise GroupRefused("bad-sum", exc.detail, offence=False) from None
        samples = self._me.samples + sum(j.samples for j in self._joins.values())
        result = GroupResult(tensors, stats, samples, len(self.ctx.group))
        self._end(Phase.DONE, "")
        return Completed(GroupSum(self.ctx.round_id, total), result)


class MemberRound(_Round):
    """Our side of a round another peer leads."""

    def __init__(
        self,
        local: LocalModel,
        identity: Identity,
        *,
        key: X25519PrivateKey | None = None,
        max_group: int = MAX_GROUP,
    ) -> None:
        self.local = local
        self.identity = identity
        self.layout = layout_of(local)
        self.max_group = max_group
        self.ctx = None
        self._key = X25519PrivateKey.generate() if key is None else key
        self._seeds = {}
        self._own: Contribution | None = None
        self._me: KeyAnnouncement | None = None
        self._leader_samples = 0
        self._samples = 0  # the group's total, from GroupKeys
        self.phase = Phase.IDLE
        self.ended = ""

    def receive_invite(
        self,
        msg: GroupMessage,
        *,
        sender: str,
        tensors: Mapping[str, np.ndarray],
        stats: np.ndarray | None = None,
        busy: bool = False,
        closing: bool = False,
    ) -> GroupJoin | GroupDecline:
        """Answer an invite from ``sender`` (the stream's authenticated peer), with our model
        snapshot. Raises ``GroupRefused`` for a bad invite (the round moves to ERROR) and
        ``OutOfRange`` when our snapshot cannot be encoded (ABANDONED: ``abandon`` gives the
        abort to send); nothing is sent in either case."""
        with self._step():
            if self.phase is not Phase.IDLE:
                raise LocalProtocolError(f"the invite was already answered ({self.phase.value})")
            if not isinstance(msg, GroupInvite):
                raise GroupRefused("unexpected", f"expected an invite, not {type(msg).__name__}")
            self.ctx = RoundContext(msg.round_id, msg.group, msg.fingerprint, msg.task)
            decline = self._check_invite(msg, sender, busy=busy, closing=closing)
            if decline is not None:
                self._end(Phase.DECLINED, decline.reason)
                return decline
            assert self._key is not None
            self._own = Contribution.of(self.layout, tensors, stats)
            self._me = masking.announce(self.identity, self.ctx, self._key, self.local.samples)
            self._leader_samples = msg.samples
            self.phase = Phase.JOINING
            return GroupJoin(
                msg.round_id, self._me.public_key, self._me.samples, self._me.signature
            )

    def _check_invite(
        self, msg: GroupInvite, sender: str, *, busy: bool, closing: bool
    ) -> GroupDecline | None:
        """Refuse a bad invite; the decline to send, if we decline; None to join."""
        me = self.identity.peer_id
        check_invite_group(msg.group, sender=sender, me=me, max_group=self.max_group)
        if msg.samples <= 0:
            raise GroupRefused("bad-samples", f"the leader announces {msg.samples} samples")
        if closing:
            return GroupDecline(msg.round_id, "closing")
        if msg.task != self.local.task:
            return GroupDecline(msg.round_id, "incompatible", "task contract differs")
        if msg.fingerprint != self.local.fingerprint:
            return GroupDecline(msg.round_id, "incompatible", "model fingerprint differs")
        if self.local.samples <= 0:
            return GroupDecline(msg.round_id, "incompatible", "we have no samples")
        return GroupDecline(msg.round_id, "busy") if busy else None

    def receive(self, msg: GroupMessage) -> GroupShare | GroupResult | None:
        """Feed one message from the leader: ``GroupKeys`` returns our ``GroupShare`` to
        send; ``GroupSum`` returns the ``GroupResult`` to adopt; ``GroupAbort`` ends the round
        (None). Raises ``GroupRefused`` (the round moves to ERROR) or ``LocalProtocolError``."""
        with self._step():
            if self.phase is Phase.IDLE:
                raise LocalProtocolError("no round yet: answer an invite first")
            return self._receive(msg)

    def _receive(self, msg: GroupMessage) -> GroupShare | GroupResult | None:
        self._check_round(msg)
        if isinstance(msg, GroupAbort):
            self._end(Phase.ABANDONED, "aborted")
            return None
        if self.phase is Phase.JOINING and isinstance(msg, GroupKeys):
            return self._keys(msg)
        if self.phase is Phase.SHARING and isinstance(msg, GroupSum):
            return self._sum(msg)
        raise GroupRefused("unexpected", f"a {type(msg).__name__} while {self.phase.value}")

    def _keys(self, msg: GroupKeys) -> GroupShare:
        assert self.ctx is not None and self._key is not None
        assert self._own is not None and self._me is not None
        check_keys(msg.keys, self.ctx, self._me, self._leader_samples)
        for ann in msg.keys:
            if ann.peer_id != self._me.peer_id:
                self._seeds[ann.peer_id] = seed_with(self._key, self.ctx, self._me.peer_id, ann)
        self._samples = sum(k.samples for k in msg.keys)
        words = masked_share(self._own, msg.keys, self._me.peer_id, self._seeds)
        self._own = None  # one share per round: the key, seeds and snapshot are done with
        self._key = None
        self._seeds = {}
        self.phase = Phase.SHARING
        return GroupShare(self.ctx.round_id, words)

    def _sum(self, msg: GroupSum) -> GroupResult:
        assert self.ctx is not None
        check_length(msg, self.layout, "bad-sum")
        try:
            tensors, stats = decode_sum(self.layout, msg.words)
        except OutOfRange as exc:  # the leader should have refused it: it is to blame
            raise GroupRefused("bad-sum", exc.detail) from None
        self._end(Phase.DONE, "")
        return GroupResult(tensors, stats, self._samples, len(self.ctx.group))
