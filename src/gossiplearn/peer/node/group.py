"""The group driver: moves the bytes of secure group-averaging rounds
(``/gossiplearn/group/1.0.0``, docs/protocol.md 16) for the pure state machines of
``gossip.group``, and applies the group's average. This module leads rounds; our side of the
rounds others lead is ``node/group_member.py``; streams and waits are ``node/group_links.py``.

Invariants:
- One exchange at a time: a round, led or joined, holds the slot the pairwise driver uses
  (``node/slot.py``) from our snapshot to our merge; an invite while busy is declined busy.
- A round never falls back to a pairwise exchange: with fewer than ``size - 1`` admissible
  neighbours it is not started (``skipped``: ``not-enough-neighbours``).
- Nothing is merged unless the round completed. A decline, an abort, a dropout, a refusal or a
  deadline abandons it: GroupAbort goes to the others best-effort, the state machine forgets
  its keys and seeds, nothing is unmasked. A leader that completed merges even if the sum does
  not reach a member (that member ends unmerged: docs/protocol.md 16.6).
- The average is applied as a delta against the snapshot we contributed (training continues
  during the round), screened as one received model (``ModelMerger.apply_average``); one that
  screening refuses, or a far outlier, is not merged, and nobody is blamed: the sum does not
  say who poisoned it.
- A task with consortium statistics sums them first (docs/protocol.md 16.1): we rebase our
  snapshot to the group's average statistics (``Learner.rebase``) and contribute that; we
  adopt the average statistics only with the average model, never after a failed round.
- Every wait is under a deadline (``node/limits.py``): the control deadline for the dial, the
  invite and the join, and for the keys; the transfer deadline of the masked vector's size for
  shares and the sum (and of the statistics vector's size for theirs); the whole round within
  ``exchange_timeout``. A remote's protocol fault is charged through ``Admission.charge``; a
  deadline missed by a member after every member joined is an offence ``timeout``, as in the
  pairwise exchange.
"""

from __future__ import annotations

import enum
import functools
import logging
import random
import time
from collections.abc import Mapping, Sequence

import numpy as np
import trio

from gossiplearn.crypto.fixedpoint import OutOfRange
from gossiplearn.crypto.identity import Identity
from gossiplearn.errors import LocalProtocolError, RemoteProtocolError, TransportError, UserError
from gossiplearn.gossip.exchange import Refused
from gossiplearn.gossip.group import ENDED, Completed, GroupResult, LeaderRound, StatsAverage
from gossiplearn.gossip.group_messages import (
    MAX_GROUP,
    MIN_GROUP,
    GroupAbort,
    GroupKeys,
    GroupMessage,
    GroupStatsSum,
    words_limits,
)
from gossiplearn.gossip.group_rules import GroupRefused, layout_of, stats_layout_of
from gossiplearn.gossip.merge import measure
from gossiplearn.peer.net.framed import offload
from gossiplearn.peer.net.transport import Stream
from gossiplearn.peer.node.config import GroupSettings
from gossiplearn.peer.node.exchanges import ExchangeDriver
from gossiplearn.peer.node.group_links import Link, Stopped, each, encode_offloaded, leader_abort
from gossiplearn.peer.node.group_member import CONTROL, WHAT, GroupMember
from gossiplearn.peer.node.limits import transfer_timeout

log = logging.getLogger(__name__)

GROUP_PROTOCOL = "/gossiplearn/group/1.0.0"


class GroupOutcome(enum.Enum):
    COMPLETED = "completed"  # the average was merged
    SKIPPED = "skipped"  # not started: busy, closing, too few neighbours, our model unfit
    ABANDONED = "abandoned"  # ended unmerged (counted by reason)


class GroupDriver:
    """Secure group rounds of one node; shares the slot, learner, merger and admission of its
    pairwise driver. ``identity``: the node's own (it signs our ephemeral keys); without one
    the node neither leads nor answers group rounds.

    Raises ``UserError`` for settings a person must change (a size out of range) and
    ``LocalProtocolError`` for wiring that cannot work (no or another identity)."""

    def __init__(
        self,
        pairwise: ExchangeDriver,
        settings: GroupSettings,
        identity: Identity | None,
        *,
        rng: random.Random,
    ) -> None:
        if identity is not None and identity.peer_id != pairwise.transport.peer_id:
            raise LocalProtocolError("the identity is not the transport's")
        if settings.enabled:
            if identity is None:
                raise LocalProtocolError("secure averaging needs the node's identity")
            if not MIN_GROUP <= settings.size <= MAX_GROUP:
                raise UserError(
                    f"privacy.group_size must be {MIN_GROUP} to {MAX_GROUP}, not {settings.size}"
                )
        self.pairwise = pairwise
        self.settings = settings
        self.identity = identity
        self.rng = rng
        self.slot = pairwise.slot
        self.learner = pairwise.learner
        self.admission = pairwise.admission
        self.view = pairwise.view
        self.stats = pairwise.stats
        self.local = pairwise.local
        self.config = pairwise.config
        self.control_timeout = pairwise.control_timeout
        self.words_limits = words_limits(layout_of(self.local).length)
        self.transfer_timeout = transfer_timeout(self.config, self.words_limits.max_frame)
        stats = stats_layout_of(self.local)  # the statistics' phase, for a task with them
        self.stats_limits = words_limits(0 if stats is None else stats.length)
        self.stats_timeout = transfer_timeout(self.config, self.stats_limits.max_frame)
        self.member = None if identity is None else GroupMember(self, identity)

    # ---- leader

    async def lead(self) -> GroupOutcome:
        """Lead one round now, with ``size - 1`` random admissible neighbours; how it ended.
        Never raises for a remote's fault."""
        if not self.settings.enabled or self.identity is None:
            raise LocalProtocolError("secure averaging is off: no group rounds to lead")
        if self.slot.busy or self.slot.closing:
            return GroupOutcome.SKIPPED
        now = trio.current_time()
        candidates = sorted(p for p in self.view.eligible(now) if self.admission.admissible(p))
        if len(candidates) < self.settings.size - 1:
            log.info("too few neighbours for a group of %d: no round", self.settings.size)
            return self.skip("not-enough-neighbours")
        members = self.rng.sample(candidates, self.settings.size - 1)
        self.slot.take()
        try:
            own_stats = self.learner.statistics()  # only merges move it, and we hold the slot
            snapshot = await self.learner.snapshot()
            try:  # in the trio thread: it draws the round id from our rng
                rnd = LeaderRound(
                    self.local,
                    self.identity,
                    members,
                    rng=self.rng,
                    tensors=snapshot,
                    stats=own_stats,
                )
            except OutOfRange as exc:
                log.warning("our model cannot be averaged securely: %s", exc)
                return self.skip(exc.reason)
            self.stats.group.led += 1
            return await self._lead(rnd, snapshot, own_stats, members)
        finally:
            self.slot.release()

    async def _lead(
        self,
        rnd: LeaderRound,
        snapshot: Mapping[str, np.ndarray],
        own_stats: np.ndarray | None,
        members: Sequence[str],
    ) -> GroupOutcome:
        links: dict[str, Link] = {}
        lock = trio.Lock()  # the round takes one message at a time (big ones in a thread)
        out: list[GroupKeys | StatsAverage | Completed] = []
        joined = False
        contributed = snapshot  # what we add to the sum: rebased, for a task with statistics

        async def feed(peer: str, msg: GroupMessage) -> None:
            async with lock:
                if rnd.phase in ENDED:  # another member ended it: nothing more counts
                    return
                got = await offload(self.local.model_bytes, rnd.receive, peer, msg)
            if isinstance(got, GroupAbort):
                raise Stopped((peer,), None, got)
            if got is not None:
                out.append(got)

        async def invite(peer: str) -> None:  # each member's invite goes as its stream opens
            entry = self.view.get(peer)
            with trio.fail_after(self.control_timeout):
                stream = await self.pairwise.transport.open_stream(
                    peer, GROUP_PROTOCOL, entry.addrs if entry else ()
                )
            links[peer] = Link(stream)
            with trio.CancelScope(shield=True), trio.fail_after(self.control_timeout):
                await links[peer].send(rnd.invite())  # whole: see send_whole
            with trio.fail_after(self.control_timeout):
                msg = await links[peer].receive(CONTROL)
            await feed(peer, msg)

        async def share(peer: str) -> None:
            with trio.fail_after(self.transfer_timeout):
                msg = await links[peer].receive(self.words_limits)
            await feed(peer, msg)

        async def stats_share(peer: str) -> None:
            with trio.fail_after(self.stats_timeout):
                msg = await links[peer].receive(self.stats_limits)
            await feed(peer, msg)

        async def send_whole(msg: GroupKeys | GroupStatsSum, peer: str) -> None:
            # Shielded from another member's failure (under its own deadline): a frame cut in
            # half reads as garbage, and its receiver would charge us for it.
            wait = self.control_timeout if isinstance(msg, GroupKeys) else self.stats_timeout
            with trio.CancelScope(shield=True), trio.fail_after(wait):
                await links[peer].send(msg)

        async def send_sum(peer: str, body: bytes) -> None:
            """Best-effort: a member that misses the sum ends unmerged; we merge all the same."""
            try:
                with trio.fail_after(self.transfer_timeout):
                    await links[peer].send_body(body)
            except (TransportError, trio.TooSlowError) as exc:
                log.info("the group's sum did not reach %s: %r", peer, exc)

        try:
            with trio.fail_after(self.config.exchange_timeout):
                await each(members, invite)
                keys = out.pop()
                assert isinstance(keys, GroupKeys)
                joined = True
                await each(members, functools.partial(send_whole, keys))
                if own_stats is not None:  # the statistics first; then ours, rebased to theirs
                    await each(members, stats_share)
                    average = out.pop()
                    assert isinstance(average, StatsAverage) and average.sum is not None
                    await each(members, functools.partial(send_whole, average.sum))
                    contributed = await self.learner.rebase(snapshot, own_stats, average.stats)
                    async with lock:
                        got = await offload(self.local.model_bytes, rnd.contribute, contributed)
                    assert got is None  # no member's model share has been read yet
                await each(members, share)
            done = out.pop()
            assert isinstance(done, Completed)
            body = await encode_offloaded(done.sum)  # once, the same bytes to every member
            async with trio.open_nursery() as nursery:  # each on its own: see send_sum
                for peer in members:
                    nursery.start_soon(send_sum, peer, body)
        except Stopped as stop:
            reason = await self._settle(stop, rnd, joined=joined)
            abort = stop.abort or leader_abort(rnd, reason)
            async with trio.open_nursery() as nursery:
                for peer, link in links.items():
                    nursery.start_soon(link.abort, None if peer in stop.peers else abort)
            return self.abandon(reason)
        except (trio.TooSlowError, OutOfRange) as exc:  # a deadline, or our rebased model
            reason = exc.reason if isinstance(exc, OutOfRange) else "timeout"
            if isinstance(exc, OutOfRange):
                log.warning("our rebased model cannot be averaged securely: %s", exc)
            async with trio.open_nursery() as nursery:
                for link in links.values():
                    nursery.start_soon(link.abort, leader_abort(rnd, reason))
            return self.abandon(reason)
        finally:
            for link in links.values():
                self.stats.count_bytes(link.framed)
        for link in links.values():
            await link.close()
        return await self.adopt(contributed, done.result, members)

    async def _settle(self, stop: Stopped, rnd: LeaderRound, *, joined: bool) -> str:
        """Charge what ended a round we lead; the reason the round is abandoned for."""
        exc = stop.exc
        if exc is None:  # a member declined or aborted
            if rnd.decline is not None and rnd.decline[1].reason == "incompatible":
                peer, decline = rnd.decline
                self.view.failure(peer, trio.current_time())
                self.admission.incompatible(peer, f"declined our group round: {decline.detail}")
            return "declined" if rnd.decline is not None else "aborted"
        for peer in stop.peers:
            if isinstance(exc, GroupRefused) and not exc.offence:  # a bad sum: whose fault?
                log.warning("group round refused: %s; nobody can be blamed", exc)
            elif isinstance(exc, RemoteProtocolError):
                await self.admission.charge(peer, exc, what=WHAT)
            elif isinstance(exc, trio.TooSlowError) and joined:
                self.view.failure(peer, trio.current_time())
                await self.admission.offend(peer, "timeout")  # it joined, then held us up
            else:
                self.admission.fail(peer, f"group round failed: {exc!r}")
        if isinstance(exc, RemoteProtocolError):
            return exc.reason if isinstance(exc, GroupRefused) else "malformed"
        return "timeout" if isinstance(exc, trio.TooSlowError) else "dropout"

    # ---- member

    async def on_stream(self, stream: Stream) -> None:
        """The protocol handler: answer one invite within the stream limits (registered only
        when the node has its identity)."""
        if self.member is None:
            raise LocalProtocolError("no identity: the node cannot answer group rounds")
        await self.admission.serve_bounded(stream, self.member.answer)

    # ---- both

    async def adopt(
        self, contributed: Mapping[str, np.ndarray], result: GroupResult, partners: Sequence[str]
    ) -> GroupOutcome:
        """Merge the group's average against the snapshot we ``contributed`` (for a task with
        statistics: rebased to the group's average statistics, which we adopt with it),
        screened."""
        measures = await offload(self.local.model_bytes, measure, contributed, result.tensors)
        merger = self.pairwise.merger
        try:
            applied = await merger.apply_average(
                contributed, result.tensors, measures, result.stats
            )
        except Refused as exc:
            log.warning("not merging the average of a group of %d: %s", result.size, exc)
            return self.abandon("screened")
        if applied.clipped:
            self.stats.group.clipped += 1
            log.info("clipped the average of a group of %d: %s", result.size, applied.clipped)
        self.stats.record_group(result.size, partners, measures.relative_distance, time.time())
        now = trio.current_time()
        for peer in partners:
            self.view.success(peer, now)
            self.admission.exchanged_with(peer)
        log.info("merged the average of a group of %d (%d samples)", result.size, result.samples)
        return GroupOutcome.COMPLETED

    def skip(self, reason: str) -> GroupOutcome:
        self.stats.bump(self.stats.group.skipped, reason)
        return GroupOutcome.SKIPPED

    def abandon(self, reason: str) -> GroupOutcome:
        self.stats.bump(self.stats.group.abandoned, reason)
        return GroupOutcome.ABANDONED
