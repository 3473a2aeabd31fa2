"""Local training of the task's model, and safe access to its parameters from other threads.

Every method that touches the model takes ``_lock``, so an SGD step, a snapshot for an exchange,
applying a merge delta and an evaluation never interleave. The methods block (they run torch
work) and are meant for ``trio.to_thread.run_sync``; none of them awaits.

Exchanged tensors are the floating-point entries of the model's ``state_dict`` (parameters and
float buffers); integer buffers stay local.

A task with consortium statistics (``Task.statistics``; the tabular task) keeps the statistics
vector its model is trained under (``stats``). A merge may move it (``merge(..., stats=)``);
the model is then rebased to the new statistics under the same lock, so what it computes does
not jump.

``state``/``restore`` capture and reinstate everything the next SGD step depends on (tensors,
momentum buffers, the batch-order generator and permutation, counters), so a peer resumed from
a checkpoint continues bit for bit as if it had not stopped.

With ``[privacy] dp`` on, steps are DP-SGD steps (``private.py``: the budget is checked before
each one, and ``train_steps`` takes fewer steps than asked once it is spent); a resumed private
peer continues with fresh noise, not bit for bit. The privacy ledger travels in the state.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping

import numpy as np
import torch

from gossiplearn.crypto.privacy import Ledger
from gossiplearn.gossip.aggregate import BadStatistics, SumsLayout, check
from gossiplearn.gossip.merge import apply_merge, merge_delta
from gossiplearn.gossip.messages import TensorSpec, encoded_model_size, fingerprint, specs_of
from gossiplearn.peer.home.config import TrainingConfig
from gossiplearn.peer.home.privacy import PrivacyConfig
from gossiplearn.peer.learning.private import Privacy
from gossiplearn.peer.learning.state import TrainerState
from gossiplearn.tasks.base import Task, task_identity
from gossiplearn.tasks.contract import identity_digest

log = logging.getLogger(__name__)


class Trainer:
    def __init__(
        self,
        task: Task,
        config: TrainingConfig,
        seed: int = 0,
        *,
        privacy: PrivacyConfig | None = None,
        save_ledger: Callable[[Ledger], None] | None = None,
    ) -> None:
        """``seed``: model initialisation and batch order (never DP-SGD's noise, which is
        secret). ``privacy`` with ``dp``: train with DP-SGD (raises ``UserError`` for a model
        or settings it cannot use); ``save_ledger`` writes its ledger to the home (``Privacy``).
        """
        self.task = task
        self.config = config
        self._lock = threading.Lock()
        torch.manual_seed(seed)
        self._gen = torch.Generator().manual_seed(seed)
        self.model = task.build_model()
        self.task_digest = identity_digest(task_identity(task, self.model))
        self.stats: np.ndarray | None = None  # the statistics the model is trained under
        if task.statistics is not None:
            self.stats = np.array(task.statistics.local, dtype=np.float64)
            task.statistics.apply(self.model, self.stats)
        self._tensors = {
            name: t
            for name, t in self.model.state_dict(keep_vars=False).items()
            if t.is_floating_point()
        }
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.steps = 0
        self.samples_seen = 0
        self._order = torch.empty(0, dtype=torch.int64)
        self._pos = 0
        self.privacy = Privacy(self.model, task, config, privacy or PrivacyConfig(), save_ledger)

    @property
    def samples(self) -> int:
        return self.task.samples

    @property
    def stats_layout(self) -> SumsLayout | None:
        return self.task.statistics.layout if self.task.statistics is not None else None

    def statistics(self) -> np.ndarray | None:
        """A copy of the statistics vector the model is trained under (None: the task has
        none)."""
        with self._lock:
            return None if self.stats is None else self.stats.copy()

    def rebase(
        self, tensors: Mapping[str, np.ndarray], old: np.ndarray, new: np.ndarray
    ) -> dict[str, np.ndarray]:
        """``tensors`` trained under statistics ``old``, moved to ``new`` (same function)."""
        assert self.task.statistics is not None
        return self.task.statistics.rebase(tensors, old, new)

    def specs(self) -> list[TensorSpec]:
        return specs_of(self._snapshot_unlocked(copy=False))

    def model_bytes(self) -> int:
        """An upper bound on our encoded ModelOffer (statistics included), in bytes."""
        layout = self.stats_layout
        extra = 128 + 8 * layout.size if layout is not None else 0
        return encoded_model_size(self._snapshot_unlocked(copy=False)) + extra

    # ---- training (blocking)

    def _batch(self) -> torch.Tensor:
        n = len(self.task.train)
        size = min(self.config.batch_size, n)
        if self._pos + size > len(self._order):
            self._order = torch.randperm(n, generator=self._gen)
            self._pos = 0
        idx = self._order[self._pos : self._pos + size]
        self._pos += size
        return idx

    def learning_rate(self, step: int) -> float:
        """The learning rate of SGD step number ``step`` (0-based): a function of the step
        alone, so a resumed peer continues the schedule exactly."""
        base, total = self.config.learning_rate, self.config.max_steps
        if self.config.lr_schedule == "cosine" and total > 0:
            return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        return base

    def train_steps(self, count: int) -> int:
        """Run up to ``count`` SGD steps (each under the lock); returns the total steps taken.
        Fewer than ``count`` are taken only when no more may be: the privacy budget is spent
        (or its ledger cannot be saved)."""
        try:
            for _ in range(count):
                with self._lock:
                    if self.privacy.enabled:
                        limit = self.config.max_steps
                        left = limit - self.steps if limit else None
                        drawn = self.privacy.step(self.learning_rate(self.steps), left)
                        if drawn is None:
                            break
                    else:
                        drawn = self._plain_step()
                    self.steps += 1
                    self.samples_seen += drawn
        finally:
            limit = self.config.max_steps
            self.privacy.refresh(force=bool(limit) and self.steps >= limit)  # its last word
        return self.steps

    def _plain_step(self) -> int:
        """One SGD step (lock held); returns the batch size."""
        data = self.task.train
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.steps)
        idx = self._batch()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.task.loss(self.model(data.features[idx]), data.labels[idx])
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        if self.privacy.plain_steps is not None:
            self.privacy.plain_steps += 1
        return len(idx)

    def settle_privacy(self) -> None:
        """Save the exact privacy ledger, dropping steps counted ahead (call once training has
        stopped for good). Blocking; raises ``OSError``."""
        with self._lock:
            self.privacy.settle()

    def evaluate(self) -> dict[str, float]:
        """Validation metrics of the current model (empty if there is no validation data)."""
        with self._lock:
            return self.task.metrics(self.model, self.task.validation)

    def evaluate_tensors(self, tensors: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Validation metrics of another model with our architecture (``tensors`` checked
        against our specs), e.g. one we might adopt. Our model is swapped out for the
        evaluation and restored exactly, under the lock."""
        with self._lock, torch.no_grad():
            saved = {name: t.clone() for name, t in self._tensors.items()}
            try:
                for name, t in self._tensors.items():
                    t.copy_(torch.from_numpy(np.array(tensors[name], copy=True)))
                return self.task.metrics(self.model, self.task.validation)
            finally:
                for name, t in self._tensors.items():
                    t.copy_(saved[name])

    # ---- parameter access (blocking)

    def _snapshot_unlocked(self, copy: bool = True) -> dict[str, np.ndarray]:
        out = {}
        for name, t in self._tensors.items():
            arr = t.detach().cpu().numpy()
            out[name] = arr.copy() if copy else arr
        return out

    def snapshot(self) -> dict[str, np.ndarray]:
        """A copy of the exchanged tensors, as numpy arrays."""
        with self._lock:
            return self._snapshot_unlocked()

    def merge(
        self,
        snapshot: Mapping[str, np.ndarray],
        theirs: Mapping[str, np.ndarray],
        alpha: float,
        stats: np.ndarray | None = None,
    ) -> None:
        """Add ``alpha * (theirs - snapshot)`` to the model (``theirs`` was checked against
        our specs and is in our statistics' coordinates), in float64, rounded once to each
        tensor's dtype (no float16 overflow). ``stats``: the statistics after the exchange;
        the model is rebased to them."""
        with self._lock, torch.no_grad():
            for name, t in self._tensors.items():
                if t.device.type == "cpu" and t.is_contiguous():  # in place, block by block
                    apply_merge(t.numpy(), snapshot[name], theirs[name], alpha)
                    continue
                delta = merge_delta({name: snapshot[name]}, {name: theirs[name]}, alpha)[name]
                merged = t.to(torch.float64) + torch.from_numpy(delta).to(t.device)
                t.copy_(merged.to(t.dtype))
            if stats is not None:
                self._move_statistics(np.asarray(stats, dtype=np.float64))

    def _corrected(self, local: np.ndarray, local_then: np.ndarray) -> np.ndarray:
        """Our statistics after our own file changed from ``local_then`` to ``local``: our old
        rows' sums swapped for the new ones in our share, which keeps the consortium's total
        right (``gossip.aggregate``). When that is not a valid set of sums (we held most of the
        data and now hold far less), we start again from our own file's sums (lock held)."""
        assert self.stats is not None and self.stats_layout is not None
        swapped = self.stats + local - local_then
        try:
            return check(swapped, self.stats_layout)
        except BadStatistics as exc:
            log.warning("statistics restarted from our own data (the file changed: %s)", exc)
            return local.copy()

    def _move_statistics(self, new: np.ndarray) -> None:
        """Rebase the model from ``self.stats`` to ``new`` and adopt ``new`` (lock held)."""
        statistics = self.task.statistics
        assert statistics is not None and self.stats is not None
        current = self._snapshot_unlocked(copy=False)
        rebased = statistics.rebase(current, self.stats, new)
        for name, t in self._tensors.items():
            if rebased[name] is not current[name]:  # only the layers the rebase changed
                t.copy_(torch.from_numpy(np.ascontiguousarray(rebased[name])))
        self.stats = new.copy()
        statistics.apply(self.model, self.stats)

    def load(self, tensors: Mapping[str, np.ndarray], stats: np.ndarray | None = None) -> None:
        """Replace the exchanged tensors (shapes must match) and, when given and the task has
        statistics of that size, the statistics they were trained under."""
        with self._lock, torch.no_grad():
            for name, t in self._tensors.items():
                t.copy_(torch.from_numpy(np.array(tensors[name], copy=True)))
            layout = self.stats_layout
            if stats is not None and layout is not None and stats.shape == (layout.size,):
                assert self.task.statistics is not None
                self.stats = np.array(stats, dtype=np.float64)
                self.task.statistics.apply(self.model, self.stats)

    # ---- checkpoints (blocking)

    def state(self) -> TrainerState:
        """A copy of everything the next SGD step depends on, taken under the lock."""
        with self._lock:
            momentum = {}
            for name, param in self.model.named_parameters():
                buf = self.optimizer.state.get(param, {}).get("momentum_buffer")
                if buf is not None:
                    momentum[name] = buf.detach().cpu().numpy().copy()
            if self.privacy.enabled:  # the plain optimiser has not stepped
                momentum = self.privacy.momentum()
            tensors = self._snapshot_unlocked()
            return TrainerState(
                task=self.task_digest,
                stats=None if self.stats is None else self.stats.copy(),
                local_stats=(
                    None
                    if self.task.statistics is None
                    else np.array(self.task.statistics.local, dtype=np.float64)
                ),
                fingerprint=fingerprint(specs_of(tensors)),
                steps=self.steps,
                samples_seen=self.samples_seen,
                tensors=tensors,
                momentum=momentum,
                rng_state=self._gen.get_state().numpy().tobytes(),
                order=self._order.numpy().copy(),
                position=self._pos,
                ledger=self.privacy.ledger.history,
                plain_steps=self.privacy.plain_steps,
            )

    def incompatibility(self, state: TrainerState) -> str | None:
        """Why ``state`` cannot be restored into this trainer (another model, another data
        size, a damaged generator state), or None."""
        ours = fingerprint(self.specs())
        if state.fingerprint != ours or fingerprint(specs_of(state.tensors)) != ours:
            return "it holds another model architecture"
        if state.task and state.task != self.task_digest:
            return "it belongs to another task contract"
        layout = self.stats_layout
        size = layout.size if layout is not None else None
        for vector in (state.stats, state.local_stats):
            if vector is not None and (size is None or vector.shape != (size,)):
                return "its statistics do not fit the task"
        params = dict(self.model.named_parameters())
        for name, buf in state.momentum.items():
            param = params.get(name)
            if param is None or tuple(buf.shape) != tuple(param.shape):
                return f"momentum buffer {name!r} matches no parameter"
        n = len(self.task.train)
        order = state.order
        if len(order) not in (0, n) or (len(order) and (order.min() < 0 or order.max() >= n)):
            return "its batch order belongs to another training set"
        if state.position > len(order):
            return "its batch position is out of range"
        if len(state.rng_state) != len(self._gen.get_state()):
            return "its generator state has the wrong size"
        return None

    def restore(self, state: TrainerState) -> None:
        """Reinstate ``state`` (checked with ``incompatibility`` first). Its privacy ledger is
        taken as is; ``Privacy.begin`` reconciles it with the home's before training."""
        params = dict(self.model.named_parameters())
        with self._lock, torch.no_grad():
            for name, t in self._tensors.items():
                t.copy_(torch.from_numpy(np.array(state.tensors[name], copy=True)))
            self.optimizer.state.clear()
            for name, buf in state.momentum.items():
                param = params[name]
                self.optimizer.state[param]["momentum_buffer"] = torch.from_numpy(
                    np.array(buf, copy=True)
                ).to(dtype=param.dtype, device=param.device)
            self._gen.set_state(torch.frombuffer(bytearray(state.rng_state), dtype=torch.uint8))
            self._order = torch.from_numpy(np.array(state.order, dtype=np.int64, copy=True))
            self._pos = state.position
            self.steps = state.steps
            self.samples_seen = state.samples_seen
            self.privacy.restore(state.ledger, state.plain_steps)
            if self.privacy.enabled:
                self.privacy.restore_momentum(state.momentum)
            if self.task.statistics is not None and state.stats is not None:
                self.stats = np.array(state.stats, dtype=np.float64)
                self.task.statistics.apply(self.model, self.stats)
                local = np.asarray(self.task.statistics.local, dtype=np.float64)
                if state.local_stats is not None and not np.array_equal(local, state.local_stats):
                    self._move_statistics(self._corrected(local, state.local_stats))
