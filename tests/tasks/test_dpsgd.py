"""DP-SGD on one model: Poisson batches, per-record clipping, seeded noise, resuming, models
Opacus cannot train, and that it still learns."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gossiplearn.crypto.privacy import Ledger, PrivacyBudget
from gossiplearn.errors import CheckpointError, UserError
from gossiplearn.tasks.base import Dataset, mlp
from gossiplearn.tasks.dpsgd import PrivateSGD, validate
from gossiplearn.tasks.tabular import TabularModel

TINY_NOISE = 1e-12  # a budget needs σ > 0; this one adds nothing measurable


def budget(sample_rate: float, noise: float = 1.0, clip: float = 1.0) -> PrivacyBudget:
    return PrivacyBudget(
        target_epsilon=8.0, delta=1e-5, max_grad_norm=clip, noise_multiplier=noise,
        sample_rate=sample_rate,
    )  # fmt: skip


def digits_like(n: int = 200, seed: int = 0) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    return Dataset(torch.randn(n, 64, generator=gen), torch.randint(0, 10, (n,), generator=gen))


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def mean_output(out: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
    """A loss whose per-record gradient for a bias-free linear layer is the record itself."""
    return out.sum(dim=1).mean()


def test_the_model_stays_the_plain_module() -> None:
    model = mlp(64, 16, 10)
    keys, text, params = list(model.state_dict()), repr(model), list(model.parameters())
    dp = PrivateSGD(model, digits_like(), F.cross_entropy, budget(0.1), seed=1)
    dp.step(0.1)
    assert dp.model is model
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert list(model.state_dict()) == keys and repr(model) == text
    exchanged = model.state_dict()["0.weight"]  # as the trainer holds it for merging
    with torch.no_grad():
        exchanged.zero_()
    dp.step(0.1)
    assert exchanged.abs().sum() > 0  # the step trained the tensor merging writes
    model.train()
    model(torch.zeros(3, 64))  # other code's forward, in training mode, is not recorded
    assert not leftovers(model)
    dp.step(0.1)
    dp.close()
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


def leftovers(model: nn.Module) -> bool:
    """Whether Opacus's hooks hold layer inputs of a batch that was not stepped."""
    return any(getattr(m, "activations", None) for m in model.modules())


def test_a_failed_step_leaves_no_half_recorded_batch() -> None:
    calls = []

    def fails_once(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return F.cross_entropy(out, labels)

    model = mlp(64, 8, 10)
    dp = PrivateSGD(model, digits_like(), fails_once, budget(0.2), seed=1)
    with pytest.raises(RuntimeError, match="boom"):
        dp.step(0.1)
    assert not leftovers(model)
    assert dp.step(0.1) > 0


def test_poisson_batches_average_q_times_n() -> None:
    n, q, steps = 1000, 0.05, 100
    dp = PrivateSGD(mlp(64, 4, 10), digits_like(n), F.cross_entropy, budget(q), seed=2)
    sizes = [dp.step(0.01) for _ in range(steps)]
    spread = math.sqrt(n * q * (1 - q) / steps)  # standard deviation of the mean size
    assert abs(sum(sizes) / steps - q * n) < 4 * spread
    assert len(set(sizes)) > 5


def test_an_empty_batch_still_adds_noise() -> None:
    model = nn.Linear(64, 10)
    dp = PrivateSGD(model, digits_like(10), F.cross_entropy, budget(0.01), seed=3)
    sizes, before = [], flat(model)
    for _ in range(20):
        sizes.append(dp.step(0.01))
    assert 0 in sizes
    after = flat(model)
    assert torch.isfinite(after).all() and not torch.equal(before, after)


@pytest.mark.parametrize("norm", [50.0, 0.5])
def test_one_record_moves_the_model_by_its_clipped_gradient(norm: float) -> None:
    """With lr 1 and no noise a one-record batch moves the weights by the record's gradient
    (the record itself, here) scaled down to norm 2 when it is longer, and not scaled up."""
    record = torch.tensor([[3.0, 4.0]]) * (norm / 5.0)
    model = nn.Linear(2, 1, bias=False)
    dp = PrivateSGD(
        model, Dataset(record, torch.zeros(1)), mean_output, budget(1.0, TINY_NOISE, clip=2.0)
    )
    before = flat(model)
    assert dp.step(1.0) == 1
    move = before - flat(model)
    expected = record[0] * min(1.0, 2.0 / norm)
    assert torch.allclose(move, expected, rtol=1e-5)


def test_a_batch_moves_the_model_by_at_most_the_clipping_bound() -> None:
    records = torch.randn(16, 8) * 100
    model = nn.Linear(8, 1, bias=False)
    dp = PrivateSGD(
        model, Dataset(records, torch.zeros(16)), mean_output, budget(1.0, TINY_NOISE, clip=0.5)
    )
    before = flat(model)
    assert dp.step(1.0) == 16
    assert float((before - flat(model)).norm()) <= 0.5 * (1 + 1e-5)


def updates(seed: int) -> torch.Tensor:
    torch.manual_seed(0)  # the same initial model every time
    model = mlp(64, 8, 10)
    dp = PrivateSGD(model, digits_like(), F.cross_entropy, budget(0.1), momentum=0.9, seed=seed)
    before = flat(model)
    for _ in range(3):
        dp.step(0.1)
    return flat(model) - before


def test_the_seed_decides_the_noise_and_the_batches() -> None:
    assert torch.equal(updates(7), updates(7))
    assert not torch.allclose(updates(7), updates(8))


def test_a_restored_state_continues_bit_for_bit() -> None:
    model = mlp(64, 8, 10)
    dp = PrivateSGD(model, digits_like(), F.cross_entropy, budget(0.1), momentum=0.9, seed=4)
    for _ in range(3):
        dp.step(0.1)
    saved, tensors = dp.state(), {k: v.clone() for k, v in model.state_dict().items()}
    assert set(saved.momentum) == {name for name, _ in model.named_parameters()}
    for _ in range(3):
        dp.step(0.05)
    expected = flat(model)

    dp.step(0.1)  # wander off, then resume from the saved state in another instance
    dp.close()
    model.load_state_dict(tensors)
    resumed = PrivateSGD(model, digits_like(), F.cross_entropy, budget(0.1), momentum=0.9)
    assert resumed.incompatibility(saved) is None
    resumed.restore(saved)
    for _ in range(3):
        resumed.step(0.05)
    assert torch.equal(flat(model), expected)


def test_a_restore_without_noise_keeps_the_new_generator() -> None:
    dp = PrivateSGD(mlp(64, 8, 10), digits_like(), F.cross_entropy, budget(0.1), seed=4)
    dp.step(0.1)
    saved = dp.state()
    fresh = PrivateSGD(mlp(64, 8, 10), digits_like(), F.cross_entropy, budget(0.1), seed=9)
    own = fresh.state().generator
    fresh.restore(saved, noise=False)
    assert torch.equal(fresh.state().generator, own)
    fresh.restore(saved)
    assert torch.equal(fresh.state().generator, saved.generator)


def test_a_state_of_another_model_is_refused() -> None:
    dp = PrivateSGD(mlp(64, 8, 10), digits_like(), F.cross_entropy, budget(0.1), momentum=0.9)
    dp.step(0.1)
    other = PrivateSGD(mlp(64, 9, 10), digits_like(), F.cross_entropy, budget(0.1))
    assert other.incompatibility(dp.state()) is not None
    with pytest.raises(CheckpointError, match="momentum buffer"):
        other.restore(dp.state())


BATCH_NORM_FIX = "replace it with LayerNorm or GroupNorm"


@pytest.mark.parametrize(
    ("model", "layer", "fix"),
    [
        (nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU()), "BatchNorm1d '1'",
         BATCH_NORM_FIX),
        (nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, affine=False)), "BatchNorm1d '1'",
         BATCH_NORM_FIX),
        (TabularModel(4, nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))), "'net.1'",
         BATCH_NORM_FIX),
        (nn.Sequential(nn.InstanceNorm1d(4, track_running_stats=True)), "InstanceNorm1d '0'",
         "track_running_stats=False"),
        (nn.Sequential(nn.LSTM(4, 8)), "LSTM '0'", "DPLSTM"),
        (nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True)), "ReLU '1'", "inplace=False"),
    ],
)  # fmt: skip
def test_a_model_dp_sgd_cannot_train_is_refused_naming_the_layer(
    model: nn.Module, layer: str, fix: str
) -> None:
    with pytest.raises(UserError) as caught:
        validate(model)
    assert layer in str(caught.value) and fix in str(caught.value)
    with pytest.raises(UserError):
        PrivateSGD(model, digits_like(4), F.cross_entropy, budget(0.5))


def test_models_opacus_can_train_pass() -> None:
    validate(mlp(64, 16, 10))
    validate(TabularModel(4, nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))))


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        return out.relu_()


def test_an_in_place_operation_in_forward_is_a_user_error() -> None:
    dp = PrivateSGD(InPlace(), digits_like(), F.cross_entropy, budget(0.5), seed=6)
    with pytest.raises(UserError, match="in place"):
        dp.step(0.1)


def test_dp_sgd_learns_separable_blobs_within_the_budget() -> None:
    """Two Gaussian blobs one standard deviation from the boundary on each axis (the best
    possible accuracy is about 92%), learnt in 60 steps at ε = 8."""
    gen = torch.Generator().manual_seed(5)
    n = 1000
    labels = torch.randint(0, 2, (n,), generator=gen)
    features = torch.randn(n, 2, generator=gen) + (labels[:, None] * 2 - 1)
    plan = PrivacyBudget.plan(
        target_epsilon=8.0, max_grad_norm=1.0, records=n, batch_size=64, steps=60
    )
    torch.manual_seed(5)
    model = nn.Linear(2, 2)
    dp = PrivateSGD(model, Dataset(features, labels), F.cross_entropy, plan, seed=5)
    ledger = Ledger()
    while not ledger.would_exceed(plan):
        dp.step(0.5)
        ledger.record(plan.noise_multiplier, plan.sample_rate)
    assert 60 <= ledger.steps < 65 and ledger.epsilon(plan.delta) <= 8.0
    with torch.no_grad():
        accuracy = float((model(features).argmax(dim=1) == labels).float().mean())
    assert accuracy > 0.85
