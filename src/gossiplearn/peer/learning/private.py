"""Differential privacy in the trainer: the budget planned from ``[privacy]``, DP-SGD steps, the
ledger of what they spent, its write-ahead to the home, and what status shows of it.

``Privacy`` is part of a ``Trainer`` (``trainer.py``); with ``privacy.dp`` on it trains through
``tasks.dpsgd.PrivateSGD`` and checks ``crypto.privacy.Ledger.would_exceed`` before every step.
With ``dp`` off it still carries a ledger a checkpoint brought (ε never resets), and counts the
steps trained without DP (``plain_steps``).

Invariants:
- The ledger never undercounts what a model sent can carry. Before a step that the saved
  ledger (``privacy.json``, through ``save_ledger``) does not count yet, a ledger counting a
  block of steps ahead (``RESERVE_BLOCK``, at most what the budget and ``max_steps`` allow) is
  written, under the trainer's lock, so no snapshot of the model can leave before the file
  counts the step. A peer killed at any moment therefore resumes with at least the steps it
  took (at most one block more); ``settle`` writes the exact ledger at a clean stop. A ledger
  that cannot be written stops training (it never proceeds unrecorded).
- Resuming keeps the larger of the checkpoint's ledger and the saved file's. With ``dp`` on, a
  model that has been trained without DP is refused (``UserError``): the models it sent are
  covered by no ε, and the ε shown would ignore them.
- The DP-SGD generator is seeded from ``secrets`` and never saved: a resumed peer draws fresh
  noise and batches (``PrivateSGD.restore(..., noise=False)``), so noise is never replayed on
  a computation whose model was already sent. Checkpoints keep the momentum only.
- Opacus (``tasks.dpsgd``, ~2 s to import) is imported only when ``dp`` is on or a carried
  ledger has to be evaluated.
- The ε in ``report`` is refreshed in the training thread, outside the trainer's lock: after
  every training call under RDP (microseconds: the ledger caches each (σ, q)'s curve), and
  under PRV (seconds per query on long runs) at most once per 20 times the last query's cost,
  so status never holds up training or an exchange, and always once training has stopped.
  The report's ``steps`` are the ledger's steps that its ε is of.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn

from gossiplearn.crypto.privacy import Accountant, Ledger, PrivacyBudget, Spend, default_delta
from gossiplearn.errors import UserError
from gossiplearn.peer.home.config import TrainingConfig
from gossiplearn.peer.home.privacy import PrivacyConfig, check_privacy
from gossiplearn.tasks.base import Task

if TYPE_CHECKING:
    from gossiplearn.tasks.dpsgd import PrivateSGD

log = logging.getLogger(__name__)

RESERVE_BLOCK = 100  # steps the saved ledger counts ahead of the steps taken
REFRESH_COST_RATIO = 20.0  # ε is re-evaluated at most once per this many times its cost


@dataclass(frozen=True, slots=True)
class PrivacyReport:
    """What ``status --json`` shows under ``privacy``. ``epsilon``: spent so far by this
    peer's DP-SGD steps, at ``delta`` under ``accountant`` (None when it never trained with
    DP). ``budget_spent``: no further step fits in ``target_epsilon``. ``steps``: DP-SGD steps
    in the ledger; ``plain_steps``: steps trained without DP (None: not known)."""

    dp: bool
    epsilon: float | None = None
    delta: float | None = None
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    accountant: str | None = None
    budget_spent: bool = False
    steps: int = 0
    plain_steps: int | None = 0


NOT_PRIVATE = PrivacyReport(dp=False)


def plan_budget(settings: PrivacyConfig, training: TrainingConfig, records: int) -> PrivacyBudget:
    """The budget of ``settings`` for ``records`` local training records, batches of
    ``training.batch_size`` and, when σ is derived, ``training.max_steps`` steps in all. Raises
    ``UserError`` naming the setting at fault."""
    check_privacy(settings, training.max_steps)
    return PrivacyBudget.plan(
        target_epsilon=settings.target_epsilon,
        max_grad_norm=settings.max_grad_norm,
        records=records,
        batch_size=training.batch_size,
        steps=max(1, training.max_steps),  # unused when σ is given
        delta=settings.delta or None,
        noise_multiplier=settings.noise_multiplier or None,
        accountant=cast(Accountant, settings.accountant),
    )


class Privacy:
    """One trainer's differential privacy. Every method but ``report`` and ``refresh`` runs
    under the trainer's lock (or before training starts); ``refresh`` only in the training
    thread."""

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        training: TrainingConfig,
        settings: PrivacyConfig,
        save_ledger: Callable[[Ledger], None] | None = None,
    ) -> None:
        """With ``settings.dp``: check the model (``UserError`` naming the layers DP-SGD cannot
        train), plan the budget (``UserError``; deriving σ takes 0.1-0.3 s under RDP) and
        attach DP-SGD to ``model``. ``save_ledger`` writes the ledger to the home (blocking,
        raises ``OSError``); None keeps it in memory only (tests, simulations)."""
        self.settings = settings
        self.records = len(task.train)
        self.ledger = Ledger()
        self.plain_steps: int | None = 0  # steps trained without DP; None: not known
        self.budget: PrivacyBudget | None = None
        self._sgd: PrivateSGD | None = None
        self._save = save_ledger
        self._saved_steps = 0  # steps the saved ledger counts (taken or reserved)
        self._stopped = False  # a step was refused
        self._told = False  # that the budget is spent was logged
        self._refreshed = (0.0, 0.0)  # (monotonic time of the last ε evaluation, its cost)
        if settings.dp:
            from gossiplearn.tasks.dpsgd import PrivateSGD, validate  # noqa: PLC0415  (opacus)

            validate(model)
            self.budget = plan_budget(settings, training, self.records)
            self._sgd = PrivateSGD(
                model,
                task.train,
                task.loss,
                self.budget,
                momentum=training.momentum,
                weight_decay=training.weight_decay,
            )
        self._report = self._make_report(epsilon=0.0 if settings.dp else None)

    @property
    def enabled(self) -> bool:
        """Training goes through DP-SGD."""
        return self._sgd is not None

    @property
    def delta(self) -> float | None:
        """The δ that ε is reported at (None: no local records to derive it from)."""
        if self.budget is not None:
            return self.budget.delta
        if self.settings.delta:
            return self.settings.delta
        return default_delta(self.records) if self.records else None

    # ---- training (under the trainer's lock)

    def step(self, lr: float, left: int | None) -> int | None:
        """One DP-SGD step at learning rate ``lr``: the records its batch drew, or None when
        no step may be taken (the budget is spent, or the ledger could not be saved first).
        ``left``: steps ``training.max_steps`` still allows (None: no limit), to size the
        write-ahead."""
        assert self._sgd is not None and self.budget is not None
        budget = self.budget
        remaining = self.ledger.remaining_steps(budget)
        if remaining == 0:
            self._stopped = True
            return None
        if self.ledger.steps >= self._saved_steps and not self._reserve(
            min(RESERVE_BLOCK, remaining, left if left is not None and left > 0 else remaining)
        ):
            self._stopped = True
            return None
        drawn = self._sgd.step(lr)
        self.ledger.record(budget.noise_multiplier, budget.sample_rate)
        return drawn

    def _reserve(self, steps: int) -> bool:
        """Save a ledger counting ``steps`` more steps of the budget; False if it failed."""
        if self._save is None:
            self._saved_steps = self.ledger.steps + steps
            return True
        assert self.budget is not None
        ahead = Ledger(self.ledger.history)
        ahead.record(self.budget.noise_multiplier, self.budget.sample_rate, steps)
        try:
            self._save(ahead)
        except OSError as exc:
            log.error("privacy ledger not saved (%s): training stops, no step goes uncounted", exc)
            return False
        self._saved_steps = ahead.steps
        return True

    def settle(self) -> None:
        """Save the exact ledger (at a clean stop: drop the unused reservation). Raises
        ``OSError``."""
        if self._save is not None and self._saved_steps != self.ledger.steps:
            self._save(self.ledger)
            self._saved_steps = self.ledger.steps

    def momentum(self) -> dict[str, np.ndarray]:
        """DP-SGD's momentum buffers by parameter name (what a checkpoint keeps of it)."""
        assert self._sgd is not None
        return {k: v.detach().cpu().numpy().copy() for k, v in self._sgd.state().momentum.items()}

    def restore_momentum(self, momentum: Mapping[str, np.ndarray]) -> None:
        """Reinstate momentum buffers, keeping this run's own (fresh, secret) generator."""
        assert self._sgd is not None
        buffers = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in momentum.items()}
        self._sgd.restore(replace(self._sgd.state(), momentum=buffers), noise=False)

    # ---- resuming (before training starts)

    def restore(self, history: tuple[Spend, ...] | None, plain_steps: int | None) -> None:
        """Take a checkpoint's ledger (None: it had none) and count of steps trained without
        DP (None: not known, as in checkpoints and model files from before privacy)."""
        self.ledger = Ledger(history or ())
        self.plain_steps = plain_steps

    def begin(self, saved: Ledger | None, steps: int) -> None:
        """Reconcile with the ledger saved in the home (``privacy.json``; None: none) before
        training: keep the larger ledger, save it, and refuse (``UserError``) to train with DP
        a model of ``steps`` steps that were not all private."""
        if saved is not None and saved.steps > self.ledger.steps:
            self.ledger = saved
        elif saved is None and self.ledger.steps:
            log.warning(
                "no saved privacy ledger; continuing from the checkpoint's (%d DP steps)",
                self.ledger.steps,
            )
        self._saved_steps = saved.steps if saved is not None else 0
        if self.plain_steps is None:  # every step not in the ledger was plain
            self.plain_steps = max(0, steps - self.ledger.steps)
        if self.enabled and self.plain_steps:
            raise UserError(
                f"differential privacy is on, but this home's model was trained for "
                f"{self.plain_steps} steps without it: the models it sent then are covered by "
                "no ε, and the ε shown would ignore them. To train privately, start from a "
                "fresh model (remove checkpoint*.glc and model.glm from the home, or use a new "
                "home), or start with --no-dp"
            )
        try:
            self.settle()
        except OSError as exc:
            log.warning("privacy ledger not saved (%s); retried before the first step", exc)
            self._saved_steps = 0
        self.refresh(force=True)
        report, budget = self._report, self.budget
        if budget is not None:
            log.info(
                "differential privacy: ε = %.4g of %g spent so far (δ = %.3g, %s); noise σ = "
                "%.4g, clipping C = %g, sampling q = %.4g",
                report.epsilon, budget.target_epsilon, budget.delta, budget.accountant,
                budget.noise_multiplier, budget.max_grad_norm, budget.sample_rate,
            )  # fmt: skip
        elif self.ledger.steps:
            log.warning(
                "differential privacy is off, but this model was trained with it (ε = %.4g "
                "spent, kept in the ledger): models trained from now on are not private, and "
                "dp cannot be turned on again once this peer has trained without it",
                report.epsilon,
            )

    # ---- status

    def refresh(self, *, force: bool = False) -> None:
        """Re-evaluate ε for ``report`` if the last evaluation is old enough, training has
        stopped, or ``force`` (the trainer's last step); log once that the budget is spent.
        Training thread only, outside the lock."""
        when, cost = self._refreshed
        now = time.monotonic()
        cheap = self.settings.accountant == "rdp"
        if force or cheap or self._stopped or now - when >= REFRESH_COST_RATIO * cost:
            epsilon = None
            delta = self.delta
            if delta is not None and (self.enabled or self.ledger.steps):
                epsilon = self.ledger.epsilon(delta, cast(Accountant, self.settings.accountant))
            self._refreshed = (now, time.monotonic() - now)
            self._report = self._make_report(epsilon)
        if self._stopped and self._report.budget_spent and not self._told:
            self._told = True
            log.info(
                "privacy budget spent at ε=%.4g (target %g, δ = %.3g): training stops, gossip "
                "goes on",
                self._report.epsilon, self.settings.target_epsilon, self._report.delta,
            )  # fmt: skip

    def _make_report(self, epsilon: float | None) -> PrivacyReport:
        budget = self.budget
        if budget is None and not self.ledger.steps:
            return replace(NOT_PRIVATE, plain_steps=self.plain_steps)
        s = self.settings
        return PrivacyReport(
            dp=self.enabled,
            epsilon=epsilon,
            delta=self.delta,
            target_epsilon=s.target_epsilon if budget is not None else None,
            noise_multiplier=budget.noise_multiplier if budget is not None else None,
            max_grad_norm=budget.max_grad_norm if budget is not None else None,
            accountant=s.accountant,
            budget_spent=budget is not None and self.ledger.would_exceed(budget),
            steps=self.ledger.steps,
            plain_steps=self.plain_steps,
        )

    def report(self) -> PrivacyReport:
        """The last refreshed report (any thread)."""
        return self._report
