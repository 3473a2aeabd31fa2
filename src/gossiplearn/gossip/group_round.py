"""What both roles of a secure group round share (``gossip.group``: ``LeaderRound``,
``MemberRound``; docs/protocol.md 16): the phases, what a round yields, and the secrets it holds
and forgets.

A round sums one masked vector per phase: for a task with consortium statistics first the
members' statistics (``STATS``), whose average ``s̄`` every member rebases its model to
(``REBASING``: the driver does it, then ``contribute``s the rebased model), then the models
(``SHARING``); for a task without statistics the models alone. Each phase masks with seeds of
its own (``crypto.masking``: one HKDF domain per phase), so no keystream masks two vectors.

Invariants:
- A round that ended (``ENDED``) holds no key and no seed, and takes no more input: every later
  call raises ``LocalProtocolError``. ``abandon`` is how a dropout or a deadline ends it.
- A refusal (``RemoteProtocolError``) ends the round in ERROR; a vector of ours that cannot be
  encoded (``OutOfRange``) ends it ABANDONED, before anything of it is sent.
- Pure: no I/O, clocks or sleeps.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gossiplearn.crypto import masking
from gossiplearn.crypto.fixedpoint import Contribution, OutOfRange, VectorLayout
from gossiplearn.crypto.masking import KeyAnnouncement, RoundContext
from gossiplearn.errors import LocalProtocolError, RemoteProtocolError
from gossiplearn.gossip.group_messages import GroupAbort, GroupMessage, GroupStatsSum, GroupSum
from gossiplearn.gossip.group_rules import GroupRefused, seed_with


class Phase(enum.Enum):
    IDLE = "idle"  # member: waiting for an invite
    JOINING = "joining"  # leader: collecting joins; member: joined, waiting for the keys
    STATS = "stats"  # leader: collecting statistics shares; member: waiting for their sum
    REBASING = "rebasing"  # both: the average statistics are known; our model is due
    SHARING = "sharing"  # leader: collecting model shares; member: waiting for the sum
    DONE = "done"  # the result was yielded
    DECLINED = "declined"  # member: it declined the invite
    ABANDONED = "abandoned"  # a decline, an abort or a dropout ended the round
    ERROR = "error"  # a refusal ended the round


ENDED = (Phase.DONE, Phase.DECLINED, Phase.ABANDONED, Phase.ERROR)


@dataclass(frozen=True, slots=True, eq=False)
class GroupResult:
    """What every member adopts: the group's average (tensors in our dtypes). For a task with
    statistics the tensors are in the coordinates of ``stats``, the group's average statistics,
    which every member adopts with them."""

    tensors: Mapping[str, np.ndarray] = field(repr=False)  # sample-weighted average
    stats: np.ndarray | None = field(repr=False)  # plain average of the statistics vectors
    samples: int  # the group's total sample count
    size: int  # members, the leader included


@dataclass(frozen=True, slots=True, eq=False)
class Completed:
    """The leader's end of a round: send ``sum`` to every member, adopt ``result``."""

    sum: GroupSum
    result: GroupResult


@dataclass(frozen=True, slots=True, eq=False)
class StatsAverage:
    """The end of the statistics phase: the group's average statistics. Rebase our snapshot
    from our statistics to ``stats`` and ``contribute`` it. ``sum``: the leader's, to send to
    every member first (None for a member)."""

    stats: np.ndarray = field(repr=False)
    sum: GroupStatsSum | None = None


class Round:
    """The terminal phases, refusals, ``abandon`` and the secrets of one round."""

    phase: Phase
    ended: str  # why the round ended early ("" while it runs or when it completed)
    ctx: RoundContext | None
    layout: VectorLayout  # the model phase's vector: our tensors
    stats_layout: VectorLayout | None  # the statistics phase's; None: a round of one phase
    _own_stats: Contribution | None  # our statistics, until they are masked
    _key: X25519PrivateKey | None
    _seeds: dict[str, bytes]  # the model phase's, by peer
    _stats_seeds: dict[str, bytes]  # the statistics phase's, by peer
    _average: np.ndarray | None  # the group's average statistics, once known

    @contextlib.contextmanager
    def _step(self) -> Iterator[None]:
        """One input: none once the round is over; a refusal ends it in ERROR, a vector of ours
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

    def _contribution(
        self, tensors: Mapping[str, np.ndarray], stats: np.ndarray | None
    ) -> Contribution:
        """Our model snapshot (returned) and statistics (kept for their phase), checked: raises
        ``OutOfRange`` when either cannot be encoded, ``LocalProtocolError`` when they do not
        fit the round (statistics exactly when the task has them)."""
        if (stats is None) != (self.stats_layout is None):
            raise LocalProtocolError("statistics are given exactly when the task has them")
        model = Contribution.of(self.layout, tensors, None)
        if self.stats_layout is not None:
            self._own_stats = Contribution.of(self.stats_layout, {}, stats)
        return model

    def _end(self, phase: Phase, reason: str) -> None:
        self.phase = phase
        self.ended = reason
        self._forget()

    def _forget(self) -> None:
        """Drop every secret: nothing of this round may be unmasked later."""
        self._key = None
        self._seeds = {}
        self._stats_seeds = {}
        self._own_stats = None

    def _derive(self, me: str, theirs: KeyAnnouncement, *, stats: bool) -> None:
        """Our pair seeds with ``theirs``: the model phase's and, with ``stats``, the statistics
        phase's (refuses ``bad-key``)."""
        assert self.ctx is not None and self._key is not None
        self._seeds[theirs.peer_id] = seed_with(self._key, self.ctx, me, theirs)
        if stats:
            self._stats_seeds[theirs.peer_id] = seed_with(
                self._key, self.ctx, me, theirs, domain=masking.STATS_SEED_DOMAIN
            )

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
