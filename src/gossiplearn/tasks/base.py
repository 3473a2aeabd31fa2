"""The task interface: a model to build, local data, a loss and metrics.

A task is an ordinary value. Built-in tasks (``digits``, ``tabular``) are produced by factory
functions with the same signature a user's own task uses: ``factory(options: TaskOptions) -> Task``
(``gossiplearn start --task package.module:function``).

Every peer of a consortium must build a model with the same parameter names, shapes and dtypes
(the model fingerprint) *and* carry the same task identity (``Task.identity``: the task contract
of a tabular task; name, version and model of any other), and peers check both before merging.
A custom task declares its identity with ``identity={"name": ..., "version": ...}``; without
one, its name and the printed structure of its model stand in (``task_identity``).

Optional parts make the task's model usable outside training: ``reader`` reads a file of
records (``gossiplearn evaluate`` and ``predict``), ``predict`` turns model outputs into class
probabilities or values, and ``statistics`` asks for consortium-wide statistics
(``gossip.aggregate``) that the model's preprocessing uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from gossiplearn.gossip.aggregate import SumsLayout
    from gossiplearn.tasks.contract import TaskContract


@dataclass(frozen=True)
class Dataset:
    """Features and labels as tensors of equal first dimension."""

    features: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.features.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"{self.features.shape[0]} feature rows but {self.labels.shape[0]} labels"
            )

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class Records:
    """Rows read from a file by a task's ``reader``: model inputs, labels when the file has
    them, the source line (or row) of each, and a one-line account of what was read."""

    features: torch.Tensor
    labels: torch.Tensor | None
    lines: list[int]
    note: str = ""


class Statistics(Protocol):
    """Consortium-wide statistics a task's preprocessing needs (see ``tasks.tabular``): a vector
    of sums averaged by gossip, and how a model follows it."""

    @property
    def layout(self) -> SumsLayout: ...

    @property
    def local(self) -> np.ndarray:
        """The sums of this member's own rows."""

    def apply(self, model: nn.Module, vector: np.ndarray) -> None:
        """Set the model's preprocessing from the statistics ``vector``."""

    def rebase(
        self, tensors: Mapping[str, np.ndarray], old: np.ndarray, new: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Exchanged tensors of a model trained under ``old``, moved to ``new`` with the same
        function."""

    def describe(self, vector: np.ndarray) -> dict[str, Any]:
        """The preprocessing values, JSON-serialisable."""


@dataclass(frozen=True)
class TaskOptions:
    """What a task factory receives: the ``[task]`` table of peer.toml plus command-line flags.

    ``shard`` is (index, count) with 1-based index; ``params`` holds every other key as given.
    """

    seed: int = 0
    shard: tuple[int, int] = (1, 1)
    partition: str = "iid"
    validation_fraction: float = 0.2
    params: Mapping[str, Any] = field(default_factory=dict)
    # False when the task is built to use a saved model (evaluate, predict, export), not to
    # train: a task may then skip reading the member's own data (the tabular task does)
    need_data: bool = True


def accuracy_and_loss(task: Task, model: nn.Module, data: Dataset) -> dict[str, float]:
    """Classification metrics: mean loss (the task's) and top-1 accuracy."""
    if len(data) == 0:
        return {}
    model.eval()
    with torch.no_grad():
        out = model(data.features)
        loss = float(task.loss(out, data.labels))
        acc = float((out.argmax(dim=1) == data.labels).float().mean())
    return {"accuracy": acc, "loss": loss}


@dataclass(frozen=True)
class Task:
    """Model and data of one peer.

    ``evaluate(task, model, data)`` returns metrics; status shows ``accuracy`` and ``loss``.
    ``test`` is an optional held-out set common to all shards (used by ``gossiplearn demo``).
    """

    name: str
    build_model: Callable[[], nn.Module]
    train: Dataset
    validation: Dataset
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    evaluate: Callable[[Task, nn.Module, Dataset], dict[str, float]] = accuracy_and_loss
    test: Dataset | None = None
    description: str = ""
    identity: Mapping[str, Any] | None = None  # None: name and model structure (task_identity)
    kind: str = "classification"  # or "regression"
    classes: tuple[str, ...] = ()  # names of the outputs (classification); default "0", "1", ...
    statistics: Statistics | None = None
    reader: Callable[[Path, bool], Records] | None = None  # (file, labels required) → records
    predict: Callable[[nn.Module, torch.Tensor], np.ndarray] | None = None  # default: softmax
    contract: TaskContract | None = None  # the tabular task's contract

    @property
    def samples(self) -> int:
        """Weight of this peer's model in averages: its number of training samples."""
        return len(self.train)

    def metrics(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        return self.evaluate(self, model, data)

    def outputs(self, model: nn.Module, features: torch.Tensor) -> np.ndarray:
        """Class probabilities [rows, classes], or values [rows] for regression."""
        if self.predict is not None:
            return self.predict(model, features)
        model.eval()
        with torch.no_grad():
            return torch.softmax(model(features).double(), dim=1).numpy()


def task_identity(task: Task, model: nn.Module) -> Mapping[str, Any]:
    """What makes two peers' tasks the same task: the declared identity, else the task's name,
    kind and the printed structure of its model (layers and sizes)."""
    if task.identity is not None:
        return task.identity
    return {"task": task.name, "kind": task.kind, "model": repr(model)}


def split_validation(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out ``fraction`` of ``data`` (at least one sample when there are two or more)."""
    n = len(data)
    if not 0.0 <= fraction < 1.0:
        raise ValueError("validation fraction must be in [0, 1)")
    n_val = round(n * fraction)
    if fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    val, train = perm[:n_val], perm[n_val:]
    return (
        Dataset(data.features[train], data.labels[train]),
        Dataset(data.features[val], data.labels[val]),
    )


def mlp(inputs: int, hidden: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))
