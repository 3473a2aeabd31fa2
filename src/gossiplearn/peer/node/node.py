"""A gossip-learning peer: owns the loops and wires the parts that do the work.

The node is the trio shell around the pure core (``gossiplearn.gossip``). It runs four loops
under one nursery — discovery (``node/discovery.py``), gossip (picks a random neighbour and
starts an exchange, ``node/exchanges.py``; under secure averaging, leads a group round of
random neighbours instead, ``node/group.py``), local training and evaluation (through the
``Learner``) — and hands the transport its admission gate (``node/admission.py``) and its
protocol handlers. What it counts lives in one ``NodeStats`` value (``node/stats.py``), which
the report and the checkpoints read.

Invariants (each kept by the part named):
- One exchange at a time, pairwise or in a group (the slot, ``node/slot.py``); merges are
  deltas against the snapshot sent (exchanges, group).
- Nothing a remote sends escapes a handler: remote faults are counted, charged as offences,
  and the stream reset (exchanges, discovery, admission).
- Banned peers and non-members are refused before any stream opens; inbound streams are
  bounded (admission). Received models pass screening before they are merged (merging).
- Late joiners (``gossip.merge.plan_merge``): while we have never completed an exchange we are
  *fresh* and may adopt a far older model outright (merging).
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Any

import trio

from gossiplearn.crypto.consortium import Members
from gossiplearn.crypto.identity import Identity
from gossiplearn.gossip.exchange import LocalModel, Outcome
from gossiplearn.gossip.sampling import PeerView
from gossiplearn.gossip.screening import Screen, ScreeningConfig
from gossiplearn.gossip.stats import MetricPoint
from gossiplearn.peer.learning.learner import Learner
from gossiplearn.peer.net.transport import Transport
from gossiplearn.peer.node.admission import Admission
from gossiplearn.peer.node.config import NodeConfig
from gossiplearn.peer.node.discovery import PEERS_PROTOCOL, Discovery
from gossiplearn.peer.node.exchanges import EXCHANGE_PROTOCOL, ExchangeDriver
from gossiplearn.peer.node.group import GROUP_PROTOCOL, GroupDriver
from gossiplearn.peer.node.merging import ModelMerger
from gossiplearn.peer.node.report import node_status
from gossiplearn.peer.node.stats import NodeStats

log = logging.getLogger(__name__)

__all__ = ["EXCHANGE_PROTOCOL", "GROUP_PROTOCOL", "PEERS_PROTOCOL", "Node", "NodeConfig"]


class Node:
    def __init__(
        self,
        transport: Transport,
        learner: Learner,
        config: NodeConfig,
        *,
        rng: random.Random | None = None,
        identity: Identity | None = None,
    ) -> None:
        """``identity``: the node's own (the transport's peer ID), which signs its keys in
        secure group rounds; without it the node neither leads nor answers them. Raises
        ``UserError`` when secure averaging is on for a task that cannot use it."""
        self.transport = transport
        self.learner = learner
        self.config = config
        self.rng = rng or random.Random()
        self.peer_id = transport.peer_id
        self.view = PeerView(self.peer_id)
        self.stats = NodeStats(started_at=time.time())
        sec = config.security
        self.screen = Screen(
            ScreeningConfig(enabled=sec.screening, max_norm_ratio=sec.max_norm_ratio)
        )
        self.merger = ModelMerger(learner, self.screen)
        self.admission = Admission(sec, config.members, self.view, self.stats, transport)
        self.exchanges = ExchangeDriver(
            transport, learner, self.merger, self.admission, config.gossip
        )
        self.groups = GroupDriver(self.exchanges, config.group, identity, rng=self.rng)
        self.exchanges.pairwise = not config.group.enabled  # our model goes to groups only
        self.discovery = Discovery(
            transport, self.admission, config.gossip, bootstrap=config.bootstrap, rng=self.rng
        )
        self._cancel: trio.CancelScope | None = None

    # ---- lifetime

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every loop until cancelled or ``stop`` is called."""
        self.transport.set_gate(self.admission.gate)
        self.transport.set_handler(EXCHANGE_PROTOCOL, self.exchanges.on_stream)
        self.transport.set_handler(PEERS_PROTOCOL, self.discovery.on_stream)
        if self.groups.member is not None:
            self.transport.set_handler(GROUP_PROTOCOL, self.groups.on_stream)
        with trio.CancelScope() as scope:
            self._cancel = scope
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.discovery.run)
                nursery.start_soon(self._gossip_loop)
                nursery.start_soon(self._evaluation_loop)
                if self.config.training.enabled:
                    nursery.start_soon(self._training_loop)
                task_status.started()

    async def stop(self, grace: float = 10.0) -> None:
        """Decline new exchanges, let the one in flight finish (up to ``grace`` s), then stop."""
        await self.exchanges.close(grace)
        if self._cancel is not None:
            self._cancel.cancel()

    # ---- what others ask of a node

    @property
    def local(self) -> LocalModel:
        """Our model's identity on the wire (fingerprint, task, sizes)."""
        return self.exchanges.local

    @property
    def members(self) -> Members:
        return self.admission.members

    @property
    def busy(self) -> bool:
        """An exchange is in flight."""
        return self.exchanges.busy

    @property
    def fresh(self) -> bool:
        """True until our first completed exchange: our model holds nobody's data but ours."""
        return self.exchanges.fresh

    def model_age(self) -> float:
        """Examples of SGD behind our model: our own, plus what merges brought in."""
        return self.merger.age()

    def gate(self, peer_id: str) -> str | None:
        """Admission of an authenticated connection: None, or why it is refused."""
        return self.admission.gate(peer_id)

    def is_admissible(self, peer_id: str) -> bool:
        return self.admission.admissible(peer_id)

    async def update_members(self, members: Members) -> None:
        """Adopt a new member list; peers no longer on it are dropped and disconnected."""
        await self.admission.update_members(members, set(self.stats.neighbours))

    async def initiate(self, peer: str) -> Outcome:
        """Run one exchange with ``peer`` now. Never raises for a remote's fault."""
        return await self.exchanges.initiate(peer)

    async def ask_peers(self, peer: str) -> int:
        """Ask ``peer`` for the peers it knows; returns how many were new to us."""
        return await self.discovery.ask_peers(peer)

    def status(self) -> dict[str, Any]:
        """Everything ``gossiplearn status`` shows, JSON-serialisable (``node/report.py``)."""
        return node_status(self, trio.current_time())

    # ---- loops

    async def _training_loop(self) -> None:
        cfg = self.config.training
        period = 1.0 / cfg.steps_per_second if cfg.steps_per_second > 0 else 0.0
        chunk = max(1, round(cfg.steps_per_second * 0.1)) if period else 10
        deadline = trio.current_time()
        while not cfg.max_steps or self.learner.steps < cfg.max_steps:
            count = chunk if not cfg.max_steps else min(chunk, cfg.max_steps - self.learner.steps)
            before = self.learner.steps
            if await self.learner.train(count) - before < count:
                break  # the learner can train no more (its privacy budget is spent)
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
            self.stats.history.add(
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
            if self.exchanges.closing:
                continue
            if self.config.group.enabled:  # never a pairwise exchange instead (its model leaks)
                await self.groups.lead()
                continue
            tried: list[str] = []
            for _ in range(cfg.attempts):
                if self.exchanges.busy:
                    break  # a remote's exchange is in flight; our turn comes next round
                peer = self.view.sample(self.rng, trio.current_time(), exclude=tried)
                if peer is None:
                    break
                tried.append(peer)
                if await self.exchanges.initiate(peer) is not Outcome.DECLINED:
                    break
