"""Built-in task ``digits``: scikit-learn's bundled 8×8 handwritten digits with a small MLP.

The data ships inside scikit-learn (nothing is downloaded). A fixed 20% stratified test split is
common to every shard (``Task.test``); the rest is partitioned into N disjoint shards
(``--shard I/N --partition iid|dirichlet:ALPHA``, seeded), and each peer holds out
``validation_fraction`` of its shard for validation.

Options (``[task]`` in peer.toml): ``hidden`` (default 64).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from gossiplearn.tasks.base import Dataset, Records, Task, TaskOptions, mlp, split_validation
from gossiplearn.tasks.contract import Feature, Missing, Target, TaskContract
from gossiplearn.tasks.partition import partition_indices
from gossiplearn.tasks.records import encode, read_table

TEST_FRACTION = 0.2


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as (features 0..16, labels).

    Read straight from the CSV that scikit-learn ships, found without importing scikit-learn
    (whose import costs more than a second in every peer process); falls back to
    ``sklearn.datasets.load_digits`` if the file is not where it usually is.
    """
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                data = np.loadtxt(f, delimiter=",", dtype=np.float64)
            return data[:, :-1], data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sklearn_load_digits  # noqa: PLC0415

    x, y = sklearn_load_digits(return_X_y=True)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)


def load_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train features, train labels, test features, test labels); features scaled to [0, 1].

    The test split is stratified: ``TEST_FRACTION`` of every class, chosen with ``seed``.
    """
    x, y = load_digits()
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    test_parts = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_parts.append(idx[: round(len(idx) * TEST_FRACTION)])
    test = np.sort(np.concatenate(test_parts))
    train = np.setdiff1d(np.arange(len(y)), test)
    return x[train], y[train], x[test], y[test]


CLASSES = tuple(str(d) for d in range(10))
# The file layout `gossiplearn evaluate` and `predict` read for digits: scikit-learn's feature
# names (pixel_0_0 … pixel_7_7, values 0-16) and a `target` column of digits.
FILE_CONTRACT = TaskContract(
    name="digits",
    features=tuple(Feature(f"pixel_{r}_{c}") for r in range(8) for c in range(8)),
    target=Target("target", "classification", CLASSES),
    missing=Missing(("",), "refuse"),
)


def read_file(path: Path, need_target: bool) -> Records:
    """Digits records from a CSV or Parquet file with columns pixel_0_0 … pixel_7_7 (0-16) and,
    for evaluation, ``target``."""
    encoded = encode(read_table(path), FILE_CONTRACT, need_target=need_target)
    labels = None if encoded.targets is None else torch.from_numpy(encoded.targets)
    features = torch.from_numpy(np.ascontiguousarray(encoded.features / np.float32(16.0)))
    return Records(features, labels, encoded.lines, encoded.report.summary())


def _dataset(x: np.ndarray, y: np.ndarray) -> Dataset:
    return Dataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))


def make_task(options: TaskOptions) -> Task:
    index, count = options.shard
    hidden = int(options.params.get("hidden", 64))
    xtr, ytr, xte, yte = load_split(options.seed)
    shard = partition_indices(ytr, count, options.partition, options.seed)[index - 1]
    train, validation = split_validation(
        _dataset(xtr[shard], ytr[shard]), options.validation_fraction, options.seed + index
    )
    return Task(
        name="digits",
        build_model=lambda: mlp(64, hidden, 10),
        train=train,
        validation=validation,
        test=_dataset(xte, yte),
        description=f"digits shard {index}/{count} ({options.partition}), MLP 64-{hidden}-10",
        identity={"task": "digits", "version": 1, "model": {"kind": "mlp", "hidden": [hidden]}},
        classes=CLASSES,
        reader=read_file,
    )


def union_of_shards(options: TaskOptions) -> Dataset:
    """The training data of all shards together (what centralised training would see)."""
    _, count = options.shard
    parts = [
        make_task(
            TaskOptions(
                options.seed,
                (i, count),
                options.partition,
                options.validation_fraction,
                options.params,
            )
        ).train
        for i in range(1, count + 1)
    ]
    return Dataset(torch.cat([p.features for p in parts]), torch.cat([p.labels for p in parts]))
