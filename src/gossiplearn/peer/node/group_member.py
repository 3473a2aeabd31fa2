"""Our side of the secure group rounds other peers lead (docs/protocol.md 16): the handler of
``/gossiplearn/group/1.0.0``, one ``MemberRound`` per invite. The driver (``node/group.py``)
owns the parts it uses (slot, learner, admission, counters, the merge of the average).

Invariants:
- We join only while the slot is free and we are not closing, and take the slot as we decide,
  with no checkpoint in between; the snapshot we contribute is taken after that.
- We answer at most one invite per round id (``RecentRounds``): a replay is refused.
- Nothing is merged unless the leader's sum arrived and checked out; any other end sends the
  leader a GroupAbort (best-effort) once we have joined.
- An honest leader keeps its own deadlines, so we wait for its keys and its sums up to about
  twice as long as it waits for us; past that it is an offence ``timeout``.
- For a task with statistics we contribute our snapshot rebased to the group's average
  statistics, and adopt those only with the average model (``GroupDriver.adopt``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import trio

from gossiplearn.crypto.fixedpoint import OutOfRange
from gossiplearn.crypto.identity import Identity
from gossiplearn.errors import RemoteProtocolError, TransportError
from gossiplearn.gossip.group import GroupResult, MemberRound, StatsAverage
from gossiplearn.gossip.group_messages import (
    GroupDecline,
    GroupInvite,
    GroupLimits,
    GroupMessage,
    GroupShare,
    GroupStatsShare,
)
from gossiplearn.gossip.group_rules import GroupRefused
from gossiplearn.peer.net.framed import offload
from gossiplearn.peer.net.transport import Stream
from gossiplearn.peer.node.group_links import Link, RecentRounds, member_abort

if TYPE_CHECKING:
    from gossiplearn.peer.node.group import GroupDriver

log = logging.getLogger(__name__)

CONTROL = GroupLimits()  # invite, join, decline, keys, abort
WHAT = "group round message"  # what Admission.charge says it refused
KEYS_WAIT = 3  # control deadlines: the leader dials and hears every member within two
SUM_WAIT = 2  # transfer deadlines: the leader hears every share, then sends the sum
# (after a statistics phase, plus one statistics deadline: it sends every member their sum first)


class GroupMember:
    def __init__(self, driver: GroupDriver, identity: Identity) -> None:
        self.driver = driver
        self.identity = identity
        self.answered = RecentRounds()

    async def answer(self, stream: Stream) -> None:
        """Answer one invite on ``stream`` (run inside ``Admission.serve_bounded``). Never
        raises for the remote's fault."""
        d = self.driver
        peer = stream.remote_peer
        link = Link(stream)
        rnd = MemberRound(d.local, self.identity)
        took = joined = False
        try:
            with trio.fail_after(d.config.exchange_timeout):
                with trio.fail_after(d.control_timeout):
                    invite = await link.receive(CONTROL)
                if not d.admission.admissible(peer):  # banned while its invite came
                    await stream.reset()
                    return
                if isinstance(invite, GroupInvite):
                    self.answered.add(invite.round_id)  # raises GroupRefused for a replay
                # decide and take the slot with no checkpoint in between
                busy = d.slot.busy or d.admission.over_fair_share(peer)
                snapshot: dict[str, np.ndarray] = {}
                stats = None
                if not busy and not d.slot.closing:
                    d.slot.take()
                    took = True
                    stats = d.learner.statistics()  # only merges move it: we hold the slot
                    snapshot = await d.learner.snapshot()
                answer = await offload(
                    d.local.model_bytes,
                    functools.partial(rnd.receive_invite, invite, sender=peer, tensors=snapshot),
                    stats=stats,
                    busy=not took,
                    closing=d.slot.closing,
                )
                d.view.mark_connected(peer, trio.current_time())
                with trio.fail_after(d.control_timeout):
                    await link.send(answer)
                if isinstance(answer, GroupDecline):
                    self._declined(peer, answer)
                    await link.close()
                    return
                joined = True
                d.stats.group.joined += 1
                taken = await self._take_part(link, rnd, snapshot, stats)
            await link.close()
            if taken is None:
                d.abandon("aborted")
            else:
                await d.adopt(taken[1], taken[0], (peer,))
        except (TransportError, trio.TooSlowError) as exc:
            reason = "timeout" if isinstance(exc, trio.TooSlowError) else "dropout"
            log.info("group round of %s failed: %r", peer, exc)
            await link.abort(member_abort(rnd, reason))
            if joined:
                d.view.failure(peer, trio.current_time())
                d.abandon(reason)
            if isinstance(exc, trio.TooSlowError):  # honest leaders keep their deadlines
                await d.admission.offend(peer, "timeout")
        except RemoteProtocolError as exc:
            reason = exc.reason if isinstance(exc, GroupRefused) else "malformed"
            await link.abort(member_abort(rnd, reason))
            await d.admission.charge(peer, exc, what=WHAT)
            if joined:
                d.abandon(reason)
        except OutOfRange as exc:  # our snapshot cannot be encoded: we must not take part
            log.warning("our model cannot be averaged securely: %s", exc)
            await link.abort(member_abort(rnd, exc.reason))
            d.abandon(exc.reason)
        finally:
            d.stats.count_bytes(link.framed)
            if took:
                d.slot.release()

    async def _take_part(
        self,
        link: Link,
        rnd: MemberRound,
        snapshot: Mapping[str, np.ndarray],
        stats: np.ndarray | None,
    ) -> tuple[GroupResult, Mapping[str, np.ndarray]] | None:
        """After our join: the keys, our share (with statistics: the statistics' share, their
        sum, our model rebased to their average), the sum. The result and the snapshot we
        contributed, or None when the leader aborted."""
        d = self.driver
        with trio.fail_after(KEYS_WAIT * d.control_timeout):
            keys = await link.receive(CONTROL)
        share = await self._feed(rnd, keys)
        contributed = snapshot
        sum_wait = SUM_WAIT * d.transfer_timeout
        if isinstance(share, GroupStatsShare):
            # the leader may still be sending the others their statistics' sum
            sum_wait += d.stats_timeout
            assert stats is not None
            with trio.fail_after(d.stats_timeout):
                await link.send(share)
            with trio.fail_after(SUM_WAIT * d.stats_timeout):
                heard = await link.receive(d.stats_limits)
            average = await self._feed(rnd, heard)
            if average is None:
                return None
            assert isinstance(average, StatsAverage)
            contributed = await d.learner.rebase(snapshot, stats, average.stats)
            share = await offload(d.local.model_bytes, rnd.contribute, contributed)
        if share is None:
            return None
        assert isinstance(share, GroupShare)
        with trio.fail_after(d.transfer_timeout):
            await link.send(share)
        with trio.fail_after(sum_wait):
            final = await link.receive(d.words_limits)
        result = await self._feed(rnd, final)
        assert result is None or isinstance(result, GroupResult)
        return None if result is None else (result, contributed)

    async def _feed(
        self, rnd: MemberRound, msg: GroupMessage
    ) -> GroupShare | GroupStatsShare | StatsAverage | GroupResult | None:
        """``rnd.receive(msg)``; masking and decoding a big model in a thread."""
        return await offload(self.driver.local.model_bytes, rnd.receive, msg)

    def _declined(self, peer: str, decline: GroupDecline) -> None:
        self.driver.stats.group.declined_inbound += 1
        if decline.reason == "incompatible":
            self.driver.admission.incompatible(
                peer, f"we declined their group round: {decline.detail}"
            )
