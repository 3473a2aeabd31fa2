"""The node's view of its model: a small async interface, with a threaded torch implementation.

``Learner`` is what ``Node`` drives. ``ThreadedLearner`` runs a ``Trainer``'s blocking torch work
in worker threads (``trio.to_thread.run_sync``), so the event loop never blocks. Training and
evaluation, the long jobs, take turns through a ``CapacityLimiter`` of one. A snapshot and a
merge do not queue behind them: they take only the trainer's lock, which ``train_steps`` holds
for one SGD step at a time, so an exchange waits for the step (or evaluation) in progress, not
for a whole training call. The simulator's ``VectorLearner`` (``peer/sim.py``) implements the
same interface synchronously, which lets virtual-time tests use trio's autojump clock.

Cancellation: a cancelled call waits for its worker thread to return (``abandon_on_cancel`` is
left False): ``train`` for all the steps it was asked for (the node asks for a chunk: about
0.1 s of steps, or 10), ``merge`` for the whole merge, so the model is never left half-updated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import trio

from gossiplearn.gossip.aggregate import SumsLayout
from gossiplearn.gossip.messages import TensorSpec
from gossiplearn.peer.learning.private import PrivacyReport
from gossiplearn.peer.learning.trainer import Trainer


class Learner(Protocol):
    @property
    def samples(self) -> int: ...

    @property
    def steps(self) -> int: ...

    @property
    def samples_seen(self) -> int: ...

    def specs(self) -> list[TensorSpec]: ...

    def model_bytes(self) -> int: ...

    @property
    def task_digest(self) -> bytes:
        """The digest of our task's identity (contract): peers with another never merge."""

    @property
    def stats_layout(self) -> SumsLayout | None:
        """The layout of our consortium statistics, or None when the task has none."""

    def statistics(self) -> np.ndarray | None:
        """A copy of the statistics our model is trained under (None: the task has none)."""

    async def rebase(
        self, tensors: Mapping[str, np.ndarray], old: np.ndarray, new: np.ndarray
    ) -> dict[str, np.ndarray]:
        """A model trained under statistics ``old`` moved to ``new``, with the same function."""

    async def train(self, count: int) -> int:
        """Run up to ``count`` training steps; returns the total steps taken so far. Fewer
        than ``count`` means the learner can train no more (its privacy budget is spent)."""

    def privacy(self) -> PrivacyReport:
        """What differential privacy this learner trains under, and what it has spent."""

    async def snapshot(self) -> dict[str, np.ndarray]: ...

    async def merge(
        self,
        snapshot: Mapping[str, np.ndarray],
        theirs: Mapping[str, np.ndarray],
        alpha: float,
        stats: np.ndarray | None = None,
    ) -> None:
        """Add ``alpha * (theirs - snapshot)`` to the model (``theirs`` was checked); with
        ``stats``, then move the model to those statistics."""

    async def evaluate(self) -> dict[str, float]: ...

    async def evaluate_tensors(self, tensors: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Validation metrics of ``tensors`` (checked against our specs) as a model, leaving
        ours as it is."""


class TrainerLearner:
    """What every ``Learner`` over a ``Trainer`` shares: the counters and the model's shape."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._specs = trainer.specs()
        self._model_bytes = trainer.model_bytes()

    @property
    def samples(self) -> int:
        return self.trainer.samples

    @property
    def steps(self) -> int:
        return self.trainer.steps

    @property
    def samples_seen(self) -> int:
        return self.trainer.samples_seen

    def specs(self) -> list[TensorSpec]:
        return self._specs

    def model_bytes(self) -> int:
        return self._model_bytes

    @property
    def task_digest(self) -> bytes:
        return self.trainer.task_digest

    @property
    def stats_layout(self) -> SumsLayout | None:
        return self.trainer.stats_layout

    def statistics(self) -> np.ndarray | None:
        return self.trainer.statistics()

    def privacy(self) -> PrivacyReport:
        return self.trainer.privacy.report()

    async def rebase(
        self, tensors: Mapping[str, np.ndarray], old: np.ndarray, new: np.ndarray
    ) -> dict[str, np.ndarray]:
        await trio.lowlevel.checkpoint()
        return self.trainer.rebase(tensors, old, new)


class ThreadedLearner(TrainerLearner):
    def __init__(self, trainer: Trainer) -> None:
        super().__init__(trainer)
        # training and evaluation take turns; snapshot and merge skip the queue (the
        # trainer's lock still keeps them from interleaving with a step)
        self._limiter = trio.CapacityLimiter(1)

    async def train(self, count: int) -> int:
        return await trio.to_thread.run_sync(self.trainer.train_steps, count, limiter=self._limiter)

    async def snapshot(self) -> dict[str, np.ndarray]:
        return await trio.to_thread.run_sync(self.trainer.snapshot)

    async def merge(
        self,
        snapshot: Mapping[str, np.ndarray],
        theirs: Mapping[str, np.ndarray],
        alpha: float,
        stats: np.ndarray | None = None,
    ) -> None:
        await trio.to_thread.run_sync(self.trainer.merge, snapshot, theirs, alpha, stats)

    async def evaluate(self) -> dict[str, float]:
        return await trio.to_thread.run_sync(self.trainer.evaluate, limiter=self._limiter)

    async def evaluate_tensors(self, tensors: Mapping[str, np.ndarray]) -> dict[str, float]:
        return await trio.to_thread.run_sync(
            self.trainer.evaluate_tensors, tensors, limiter=self._limiter
        )
