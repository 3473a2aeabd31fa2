"""In-process simulation: many ``Node``s on a ``MemoryNetwork``, with synchronous learners.

The nodes run the same gossip code as deployed peers; only the transport and the learner
differ. Both learners here are synchronous (no worker threads), so simulations can run under
trio's autojump clock in virtual time: ``VectorLearner`` is a numpy stand-in, ``InlineLearner``
drives a real ``Trainer`` (the task's torch model, as a deployed peer trains it) inline.

A ``VectorLearner`` "trains" by stepping toward a private target vector (gradient descent on
``||x - target||² / 2``), which makes the consensus optimum the samples-weighted mean of targets.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import trio

from gossiplearn.gossip.aggregate import SumsLayout
from gossiplearn.gossip.merge import apply_merge
from gossiplearn.gossip.messages import TensorSpec, encoded_model_size, specs_of
from gossiplearn.peer.home.config import GossipConfig, SecurityConfig, TrainingConfig
from gossiplearn.peer.learning.learner import Learner, TrainerLearner
from gossiplearn.peer.learning.private import NOT_PRIVATE, PrivacyReport
from gossiplearn.peer.net.transport import MemoryNetwork
from gossiplearn.peer.node.node import Node, NodeConfig


class VectorLearner:
    def __init__(
        self,
        tensors: Mapping[str, np.ndarray],
        samples: int,
        target: Mapping[str, np.ndarray] | None = None,
        learning_rate: float = 0.1,
        stats: np.ndarray | None = None,
    ) -> None:
        self.tensors = {k: np.array(v, copy=True) for k, v in tensors.items()}
        self._samples = samples
        self.target = target
        self.learning_rate = learning_rate
        # a statistics vector averaged beside the model (gossip.aggregate), when given
        self.stats = None if stats is None else np.array(stats, dtype=np.float64)
        self._steps = 0
        # the sum of every training update ever applied (for conservation checks)
        self.trained = {k: np.zeros(v.shape, dtype=np.float64) for k, v in self.tensors.items()}

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def samples_seen(self) -> int:
        return self._steps

    def specs(self) -> list[TensorSpec]:
        return specs_of(self.tensors)

    def model_bytes(self) -> int:
        return encoded_model_size(self.tensors)

    async def train(self, count: int) -> int:
        await trio.lowlevel.checkpoint()
        if self.target is not None:
            for _ in range(count):
                for k, tensor in self.tensors.items():
                    update = (self.learning_rate * (self.target[k] - tensor)).astype(tensor.dtype)
                    np.add(tensor, update, out=tensor)
                    self.trained[k] += update
        self._steps += count
        return self._steps

    async def snapshot(self) -> dict[str, np.ndarray]:
        await trio.lowlevel.checkpoint()
        return {k: v.copy() for k, v in self.tensors.items()}

    async def merge(
        self,
        snapshot: Mapping[str, np.ndarray],
        theirs: Mapping[str, np.ndarray],
        alpha: float,
        stats: np.ndarray | None = None,
    ) -> None:
        await trio.lowlevel.checkpoint()
        for k, tensor in self.tensors.items():
            apply_merge(tensor, snapshot[k], theirs[k], alpha)
        if stats is not None:
            self.stats = np.array(stats, dtype=np.float64)

    @property
    def task_digest(self) -> bytes:
        return b"vector-learner"

    @property
    def stats_layout(self) -> SumsLayout | None:
        return None if self.stats is None else SumsLayout(self.stats.size)

    def statistics(self) -> np.ndarray | None:
        return None if self.stats is None else self.stats.copy()

    def privacy(self) -> PrivacyReport:
        return NOT_PRIVATE

    async def rebase(
        self, tensors: Mapping[str, np.ndarray], old: np.ndarray, new: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Vectors have no preprocessing: moving statistics leaves them as they are."""
        await trio.lowlevel.checkpoint()
        return dict(tensors)

    async def evaluate(self) -> dict[str, float]:
        return await self.evaluate_tensors(self.tensors)

    async def evaluate_tensors(self, tensors: Mapping[str, np.ndarray]) -> dict[str, float]:
        """The squared distance to our target, as a loss (none without a target)."""
        await trio.lowlevel.checkpoint()
        if self.target is None:
            return {}
        err = sum(float(np.sum((tensors[k] - t) ** 2)) for k, t in self.target.items())
        return {"loss": err}


class SimLearner(Learner, Protocol):
    """A learner whose current tensors the simulation can read at any moment (synchronously)."""

    @property
    def tensors(self) -> Mapping[str, np.ndarray]: ...


class InlineLearner(TrainerLearner):
    """A ``Trainer`` driven in the trio thread: each call runs to completion before it returns,
    so virtual time does not move while the model trains, and a simulation runs as fast as
    the CPU allows."""

    @property
    def tensors(self) -> dict[str, np.ndarray]:
        """A copy of the current tensors."""
        return self.trainer.snapshot()

    async def train(self, count: int) -> int:
        await trio.lowlevel.checkpoint()
        return self.trainer.train_steps(count)

    async def snapshot(self) -> dict[str, np.ndarray]:
        await trio.lowlevel.checkpoint()
        return self.trainer.snapshot()

    async def merge(
        self,
        snapshot: Mapping[str, np.ndarray],
        theirs: Mapping[str, np.ndarray],
        alpha: float,
        stats: np.ndarray | None = None,
    ) -> None:
        await trio.lowlevel.checkpoint()
        self.trainer.merge(snapshot, theirs, alpha, stats)

    async def evaluate(self) -> dict[str, float]:
        await trio.lowlevel.checkpoint()
        return self.trainer.evaluate()

    async def evaluate_tensors(self, tensors: Mapping[str, np.ndarray]) -> dict[str, float]:
        await trio.lowlevel.checkpoint()
        return self.trainer.evaluate_tensors(tensors)


@dataclass
class Simulation:
    network: MemoryNetwork
    nodes: list[Node]
    learners: Sequence[SimLearner]

    def weighted_mean(self) -> dict[str, np.ndarray]:
        """The samples-weighted mean of every node's tensors, in float64."""
        total = sum(learner.samples for learner in self.learners)
        models = [(lrn.samples / total, lrn.tensors) for lrn in self.learners]
        return {
            k: np.sum([w * m[k].astype(np.float64) for w, m in models], axis=0)
            for k in models[0][1]
        }

    def max_deviation(self, reference: Mapping[str, np.ndarray]) -> float:
        """Largest absolute difference between any node's tensors and ``reference``."""
        models = [lrn.tensors for lrn in self.learners]
        return max(
            float(np.max(np.abs(m[k].astype(np.float64) - reference[k])))
            for m in models
            for k in reference
        )

    async def run(self, nursery: trio.Nursery) -> None:
        """Start every transport and node in ``nursery``."""
        for node in self.nodes:
            transport = self.network.transports[node.peer_id]
            await nursery.start(transport.run)
        for node in self.nodes:
            await nursery.start(node.run)


def build_simulation(
    learners: Sequence[SimLearner],
    *,
    gossip: GossipConfig | None = None,
    training: TrainingConfig | None = None,
    seed: int = 0,
    full_view: bool = False,
    latency: float = 0.0,
    security: SecurityConfig | None = None,
) -> Simulation:
    """N nodes; node 0 is everyone's bootstrap (or, with ``full_view``, all know all)."""
    network = MemoryNetwork(latency=latency)
    rng = random.Random(seed)
    gossip = gossip or GossipConfig(interval=1.0, exchange_timeout=10.0, discovery_interval=2.0)
    training = training or TrainingConfig(enabled=False, eval_interval=5.0)
    ids = [f"sim{i:05d}" for i in range(len(learners))]
    nodes = []
    for i, (peer_id, learner) in enumerate(zip(ids, learners, strict=True)):
        transport = network.transport(peer_id)
        bootstrap: tuple[str, ...] = ()
        if full_view:
            bootstrap = tuple(f"/memory/{p}/p2p/{p}" for p in ids if p != peer_id)
        elif i > 0:
            bootstrap = (f"/memory/{ids[0]}/p2p/{ids[0]}",)
        config = NodeConfig(
            gossip=gossip,
            training=training,
            bootstrap=bootstrap,
            security=security or SecurityConfig(),
        )
        nodes.append(Node(transport, learner, config, rng=random.Random(rng.random())))
    return Simulation(network, nodes, learners)
