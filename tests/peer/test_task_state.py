"""What a peer keeps of its task: the task digest and consortium statistics in checkpoints and
the model file, the correction when a member's own file changed, and using a saved model
(`peer.usage`) for tabular, digits and custom tasks."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import trio

from gossiplearn.errors import UserError
from gossiplearn.gossip.aggregate import average
from gossiplearn.gossip.stats import ExchangeCounters
from gossiplearn.peer.home.checkpoint import (
    Checkpoint,
    NodeState,
    decode_checkpoint,
    encode_checkpoint,
    save_checkpoint,
)
from gossiplearn.peer.home.config import TrainingConfig
from gossiplearn.peer.home.home import Home
from gossiplearn.peer.home.resume import resume, save_model_file
from gossiplearn.peer.learning.trainer import Trainer
from gossiplearn.peer.usage import evaluate, open_model, predict
from gossiplearn.tasks import digits
from gossiplearn.tasks.base import TaskOptions
from gossiplearn.tasks.contract import render_contract
from gossiplearn.tasks.records import infer_contract, read_table
from gossiplearn.tasks.tabular import make_task

CSV = """\
age,plan,spend,churned
30,basic,10.5,no
41,pro,80,yes
25,,12,no
52,pro,95.5,yes
33,basic,,no
47,enterprise,70,yes
29,basic,15,no
61,pro,88,yes
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "ours.csv"
    data.write_text(CSV)
    contract, _ = infer_contract(read_table(data), "churned", name="churn")
    path = tmp_path / "task.toml"
    path.write_text(render_contract(contract))
    return path, data


def tabular_trainer(contract: Path, data: Path) -> Trainer:
    options = TaskOptions(params={"contract": str(contract), "data": str(data)})
    return Trainer(make_task(options), TrainingConfig(), seed=3)


def outputs(trainer: Trainer, rows: torch.Tensor) -> np.ndarray:
    return trainer.task.outputs(trainer.model, rows)


def test_statistics_and_task_digest_survive_a_checkpoint(
    tmp_path: Path, files: tuple[Path, Path]
) -> None:
    trainer = tabular_trainer(*files)
    trainer.train_steps(20)
    assert trainer.stats is not None
    moved = average(trainer.stats, trainer.stats * 3.0)  # as if a neighbour's sums came in
    trainer.merge(trainer.snapshot(), trainer.snapshot(), 0.0, moved)
    state = trainer.state()
    assert state.task == trainer.task_digest
    np.testing.assert_array_equal(state.stats, moved)
    rows = trainer.task.train.features
    before = outputs(trainer, rows)

    home = Home(tmp_path / "home")
    home.init()
    save_checkpoint(home.path, encode_checkpoint(_checkpoint_of(trainer)))
    again = tabular_trainer(*files)
    assert resume(again, home) is not None
    np.testing.assert_array_equal(again.stats, moved)
    np.testing.assert_allclose(outputs(again, rows), before, atol=1e-6)


def test_a_changed_local_file_swaps_its_sums_in_the_consortium_share(
    tmp_path: Path, files: tuple[Path, Path]
) -> None:
    contract, data = files
    trainer = tabular_trainer(contract, data)
    assert trainer.stats is not None and trainer.task.statistics is not None
    consortium = trainer.stats * 5.0  # our share of a consortium that holds more data
    trainer.merge(trainer.snapshot(), trainer.snapshot(), 0.0, consortium)
    state = trainer.state()
    old_local = trainer.task.statistics.local.copy()
    data.write_text(CSV + "38,basic,20,no\n70,pro,99,yes\n")  # the member's file grew
    grown = tabular_trainer(contract, data)
    assert grown.task.statistics is not None
    new_local = grown.task.statistics.local
    grown.restore(state)
    # the old rows' sums are swapped for the new ones: the consortium total stays right
    np.testing.assert_allclose(grown.stats, consortium + new_local - old_local)
    assert not np.array_equal(new_local, old_local)


def test_a_checkpoint_of_another_contract_is_not_restored(files: tuple[Path, Path]) -> None:
    trainer = tabular_trainer(*files)
    state = replace(trainer.state(), task=b"x" * 32)
    assert trainer.incompatibility(state) == "it belongs to another task contract"
    assert trainer.incompatibility(replace(trainer.state(), stats=np.zeros(3))) is not None
    # checkpoints written before contracts (no digest) still restore
    assert trainer.incompatibility(replace(trainer.state(), task=b"")) is None
    data = encode_checkpoint(_checkpoint_of(trainer))
    assert decode_checkpoint(data).trainer.task == trainer.task_digest


def test_a_saved_tabular_model_is_used_with_the_home_contract_copy(
    tmp_path: Path, files: tuple[Path, Path]
) -> None:
    contract, data = files
    trainer = tabular_trainer(contract, data)
    trainer.train_steps(50)
    home = Home(tmp_path / "home")
    home.init()
    home.contract_copy.write_bytes(contract.read_bytes())  # what `start --contract` keeps
    save_model_file(trainer, home)
    usable = trio.run(open_model, home)
    assert "model.glm" in usable.source
    report = evaluate(usable, data)
    assert report["rows"] == 8
    assert report["accuracy"] == pytest.approx(
        float((outputs(trainer, _records(trainer, data)).argmax(1) == [0, 1] * 4).mean())
    )
    out = tmp_path / "preds.csv"
    assert predict(usable, data, out) == 8
    lines = out.read_text().splitlines()
    assert lines[0] == "row,prediction,p_no,p_yes"
    assert [line.split(",")[0] for line in lines[1:]] == [str(i) for i in range(2, 10)]


def test_a_model_of_another_contract_is_refused_by_name(
    tmp_path: Path, files: tuple[Path, Path]
) -> None:
    contract, data = files
    trainer = tabular_trainer(contract, data)
    home = Home(tmp_path / "home")
    home.init()
    save_model_file(trainer, home)
    other = tmp_path / "other.toml"
    other.write_text(contract.read_text().replace('name = "churn"', 'name = "churn-2"'))
    with pytest.raises(UserError, match="trained under another task contract"):
        trio.run(open_model, home, {"task.contract": str(other)})


def test_no_model_anywhere_says_how_to_get_one(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init()
    with pytest.raises(UserError, match=r"no model in .*gossiplearn start"):
        trio.run(open_model, home)


def test_digits_models_read_a_file_of_pixels(tmp_path: Path) -> None:
    task = digits.make_task(TaskOptions())
    trainer = Trainer(task, TrainingConfig())
    trainer.train_steps(200)
    home = Home(tmp_path / "home")
    home.init()
    save_model_file(trainer, home)
    assert task.test is not None
    path = tmp_path / "digits.csv"
    header = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)] + ["target"]
    rows = [
        [f"{v * 16:g}" for v in x.tolist()] + [str(int(y))]
        for x, y in zip(task.test.features, task.test.labels, strict=True)
    ]
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    report = evaluate(trio.run(open_model, home), path)
    expected = task.metrics(trainer.model, task.test)["accuracy"]
    assert report["accuracy"] == pytest.approx(expected, abs=1e-6)  # float32 mean there
    assert report["rows"] == len(task.test)


USER_TASK = """
import torch
from gossiplearn.tasks.base import Dataset, Records, Task, mlp

DATA = Dataset(torch.randn(30, 3, generator=torch.Generator().manual_seed(0)),
               torch.tensor([0, 1, 2] * 10))

def read(path, labels_required):
    return Records(DATA.features, DATA.labels, list(range(30)), "30 rows")

def make(options):
    return Task(name="ours", build_model=lambda: mlp(3, 4, 3), train=DATA, validation=DATA,
                identity={"name": "ours", "version": options.params.get("version", 1)},
                classes=("a", "b", "c"), reader=read)

def unreadable(options):
    return Task(name="ours", build_model=lambda: mlp(3, 4, 3), train=DATA, validation=DATA,
                identity={"name": "ours", "version": 1})
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "gossiplearn_test_usage_task"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_TASK))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_a_custom_task_declares_its_identity_and_how_to_read_files(
    tmp_path: Path, user_module: str
) -> None:
    from gossiplearn.peer.app import build_task

    home = Home(tmp_path / "home")
    home.init()
    overrides = {"task.name": f"{user_module}:make"}
    task = build_task(home.config(overrides), home)
    trainer = Trainer(task, TrainingConfig())
    save_model_file(trainer, home)
    usable = trio.run(open_model, home, overrides)
    report = evaluate(usable, tmp_path / "anything")
    assert report["rows"] == 30
    assert set(report["classes"]) == {"a", "b", "c"}
    # another declared version is another task: its peers never merge, its model is refused
    with pytest.raises(UserError, match="another task contract"):
        trio.run(open_model, home, {**overrides, "task.version": 2})
    # a task without a reader cannot evaluate files, and says what to add
    unreadable = {"task.name": f"{user_module}:unreadable"}
    with pytest.raises(UserError, match="reader="):
        evaluate(trio.run(open_model, home, unreadable), tmp_path / "x.csv")


def _records(trainer: Trainer, data: Path) -> torch.Tensor:
    assert trainer.task.reader is not None
    return trainer.task.reader(data, True).features


def _checkpoint_of(trainer: Trainer) -> Checkpoint:
    node = NodeState(ExchangeCounters(), 0, 0, (), ())
    return Checkpoint(created=0.0, trainer=trainer.state(), node=node)


def test_a_file_that_shrank_below_our_share_restarts_the_statistics_from_it(
    tmp_path: Path, files: tuple[Path, Path]
) -> None:
    contract, data = files
    trainer = tabular_trainer(contract, data)
    assert trainer.stats is not None
    # we held most of the consortium's rows: our share is about half of ours
    trainer.merge(
        trainer.snapshot(), trainer.snapshot(), 0.0, average(trainer.stats, trainer.stats * 0.01)
    )
    state = trainer.state()
    data.write_text("\n".join(CSV.splitlines()[:3]) + "\n")  # 2 rows left
    shrunk = tabular_trainer(contract, data)
    assert shrunk.task.statistics is not None
    shrunk.restore(state)
    # swapping 8 rows' sums for 2 in a share of ~4 rows would leave negative counts: start over
    np.testing.assert_array_equal(shrunk.stats, shrunk.task.statistics.local)
