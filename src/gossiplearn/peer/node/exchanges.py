"""The exchange driver: moves the bytes of one model exchange (``/gossiplearn/exchange/1.0.0``)
for the pure state machines of ``gossip.exchange``, on either side, and hands the received model
to the ``ModelMerger``.

Invariants:
- At most one exchange at a time (the slot, ``busy``, which group rounds share:
  ``node/slot.py``): inbound proposals while busy are declined, so each merge is taken against
  a fresh snapshot and concurrent merges never stack on one stale snapshot (which could
  overshoot the average); the pairwise deltas of an exchange cancel, and the sample-weighted
  sum of all models is conserved.
- Under secure averaging (``pairwise`` False) our model never goes to one peer: we start no
  exchange and decline every proposal (``incompatible``, unless a truer reason applies).
- A merge is applied as a delta against the snapshot that was sent (``gossip.merge``), so
  training steps taken during the exchange are kept.
- Every wait is under a deadline (``node/limits.py``); the model transfer under one counted
  from Accept. Nothing a remote sends escapes: ``initiate`` returns an ``Outcome`` and the
  handler returns; a remote's fault is charged through ``Admission.charge``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any

import numpy as np
import trio

from gossiplearn.errors import LocalProtocolError, RemoteProtocolError, TransportError
from gossiplearn.gossip import aggregate, compression
from gossiplearn.gossip.exchange import (
    InitiatorExchange,
    LocalModel,
    Merge,
    Outcome,
    Phase,
    ResponderExchange,
    task_mismatch,
)
from gossiplearn.gossip.merge import MergeKind, measure
from gossiplearn.gossip.messages import Accept, Decline, ModelOffer, encode
from gossiplearn.gossip.sampling import PeerView
from gossiplearn.peer.home.config import GossipConfig
from gossiplearn.peer.learning.learner import Learner
from gossiplearn.peer.net.framed import FramedStream, close_quietly, first_error, offload
from gossiplearn.peer.net.transport import Stream, Transport
from gossiplearn.peer.node.admission import Admission
from gossiplearn.peer.node.limits import (
    CONTROL_LIMITS,
    control_timeout,
    model_limits,
    transfer_timeout,
)
from gossiplearn.peer.node.merging import Applied, ModelMerger
from gossiplearn.peer.node.slot import ExchangeSlot
from gossiplearn.peer.node.stats import NodeStats

log = logging.getLogger(__name__)

EXCHANGE_PROTOCOL = "/gossiplearn/exchange/1.0.0"
GROUPS_ONLY = "this peer averages only in secure groups (privacy.secure_averaging)"


class ExchangeDriver:
    def __init__(
        self,
        transport: Transport,
        learner: Learner,
        merger: ModelMerger,
        admission: Admission,
        config: GossipConfig,
    ) -> None:
        self.transport = transport
        self.learner = learner
        self.merger = merger
        self.admission = admission
        self.view: PeerView = admission.view
        self.stats: NodeStats = admission.stats
        self.config = config
        self.local = LocalModel.of(
            learner.specs(),
            learner.samples,
            learner.model_bytes(),
            task=learner.task_digest,
            stats=learner.stats_layout,
        )
        self.model_limits = model_limits(self.local.model_bytes, len(self.local.specs))
        self.control_timeout = control_timeout(config)
        self.transfer_timeout = transfer_timeout(config, self.model_limits.max_frame)
        self._residual: dict[str, Any] | None = None  # what lossy encodings lost, float32
        self.slot = ExchangeSlot()  # shared with the group driver (node/group.py)
        # False under secure averaging: our model never goes to one peer in the clear, so we
        # start no pairwise exchange and decline every proposal as incompatible
        self.pairwise = True

    # ---- the slot

    @property
    def busy(self) -> bool:
        """An exchange (pairwise or a group round) is in flight."""
        return self.slot.busy

    @property
    def closing(self) -> bool:
        return self.slot.closing

    async def close(self, grace: float) -> None:
        """Decline new exchanges; wait up to ``grace`` s for the one in flight to finish."""
        await self.slot.close(grace)

    @property
    def fresh(self) -> bool:
        """True until our first completed exchange or group round: our model holds nobody's
        data but ours."""
        return self.stats.counters.completed == 0 and self.stats.group.completed == 0

    # ---- initiator

    async def initiate(self, peer: str) -> Outcome:
        """Run one exchange with ``peer``. Never raises for a remote's fault."""
        if not self.pairwise:
            raise LocalProtocolError("secure averaging is on: no pairwise exchanges")
        if self.busy or self.closing:
            return Outcome.DECLINED
        self.slot.take()
        self.stats.counters.initiated += 1
        entry = self.view.get(peer)
        framed: FramedStream | None = None
        stream: Stream | None = None
        swapping = False
        try:
            with trio.fail_after(self.config.exchange_timeout):
                stream = await self.transport.open_stream(
                    peer, EXCHANGE_PROTOCOL, entry.addrs if entry else ()
                )
                framed = FramedStream(stream)
                exchange = InitiatorExchange(self.local, adopt_ratio=self.config.adopt_ratio)
                with trio.fail_after(self.control_timeout):
                    await framed.send(exchange.propose())
                    exchange.receive(await framed.receive(CONTROL_LIMITS))
                if exchange.phase is Phase.DECLINED:
                    self._declined(peer, exchange)
                    await close_quietly(stream)
                    return Outcome.DECLINED
                swapping = True
                await self._swap(framed, peer, exchange)
            await close_quietly(stream)
        except (TransportError, trio.TooSlowError) as exc:
            self.stats.counters.failed += 1
            self.admission.fail(peer, f"exchange failed: {exc!r}")
            if stream is not None:
                await stream.reset()
            if swapping and isinstance(exc, trio.TooSlowError):
                await self.admission.offend(peer, "timeout")  # it accepted, then held us up
            return Outcome.FAILED
        except RemoteProtocolError as exc:
            if stream is not None:
                await stream.reset()
            await self.admission.charge(peer, exc)
            return Outcome.REFUSED
        finally:
            self.stats.count_bytes(framed)
            self.slot.release()
        return Outcome.COMPLETED

    def _declined(self, peer: str, exchange: InitiatorExchange) -> None:
        decline = exchange.decline
        assert decline is not None
        self.stats.counters.declined += 1
        if decline.reason == "incompatible":
            # not a transient condition: back off like after a failure
            self.view.failure(peer, trio.current_time())
            detail = (
                task_mismatch(self.local.task, decline.task)
                if decline.task and decline.task != self.local.task
                else decline.detail
            )
            self.admission.incompatible(peer, f"declined by them: {detail}")

    # ---- responder

    async def on_stream(self, stream: Stream) -> None:
        """The protocol handler: answer an exchange within the stream limits."""
        await self.admission.serve_bounded(stream, self._answer)

    async def _answer(self, stream: Stream) -> None:
        peer = stream.remote_peer
        framed = FramedStream(stream)
        took_slot = False
        try:
            with trio.fail_after(self.config.exchange_timeout):
                exchange = ResponderExchange(
                    self.local,
                    max_model_bytes=self.model_limits.max_frame,
                    adopt_ratio=self.config.adopt_ratio,
                )
                with trio.fail_after(self.control_timeout):
                    proposal = await framed.receive(CONTROL_LIMITS)
                if not self.admission.admissible(peer):  # banned while its proposal came
                    await stream.reset()
                    return
                # decide and take the slot with no checkpoint in between
                busy = self.busy or self.admission.over_fair_share(peer) or not self.pairwise
                answer = exchange.receive_propose(proposal, busy=busy, closing=self.closing)
                if not self.pairwise and isinstance(answer, Decline) and answer.reason == "busy":
                    answer = Decline("incompatible", GROUPS_ONLY)
                if isinstance(answer, Accept):
                    self.slot.take()
                    took_slot = True
                self.view.mark_connected(peer, trio.current_time())
                await framed.send(answer)
                if isinstance(answer, Decline) and answer.reason == "incompatible":
                    self.admission.incompatible(peer, f"we declined: {answer.detail}")
                if not took_slot:
                    self.stats.counters.declined_inbound += 1
                    await stream.close()
                    return
                await self._swap(framed, peer, exchange)
                self.stats.counters.answered += 1
            await close_quietly(stream)
        except (TransportError, trio.TooSlowError) as exc:
            if took_slot:
                self.stats.counters.failed += 1
                self.view.failure(peer, trio.current_time())
            log.info("exchange from %s failed: %r", peer, exc)
            await stream.reset()
            if isinstance(exc, trio.TooSlowError):  # honest initiators send at once
                await self.admission.offend(peer, "timeout")
        except RemoteProtocolError as exc:
            await stream.reset()
            await self.admission.charge(peer, exc)
        finally:
            self.stats.count_bytes(framed)
            if took_slot:
                self.slot.release()

    # ---- both

    async def _swap(
        self, framed: FramedStream, peer: str, exchange: InitiatorExchange | ResponderExchange
    ) -> Merge:
        """Send our model and receive theirs concurrently, under the transfer deadline; then
        check and apply the merge (local work, outside that deadline)."""
        with trio.fail_after(self.transfer_timeout):
            own_age = self.merger.age()
            stats = self.learner.statistics()  # only merges move it, and we hold the slot
            snapshot = await self.learner.snapshot()
            offer, encoded = await self._offer(snapshot, own_age, stats)
            body = await offload(self.local.model_bytes, encode, exchange.offer(offer))
            received: list[Any] = []

            async def receive() -> None:
                received.append(await framed.receive(self.model_limits))

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive)
                    await framed.send_body(body)
            except BaseExceptionGroup as group:
                raise first_error(group) from None
        if encoded is not None:  # sent: what it lost goes into the next one (error feedback)
            self._residual = encoded.residual
        merge = exchange.receive(received[0])  # structural checks: raises Refused
        assert merge is not None
        new_stats = None
        if stats is not None:  # their model into our statistics' coordinates, then average
            theirs_stats = merge.offer.stats
            assert theirs_stats is not None  # checked by the exchange
            rebased = await self.learner.rebase(merge.offer.tensors, theirs_stats, stats)
            merge = replace(merge, offer=replace(merge.offer, tensors=rebased))
            new_stats = aggregate.average(stats, theirs_stats)
        measures = await offload(self.local.model_bytes, measure, snapshot, merge.offer.tensors)
        applied = await self.merger.apply(snapshot, own_age, merge, measures, new_stats)
        self._log(peer, applied, merge.offer.age, own_age)
        self.admission.exchanged_with(peer)
        self.view.success(peer, trio.current_time())
        self.stats.record_exchange(
            peer,
            merge.offer,
            measures.relative_distance,
            time.time(),
            consensus=applied.kind is not MergeKind.KEEP,  # a fresh model we ignored
        )
        if applied.far:  # honest late joiners are far once or twice; a poisoner every time
            await self.admission.offend(peer, "outlier")
        return merge

    async def _offer(
        self, snapshot: dict[str, Any], own_age: float, stats: np.ndarray | None
    ) -> tuple[ModelOffer, compression.Encoded | None]:
        """Our ModelOffer of ``snapshot`` (in the configured encoding, if any)."""
        encoded = None
        if self.config.compression != "none":
            encoded = await offload(
                self.local.model_bytes,
                compression.encode,
                snapshot,
                self.config.compression,
                self._residual,
            )
        latest = self.stats.history.latest
        offer = ModelOffer(
            fingerprint=self.local.fingerprint,
            samples=self.learner.samples,
            steps=self.learner.steps,
            accuracy=_finite(latest.accuracy) if latest else None,
            loss=_finite(latest.loss) if latest else None,
            tensors=encoded.tensors if encoded else snapshot,
            age=own_age,
            fresh=self.fresh,
            enc=self.config.compression if encoded else None,
            scales=encoded.scales if encoded else (),
            task=self.local.task,
            stats=stats,
        )
        return offer, encoded

    def _log(self, peer: str, applied: Applied, their_age: float, own_age: float) -> None:
        if applied.kind is MergeKind.KEEP:
            self.stats.counters.seeded += 1
            log.info("%s is new: it adopts our model, and we keep ours", peer)
        elif applied.kind is MergeKind.ADOPT:
            self.stats.counters.adopted += 1
            log.info(
                "adopted the model of %s (age %.0f examples, ours %.0f)", peer, their_age, own_age
            )
        if applied.not_adopted:
            log.info(
                "not adopting the model of %s: %s; averaged instead", peer, applied.not_adopted
            )
        if applied.clipped:
            self.stats.counters.clipped += 1
            log.info("clipped the model from %s: %s", peer, applied.clipped)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
