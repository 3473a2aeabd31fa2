"""A member's side of a secure group round (``MemberRound``; the protocol and its invariants:
``gossip.group``, docs/protocol.md 16). It answers one invite, checks every key, and sends one
masked share per phase; a second invite or ``GroupKeys`` is refused."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gossiplearn.crypto import masking
from gossiplearn.crypto.fixedpoint import Contribution
from gossiplearn.crypto.identity import Identity
from gossiplearn.crypto.masking import KeyAnnouncement, RoundContext
from gossiplearn.errors import LocalProtocolError
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
    GroupStatsShare,
    GroupStatsSum,
    GroupSum,
)
from gossiplearn.gossip.group_round import (
    GroupResult,
    Phase,
    Round,
    StatsAverage,
)
from gossiplearn.gossip.group_rules import (
    GroupRefused,
    average_model,
    average_statistics,
    check_invite_group,
    check_keys,
    check_length,
    layout_of,
    masked_share,
    statistics_problem,
    stats_layout_of,
)


class MemberRound(Round):
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
        self.stats_layout = stats_layout_of(local)
        self.max_group = max_group
        self.ctx = None
        self._key = X25519PrivateKey.generate() if key is None else key
        self._seeds = {}
        self._stats_seeds = {}
        self._average = None
        self._own: Contribution | None = None
        self._own_stats = None
        self._me: KeyAnnouncement | None = None
        self._keys: tuple[KeyAnnouncement, ...] = ()
        self._leader_samples = 0
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
        snapshot and (exactly for a task with statistics) the statistics it is trained under.
        Raises ``GroupRefused`` for a bad invite (the round moves to ERROR) and ``OutOfRange``
        when our snapshot cannot be encoded (ABANDONED: ``abandon`` gives the abort to send);
        nothing is sent in either case."""
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
            self._own = self._contribution(tensors, stats)
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
        problem = statistics_problem(msg.stats, self.local.stats)
        if problem is not None:
            return GroupDecline(msg.round_id, "incompatible", problem)
        if self.local.samples <= 0:
            return GroupDecline(msg.round_id, "incompatible", "we have no samples")
        return GroupDecline(msg.round_id, "busy") if busy else None

    def receive(
        self, msg: GroupMessage
    ) -> GroupShare | GroupStatsShare | StatsAverage | GroupResult | None:
        """Feed one message from the leader: ``GroupKeys`` returns our share to send (with
        statistics: ``GroupStatsShare``, else ``GroupShare``); ``GroupStatsSum`` returns the
        ``StatsAverage`` to rebase our snapshot to (then ``contribute``); ``GroupSum`` returns
        the ``GroupResult`` to adopt; ``GroupAbort`` ends the round (None). Raises
        ``GroupRefused`` (the round moves to ERROR) or ``LocalProtocolError``."""
        with self._step():
            if self.phase is Phase.IDLE:
                raise LocalProtocolError("no round yet: answer an invite first")
            return self._receive(msg)

    def contribute(self, tensors: Mapping[str, np.ndarray]) -> GroupShare:
        """Our snapshot rebased to the group's average statistics (``StatsAverage``): the
        model share to send. Raises ``OutOfRange`` (the round is ABANDONED: ``abandon`` gives
        the abort to send) or ``LocalProtocolError`` out of turn."""
        with self._step():
            if self.phase is not Phase.REBASING:
                raise LocalProtocolError(f"no model to contribute while {self.phase.value}")
            return self._share(Contribution.of(self.layout, tensors, None))

    def _receive(
        self, msg: GroupMessage
    ) -> GroupShare | GroupStatsShare | StatsAverage | GroupResult | None:
        self._check_round(msg)
        if isinstance(msg, GroupAbort):
            self._end(Phase.ABANDONED, "aborted")
            return None
        if self.phase is Phase.JOINING and isinstance(msg, GroupKeys):
            return self._keys_in(msg)
        if self.phase is Phase.STATS and isinstance(msg, GroupStatsSum):
            return self._stats_sum(msg)
        if self.phase is Phase.SHARING and isinstance(msg, GroupSum):
            return self._sum(msg)
        raise GroupRefused("unexpected", f"a {type(msg).__name__} while {self.phase.value}")

    def _keys_in(self, msg: GroupKeys) -> GroupShare | GroupStatsShare:
        assert self.ctx is not None and self._key is not None
        assert self._own is not None and self._me is not None
        check_keys(msg.keys, self.ctx, self._me, self._leader_samples)
        me = self._me.peer_id
        for ann in msg.keys:
            if ann.peer_id != me:
                self._derive(me, ann, stats=self.stats_layout is not None)
        self._key = None  # one share per phase: the key has done its work
        self._keys = msg.keys
        own, self._own = self._own, None
        if self._own_stats is None:
            return self._share(own)
        words = masked_share(self._own_stats, msg.keys, me, self._stats_seeds)
        self._own_stats = None
        self._stats_seeds = {}
        self.phase = Phase.STATS
        return GroupStatsShare(self.ctx.round_id, words)

    def _share(self, own: Contribution) -> GroupShare:
        """Our model's share, masked with the model phase's seeds (then forgotten)."""
        assert self.ctx is not None and self._me is not None
        words = masked_share(own, self._keys, self._me.peer_id, self._seeds)
        self._seeds = {}
        self.phase = Phase.SHARING
        return GroupShare(self.ctx.round_id, words)

    def _stats_sum(self, msg: GroupStatsSum) -> StatsAverage:
        assert self.ctx is not None and self.stats_layout is not None
        assert self.local.stats is not None
        check_length(msg, self.stats_layout, "bad-sum")
        # the leader checks the sum as we do: one that fails here is its fault
        self._average = average_statistics(
            self.stats_layout, self.local.stats, msg.words, len(self.ctx.group), offence=True
        )
        self.phase = Phase.REBASING
        return StatsAverage(self._average.copy())

    def _sum(self, msg: GroupSum) -> GroupResult:
        assert self.ctx is not None
        check_length(msg, self.layout, "bad-sum")
        tensors = average_model(self.layout, msg.words, offence=True)  # the leader's to refuse
        self._end(Phase.DONE, "")
        samples = sum(k.samples for k in self._keys)
        return GroupResult(tensors, self._average, samples, len(self.ctx.group))
