"""Built-in tasks (digits, tabular) and the resolution of task names to factories."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from gossiplearn.errors import UserError
from gossiplearn.tasks import digits, tabular
from gossiplearn.tasks.base import Dataset, Task, TaskOptions
from gossiplearn.tasks.registry import BUILTIN, load_task, resolve


def rows(data: Dataset) -> set[bytes]:
    return {r.numpy().tobytes() for r in data.features}


# ---------------------------------------------------------------------------------- digits


@pytest.mark.parametrize("partition", ["iid", "dirichlet:0.5"])
def test_digits_shards_are_disjoint_and_share_one_test_set(partition: str) -> None:
    count = 4
    xtr, _, xte, _ = digits.load_split(seed=3)
    tasks = [
        digits.make_task(TaskOptions(seed=3, shard=(i, count), partition=partition))
        for i in range(1, count + 1)
    ]
    shard_rows = [rows(t.train) | rows(t.validation) for t in tasks]
    for t, r in zip(tasks, shard_rows, strict=True):
        assert len(r) == len(t.train) + len(t.validation)  # train and validation disjoint
    assert sum(len(r) for r in shard_rows) == len(xtr)  # shards pairwise disjoint ...
    assert set().union(*shard_rows) == {r.tobytes() for r in xtr}  # ... and cover the train split

    test = tasks[0].test
    assert test is not None
    assert len(test) == len(xte)
    for t in tasks[1:]:
        assert t.test is not None
        assert torch.equal(t.test.features, test.features)
        assert torch.equal(t.test.labels, test.labels)
    assert rows(test).isdisjoint(set().union(*shard_rows))


def test_digits_split_is_stratified_and_scaled() -> None:
    xtr, ytr, xte, yte = digits.load_split(seed=0)
    assert len(xtr) + len(xte) == 1797
    assert xtr.shape[1] == 64
    assert xtr.dtype == np.float32
    assert xtr.min() >= 0.0
    assert xtr.max() <= 1.0
    for c in range(10):
        share = np.sum(yte == c) / (np.sum(yte == c) + np.sum(ytr == c))
        assert share == pytest.approx(digits.TEST_FRACTION, abs=0.02)


def test_digits_task_is_usable() -> None:
    task = digits.make_task(
        TaskOptions(seed=0, shard=(2, 3), validation_fraction=0.25, params={"hidden": 8})
    )
    assert task.name == "digits"
    assert task.samples == len(task.train)
    assert len(task.validation) == round((len(task.train) + len(task.validation)) * 0.25)
    model = task.build_model()
    assert model(task.train.features[:5]).shape == (5, 10)
    metrics = task.metrics(model, task.validation)
    assert set(metrics) == {"accuracy", "loss"}
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_digits_union_of_shards_is_all_training_data() -> None:
    options = TaskOptions(seed=1, shard=(1, 3))
    union = digits.union_of_shards(options)
    trains = [digits.make_task(TaskOptions(seed=1, shard=(i, 3))).train for i in (1, 2, 3)]
    assert rows(union) == set().union(*(rows(t) for t in trains))
    assert len(union) == sum(len(t) for t in trains)


# ---------------------------------------------------------------------------------- registry

USER_TASK = """
import torch
from gossiplearn.tasks.base import Dataset, Task, mlp

def make(options):
    data = Dataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64))
    return Task(name="mine:" + str(options.params.get("flavour")), build_model=lambda: mlp(2, 3, 2),
                train=data, validation=data)

def broken(options):
    raise RuntimeError("boom")

def user_error(options):
    raise USER_ERROR

def not_a_task(options):
    return 42

def empty(options):
    data = Dataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))
    return Task(name="empty", build_model=lambda: mlp(2, 3, 2), train=data, validation=data)

not_callable = 3

from gossiplearn.errors import UserError
USER_ERROR = UserError("fix your data")
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "gossiplearn_test_user_task"
    (tmp_path / f"{name}.py").write_text(USER_TASK, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_builtins_resolve_to_their_factories() -> None:
    assert resolve("digits") is digits.make_task
    assert resolve("tabular") is tabular.make_task
    assert set(BUILTIN) == {"digits", "tabular"}


def test_user_task_by_module_and_function(user_module: str) -> None:
    factory = resolve(f"{user_module}:make")
    assert factory is sys.modules[user_module].make
    task = load_task(f"{user_module}:make", TaskOptions(params={"flavour": "plain"}))
    assert isinstance(task, Task)
    assert task.name == "mine:plain"


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("nosuchtask", "unknown task 'nosuchtask': use one of digits, tabular"),
        ("mod:", "unknown task"),
        (":make", "unknown task"),
        ("gossiplearn_no_such_module_xyz:make", "cannot import task module"),
    ],
)
def test_unresolvable_names(name: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        resolve(name)


@pytest.mark.parametrize("attr", ["missing", "not_callable"])
def test_module_without_that_factory(user_module: str, attr: str) -> None:
    with pytest.raises(UserError, match=f"no callable '{attr}'"):
        resolve(f"{user_module}:{attr}")


def test_factory_raising_becomes_a_user_error(user_module: str) -> None:
    with pytest.raises(UserError, match=r"failed to load: RuntimeError: boom") as info:
        load_task(f"{user_module}:broken", TaskOptions())
    assert f"{user_module}:broken" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_factory_user_error_passes_through(user_module: str) -> None:
    with pytest.raises(UserError) as info:
        load_task(f"{user_module}:user_error", TaskOptions())
    assert info.value is sys.modules[user_module].USER_ERROR


@pytest.mark.parametrize(
    ("attr", "match"),
    [("not_a_task", "returned int, not gossiplearn Task"), ("empty", "no training data")],
)
def test_factory_results_are_checked(user_module: str, attr: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        load_task(f"{user_module}:{attr}", TaskOptions())


def test_builtin_failure_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--target"):
        load_task("tabular", TaskOptions())


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("def make(options:\n", "SyntaxError"),
        ("raise RuntimeError('no config here')\n", "no config here"),
    ],
    ids=["syntax-error", "raises-on-import"],
)
def test_user_module_failing_at_import_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, match: str
) -> None:
    name = "gossiplearn_test_broken_import"
    (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        with pytest.raises(UserError, match=match):
            load_task(f"{name}:make", TaskOptions())
    finally:
        sys.modules.pop(name, None)
