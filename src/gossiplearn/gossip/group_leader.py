"""The leader's side of a secure group round (``LeaderRound``; the protocol and its invariants:
``gossip.group``, docs/protocol.md 16). It invites, collects joins and sends every key, collects
the masked shares of each phase and returns their sums; it never sees an unmasked share."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gossiplearn.crypto import masking
from gossiplearn.crypto.fixedpoint import Contribution
from gossiplearn.crypto.identity import Identity
from gossiplearn.crypto.masking import KeyAnnouncement, RoundContext
from gossiplearn.errors import LocalProtocolError
from gossiplearn.gossip.exchange import LocalModel
from gossiplearn.gossip.group_messages import (
    GroupAbort,
    GroupDecline,
    GroupInvite,
    GroupJoin,
    GroupKeys,
    GroupMessage,
    GroupShare,
    GroupStatsShare,
    GroupStatsSum,
    GroupSum,
)
from gossiplearn.gossip.group_round import (
    Completed,
    GroupResult,
    Phase,
    Round,
    StatsAverage,
)
from gossiplearn.gossip.group_rules import (
    GroupRefused,
    average_model,
    average_statistics,
    check_join,
    check_length,
    group_problem,
    layout_of,
    masked_share,
    stats_layout_of,
)


class LeaderRound(Round):
    """Our side of a round we lead; ``members``: the others we invite, in group order;
    ``tensors``, ``stats``: our snapshot and (exactly for a task with statistics) the
    statistics it is trained under.

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
        self.local = local
        self.layout = layout_of(local)
        self.stats_layout = stats_layout_of(local)
        self._own_stats = None
        self._own: Contribution | None = self._contribution(tensors, stats)
        self.ctx = RoundContext(rng.randbytes(16), group, local.fingerprint, local.task)
        self._key = X25519PrivateKey.generate() if key is None else key
        self._me = masking.announce(identity, self.ctx, self._key, local.samples)
        self._joins: dict[str, KeyAnnouncement] = {}
        self._keys: tuple[KeyAnnouncement, ...] = ()
        self._seeds = {}
        self._stats_seeds = {}
        self._average = None
        self._stats_shares: dict[str, np.ndarray] = {}
        self._stats_masked: np.ndarray | None = None
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
        stats = None if self.stats_layout is None else self.stats_layout.stats  # k, not words
        return GroupInvite(c.round_id, c.group, c.fingerprint, c.task, self._me.samples, stats)

    def receive(
        self, sender: str, msg: GroupMessage
    ) -> GroupKeys | GroupAbort | StatsAverage | Completed | None:
        """Feed one message from member ``sender``. Returns ``GroupKeys`` to send to every
        member once all have joined; with statistics, ``StatsAverage`` once every statistics
        share is in (send its ``sum`` to every member, then ``contribute``); ``Completed``
        once every model share is in (and ours); a ``GroupAbort`` to send to the others when a
        member declined or aborted (the round is ABANDONED). Raises ``GroupRefused`` (the round
        moves to ERROR) or ``LocalProtocolError``."""
        with self._step():
            assert self.ctx is not None
            if sender not in self.ctx.group[1:]:
                raise LocalProtocolError(f"{sender} is not a member we invited")
            return self._receive(sender, msg)

    def contribute(self, tensors: Mapping[str, np.ndarray]) -> Completed | None:
        """Our snapshot rebased to the group's average statistics (``StatsAverage``), masked
        for the model phase. ``Completed`` if every member's share is already in. Raises
        ``OutOfRange`` (the round is ABANDONED: ``abandon`` gives the abort to send),
        ``GroupRefused`` for a bad sum, ``LocalProtocolError`` out of turn."""
        with self._step():
            if self.phase is not Phase.REBASING:
                raise LocalProtocolError(f"no model to contribute while {self.phase.value}")
            self._masked = self._mask(Contribution.of(self.layout, tensors, None))
            self.phase = Phase.SHARING
            return self._complete()

    def _receive(
        self, sender: str, msg: GroupMessage
    ) -> GroupKeys | GroupAbort | StatsAverage | Completed | None:
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
        if self.phase is Phase.STATS and isinstance(msg, GroupStatsShare):
            return self._stats_share(sender, msg)
        # a member may share its model before we have rebased ours: kept until we contribute
        if self.phase in (Phase.REBASING, Phase.SHARING) and isinstance(msg, GroupShare):
            if sender in self._shares:
                raise GroupRefused("unexpected", "a second share")
            check_length(msg, self.layout, "bad-share")
            self._shares[sender] = msg.words
            return self._complete()
        raise GroupRefused("unexpected", f"a {type(msg).__name__} while {self.phase.value}")

    def _join(self, sender: str, msg: GroupJoin) -> GroupKeys | None:
        assert self.ctx is not None and self._key is not None
        ann = KeyAnnouncement(sender, msg.public_key, msg.samples, msg.signature)
        seen = [self._me.public_key, *(j.public_key for j in self._joins.values())]
        check_join(ann, self.ctx, seen)
        self._derive(self._me.peer_id, ann, stats=self.stats_layout is not None)
        self._joins[sender] = ann
        if len(self._joins) < len(self.ctx.group) - 1:
            return None
        self._keys = (self._me, *(self._joins[p] for p in self.ctx.group[1:]))
        self._key = None  # every seed is derived: the key has done its work
        if self._own_stats is None:  # one phase: our model is masked now
            assert self._own is not None
            self._masked = self._mask(self._own)
            self.phase = Phase.SHARING
        else:
            me = self._me.peer_id
            self._stats_masked = masked_share(self._own_stats, self._keys, me, self._stats_seeds)
            self._stats_seeds = {}
            self._own_stats = None
            self.phase = Phase.STATS
        self._own = None
        return GroupKeys(self.ctx.round_id, self._keys)

    def _mask(self, own: Contribution) -> np.ndarray:
        """Our model's share, masked with the model phase's seeds (then forgotten)."""
        masked = masked_share(own, self._keys, self._me.peer_id, self._seeds)
        self._seeds = {}
        return masked

    def _stats_share(self, sender: str, msg: GroupStatsShare) -> StatsAverage | None:
        assert self.ctx is not None and self.stats_layout is not None
        assert self.local.stats is not None and self._stats_masked is not None
        if sender in self._stats_shares:
            raise GroupRefused("unexpected", "a second statistics share")
        check_length(msg, self.stats_layout, "bad-share")
        self._stats_shares[sender] = msg.words
        if len(self._stats_shares) < len(self.ctx.group) - 1:
            return None
        shares = [self._stats_masked, *self._stats_shares.values()]
        total = masking.sum_words(shares, self.stats_layout.length)
        # some member sent garbage if this fails; the sum does not say who
        self._average = average_statistics(
            self.stats_layout, self.local.stats, total, len(self.ctx.group), offence=False
        )
        self.phase = Phase.REBASING
        return StatsAverage(self._average.copy(), GroupStatsSum(self.ctx.round_id, total))

    def _complete(self) -> Completed | None:
        """Once our share and every member's are in: the sum, and the result to adopt."""
        assert self.ctx is not None
        if self._masked is None or len(self._shares) < len(self.ctx.group) - 1:
            return None
        total = masking.sum_words([self._masked, *self._shares.values()], self.layout.length)
        tensors = average_model(self.layout, total, offence=False)  # whose garbage? unknown
        samples = sum(k.samples for k in self._keys)
        result = GroupResult(tensors, self._average, samples, len(self.ctx.group))
        self._end(Phase.DONE, "")
        return Completed(GroupSum(self.ctx.round_id, total), result)
