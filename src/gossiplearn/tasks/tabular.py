"""Built-in task ``tabular``: a company's own CSV or Parquet file, read through a task contract.

Options (``[task]`` in peer.toml, or flags): ``contract`` (the contract file every member
shares, ``gossiplearn task init`` makes one) and ``data`` (this member's file).

The model is ``TabularModel``: a preprocessing layer, then a linear model or an MLP. The
preprocessing imputes missing cells and standardises numeric columns with the *consortium's*
statistics, not this file's: they are averaged by gossip over every member's data
(``gossip.aggregate``; the sums are ``TabularStatistics.local``), so all members train in one
coordinate system. A regression target is standardised the same way for training and mapped
back for predictions.

Invariants:
- The preprocessing values are not exchanged tensors: they follow from the statistics vector
  the peer holds (``TabularStatistics.apply``), which travels beside the model.
- ``TabularStatistics.rebase`` changes the statistics a model was trained under without
  changing what it computes on a complete row: the first layer absorbs the change of numeric
  shifts and scales, and for regression the last layer absorbs the change of the target's. A
  missing cell is imputed with the *new* statistics (the consortium mean or frequencies move).
- The regression loss standardises the target with ``TabularStatistics.y_shift``/``y_scale``,
  the values of the last ``apply``: a trainer applies statistics to its own model only, and the
  model file users load is never trained.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gossiplearn.errors import UserError
from gossiplearn.gossip.aggregate import SumsLayout, moment
from gossiplearn.tasks.base import (
    Dataset,
    Records,
    Task,
    TaskOptions,
    accuracy_and_loss,
    split_validation,
)
from gossiplearn.tasks.contract import TaskContract, load_contract
from gossiplearn.tasks.records import encode, read_table
from gossiplearn.tasks.scoring import regression_report

ROWS = 0  # position of the row count in the statistics vector


class TabularModel(nn.Module):
    """Preprocessing (impute, then standardise), then ``net``. Takes encoded rows
    (``tasks.records.encode``: NaN marks a missing cell) and returns logits, or for regression
    the standardised prediction (``TabularModel.values`` maps it back)."""

    fill: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor
    y_shift: torch.Tensor
    y_scale: torch.Tensor

    def __init__(self, inputs: int, net: nn.Sequential) -> None:
        super().__init__()
        # not persistent: they are not exchanged or averaged as parameters
        self.register_buffer("fill", torch.zeros(inputs), persistent=False)
        self.register_buffer("shift", torch.zeros(inputs), persistent=False)
        self.register_buffer("scale", torch.ones(inputs), persistent=False)
        # a regression target's scale: predictions are ``out * y_scale + y_shift``
        self.register_buffer("y_shift", torch.zeros(()), persistent=False)
        self.register_buffer("y_scale", torch.ones(()), persistent=False)
        self.net = net

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        filled = torch.where(torch.isnan(rows), self.fill, rows)
        out: torch.Tensor = self.net((filled - self.shift) / self.scale)
        return out

    def values(self, out: torch.Tensor) -> torch.Tensor:
        """Regression outputs on the target's scale."""
        return out.reshape(-1) * self.y_scale + self.y_shift


def build_net(contract: TaskContract) -> nn.Sequential:
    widths = [contract.inputs]
    if contract.model.kind == "mlp":
        widths += list(contract.model.hidden)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], contract.target.outputs))
    return nn.Sequential(*layers)


@dataclass(frozen=True, slots=True)
class _Column:
    kind: str  # numeric | categorical
    start: int  # first model input of the column
    width: int
    at: tuple[int, ...]  # its positions in the statistics vector


class TabularStatistics:
    """The statistics a contract's preprocessing needs, as a vector of sums
    (``gossip.aggregate``): ``[rows, per numeric column (count, sum, sum of squares), per
    categorical column (one count per slot), the target's (count, sum, sum of squares) for
    regression]``."""

    def __init__(self, contract: TaskContract, local: np.ndarray) -> None:
        self.contract = contract
        self.columns: list[_Column] = []
        pos, start = 1, 0
        moments: list[tuple[int, int, int]] = []
        counts: list[int] = [ROWS]
        for f in contract.features:
            if f.kind == "numeric":
                at: tuple[int, ...] = (pos, pos + 1, pos + 2)
                moments.append((pos, pos + 1, pos + 2))
            else:
                at = tuple(range(pos, pos + f.width))
                counts += list(at)
            self.columns.append(_Column(f.kind, start, f.width, at))
            pos += len(at)
            start += f.width
        self.target_at: tuple[int, int, int] | None = None
        if contract.kind == "regression":
            self.target_at = (pos, pos + 1, pos + 2)
            moments.append(self.target_at)
            pos += 3
        self.layout = SumsLayout(pos, tuple(moments), tuple(counts))
        self.local = np.asarray(local, dtype=np.float64)
        if self.local.shape != (pos,):
            raise ValueError(f"local statistics of size {self.local.size}, the layout has {pos}")
        self.y_shift, self.y_scale = 0.0, 1.0
        self.first = "net.0"
        self.last = f"net.{len(build_net(contract)) - 1}"

    @staticmethod
    def sums(
        contract: TaskContract, features: np.ndarray, targets: np.ndarray | None
    ) -> np.ndarray:
        """The statistics vector of encoded rows (float64 sums; missing cells not counted)."""
        out: list[float] = [float(len(features))]
        col = 0
        x = features.astype(np.float64)
        for f in contract.features:
            block = x[:, col : col + f.width]
            present = ~np.isnan(block[:, 0])
            if f.kind == "numeric":
                values = block[present, 0]
                out += [float(present.sum()), float(values.sum()), float(np.dot(values, values))]
            else:
                out += [float(v) for v in block[present].sum(axis=0)]
            col += f.width
        if contract.kind == "regression":
            y = np.zeros(0) if targets is None else targets.astype(np.float64)
            out += [float(len(y)), float(y.sum()), float(np.dot(y, y))]
        return np.asarray(out, dtype=np.float64)

    # ---- preprocessing from a statistics vector

    def preprocessing(self, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fill, shift, scale) per model input, from ``vector``."""
        n = self.contract.inputs
        fill, shift, scale = np.zeros(n), np.zeros(n), np.ones(n)
        for c in self.columns:
            if c.kind == "numeric":
                m = moment(vector, (c.at[0], c.at[1], c.at[2]))
                fill[c.start] = shift[c.start] = m.mean
                scale[c.start] = _scale(m.std, m.mean)
            else:
                counts = np.asarray([vector[i] for i in c.at])
                total = counts.sum()
                fill[c.start : c.start + c.width] = counts / total if total > 0 else 0.0
        return fill, shift, scale

    def target_scale(self, vector: np.ndarray) -> tuple[float, float]:
        """(shift, scale) of the regression target; (0, 1) for classification."""
        if self.target_at is None:
            return 0.0, 1.0
        m = moment(vector, self.target_at)
        return m.mean, _scale(m.std, m.mean)

    def apply(self, model: nn.Module, vector: np.ndarray) -> None:
        """Set ``model``'s preprocessing (and the target scale the loss uses) from ``vector``."""
        assert isinstance(model, TabularModel)
        fill, shift, scale = self.preprocessing(vector)
        self.y_shift, self.y_scale = self.target_scale(vector)
        with torch.no_grad():
            model.fill.copy_(torch.from_numpy(fill))
            model.shift.copy_(torch.from_numpy(shift))
            model.scale.copy_(torch.from_numpy(scale))
            model.y_shift.fill_(self.y_shift)
            model.y_scale.fill_(self.y_scale)

    def rebase(
        self, tensors: Mapping[str, np.ndarray], old: np.ndarray, new: np.ndarray
    ) -> dict[str, np.ndarray]:
        """``tensors`` (a model trained under the statistics ``old``) moved to ``new`` without
        changing its function; a new dict, the inputs untouched.

        A numeric column that was constant under ``old`` (a member whose rows all hold one
        value, common in skewed data) reached the model as 0 on every row, so its weights never
        learnt: they keep their size, and only the rows ``old`` described (all at that value)
        keep their outputs. Scaling them by the new deviation would blow them up for nothing."""
        out = dict(tensors)
        _, a0, s0 = self.preprocessing(old)
        _, a1, s1 = self.preprocessing(new)
        s0 = np.where(self._constant(old), s1, s0)
        w_name, b_name = f"{self.first}.weight", f"{self.first}.bias"
        w = tensors[w_name].astype(np.float64)
        b = tensors[b_name].astype(np.float64)
        out[b_name] = (b + w @ ((a1 - a0) / s0)).astype(tensors[b_name].dtype)
        out[w_name] = (w * (s1 / s0)[None, :]).astype(tensors[w_name].dtype)
        if self.target_at is not None:
            (m0, d0), (m1, d1) = self.target_scale(old), self.target_scale(new)
            w_name, b_name = f"{self.last}.weight", f"{self.last}.bias"
            w = out[w_name].astype(np.float64)
            b = out[b_name].astype(np.float64)
            out[w_name] = (w * (d0 / d1)).astype(tensors[w_name].dtype)
            out[b_name] = ((b * d0 + m0 - m1) / d1).astype(tensors[b_name].dtype)
        return out

    def _constant(self, vector: np.ndarray) -> np.ndarray:
        """Per model input: a numeric column with no deviation under ``vector``."""
        mask = np.zeros(self.contract.inputs, dtype=bool)
        for c in self.columns:
            if c.kind == "numeric":
                mask[c.start] = moment(vector, (c.at[0], c.at[1], c.at[2])).std == 0.0
        return mask

    def describe(self, vector: np.ndarray) -> dict[str, Any]:
        """The preprocessing values, per column, for ``status --json`` and exports."""
        columns: dict[str, Any] = {}
        fill = self.preprocessing(vector)[0]
        for f, c in zip(self.contract.features, self.columns, strict=True):
            if c.kind == "numeric":
                m = moment(vector, (c.at[0], c.at[1], c.at[2]))
                columns[f.column] = {
                    "mean": m.mean,
                    "std": m.std,
                    "present": float(vector[c.at[0]] / vector[ROWS]) if vector[ROWS] else 0.0,
                }
            else:
                freq = [float(v) for v in fill[c.start : c.start + c.width]]
                columns[f.column] = {
                    "frequencies": dict(zip(f.categories, freq, strict=False)),
                    "other": freq[-1],
                }
        out: dict[str, Any] = {"columns": columns}
        if self.target_at is not None:
            mean, std = self.target_scale(vector)
            out["target"] = {"mean": mean, "std": std}
        return out


def _values(model: nn.Module, out: torch.Tensor) -> torch.Tensor:
    assert isinstance(model, TabularModel)
    return model.values(out)


def _scale(std: float, mean: float) -> float:
    """A divisor for standardising: the deviation, or 1 for a constant column (``moment``
    reports no deviation for one)."""
    return std if std > 0.0 else 1.0


def regression_metrics(task: Task, model: nn.Module, data: Dataset) -> dict[str, float]:
    """Validation metrics of a regression model: the loss (standardised MSE), RMSE, MAE and
    R² on the target's scale (NaN when undefined)."""
    if len(data) == 0:
        return {}
    model.eval()
    with torch.no_grad():
        out = model(data.features)
        loss = float(task.loss(out, data.labels))
        pred = _values(model, out).double()
    scores = regression_report(pred.numpy(), data.labels.double().numpy())
    return {k: float("nan") if v is None else float(v) for k, v in scores.items()} | {"loss": loss}


def contract_task(contract: TaskContract, records: Records | None, options: TaskOptions) -> Task:
    """The task for ``contract`` over ``records`` (this member's encoded rows; None for a task
    that only uses a saved model: evaluate, predict, export)."""
    features = records.features if records is not None else torch.zeros(0, contract.inputs)
    labels = records.labels if records is not None and records.labels is not None else None
    regression = contract.kind == "regression"
    if labels is None:
        labels = torch.zeros(0, dtype=torch.float32 if regression else torch.int64)
    data = Dataset(features, labels)
    local = TabularStatistics.sums(
        contract, features.numpy(), labels.numpy() if regression else None
    )
    stats = TabularStatistics(contract, local)
    train, validation = split_validation(data, options.validation_fraction, options.seed)

    def build() -> nn.Module:
        model = TabularModel(contract.inputs, build_net(contract))
        stats.apply(model, stats.local)
        return model

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if regression:
            return F.mse_loss(out.reshape(-1), (y - stats.y_shift) / stats.y_scale)
        return F.cross_entropy(out, y)

    def predict(model: nn.Module, rows: torch.Tensor) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            out = model(rows)
            if regression:
                return _values(model, out).double().numpy()
            return torch.softmax(out.double(), dim=1).numpy()

    def reader(path: Path, need_target: bool) -> Records:
        return read_records(contract, path, need_target=need_target)

    note = records.note if records is not None else ""
    return Task(
        name="tabular",
        build_model=build,
        train=train,
        validation=validation,
        loss=loss,
        evaluate=regression_metrics if regression else accuracy_and_loss,
        description=contract.describe() + (f"; {note}" if note else ""),
        identity=contract.canonical(),
        kind=contract.kind,
        classes=contract.target.classes,
        statistics=stats,
        reader=reader,
        predict=predict,
        contract=contract,
    )


def read_records(contract: TaskContract, path: Path, *, need_target: bool) -> Records:
    """Encode ``path`` by ``contract`` (``UserError`` naming file, row and column)."""
    encoded = encode(read_table(path), contract, need_target=need_target)
    labels = None if encoded.targets is None else torch.from_numpy(encoded.targets)
    return Records(
        torch.from_numpy(encoded.features), labels, encoded.lines, encoded.report.summary()
    )


OBSOLETE = ("target", "columns", "classes", "standardize", "model", "hidden")


def make_task(options: TaskOptions) -> Task:
    p = options.params
    obsolete = [k for k in OBSOLETE if k in p]
    if obsolete:
        raise UserError(
            f"[task] {obsolete[0]} is no longer read: the target, columns, classes and model "
            "are in the task contract now (make one with `gossiplearn task init`); remove "
            f"{', '.join(obsolete)} from [task] in peer.toml"
        )
    contract_path = p.get("contract")
    if not contract_path:
        raise UserError(
            "task 'tabular' needs a task contract shared by every member: one member makes it "
            "with `gossiplearn task init --data SAMPLE.csv --target COLUMN --out task.toml`, "
            "reviews it and sends it to the others; each then starts with --contract task.toml "
            '(or [task] contract = "task.toml" in peer.toml) and --data THEIR_FILE'
        )
    contract = load_contract(Path(str(contract_path)))
    if not options.need_data:
        return contract_task(contract, None, options)
    data_path = p.get("data")
    if not data_path:
        raise UserError(
            "task 'tabular' needs this member's data: --data FILE (CSV or Parquet), or "
            '[task] data = "FILE" in peer.toml'
        )
    records = read_records(contract, Path(str(data_path)), need_target=True)
    if len(records.features) < 2:
        raise UserError(
            f"{data_path}: needs at least 2 labelled rows, found {len(records.features)}"
        )
    return contract_task(contract, records, options)
