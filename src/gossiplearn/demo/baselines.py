"""Reference points for the demo: each peer's model on the common test set, local-only training
(same steps as the peer, no gossip) and centralised training on the union of the shards."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from gossiplearn.gossip.messages import fingerprint, specs_of
from gossiplearn.peer.home.config import TrainingConfig
from gossiplearn.peer.home.modelfile import load_model
from gossiplearn.peer.home.privacy import PrivacyConfig
from gossiplearn.peer.learning.trainer import Trainer
from gossiplearn.tasks.base import Dataset, Task, TaskOptions
from gossiplearn.tasks.digits import make_task, union_of_shards


def _test_accuracy(trainer: Trainer, test: Dataset) -> float:
    return trainer.task.metrics(trainer.model, test)["accuracy"]


def shard_task(options: TaskOptions, index: int) -> Task:
    return make_task(replace(options, shard=(index, options.shard[1])))


def saved_model_accuracy(path: Path, task: Task, config: TrainingConfig) -> tuple[float, int]:
    """(test accuracy, training steps) of a peer's saved model."""
    saved = load_model(path)
    trainer = Trainer(task, config)
    if fingerprint(specs_of(saved.tensors)) != fingerprint(trainer.specs()):
        raise ValueError(f"{path} does not hold a model of this task")
    trainer.load(saved.tensors)
    assert task.test is not None
    return _test_accuracy(trainer, task.test), saved.steps


def local_only_accuracy(
    task: Task,
    config: TrainingConfig,
    steps: int,
    seed: int,
    privacy: PrivacyConfig | None = None,
) -> float:
    """``privacy`` with ``dp``: DP-SGD, its budget planned over ``config.max_steps``."""
    trainer = Trainer(task, config, seed=seed, privacy=privacy)
    trainer.train_steps(steps)
    assert task.test is not None
    return _test_accuracy(trainer, task.test)


def centralised_accuracy(options: TaskOptions, config: TrainingConfig, steps: int) -> float:
    """Train one model on the union of all shards' training data for ``steps`` steps."""
    union = union_of_shards(options)
    base = shard_task(options, 1)
    task = replace(base, train=union)
    trainer = Trainer(task, config, seed=options.seed)
    torch.manual_seed(options.seed)
    trainer.train_steps(steps)
    assert task.test is not None
    return _test_accuracy(trainer, task.test)
