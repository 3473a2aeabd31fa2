"""A peer training with differential privacy: ε grows and training stops at the budget (the
node's training loop ends, gossip goes on), the ledger survives restarts and crashes, models
DP-SGD cannot train are refused, and status shows what was spent."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import trio
import trio.testing
from torch import nn

from gossiplearn.cli.render import render_status
from gossiplearn.crypto.privacy import Ledger
from gossiplearn.errors import CheckpointError, UserError
from gossiplearn.gossip.stats import ExchangeCounters
from gossiplearn.peer.app import run_peer
from gossiplearn.peer.home.checkpoint import (
    Checkpoint,
    NodeState,
    decode_checkpoint,
    encode_checkpoint,
)
from gossiplearn.peer.home.config import PeerConfig, TrainingConfig, with_overrides
from gossiplearn.peer.home.home import Home
from gossiplearn.peer.home.privacy import PrivacyConfig, load_ledger, save_ledger
from gossiplearn.peer.home.resume import resume, save_model_file
from gossiplearn.peer.learning.trainer import Trainer
from gossiplearn.peer.sim import InlineLearner, build_simulation
from gossiplearn.tasks.base import Dataset, Task

TRAINING = TrainingConfig(batch_size=20, learning_rate=0.1, steps_per_second=0)
# 200 records, batches of 20 (q = 0.1), δ = 1/2000: σ = 2 fits 27 steps in ε = 1
DP = PrivacyConfig(dp=True, target_epsilon=1.0, noise_multiplier=2.0)
ALLOWED = 27


def tiny_task(model: type[nn.Module] | None = None) -> Task:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=gen)
    data = Dataset(x, (x[:, 0] > 0).long())
    build = model or (lambda: nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)))
    return Task(name="tiny", build_model=build, train=data, validation=data)


def private_trainer(home: Home | None = None, **changes: object) -> Trainer:
    privacy = replace(DP, **changes)  # type: ignore[arg-type]
    save = home.save_privacy_ledger if home is not None else None
    return Trainer(tiny_task(), TRAINING, privacy=privacy, save_ledger=save)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path)


def checkpoint_of(trainer: Trainer) -> bytes:
    node = NodeState(ExchangeCounters(), 0, 0, (), ())
    return encode_checkpoint(Checkpoint(created=time.time(), trainer=trainer.state(), node=node))


# ------------------------------------------------------------------------ the budget


def test_epsilon_grows_and_training_stops_at_the_budget(caplog: pytest.LogCaptureFixture) -> None:
    trainer = private_trainer()
    trainer.privacy.begin(None, 0)
    assert trainer.privacy.report().epsilon == 0.0
    spent = []
    for _ in range(3):
        assert trainer.train_steps(5) == trainer.steps
        spent.append(trainer.privacy.report().epsilon)
    assert 0 < spent[0] < spent[1] < spent[2] < 1.0
    with caplog.at_level(logging.INFO):
        assert trainer.train_steps(100) == ALLOWED  # fewer than asked: the budget is spent
        assert trainer.train_steps(10) == ALLOWED
    report = trainer.privacy.report()
    assert report.budget_spent and report.steps == ALLOWED and report.plain_steps == 0
    assert 0.9 < report.epsilon <= 1.0
    told = [r.message for r in caplog.records if "privacy budget spent" in r.message]
    assert len(told) == 1 and "training stops, gossip goes on" in told[0]
    assert 0 < trainer.samples_seen < 3 * ALLOWED * TRAINING.batch_size  # Poisson batches


def test_noise_derived_from_the_budget_needs_max_steps() -> None:
    with pytest.raises(UserError, match=r"training.max_steps \(--max-steps N\)"):
        with_overrides(PeerConfig(), {"privacy.dp": True})
    cfg = with_overrides(PeerConfig(), {"privacy.dp": True, "privacy.noise_multiplier": 1.5})
    assert cfg.privacy.dp and cfg.training.max_steps == 0
    with pytest.raises(UserError, match=r"privacy\.delta"):
        with_overrides(PeerConfig(), {"privacy.delta": 1.5})


def test_group_size_is_3_to_16() -> None:
    for size in (2, 17):
        with pytest.raises(UserError, match=r"privacy\.group_size"):
            with_overrides(PeerConfig(), {"privacy.group_size": size})
    cfg = with_overrides(PeerConfig(), {"privacy.secure_averaging": True, "privacy.group_size": 16})
    assert cfg.privacy.group_size == 16


class Normalised(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_a_batchnorm_model_is_refused_naming_the_layer() -> None:
    with pytest.raises(UserError, match=r"BatchNorm1d '1'.*LayerNorm or GroupNorm"):
        Trainer(tiny_task(Normalised), TRAINING, privacy=DP)
    Trainer(tiny_task(Normalised), TRAINING)  # without DP it trains as before


BATCHNORM_TASK = """
from torch import nn
from gossiplearn.tasks.base import Dataset, Task
import torch

def make(options):
    data = Dataset(torch.randn(40, 8), torch.zeros(40, dtype=torch.int64))
    model = lambda: nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    return Task(name="normalised", build_model=model, train=data, validation=data)
"""


@pytest.fixture
def batchnorm_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "gossiplearn_test_batchnorm_task"
    (tmp_path / f"{name}.py").write_text(BATCHNORM_TASK, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    threads = torch.get_num_threads()
    yield name
    torch.set_num_threads(threads)  # run_peer sets the process's torch threads


def test_start_refuses_a_model_dp_sgd_cannot_train(tmp_path: Path, batchnorm_module: str) -> None:
    home = Home(tmp_path / "home")
    home.init()
    flags = {
        "task.name": f"{batchnorm_module}:make",
        "privacy.dp": True,
        "privacy.noise_multiplier": 1.0,
        "network.listen": ("/ip4/127.0.0.1/tcp/0",),
    }
    with pytest.raises(UserError, match="BatchNorm1d '1'"):
        trio.run(run_peer, home, flags)


# ------------------------------------------------------------------------ restarts


def test_a_restarted_peer_keeps_its_epsilon(home: Home) -> None:
    first = private_trainer(home)
    resume(first, home)
    first.train_steps(12)
    home.save_checkpoint(checkpoint_of(first))
    first.settle_privacy()
    spent = first.privacy.report().epsilon
    assert load_ledger(home.privacy_ledger_file).steps == 12  # type: ignore[union-attr]

    second = private_trainer(home)
    assert resume(second, home) is not None
    assert second.steps == 12 and second.privacy.report().epsilon == spent
    assert second.privacy.momentum().keys() == first.privacy.momentum().keys()
    assert second.train_steps(100) == ALLOWED  # the budget continues, it does not restart


def test_a_crash_after_the_checkpoint_keeps_the_steps_taken_since(home: Home) -> None:
    first = private_trainer(home)
    resume(first, home)
    first.train_steps(5)
    home.save_checkpoint(checkpoint_of(first))
    first.train_steps(10)  # models trained by these may have been sent; then a SIGKILL
    taken = first.privacy.report().epsilon

    second = private_trainer(home)
    resume(second, home)
    assert second.steps == 5  # the model comes from the checkpoint
    assert second.privacy.ledger.steps >= 15  # the ledger from the file written ahead
    assert second.privacy.report().epsilon >= taken  # type: ignore[operator]


def test_without_the_ledger_file_the_checkpoint_still_carries_it(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    first = private_trainer(home)
    resume(first, home)
    first.train_steps(8)
    home.save_checkpoint(checkpoint_of(first))
    home.privacy_ledger_file.unlink()
    second = private_trainer(home)
    resume(second, home)
    assert second.privacy.ledger.steps == 8
    assert "no saved privacy ledger" in caplog.text
    assert load_ledger(home.privacy_ledger_file).steps == 8  # type: ignore[union-attr]


def test_a_damaged_ledger_file_stops_a_private_start(home: Home) -> None:
    home.privacy_ledger_file.write_text('{"version": 1, "history": [[2.0, 7, 3]]}')
    with pytest.raises(UserError, match=r"privacy\.json is unusable.*delete it"):
        resume(private_trainer(home), home)
    plain = Trainer(tiny_task(), TRAINING)
    resume(plain, home)  # without DP the peer starts, and says so in its log


def test_dp_turned_off_keeps_the_ledger_and_cannot_come_back_after_plain_steps(
    home: Home,
) -> None:
    private = private_trainer(home)
    resume(private, home)
    private.train_steps(6)
    home.save_checkpoint(checkpoint_of(private))
    private.settle_privacy()
    spent = private.privacy.report().epsilon

    plain = Trainer(tiny_task(), TRAINING, save_ledger=home.save_privacy_ledger)
    resume(plain, home)
    report = plain.privacy.report()
    assert (report.dp, report.epsilon, report.steps) == (False, spent, 6)
    assert plain.train_steps(4) == 10
    assert plain.privacy.report().plain_steps == 4
    home.save_checkpoint(checkpoint_of(plain))

    with pytest.raises(UserError, match="trained for 4 steps without it"):
        resume(private_trainer(home), home)


def test_a_model_trained_without_dp_is_not_trained_on_with_it(home: Home) -> None:
    plain = Trainer(tiny_task(), TRAINING)
    plain.train_steps(3)
    save_model_file(plain, home)  # a model file: no ledger, its steps count as plain
    with pytest.raises(UserError, match=r"trained for 3 steps without it.*--no-dp"):
        resume(private_trainer(home), home)


# ------------------------------------------------------------------------ files


def test_the_checkpoint_carries_the_ledger_and_older_ones_still_load() -> None:
    trainer = private_trainer()
    trainer.train_steps(4)
    back = decode_checkpoint(checkpoint_of(trainer)).trainer
    assert back.ledger == trainer.privacy.ledger.history and back.plain_steps == 0
    assert back.momentum.keys() == trainer.privacy.momentum().keys()
    older = replace(trainer.state(), ledger=None, plain_steps=None)
    node = NodeState(ExchangeCounters(), 0, 0, (), ())
    back = decode_checkpoint(encode_checkpoint(Checkpoint(1.0, older, node))).trainer
    assert (back.ledger, back.plain_steps) == (None, None)


def test_a_damaged_ledger_in_a_checkpoint_is_a_checkpoint_error() -> None:
    state = replace(private_trainer().state(), ledger=())
    data = encode_checkpoint(Checkpoint(1.0, state, NodeState(ExchangeCounters(), 0, 0, (), ())))
    damaged = data.replace(b"\xa7history\x90", b"\xa7history\x91\x93\x00\x00\x00")
    with pytest.raises(CheckpointError):
        decode_checkpoint(damaged)


def test_the_ledger_file_round_trips_and_is_readable_json(tmp_path: Path) -> None:
    ledger = Ledger()
    ledger.record(2.0, 0.1, 7)
    path = tmp_path / "privacy.json"
    save_ledger(path, ledger)
    assert load_ledger(path).history == ledger.history  # type: ignore[union-attr]
    assert '"history"' in path.read_text() and load_ledger(tmp_path / "none.json") is None


# ------------------------------------------------------------------------ the node and status


async def test_the_training_loop_ends_when_the_budget_is_spent(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    learner = InlineLearner(private_trainer())
    sim = build_simulation([learner], training=replace(TRAINING, eval_interval=5.0))
    with caplog.at_level(logging.INFO):
        async with trio.open_nursery() as nursery:
            await sim.run(nursery)
            await trio.sleep(30)
            status = sim.nodes[0].status()
            nursery.cancel_scope.cancel()
    assert learner.steps == ALLOWED
    assert "training finished after 27 steps; gossip goes on" in caplog.text
    privacy = status["privacy"]
    assert privacy["dp"] and privacy["budget_spent"] and 0.9 < privacy["epsilon"] <= 1.0
    assert (privacy["target_epsilon"], privacy["noise_multiplier"]) == (1.0, 2.0)
    assert privacy["delta"] == pytest.approx(1 / 2000) and privacy["accountant"] == "rdp"


def test_status_shows_privacy_in_one_line() -> None:
    shown = {
        "dp": True, "epsilon": 0.9134, "delta": 5e-4, "target_epsilon": 1.0,
        "noise_multiplier": 2.0, "max_grad_norm": 1.0, "accountant": "rdp",
        "budget_spent": True, "steps": 27, "plain_steps": 0,
    }  # fmt: skip
    text = _render_privacy(shown)
    assert "ε = 0.913 of 1" in text and "budget spent" in text
    assert "off" in _render_privacy({**shown, "dp": False, "epsilon": None, "steps": 0})
    kept = _render_privacy({**shown, "dp": False, "plain_steps": 4})
    assert "off" in kept and "0.913" in kept


def _render_privacy(privacy: dict[str, object]) -> str:
    from rich.console import Console

    status = {
        "peer_id": "12D3KooWtest", "metrics": {}, "training": {"steps": 1, "samples_seen": 1},
        "exchanges": {"completed": 0, "declined": 0, "failed": 0, "refused": 0},
        "bytes_sent": 0, "bytes_received": 0, "neighbours": [], "privacy": privacy,
    }  # fmt: skip
    console = Console(width=200, record=True)
    console.print(render_status(status))
    line = [x for x in console.export_text().splitlines() if x.startswith("privacy")]
    assert len(line) == 1
    return line[0]
