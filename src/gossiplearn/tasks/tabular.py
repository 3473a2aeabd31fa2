"""Built-in task ``tabular``: a company's own CSV file, numeric features, a class column.

Options (``[task]`` in peer.toml, or flags):
- ``data``: path to the CSV (header row required);
- ``target``: the column holding class labels;
- ``columns``: feature columns, in order (default: every other column, in file order);
- ``classes``: every class label, in order (default: the sorted labels found locally);
- ``model``: ``logistic`` (default) or ``mlp``; ``hidden``: MLP width (default 64);
- ``standardize``: scale features by this file's mean and deviation (default true).

Members must agree on ``columns`` and ``classes``: set both in every member's peer.toml. A
different number of columns or classes changes the model's shapes and the fingerprint check stops
the merge; a different *order* cannot be detected, which is why the lists should be explicit.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gossiplearn.errors import UserError
from gossiplearn.tasks.base import Dataset, Task, TaskOptions, mlp, split_validation


def _str_list(value: Any, key: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, Sequence) and all(isinstance(v, str | int) for v in value):
        return [str(v) for v in value]
    raise UserError(f"task option {key!r} must be a list of names")


def read_csv(
    path: Path, target: str, columns: list[str] | None, classes: list[str] | None
) -> tuple[Dataset, list[str], list[str]]:
    """Parse ``path``; returns (data, feature columns, classes). Errors name row and column."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise UserError(f"data file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read data file {path}: {exc}") from None
    if not rows:
        raise UserError(f"data file {path} is empty; it needs a header row and data rows")
    header = [h.strip() for h in rows[0]]
    if target not in header:
        raise UserError(
            f"{path}: no column {target!r} (columns: {', '.join(header)}); fix --target"
        )
    if columns is None:
        columns = [h for h in header if h != target]
    missing = [c for c in columns if c not in header]
    if missing:
        raise UserError(f"{path}: feature columns {missing} are not in the header")
    if not columns:
        raise UserError(f"{path}: no feature columns besides {target!r}")
    col_idx = [header.index(c) for c in columns]
    t_idx = header.index(target)
    feats: list[list[float]] = []
    labels: list[str] = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise UserError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        values = []
        for c, i in zip(columns, col_idx, strict=True):
            try:
                v = float(row[i])
            except ValueError:
                raise UserError(
                    f"{path}:{line}: column {c!r} holds {row[i]!r}, not a number"
                ) from None
            if not math.isfinite(v):
                raise UserError(f"{path}:{line}: column {c!r} is not finite ({row[i]!r})")
            values.append(v)
        feats.append(values)
        labels.append(row[t_idx].strip())
    if len(feats) < 2:
        raise UserError(f"{path}: needs at least 2 data rows, found {len(feats)}")
    if classes is None:
        classes = sorted(set(labels))
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise UserError(
            f"{path}: labels {unknown[:5]} in {target!r} are not among classes {classes}"
        )
    if len(classes) < 2:
        raise UserError(f"{path}: {target!r} needs at least 2 classes, found {classes}")
    index = {c: i for i, c in enumerate(classes)}
    data = Dataset(
        torch.tensor(feats, dtype=torch.float32),
        torch.tensor([index[lab] for lab in labels], dtype=torch.int64),
    )
    return data, columns, classes


def make_task(options: TaskOptions) -> Task:
    p = options.params
    data_path = p.get("data")
    target = p.get("target")
    if not data_path or not target:
        raise UserError("task 'tabular' needs --data FILE.csv and --target COLUMN")
    model_kind = str(p.get("model", "logistic"))
    if model_kind not in ("logistic", "mlp"):
        raise UserError(f"tabular model {model_kind!r} is not valid: use 'logistic' or 'mlp'")
    hidden = int(p.get("hidden", 64))
    data, columns, classes = read_csv(
        Path(str(data_path)).expanduser(),
        str(target),
        _str_list(p.get("columns"), "columns"),
        _str_list(p.get("classes"), "classes"),
    )
    if bool(p.get("standardize", True)):
        mean = data.features.mean(dim=0)
        std = data.features.std(dim=0).clamp_min(1e-6)
        data = Dataset((data.features - mean) / std, data.labels)
    train, validation = split_validation(data, options.validation_fraction, options.seed)
    d, k = len(columns), len(classes)

    def build() -> nn.Module:
        return nn.Linear(d, k) if model_kind == "logistic" else mlp(d, hidden, k)

    return Task(
        name="tabular",
        build_model=build,
        train=train,
        validation=validation,
        description=f"{data_path}: {d} features → {target} ({k} classes), {model_kind}",
    )
