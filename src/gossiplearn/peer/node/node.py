"""A gossip-learning peer: owns the gossip, discovery, training and evaluation loops.

The node is the trio shell around the pure core (``gossiplearn.gossip``): it moves bytes for the
exchange state machines, keeps the peer view, paces training, and records what ``status`` shows.

Invariants:
- At most one exchange at a time (``_busy``): inbound proposals while busy are declined. Each
  merge is then taken against a fresh snapshot, so concurrent merges never stack on one stale
  snapshot (which could overshoot the average), and the pairwise deltas of an exchange cancel:
  the sample-weighted sum of all models is conserved.
- A merge is applied as a delta against the snapshot that was sent (see ``gossip.merge``), so
  training steps taken during the exchange are kept.
- Nothing a remote sends escapes a handler: remote faults are counted and the stream reset.
- Every network wait is under a deadline (``exchange_timeout``, ``dial_timeout``), and the
  model transfer under a tighter one derived from the model's size, so a slow drip cannot hold
  the exchange slot.
- Admission (``gate``): a banned peer, or one not on a non-empty member list, is refused when
  its connection is authenticated, before any stream opens; inbound streams are bounded in
  number, overall and per peer.
- A peer that sends invalid data commits an offence (``gossip.penalties``); repeated offences
  ban it for a while. Received models pass ``gossip.screening`` before they are merged.
- Late joiners (``gossip.merge.plan_merge``): while we have never completed an exchange we are
  *fresh* and may adopt a far older model outright; a fresh partner's model is not merged into
  ours. What is merged, and how, is ``peer.merging.ModelMerger``'s: the node moves the bytes,
  counts, logs and penalises.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from gossiplearn.crypto.consortium import Members
from gossiplearn.errors import DecodeError, RemoteProtocolError, TransportError
from gossiplearn.gossip import aggregate, compression
from gossiplearn.gossip.exchange import (
    InitiatorExchange,
    LocalModel,
    Merge,
    Phase,
    Refused,
    ResponderExchange,
    task_mismatch,
)
from gossiplearn.gossip.merge import MergeKind, measure
from gossiplearn.gossip.messages import (
    Accept,
    Decline,
    Limits,
    ModelOffer,
    PeerRecord,
    PeersReply,
    PeersRequest,
    encode,
)
from gossiplearn.gossip.penalties import BanConfig, Penalties
from gossiplearn.gossip.sampling import PeerView
from gossiplearn.gossip.screening import Screen, ScreeningConfig
from gossiplearn.gossip.stats import (
    ExchangeCounters,
    MetricPoint,
    MetricsHistory,
    NeighbourStats,
)
from gossiplearn.peer.home.config import GossipConfig, SecurityConfig, TrainingConfig
from gossiplearn.peer.learning.learner import Learner
from gossiplearn.peer.net.framed import THREAD_THRESHOLD, FramedStream, close_quietly, first_error
from gossiplearn.peer.net.transport import Handler, Stream, Transport
from gossiplearn.peer.node.merging import ModelMerger
from gossiplearn.peer.node.report import finite, node_status

log = logging.getLogger(__name__)

EXCHANGE_PROTOCOL = "/gossiplearn/exchange/1.0.0"
PEERS_PROTOCOL = "/gossiplearn/peers/1.0.0"
CONTROL_LIMITS = Limits(max_frame=64 * 1024)
PEERS_LIMITS = Limits(max_frame=256 * 1024)
PEERS_PER_REPLY = 64
MODEL_MARGIN = 1.05  # inbound model frames may exceed our own encoded size by 5% (+ 64 KiB)
CONTROL_TIMEOUT = 10.0  # seconds for a proposal or a peer-exchange message, at most
MIN_TRANSFER_RATE = 1 << 20  # bytes/s: a model arriving slower than this is abandoned
TRANSFER_SLACK = 5.0  # seconds added to the transfer deadline
RECENT_EXCHANGES = 24  # partners remembered for the fair-share rule
FAIR_SHARE_SLACK = 2.0  # a peer may take up to this many times its fair share of them ...
FAIR_SHARE_MIN = 3  # ... and always this many


@dataclass(frozen=True)
class NodeConfig:
    gossip: GossipConfig
    training: TrainingConfig
    bootstrap: tuple[str, ...] = ()
    description: str = ""
    security: SecurityConfig = field(default_factory=SecurityConfig)
    members: Members = field(default_factory=Members)
    consortium_key_id: str | None = None  # the private network's key id, if any
    task_kind: str = "classification"  # or "regression": which metrics status shows


class Node:
    def __init__(
        self,
        transport: Transport,
        learner: Learner,
        config: NodeConfig,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.transport = transport
        self.learner = learner
        self.config = config
        self.rng = rng or random.Random()
        self.peer_id = transport.peer_id
        self.view = PeerView(self.peer_id)
        self.counters = ExchangeCounters()
        self.neighbours: dict[str, NeighbourStats] = {}
        self.history = MetricsHistory()
        self.consensus: deque[tuple[float, float]] = deque(maxlen=256)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.started_at = time.time()
        self.local = LocalModel.of(
            learner.specs(),
            learner.samples,
            learner.model_bytes(),
            task=learner.task_digest,
            stats=learner.stats_layout,
        )
        max_model = int(self.local.model_bytes * MODEL_MARGIN) + 64 * 1024
        self.model_limits = Limits(max_frame=max_model, max_tensors=len(self.local.specs) + 1)
        sec = config.security
        self.members = config.members
        self.screen = Screen(
            ScreeningConfig(enabled=sec.screening, max_norm_ratio=sec.max_norm_ratio)
        )
        self.merger = ModelMerger(learner, self.screen)
        self.penalties = Penalties(
            BanConfig(strikes=sec.ban_strikes, window=sec.ban_window, ban_seconds=sec.ban_seconds)
        )
        self.control_timeout = min(config.gossip.exchange_timeout, CONTROL_TIMEOUT)
        self.transfer_timeout = min(
            config.gossip.exchange_timeout, TRANSFER_SLACK + max_model / MIN_TRANSFER_RATE
        )
        self.connections_refused: dict[str, int] = {}
        self.streams_refused: dict[str, int] = {}
        self.offences: dict[str, int] = {}
        self.incompatible: dict[str, str] = {}  # peer → why we cannot merge with it (latest)
        self._inbound: dict[str, int] = {}
        self._recent: deque[str] = deque(maxlen=RECENT_EXCHANGES)  # partners, newest last
        self._residual: dict[str, Any] | None = None  # what lossy encodings lost, float32
        self._busy = False
        self._closing = False
        self._idle = trio.Event()
        self._idle.set()
        self._cancel: trio.CancelScope | None = None

    # ------------------------------------------------------------------ lifetime

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every loop until cancelled or ``stop`` is called."""
        self.transport.set_gate(self.gate)
        self.transport.set_handler(EXCHANGE_PROTOCOL, self._on_exchange)
        self.transport.set_handler(PEERS_PROTOCOL, self._on_peers)
        with trio.CancelScope() as scope:
            self._cancel = scope
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._discovery_loop)
                nursery.start_soon(self._gossip_loop)
                nursery.start_soon(self._evaluation_loop)
                if self.config.training.enabled:
                    nursery.start_soon(self._training_loop)
                task_status.started()

    async def stop(self, grace: float = 10.0) -> None:
        """Decline new exchanges, let the one in flight finish (up to ``grace`` s), then stop."""
        self._closing = True
        with trio.move_on_after(grace):
            await self._idle.wait()
        if self._cancel is not None:
            self._cancel.cancel()

    @property
    def fresh(self) -> bool:
        """True until our first completed exchange: our model holds nobody's data but ours."""
        return self.counters.completed == 0

    def model_age(self) -> float:
        """Examples of SGD behind our model: our own, plus what merges brought in."""
        return self.merger.age()

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        if busy:
            self._idle = trio.Event()
        else:
            self._idle.set()

    # ------------------------------------------------------------------ admission, penalties

    def gate(self, peer_id: str) -> str | None:
        """Admission of an authenticated connection: None, or why it is refused."""
        reason: str | None = None
        if self.penalties.banned(peer_id, trio.current_time()):
            reason = "banned"
        elif not self.members.admits(peer_id):
            reason = "not-a-member"
        if reason is not None:
            self.connections_refused[reason] = self.connections_refused.get(reason, 0) + 1
            log.info("refused a connection from %s: %s", peer_id, reason)
        return reason

    def is_admissible(self, peer_id: str) -> bool:
        """Whether we would talk to ``peer_id`` now: a member (if the list is restricted) and
        not banned."""
        return self.members.admits(peer_id) and not self.penalties.banned(
            peer_id, trio.current_time()
        )

    async def update_members(self, members: Members) -> None:
        """Adopt a new member list; peers no longer on it are dropped and disconnected."""
        self.members = members
        for peer_id in sorted({e.peer_id for e in self.view.entries()} | set(self.neighbours)):
            if not members.admits(peer_id):
                log.info("%s is no longer a member: disconnecting", peer_id)
                self.view.forget(peer_id)
                await self.transport.disconnect(peer_id)

    async def _offend(self, peer_id: str, reason: str) -> None:
        """Count an offence (invalid data from ``peer_id``); ban it after repeated ones."""
        self.offences[reason] = self.offences.get(reason, 0) + 1
        if self.penalties.offend(peer_id, trio.current_time()):
            log.warning(
                "banned %s for %g s after repeated invalid data (last: %s)",
                peer_id,
                self.penalties.config.ban_seconds,
                reason,
            )
            self.view.forget(peer_id)
            await self.transport.disconnect(peer_id)

    def _refuse_stream(self, stream: Stream) -> str | None:
        """Why an inbound stream must not be served now (bans, stream limits), or None."""
        peer = stream.remote_peer
        sec = self.config.security
        if not self.is_admissible(peer):
            return "banned" if self.members.admits(peer) else "not-a-member"
        if sum(self._inbound.values()) >= sec.max_inbound_streams:
            return "overload"
        if self._inbound.get(peer, 0) >= sec.max_streams_per_peer:
            return "too-many-streams"
        return None

    async def _serve_bounded(self, stream: Stream, serve: Handler) -> None:
        """Run an inbound handler within the stream limits; a refused stream is reset."""
        peer = stream.remote_peer
        reason = self._refuse_stream(stream)
        if reason is not None:
            self.streams_refused[reason] = self.streams_refused.get(reason, 0) + 1
            await stream.reset()
            if reason == "too-many-streams":  # honest peers open at most two at a time
                await self._offend(peer, reason)
            return
        self._inbound[peer] = self._inbound.get(peer, 0) + 1
        try:
            await serve(stream)
        finally:
            self._inbound[peer] -= 1
            if not self._inbound[peer]:
                del self._inbound[peer]

    # ------------------------------------------------------------------ loops

    async def _training_loop(self) -> None:
        cfg = self.config.training
        period = 1.0 / cfg.steps_per_second if cfg.steps_per_second > 0 else 0.0
        chunk = max(1, round(cfg.steps_per_second * 0.1)) if period else 10
        deadline = trio.current_time()
        while not cfg.max_steps or self.learner.steps < cfg.max_steps:
            count = chunk if not cfg.max_steps else min(chunk, cfg.max_steps - self.learner.steps)
            await self.learner.train(count)
            if period:
                deadline = max(deadline + count * period, trio.current_time() - 1.0)
                await trio.sleep_until(deadline)
            else:
                await trio.lowlevel.checkpoint()
        log.info("training finished after %d steps; gossip goes on", self.learner.steps)

    async def _evaluation_loop(self) -> None:
        while True:
            metrics = await self.learner.evaluate()
            scores = {
                k: v
                for k, v in metrics.items()
                if k not in ("accuracy", "loss") and math.isfinite(v)
            }
            self.history.add(
                MetricPoint(
                    time.time(),
                    self.learner.steps,
                    metrics.get("accuracy"),
                    metrics.get("loss"),
                    scores,
                )
            )
            await trio.sleep(self.config.training.eval_interval)

    async def _gossip_loop(self) -> None:
        cfg = self.config.gossip
        while True:
            await trio.sleep(cfg.interval * self.rng.uniform(0.5, 1.5))
            if self._closing:
                continue
            tried: list[str] = []
            for _ in range(cfg.attempts):
                if self._busy:
                    break  # a remote's exchange is in flight; our turn comes next round
                peer = self.view.sample(self.rng, trio.current_time(), exclude=tried)
                if peer is None:
                    break
                tried.append(peer)
                if await self.initiate(peer) != "declined":
                    break

    async def _discovery_loop(self) -> None:
        """Join through the bootstrap addresses, then keep learning peers from peers.

        While we know nobody we can dial now, the bootstrap addresses are redialled with
        growing backoff (py-libp2p's own bootstrap never retries). Known peers (from the
        address book, or learnt earlier) are the fallback: the wait after a failed bootstrap
        dial ends as soon as one of them is out of its backoff, so a peer whose bootstrap node
        is gone rejoins through the peers it knew.
        """
        backoff = 1.0
        while True:
            now = trio.current_time()
            if not self.view.eligible(now) and self.config.bootstrap:
                joined = await self._dial_bootstrap()
                backoff = 1.0 if joined else min(backoff * 2, 30.0)
                if not joined:
                    wait = backoff * self.rng.uniform(0.8, 1.2)
                    retry_at = self.view.next_retry()
                    if retry_at is not None:
                        wait = min(wait, max(0.0, retry_at - trio.current_time()))
                    await trio.sleep(wait)
                    continue
            peer = self.view.sample(self.rng, trio.current_time())
            if peer is not None:
                await self.ask_peers(peer)
            # learn quickly while the view is small, then settle to the configured pace
            pace = self.config.gossip.discovery_interval if len(self.view) >= 8 else 1.0
            await trio.sleep(
                min(pace, self.config.gossip.discovery_interval) * self.rng.uniform(0.8, 1.2)
            )

    async def _dial_bootstrap(self) -> bool:
        joined = False
        for addr in self.config.bootstrap:
            try:
                peer = await self.transport.connect(addr)
            except TransportError as exc:
                log.warning("bootstrap %s unreachable: %s", addr, exc)
                continue
            if peer == self.peer_id:
                continue
            now = trio.current_time()
            self.view.learn(PeerRecord(peer, (addr,)), now)
            self.view.mark_connected(peer, now)
            log.info("joined through %s", addr)
            joined = True
        return joined

    # ------------------------------------------------------------------ peer exchange

    def own_record(self) -> PeerRecord:
        return PeerRecord(self.peer_id, tuple(self.transport.addrs()[:8]))

    async def ask_peers(self, peer: str) -> int:
        """Ask ``peer`` for the peers it knows; returns how many were new to us."""
        entry = self.view.get(peer)
        framed: FramedStream | None = None
        stream: Stream | None = None
        try:
            with trio.fail_after(self.config.gossip.exchange_timeout):
                stream = await self.transport.open_stream(
                    peer, PEERS_PROTOCOL, entry.addrs if entry else ()
                )
                framed = FramedStream(stream)
                await framed.send(PeersRequest(self.own_record()))
                reply = await framed.receive(PEERS_LIMITS)
                if not isinstance(reply, PeersReply):
                    raise DecodeError(f"expected a peer list, got {type(reply).__name__}")
        except (TransportError, EOFError, trio.TooSlowError) as exc:
            self._fail(peer, f"peer exchange failed: {exc!r}")
            if stream is not None:
                await stream.reset()
            return 0
        except RemoteProtocolError as exc:
            await self._refuse(peer, exc)
            assert stream is not None
            await stream.reset()
            return 0
        finally:
            self._count_bytes(framed)
        await close_quietly(stream)
        now = trio.current_time()
        self.view.success(peer, now)
        self.view.mark_connected(peer, now)
        admitted = [r for r in reply.peers if self.is_admissible(r.peer_id)]
        new = self.view.learn_all(admitted, now, source=peer)
        if new:
            log.info("learnt %d peer(s) from %s", len(new), peer)
        return len(new)

    async def _on_peers(self, stream: Stream) -> None:
        await self._serve_bounded(stream, self._answer_peers)

    async def _answer_peers(self, stream: Stream) -> None:
        framed = FramedStream(stream)
        try:
            with trio.fail_after(self.control_timeout):
                msg = await framed.receive(PEERS_LIMITS)
                if not isinstance(msg, PeersRequest):
                    raise DecodeError(f"expected a peers request, got {type(msg).__name__}")
                now = trio.current_time()
                if msg.sender.peer_id == stream.remote_peer:  # a peer may only speak for itself
                    self.view.learn(msg.sender, now)
                self.view.mark_connected(stream.remote_peer, now)
                records = [self.own_record(), *self.view.records(PEERS_PER_REPLY - 1)]
                await framed.send(PeersReply(tuple(records)))
                await stream.close()
        except (TransportError, EOFError):
            await stream.reset()
        except trio.TooSlowError:
            await stream.reset()
            await self._offend(stream.remote_peer, "timeout")
        except RemoteProtocolError as exc:
            self.counters.refuse("malformed")
            log.warning("peer %s sent a bad peers request: %s", stream.remote_peer, exc)
            await stream.reset()
            await self._offend(stream.remote_peer, "malformed")
        finally:
            self._count_bytes(framed)

    # ------------------------------------------------------------------ exchanges

    async def initiate(self, peer: str) -> str:
        """Run one exchange with ``peer``. Returns "completed", "declined", "failed" or
        "refused". Never raises for a remote's fault."""
        if self._busy or self._closing:
            return "declined"
        self._set_busy(True)
        self.counters.initiated += 1
        entry = self.view.get(peer)
        framed: FramedStream | None = None
        stream: Stream | None = None
        swapping = False
        try:
            with trio.fail_after(self.config.gossip.exchange_timeout):
                stream = await self.transport.open_stream(
                    peer, EXCHANGE_PROTOCOL, entry.addrs if entry else ()
                )
                framed = FramedStream(stream)
                exchange = InitiatorExchange(self.local, adopt_ratio=self.config.gossip.adopt_ratio)
                with trio.fail_after(self.control_timeout):
                    await framed.send(exchange.propose())
                    exchange.receive(await framed.receive(CONTROL_LIMITS))
                if exchange.phase is Phase.DECLINED:
                    assert exchange.decline is not None
                    self.counters.declined += 1
                    if exchange.decline.reason == "incompatible":
                        # not a transient condition: back off like after a failure
                        self.view.failure(peer, trio.current_time())
                        decline = exchange.decline
                        detail = (
                            task_mismatch(self.local.task, decline.task)
                            if decline.task and decline.task != self.local.task
                            else decline.detail
                        )
                        self._incompatible(peer, f"declined by them: {detail}")
                    await close_quietly(stream)
                    return "declined"
                swapping = True
                await self._swap(framed, peer, exchange)
            await close_quietly(stream)
        except (TransportError, EOFError, trio.TooSlowError) as exc:
            self.counters.failed += 1
            self._fail(peer, f"exchange failed: {exc!r}")
            if stream is not None:
                await stream.reset()
            if swapping and isinstance(exc, trio.TooSlowError):
                await self._offend(peer, "timeout")  # it accepted, then held us up
            return "failed"
        except RemoteProtocolError as exc:
            await self._refuse(peer, exc)
            if stream is not None:
                await stream.reset()
            return "refused"
        finally:
            self._count_bytes(framed)
            self._set_busy(False)
        return "completed"

    async def _on_exchange(self, stream: Stream) -> None:
        await self._serve_bounded(stream, self._answer_exchange)

    async def _answer_exchange(self, stream: Stream) -> None:
        peer = stream.remote_peer
        framed = FramedStream(stream)
        took_slot = False
        try:
            with trio.fail_after(self.config.gossip.exchange_timeout):
                exchange = ResponderExchange(
                    self.local,
                    max_model_bytes=self.model_limits.max_frame,
                    adopt_ratio=self.config.gossip.adopt_ratio,
                )
                with trio.fail_after(self.control_timeout):
                    proposal = await framed.receive(CONTROL_LIMITS)
                # decide and take the slot with no checkpoint in between
                busy = self._busy or self._over_fair_share(peer)
                answer = exchange.receive_propose(proposal, busy=busy, closing=self._closing)
                if isinstance(answer, Accept):
                    self._set_busy(True)
                    took_slot = True
                self.view.mark_connected(peer, trio.current_time())
                await framed.send(answer)
                if isinstance(answer, Decline) and answer.reason == "incompatible":
                    self._incompatible(peer, f"we declined: {answer.detail}")
                if not took_slot:
                    self.counters.declined_inbound += 1
                    await stream.close()
                    return
                await self._swap(framed, peer, exchange)
                self.counters.answered += 1
            await close_quietly(stream)
        except (TransportError, EOFError, trio.TooSlowError) as exc:
            if took_slot:
                self.counters.failed += 1
                self.view.failure(peer, trio.current_time())
            log.info("exchange from %s failed: %r", peer, exc)
            await stream.reset()
            if isinstance(exc, trio.TooSlowError):  # honest initiators send at once
                await self._offend(peer, "timeout")
        except RemoteProtocolError as exc:
            await self._refuse(peer, exc)
            await stream.reset()
        finally:
            self._count_bytes(framed)
            if took_slot:
                self._set_busy(False)

    async def _swap(
        self, framed: FramedStream, peer: str, exchange: InitiatorExchange | ResponderExchange
    ) -> Merge:
        """Send our model and receive theirs concurrently, under the transfer deadline (counted
        from Accept, so a slow drip cannot hold the slot); then apply the merge (local work,
        outside that deadline)."""
        with trio.fail_after(self.transfer_timeout):
            own_age = self.model_age()
            stats = self.learner.statistics()  # only merges move it, and we hold the slot
            snapshot = await self.learner.snapshot()
            encoded = await self._encode(snapshot)
            latest = self.history.latest
            offer = exchange.offer(
                ModelOffer(
                    fingerprint=self.local.fingerprint,
                    samples=self.learner.samples,
                    steps=self.learner.steps,
                    accuracy=finite(latest.accuracy) if latest else None,
                    loss=finite(latest.loss) if latest else None,
                    tensors=encoded.tensors if encoded else snapshot,
                    age=own_age,
                    fresh=self.fresh,
                    enc=self.config.gossip.compression if encoded else None,
                    scales=encoded.scales if encoded else (),
                    task=self.local.task,
                    stats=stats,
                )
            )
            if self.local.model_bytes > THREAD_THRESHOLD:
                body = await trio.to_thread.run_sync(encode, offer)
            else:
                body = encode(offer)
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
        theirs = merge.offer.tensors
        if self.local.model_bytes > THREAD_THRESHOLD:
            measures = await trio.to_thread.run_sync(measure, snapshot, theirs)
        else:
            measures = measure(snapshot, theirs)
        applied = await self.merger.apply(snapshot, own_age, merge, measures, new_stats)
        if applied.kind is MergeKind.KEEP:
            self.counters.seeded += 1
            log.info("%s is new: it adopts our model, and we keep ours", peer)
        elif applied.kind is MergeKind.ADOPT:
            self.counters.adopted += 1
            log.info(
                "adopted the model of %s (age %.0f examples, ours %.0f)",
                peer,
                merge.offer.age,
                own_age,
            )
        if applied.not_adopted:
            log.info(
                "not adopting the model of %s: %s; averaged instead", peer, applied.not_adopted
            )
        if applied.clipped:
            self.counters.clipped += 1
            log.info("clipped the model from %s: %s", peer, applied.clipped)
        self._record_merge(
            peer,
            merge.offer,
            measures.relative_distance,
            consensus=applied.kind is not MergeKind.KEEP,  # a fresh model we ignored
        )
        if applied.far:  # honest late joiners are far once or twice; a poisoner every time
            await self._offend(peer, "outlier")
        return merge

    async def _encode(self, snapshot: dict[str, Any]) -> compression.Encoded | None:
        """Our snapshot in the configured lossy encoding, or None to send it exactly."""
        enc = self.config.gossip.compression
        if enc == "none":
            return None
        if self.local.model_bytes > THREAD_THRESHOLD:
            return await trio.to_thread.run_sync(compression.encode, snapshot, enc, self._residual)
        return compression.encode(snapshot, enc, self._residual)

    def _over_fair_share(self, peer: str) -> bool:
        """True if ``peer`` took more than its fair share of our recent exchanges.

        With uniform neighbour sampling an honest peer takes about 1/n of them (n: connected
        neighbours in good standing; departed ones do not count); one that proposes far more
        often (to push its model at us) is declined as busy until others have had their turn.
        Local policy, invisible on the wire.
        """
        active = sum(1 for e in self.view.entries() if e.connected and not e.failures)
        share = max(
            FAIR_SHARE_MIN, math.ceil(FAIR_SHARE_SLACK * len(self._recent) / max(1, active))
        )
        return self._recent.count(peer) >= share

    def _record_merge(
        self, peer: str, offer: ModelOffer, distance: float, *, consensus: bool = True
    ) -> None:
        """Count a completed exchange. ``consensus``: the distance joins our consensus history
        (not when we kept our model and ignored a fresh one)."""
        now = trio.current_time()
        self._recent.append(peer)
        self.counters.completed += 1
        self.view.success(peer, now)
        stats = self.neighbours.setdefault(peer, NeighbourStats(peer))
        stats.last_exchange = time.time()
        stats.accuracy = offer.accuracy
        stats.loss = offer.loss
        stats.steps = offer.steps
        stats.exchanges += 1
        stats.consensus_distance = distance
        if consensus and math.isfinite(distance):
            self.consensus.append((time.time(), distance))

    def _fail(self, peer: str, why: str) -> None:
        self.view.mark_disconnected(peer)
        dropped = self.view.failure(peer, trio.current_time())
        log.info("%s: %s%s", peer, why, " (dropped from view)" if dropped else "")

    def _incompatible(self, peer: str, detail: str) -> None:
        """Record (for status) and log why we cannot merge with ``peer``."""
        if self.incompatible.get(peer) != detail:
            log.warning("cannot merge with %s: %s", peer, detail)
        self.incompatible[peer] = detail

    async def _refuse(self, peer: str, exc: RemoteProtocolError) -> None:
        reason = exc.reason if isinstance(exc, Refused) else "malformed"
        if reason == "incompatible" and isinstance(exc, Refused):
            self._incompatible(peer, f"we refused their model: {exc.detail}")
        self.counters.refuse(reason)
        self.view.failure(peer, trio.current_time())
        log.warning("refused model from %s: %s", peer, exc)
        if not isinstance(exc, Refused) or exc.offence:
            await self._offend(peer, reason)

    def _count_bytes(self, framed: FramedStream | None) -> None:
        if framed is not None:
            self.bytes_sent += framed.bytes_sent
            self.bytes_received += framed.bytes_received
            framed.bytes_sent = framed.bytes_received = 0

    def status(self) -> dict[str, Any]:
        """Everything ``gossiplearn status`` shows, JSON-serialisable (``node/report.py``)."""
        return node_status(self)
