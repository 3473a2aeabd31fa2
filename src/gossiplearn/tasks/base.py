"""The task interface: a model to build, local data, a loss and metrics.

A task is an ordinary value. Built-in tasks (``digits``, ``tabular``) are produced by factory
functions with the same signature a user's own task uses: ``factory(options: TaskOptions) -> Task``
(``gossiplearn start --task package.module:function``).

Every peer of a consortium must build a model with the same parameter names, shapes and dtypes;
peers check this (the model fingerprint) before merging.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


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
class TaskOptions:
    """What a task factory receives: the ``[task]`` table of peer.toml plus command-line flags.

    ``shard`` is (index, count) with 1-based index; ``params`` holds every other key as given.
    """

    seed: int = 0
    shard: tuple[int, int] = (1, 1)
    partition: str = "iid"
    validation_fraction: float = 0.2
    params: Mapping[str, Any] = field(default_factory=dict)


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

    @property
    def samples(self) -> int:
        """Weight of this peer's model in averages: its number of training samples."""
        return len(self.train)

    def metrics(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        return self.evaluate(self, model, data)


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
