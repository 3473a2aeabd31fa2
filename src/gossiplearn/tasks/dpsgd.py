"""DP-SGD on one model (Abadi et al. 2016), with Opacus doing the private part.

Each ``PrivateSGD.step``: Poisson-sample a batch (every record joins with probability q, so a
batch may be empty), compute per-record gradients (Opacus ``GradSampleHooks``), clip each to
L2 norm C and add Gaussian noise of standard deviation σ·C to their sum (Opacus
``DPOptimizer``), divide by the expected batch size q·n, then take the SGD step. σ, C and q come
from a ``crypto.privacy.PrivacyBudget``; the ledger that decides whether a step may be taken is
the caller's (``crypto.privacy.Ledger``).

Invariants:
- The model stays the caller's ``nn.Module``: Opacus attaches hooks to its layers instead of
  wrapping it, so its parameters are the same tensors, its ``state_dict`` keys and ``repr``
  are unchanged (no ``_module.`` prefix), and code that reads or writes them in place between
  steps (merging) keeps working. ``close`` removes the hooks; the model is then plain again.
- The hooks record only inside ``step``: other code may run the model (in any mode) between
  steps. A step that fails leaves no half-recorded batch behind. (A backward pass through the
  model outside ``step`` still meets the registered hooks: torch warns "Full backward hook is
  firing ...", which ``filterwarnings = error`` turns into a failure.)
- The sampling and the noise are drawn from one ``torch.Generator`` whose state ``state``
  captures, so a peer restored from a checkpoint continues bit for bit. Its seed must be secret
  (the default is 64 random bits from ``secrets``): whoever knows it can replay the noise and
  the batches, and the guarantee is void. Opacus's ``secure_mode`` is off: the noise comes from
  torch's Mersenne Twister, not a cryptographic generator, and is not hardened against
  floating-point attacks on the Gaussian sampler (Mironov 2012; arXiv 2107.10138,
  2112.05307); secure mode would need the ``torchcsprng`` package and four draws per value.
- Noise must never be reused on a different computation: restoring the generator state from
  a checkpoint replays the noise of the steps after it, which is safe only if no model trained
  past the checkpoint was sent. A model sent after step k and a replay of step k from other
  merged parameters carry the same noise, and their difference shows the gradients without
  it. A resume that cannot rule that out must restore the momentum only and reseed
  (``restore(state, noise=False)``).
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from opacus.grad_sample import GradSampleHooks
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch import nn

from gossiplearn.crypto.privacy import PrivacyBudget
from gossiplearn.errors import CheckpointError, UserError
from gossiplearn.tasks.base import Dataset


@dataclass(frozen=True, slots=True)
class PrivateSGDState:
    """Everything ``PrivateSGD``'s next step depends on besides the model: SGD momentum
    buffers by parameter name (the model's own names) and the generator's state (uint8)."""

    momentum: Mapping[str, torch.Tensor]
    generator: torch.Tensor


def validate(model: nn.Module) -> None:
    """Check that DP-SGD can train ``model``. Raises ``UserError`` naming each layer that
    cannot be trained privately and how to replace it.

    Runs Opacus's per-layer validators (those of ``ModuleValidator.validate``, which does not
    say which layer failed) on each named layer with parameters, and Opacus's rule against
    layers holding both parameters and buffers. Also refuses, wherever they sit and even
    without parameters (Opacus skips those): BatchNorm, which normalises each record with the
    whole batch's statistics, so one record's gradient depends on the others'; running
    averages (BatchNorm, InstanceNorm with ``track_running_stats``), which record the data and
    would be exchanged as is; and ``inplace=True`` layers, which break the gradient hooks.
    """
    problems = []
    for name, m in model.named_modules():
        layer = f"{type(m).__name__} {name!r}" if name else f"the model ({type(m).__name__})"
        problem = _layer_problem(m)
        if problem is not None:
            problems.append(f"{layer} {problem}")
            continue
        if not any(p.requires_grad for p in m.parameters(recurse=False)):
            continue
        check = ModuleValidator.VALIDATORS.get(type(m))
        for error in check(m) if check is not None else ():
            problems.append(f"{layer}: {error}")
        if any(True for _ in m.buffers()):  # as Opacus checks: its own or its children's
            problems.append(
                f"{layer} has both trainable parameters and buffers, which Opacus cannot "
                "compute per-record gradients for; move the buffers to a layer of their own"
            )
    if problems:
        raise UserError(
            "this model cannot be trained with differential privacy:\n  - "
            + "\n  - ".join(problems)
            + "\nChange the task's model (Opacus's ModuleValidator.fix(model) replaces the "
            "layers it knows), or train without differential privacy."
        )


def _layer_problem(m: nn.Module) -> str | None:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):  # 1d/2d/3d, SyncBatchNorm, lazy
        return (
            "normalises each record with statistics of the whole batch, so one record's "
            "gradient depends on the others', and keeps running averages of the data; "
            "replace it with LayerNorm or GroupNorm"
        )
    if isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats:
        return (
            "keeps running averages of the data, which would be exchanged unprotected; "
            "create it with track_running_stats=False"
        )
    if getattr(m, "inplace", False) is True:  # ReLU, Dropout, ... (inplace=True)
        return (
            "changes its input in place, which Opacus's per-record gradient hooks on the "
            "layer before it forbid; create it with inplace=False"
        )
    return None


class PrivateSGD:
    """DP-SGD steps on ``model`` over the records of ``data``, for one peer.

    ``loss(outputs, labels)`` must be the mean over the batch of independent per-record losses
    (as ``Task.loss`` is); the optimiser is SGD with ``momentum`` and ``weight_decay``, its
    learning rate given per step. Not thread-safe: the caller's lock covers it.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Dataset,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        budget: PrivacyBudget,
        *,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        seed: int | None = None,
    ) -> None:
        """Attach Opacus to ``model`` (checked with ``validate`` first: raises ``UserError``).
        ``seed`` None draws a secret one; a given seed is for tests. Raises ``ValueError``
        when ``data`` is empty."""
        if len(data) == 0:
            raise ValueError("DP-SGD needs at least one training record")
        validate(model)
        self.model = model
        self.budget = budget
        self._data = data
        self._loss = loss
        self._generator = torch.Generator().manual_seed(
            secrets.randbits(64) if seed is None else seed
        )
        self._sampler = UniformWithReplacementSampler(
            num_samples=len(data), sample_rate=budget.sample_rate, generator=self._generator
        )
        self._hooks = GradSampleHooks(model, batch_first=True, loss_reduction="mean")
        self._hooks.disable_hooks()  # on only inside ``step``
        self._sgd = torch.optim.SGD(
            model.parameters(), lr=0.0, momentum=momentum, weight_decay=weight_decay
        )
        self._optimizer = DPOptimizer(
            self._sgd,
            noise_multiplier=budget.noise_multiplier,
            max_grad_norm=budget.max_grad_norm,
            expected_batch_size=self.expected_batch_size,
            loss_reduction="mean",
            generator=self._generator,
            secure_mode=False,
        )

    @property
    def expected_batch_size(self) -> float:
        """q · n: what the noisy sum of clipped gradients is divided by (records)."""
        return self.budget.sample_rate * len(self._data)

    def step(self, lr: float) -> int:
        """One DP-SGD step at learning rate ``lr``; returns how many records the Poisson
        sample drew (0 is possible: the step then moves the model by noise alone, as the
        accounting assumes). Spends one step of ``budget``: check the ledger first."""
        idx = torch.tensor(next(iter(self._sampler)), dtype=torch.int64)
        for group in self._optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self._optimizer.zero_grad(set_to_none=True)
        self._hooks.enable_hooks()
        try:
            with _quiet_hook_warning():
                outputs = self.model(self._data.features[idx])
                # an empty batch's mean loss is NaN; its gradient is empty and never used
                self._loss(outputs, self._data.labels[idx]).backward()  # type: ignore[no-untyped-call]
            self._optimizer.step()
        except BaseException as exc:
            self._forget_batch()
            if isinstance(exc, RuntimeError) and "BackwardHookFunction" in str(exc):
                raise UserError(  # an in-place operation ``validate`` cannot see
                    "the model changes a layer's output in place (such as x.relu_()), which "
                    "Opacus's per-record gradient hooks forbid; use the out-of-place form "
                    "(x.relu())"
                ) from exc
            raise
        finally:
            self._hooks.disable_hooks()
            self._optimizer.zero_grad(set_to_none=True)  # frees the per-record gradients
        return len(idx)

    def _forget_batch(self) -> None:
        """Drop what Opacus's hooks keep between a forward and its backward (layer inputs, the
        batch size, per-parameter counters): after a failed step it would be stale, and the
        next step would scale its per-record gradients by the wrong batch size."""
        for module in self.model.modules():
            for attr in ("activations", "max_batch_len"):
                if hasattr(module, attr):
                    delattr(module, attr)
        for param in self.model.parameters():
            if hasattr(param, "_forward_counter"):
                param._forward_counter = 0
            if hasattr(param, "_current_grad_sample"):
                del param._current_grad_sample

    def state(self) -> PrivateSGDState:
        """A copy of the momentum buffers and the generator state."""
        momentum = {}
        for name, param in self.model.named_parameters():
            buf = self._sgd.state.get(param, {}).get("momentum_buffer")
            if buf is not None:
                momentum[name] = buf.detach().clone()
        return PrivateSGDState(momentum=momentum, generator=self._generator.get_state())

    def incompatibility(self, state: PrivateSGDState) -> str | None:
        """Why ``state`` cannot be restored here (a buffer for no parameter or of the wrong
        shape, a generator state of the wrong size), or None."""
        params = dict(self.model.named_parameters())
        for name, buf in state.momentum.items():
            param = params.get(name)
            if param is None or tuple(buf.shape) != tuple(param.shape):
                return f"momentum buffer {name!r} matches no parameter"
        ours = self._generator.get_state()
        if state.generator.dtype != ours.dtype or state.generator.shape != ours.shape:
            return "its DP-SGD generator state has the wrong size"
        return None

    def restore(self, state: PrivateSGDState, *, noise: bool = True) -> None:
        """Reinstate ``state``; with ``noise=False`` the momentum only, keeping this
        instance's own generator (see the module's note on replayed noise). Raises
        ``CheckpointError`` if ``incompatibility`` finds one."""
        problem = self.incompatibility(state)
        if problem is not None:
            raise CheckpointError(f"cannot resume DP-SGD: {problem}")
        params = dict(self.model.named_parameters())
        self._sgd.state.clear()
        for name, buf in state.momentum.items():
            param = params[name]
            self._sgd.state[param]["momentum_buffer"] = buf.detach().clone().to(param)
        if noise:
            self._generator.set_state(state.generator.clone())

    def close(self) -> None:
        """Remove Opacus's hooks and per-parameter attributes: ``model`` is a plain module
        again. The object must not be used afterwards."""
        self._hooks.cleanup()


@contextmanager
def _quiet_hook_warning() -> Iterator[None]:
    """Silence torch's "Full backward hook is firing when gradients are computed with respect
    to module outputs since no inputs require gradients" ``UserWarning``: Opacus's hook on the
    first layer needs only the gradient at its output, which is what it gets. (Process-wide
    filter list, as in ``crypto.privacy._quiet_alpha_range``.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Full backward hook is firing", category=UserWarning
        )
        yield
