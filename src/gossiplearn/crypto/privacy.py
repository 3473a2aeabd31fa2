"""Differential-privacy accounting for DP-SGD: the budget, the noise it needs, and the ledger of
privacy spent by one peer's training.

DP-SGD (Abadi et al. 2016) makes each SGD step a Poisson-subsampled Gaussian mechanism: every
record joins the batch with probability ``sample_rate`` (q), each record's gradient is clipped
to L2 norm ``max_grad_norm`` (C), and Gaussian noise of standard deviation
``noise_multiplier · C`` (σ·C) is added to their sum. Privacy is spent per step and composes
over steps; the accountants of Opacus turn a history of (σ, q, steps) into ε at a given δ.

In gossip learning every model a peer sends is a function of its DP-SGD iterates and of models
it received (which are themselves functions of earlier releases), so by post-processing and
adaptive composition the ε of the peer's own steps bounds what any other peer, or all of them
together, can learn about one of its records from its models. It does not cover anything sent
besides the parameters (the record count a model offer carries as its weight; the tabular
task's consortium statistics, exact sums of the member's rows), and it assumes the sampling
and the noise are secret (``tasks.dpsgd``).

Invariants:
- ``Ledger`` never lets training overspend: ``remaining_steps``/``would_exceed`` answer before
  a step is taken, and a step is allowed only if the history *with* it stays within the target.
- The history is the fact, the accountant an analysis of it: the ledger stores (σ, q, steps)
  entries (consecutive equal (σ, q) merged, so 100,000 steps at one setting are one entry) and
  evaluates them with the accountant a query names. Its state is plain msgpack data, so a
  checkpoint carries it and ε never resets on restart. (Steps taken after the last saved
  ledger and released in a model are spent all the same: the ledger must be saved before a
  model trained by new steps is sent, or a resume must count those steps.)
- Pure: no clocks, no I/O. Opacus (and with it torch) is imported on first use, so building or
  validating a ``PrivacyBudget`` from settings stays cheap.

Accountant choice (measured, q = 32/1000, δ = 1e-5, Opacus 1.6, two CPU cores): PRV (Gopi et al.
2021) is tighter, needing 4-7% less noise for the same ε (σ = 5.51 / 2.15 / 1.11 for ε = 1 / 3
/ 8 over 2,000 steps, against 5.90 / 2.29 / 1.16 under RDP), but one ε query costs 0.1-1 s at
2,000 steps and 20-30 s at 20,000-100,000 steps, and grows with every distinct (σ, q) in the
history. RDP (Mironov 2017; the conversion of Balle et al. 2020) is the standard, always a valid
upper bound, and costs microseconds per query here (its per-step values are cached). A peer
checks its budget before every step and runs indefinitely, so ``"rdp"`` is the default and
``"prv"`` is offered for short, planned runs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from gossiplearn.errors import CheckpointError, UserError

Accountant = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[str, ...] = get_args(Accountant)
DEFAULT_ACCOUNTANT: Accountant = "rdp"
# Above this the noise drowns any batch a peer can hold: with σ = 100 and C = 1, a batch of
# 32 records averages to a gradient with noise of standard deviation 3 per coordinate.
MAX_NOISE_MULTIPLIER = 100.0
_STATE_VERSION = 1
_MAX_STEPS_SEARCHED = 1 << 40  # remaining_steps reports at most this many


def default_delta(records: int) -> float:
    """The δ used when none is set: ``1 / (10 · records)``.

    δ bounds the probability that the ε guarantee fails outright. A mechanism that publishes
    each record with probability δ is (0, δ)-DP yet leaks δ · records records in expectation,
    so δ must be well below 1/records; 1/(10 · records) keeps that expectation at 0.1 for any
    data size (the conventional 1/records^1.1 is only half of 1/records at 1,000 records).
    Raises ``ValueError`` if ``records < 1``.
    """
    if records < 1:
        raise ValueError(f"records must be at least 1, not {records}")
    return 1.0 / (10 * records)


@dataclass(frozen=True, slots=True)
class PrivacyBudget:
    """A peer's resolved DP-SGD setting: the (ε, δ) it may spend and the mechanism of each step.

    ``noise_multiplier`` σ is the noise's standard deviation in units of ``max_grad_norm`` C
    (the per-record L2 clipping bound, in gradient units); ``sample_rate`` q is the probability
    that a record joins a step's batch (expected batch size / records). Build one with
    ``plan``; the constructor checks each field and raises ``UserError`` naming it.
    """

    target_epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float
    sample_rate: float
    accountant: Accountant = DEFAULT_ACCOUNTANT

    def __post_init__(self) -> None:
        _check_positive("target_epsilon", self.target_epsilon, "the privacy budget ε")
        if not 0.0 < self.delta < 1.0:
            raise UserError(
                f"delta must be between 0 and 1 (got {self.delta}): it is the probability "
                "that the guarantee fails; leave it unset for 1/(10 · records)"
            )
        _check_positive("max_grad_norm", self.max_grad_norm, "the per-record clipping bound")
        _check_positive("noise_multiplier", self.noise_multiplier, "the noise scale")
        if self.noise_multiplier > MAX_NOISE_MULTIPLIER:
            raise UserError(
                f"noise_multiplier {self.noise_multiplier:g} is above {MAX_NOISE_MULTIPLIER:g}: "
                "the noise would drown every update; use a smaller noise_multiplier or leave "
                "it unset to derive it from target_epsilon"
            )
        if not 0.0 < self.sample_rate <= 1.0:
            raise UserError(
                f"the sampling rate batch_size / records must be in (0, 1] "
                f"(got {self.sample_rate}): set batch_size to at least 1"
            )
        if self.accountant not in ACCOUNTANTS:
            raise UserError(
                f"accountant must be one of {', '.join(ACCOUNTANTS)} (got {self.accountant!r})"
            )

    @classmethod
    def plan(
        cls,
        *,
        target_epsilon: float,
        max_grad_norm: float,
        records: int,
        batch_size: int,
        steps: int,
        delta: float | None = None,
        noise_multiplier: float | None = None,
        accountant: Accountant = DEFAULT_ACCOUNTANT,
    ) -> PrivacyBudget:
        """The budget for training on ``records`` records with expected batches of
        ``batch_size`` for ``steps`` steps: δ defaults to ``default_delta(records)``, σ to the
        least noise that keeps ``steps`` steps within ``target_epsilon`` (``noise_for_budget``).
        A given σ is used as is; the ledger then stops training when ``target_epsilon`` is
        spent, before or after ``steps``.

        Raises ``UserError`` naming the setting when one is invalid: ε ≤ 0, δ outside
        (0, 1/records), ``max_grad_norm`` ≤ 0, ``batch_size`` or ``steps`` < 1, or a budget
        so small that the noise it needs exceeds ``MAX_NOISE_MULTIPLIER``.
        """
        if records < 1:
            raise UserError("differential privacy needs training records; this peer has none")
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1 (got {batch_size})")
        if steps < 1:
            raise UserError(f"the number of training steps must be at least 1 (got {steps})")
        _check_positive("target_epsilon", target_epsilon, "the privacy budget ε")
        _check_positive("max_grad_norm", max_grad_norm, "the per-record clipping bound")
        if delta is None:
            delta = default_delta(records)
        elif not 0.0 < delta < 1.0 / records:
            raise UserError(
                f"delta {delta:g} must be above 0 and below 1/records = 1/{records} "
                f"= {1.0 / records:.3g}: a δ that large allows a whole record to leak; "
                f"leave delta unset for 1/(10 · records) = {default_delta(records):.3g}"
            )
        sample_rate = min(1.0, batch_size / records)
        if noise_multiplier is None:
            noise_multiplier = noise_for_budget(
                target_epsilon, delta, sample_rate=sample_rate, steps=steps, accountant=accountant
            )
        return cls(
            target_epsilon=target_epsilon,
            delta=delta,
            max_grad_norm=max_grad_norm,
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            accountant=accountant,
        )


def noise_for_budget(
    target_epsilon: float,
    delta: float,
    *,
    sample_rate: float,
    steps: int,
    accountant: Accountant = DEFAULT_ACCOUNTANT,
) -> float:
    """The least noise multiplier σ (found to within 0.01 in ε, rounded up: Opacus's
    ``get_noise_multiplier``) such that ``steps`` steps at ``sample_rate`` spend at most
    ``target_epsilon`` at ``delta``. A ``Ledger`` recording exactly those steps reports at most
    ``target_epsilon`` under the same accountant.

    Takes 0.1-0.3 s under RDP and 1-4 s under PRV at 2,000 steps. Raises ``UserError`` when
    σ would exceed ``MAX_NOISE_MULTIPLIER`` (the budget is too small for that much training),
    ``ValueError`` when ``sample_rate`` is not in (0, 1] or ``steps`` < 1.
    """
    from opacus.accountants.utils import get_noise_multiplier  # noqa: PLC0415  (lazy: torch)

    def too_small() -> UserError:
        return UserError(
            f"a privacy budget of ε = {target_epsilon:g} (δ = {delta:.3g}) is too small for "
            f"{steps} training steps that each sample {sample_rate:.3g} of the records: the "
            f"noise_multiplier needed is above {MAX_NOISE_MULTIPLIER:g}, which drowns every "
            "update. Raise target_epsilon, train for fewer steps, or use a smaller batch_size"
        )

    # one evaluation at the largest acceptable noise, instead of Opacus's search up to 1e6
    at_most_noise = Ledger([Spend(MAX_NOISE_MULTIPLIER, sample_rate, steps)])
    if at_most_noise.epsilon(delta, accountant) > target_epsilon:
        raise too_small()
    with _quiet_alpha_range():
        try:
            sigma = float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                )
            )
        except ValueError as exc:  # Opacus gives up at σ > 1e6: "The privacy budget is too low."
            raise too_small() from exc
    if sigma > MAX_NOISE_MULTIPLIER:
        raise too_small()
    return sigma


@dataclass(frozen=True, slots=True)
class Spend:
    """``steps`` consecutive DP-SGD steps with noise multiplier σ and sampling rate q."""

    noise_multiplier: float
    sample_rate: float
    steps: int


class Ledger:
    """The privacy one peer's training has spent: its history of (σ, q, steps), and ε of it.

    Each step, before it is taken: ``would_exceed(budget)`` (or ``remaining_steps``); after it:
    ``record(budget.noise_multiplier, budget.sample_rate)``. ``to_state``/``from_state``
    carry the history through a checkpoint. Not thread-safe: the caller's lock covers it.
    """

    def __init__(self, history: Iterable[Spend] = ()) -> None:
        self._history: list[Spend] = []
        self._per_step_rdp: dict[tuple[float, float], np.ndarray] = {}
        # (budget, steps recorded then, steps it allowed then): valid while every step
        # recorded since used the budget's (σ, q)
        self._allowance: tuple[PrivacyBudget, int, int] | None = None
        self._spent: tuple[float, str, int, float] | None = None  # (δ, accountant, steps, ε)
        for spend in history:
            self.record(spend.noise_multiplier, spend.sample_rate, spend.steps)

    @property
    def history(self) -> tuple[Spend, ...]:
        return tuple(self._history)

    @property
    def steps(self) -> int:
        """Steps recorded so far."""
        return sum(s.steps for s in self._history)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Add ``steps`` steps taken with noise multiplier σ and sampling rate q.

        Raises ``ValueError`` if σ is not positive and finite, q not in (0, 1], or steps < 1.
        """
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ValueError(f"noise multiplier must be positive, not {noise_multiplier}")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample rate must be in (0, 1], not {sample_rate}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, not {steps}")
        self._history = _appended(self._history, noise_multiplier, sample_rate, steps)
        self._spent = None
        if self._allowance is not None:
            budget = self._allowance[0]
            if (budget.noise_multiplier, budget.sample_rate) != (noise_multiplier, sample_rate):
                self._allowance = None

    def epsilon(self, delta: float, accountant: Accountant = DEFAULT_ACCOUNTANT) -> float:
        """ε spent so far at ``delta`` under ``accountant`` (0.0 before any step). The last
        answer is cached until the next ``record``; under PRV a query takes 0.1-30 s."""
        key = (delta, accountant, self.steps)
        if self._spent is not None and self._spent[:3] == key:
            return self._spent[3]
        eps = self._epsilon_of(self._history, delta, accountant)
        self._spent = (*key, eps)
        return eps

    def epsilon_after(self, budget: PrivacyBudget, steps: int) -> float:
        """ε at ``budget.delta`` under ``budget.accountant`` once ``steps`` more steps of the
        budget's (σ, q) are taken."""
        hypothetical = _appended(self._history, budget.noise_multiplier, budget.sample_rate, steps)
        return self._epsilon_of(hypothetical, budget.delta, budget.accountant)

    def remaining_steps(self, budget: PrivacyBudget) -> int:
        """How many more steps of the budget's (σ, q) keep ε within ``budget.target_epsilon``
        (0: stop now). At most 2**40. Computed once per budget (a search over ``epsilon_after``;
        under PRV, seconds) and then counted down as the same steps are recorded."""
        if self._allowance is not None and self._allowance[0] == budget:
            _, at, allowed = self._allowance
            return max(0, allowed - (self.steps - at))
        target = budget.target_epsilon
        ok, bad = 0, 1  # ε after ``ok`` more steps is within the target, after ``bad`` not
        if self.epsilon_after(budget, 0) > target:
            bad = 0
        else:
            while bad <= _MAX_STEPS_SEARCHED and self.epsilon_after(budget, bad) <= target:
                ok, bad = bad, 2 * bad
            bad = min(bad, _MAX_STEPS_SEARCHED + 1)
            while bad - ok > 1:
                mid = (ok + bad) // 2
                if self.epsilon_after(budget, mid) <= target:
                    ok = mid
                else:
                    bad = mid
        self._allowance = (budget, self.steps, ok)
        return ok

    def would_exceed(self, budget: PrivacyBudget, steps: int = 1) -> bool:
        """Whether taking ``steps`` more steps of the budget's (σ, q) would spend more than
        ``budget.target_epsilon``: ask before the step, never after."""
        return steps > self.remaining_steps(budget)

    def to_state(self) -> dict[str, Any]:
        """The history as plain msgpack-able data: ``{"version": 1, "history": [[σ, q, steps],
        ...]}`` (floats and ints only)."""
        return {
            "version": _STATE_VERSION,
            "history": [[s.noise_multiplier, s.sample_rate, s.steps] for s in self._history],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Ledger:
        """The ledger ``to_state`` described. Raises ``CheckpointError`` if ``state`` is not
        one (another version, a malformed entry, a value a step cannot have)."""
        try:
            if state.get("version") != _STATE_VERSION:
                raise ValueError(f"version {state.get('version')!r}")
            entries = state["history"]
            if not isinstance(entries, Sequence):
                raise TypeError("history is not a list")
            history = []
            for entry in entries:
                sigma, rate, steps = entry
                if not (_is_number(sigma) and _is_number(rate) and type(steps) is int):
                    raise TypeError(f"entry {entry!r} is not [σ, q, steps]")
                history.append(Spend(float(sigma), float(rate), steps))
            return cls(history)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(
                f"the privacy ledger in the checkpoint is damaged: {exc}"
            ) from exc

    # ---- evaluation

    def _epsilon_of(self, history: Sequence[Spend], delta: float, accountant: str) -> float:
        if not history:
            return 0.0
        if accountant == "rdp":
            return self._rdp_epsilon(history, delta)
        if accountant == "prv":
            from opacus.accountants import PRVAccountant  # noqa: PLC0415  (lazy: torch)

            prv = PRVAccountant()
            prv.history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in history]
            with _quiet_alpha_range():
                return float(prv.get_epsilon(delta=delta))
        raise ValueError(f"unknown accountant {accountant!r}")

    def _rdp_epsilon(self, history: Sequence[Spend], delta: float) -> float:
        """Opacus's ``RDPAccountant.get_epsilon`` of ``history``, bit for bit, with each
        (σ, q)'s per-step RDP curve computed once (RDP composes by addition, and Opacus's
        ``compute_rdp`` is the one-step curve times the steps)."""
        from opacus.accountants import RDPAccountant  # noqa: PLC0415  (lazy: torch)
        from opacus.accountants.analysis import rdp  # noqa: PLC0415

        orders = RDPAccountant.DEFAULT_ALPHAS
        curves = []
        for s in history:
            key = (s.noise_multiplier, s.sample_rate)
            if key not in self._per_step_rdp:
                one_step = rdp.compute_rdp(
                    q=s.sample_rate, noise_multiplier=s.noise_multiplier, steps=1, orders=orders
                )
                self._per_step_rdp[key] = np.asarray(one_step)
            curves.append(self._per_step_rdp[key] * s.steps)
        with _quiet_alpha_range():
            eps, _ = rdp.get_privacy_spent(orders=orders, rdp=sum(curves), delta=delta)
        return float(eps)


def _appended(history: Sequence[Spend], sigma: float, rate: float, steps: int) -> list[Spend]:
    """``history`` plus ``steps`` steps of (σ, q), merged into its last entry when equal."""
    out = list(history)
    if steps <= 0:
        return out
    if out and (out[-1].noise_multiplier, out[-1].sample_rate) == (sigma, rate):
        out[-1] = Spend(sigma, rate, out[-1].steps + steps)
    else:
        out.append(Spend(sigma, rate, steps))
    return out


def _is_number(value: object) -> bool:
    return type(value) in (int, float)


def _check_positive(name: str, value: float, meaning: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{name} ({meaning}) must be a positive number, not {value}")


@contextmanager
def _quiet_alpha_range() -> Iterator[None]:
    """Silence Opacus's "Optimal order is the largest/smallest alpha" ``UserWarning``: the
    bound it comes with is still valid, only not the tightest, and it is expected for very
    small or very large ε. (``catch_warnings`` swaps the process-wide filter list; the worst a
    concurrent thread can see is this one warning ignored too.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        yield
