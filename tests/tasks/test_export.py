"""ONNX and safetensors exports, checked with the real onnxruntime against ``Task.outputs``."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

import gossiplearn
from gossiplearn.errors import UserError
from gossiplearn.tasks import digits, tabular
from gossiplearn.tasks.base import Dataset, Task, TaskOptions, task_identity
from gossiplearn.tasks.contract import Feature, ModelSpec, Target, TaskContract, identity_digest
from gossiplearn.tasks.export import export_onnx, export_safetensors, input_names, onnx_inputs
from gossiplearn.tasks.records import infer_contract, read_table

ROWS = 1000
MISSING = ("", "NA", "NaN", " NA ")
FEATURES = ("income", "age", "credit score", "ratio", "region", "2nd plan")


def table_rows(rng: np.random.Generator, n: int, *, unseen: bool) -> list[list[str]]:
    """Rows of FEATURES plus the two targets; ~5% of feature cells missing. ``unseen``: some
    category values the training file never holds."""
    regions = ["north", "south", "east", "west"]
    plans = ["basic", "plus", "pro"]
    out = []
    for _ in range(n):
        income = float(np.exp(rng.uniform(np.log(1e4), np.log(1e6))))
        age = int(rng.integers(18, 90))
        score = float(rng.uniform(300, 850))
        ratio = float(rng.normal(0.002, 0.001))
        region = str(rng.choice(regions))
        plan = str(rng.choice(plans))
        if unseen and rng.random() < 0.08:
            region = str(rng.choice(["central", "North", "islands"]))
        if unseen and rng.random() < 0.05:
            plan = "enterprise"
        effect = regions.index(region) * 0.3 if region in regions else 0.0
        z = np.log(income) / 2 + age / 40 + score / 400 + effect + rng.normal(0, 0.4)
        segment = "low" if z < 8.3 else "mid" if z < 9.0 else "high"
        spend = 0.002 * income + 3 * age + 100 * effect + 0.1 * score + rng.normal(0, 20)
        cells = [f"{income:.2f}", str(age), f"{score:.1f}", f"{ratio:.6f}", region, plan]
        cells = [str(rng.choice(MISSING)) if rng.random() < 0.05 else c for c in cells]
        out.append([*cells, segment, f"{spend:.2f}"])
    return out


def write_csv(path: Path, rows: list[list[str]], *, targets: bool) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*FEATURES, "segment", "spend"] if targets else FEATURES)
        writer.writerows(rows if targets else [r[: len(FEATURES)] for r in rows])
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(7)
    train = write_csv(folder / "train.csv", table_rows(rng, ROWS, unseen=False), targets=True)
    scored = write_csv(folder / "scored.csv", table_rows(rng, ROWS, unseen=True), targets=False)
    return train, scored


def contract_for(train: Path, kind: str) -> TaskContract:
    target, other = ("segment", "spend") if kind == "classification" else ("spend", "segment")
    model = ModelSpec("mlp", (16,)) if kind == "classification" else ModelSpec("linear", ())
    contract, _ = infer_contract(
        read_table(train), target, name=f"t-{kind}", kind=kind, model=model
    )
    features = tuple(f for f in contract.features if f.column != other)
    return dataclasses.replace(contract, features=features)


def other_statistics(stats: tabular.TabularStatistics) -> np.ndarray:
    """A valid statistics vector unlike the file's own: numeric columns (and the target) 1.3
    times larger, category counts reweighted, the row count kept."""
    v = stats.local.copy()
    for _, s, q in stats.layout.moments:
        v[s] *= 1.3
        v[q] *= 1.69
    counts = [i for i in stats.layout.counts if i != tabular.ROWS]
    v[counts] *= np.linspace(0.5, 2.0, len(counts))
    return v


@dataclasses.dataclass
class Trained:
    task: Task
    model: nn.Module
    vector: np.ndarray


def train(contract: TaskContract, path: Path) -> Trained:
    records = tabular.read_records(contract, path, need_target=True)
    task = tabular.contract_task(contract, records, TaskOptions(seed=0))
    torch.manual_seed(0)
    model = task.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        batch = torch.randint(len(task.train), (64,), generator=generator)
        optimizer.zero_grad()
        task.loss(model(task.train.features[batch]), task.train.labels[batch]).backward()
        optimizer.step()
    assert task.statistics is not None
    assert isinstance(task.statistics, tabular.TabularStatistics)
    vector = other_statistics(task.statistics)
    task.statistics.apply(model, vector)
    return Trained(task, model, vector)


@pytest.fixture(scope="module")
def classifier(files: tuple[Path, Path]) -> Trained:
    return train(contract_for(files[0], "classification"), files[0])


@pytest.fixture(scope="module")
def regressor(files: tuple[Path, Path]) -> Trained:
    return train(contract_for(files[0], "regression"), files[0])


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------- tabular


def test_classifier_onnx_takes_raw_records_and_matches_the_model(
    classifier: Trained, files: tuple[Path, Path], tmp_path: Path
) -> None:
    task, contract = classifier.task, classifier.task.contract
    assert contract is not None
    path = tmp_path / "model.onnx"
    export_onnx(task, classifier.model, classifier.vector, path)

    records = tabular.read_records(contract, files[1], need_target=False)
    assert "missing" in records.note
    assert "unseen" in records.note  # the scored file exercises the other slot
    expected = task.outputs(classifier.model, records.features)
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == [
        "income",
        "age",
        "credit_score",
        "ratio",
        "region",
        "_2nd_plan",
    ]
    assert [o.name for o in sess.get_outputs()] == ["probabilities", "label"]
    probabilities, labels = sess.run(None, onnx_inputs(task, read_table(files[1])))
    assert probabilities.shape == (ROWS, 3)
    assert np.abs(probabilities - expected).max() <= 1e-5
    assert list(labels) == [contract.target.classes[i] for i in expected.argmax(axis=1)]
    assert len(set(labels)) > 1  # a trained model, not a constant


def test_regressor_onnx_gives_values_on_the_target_scale(
    regressor: Trained, files: tuple[Path, Path], tmp_path: Path
) -> None:
    task, contract = regressor.task, regressor.task.contract
    assert contract is not None
    path = tmp_path / "model.onnx"
    export_onnx(task, regressor.model, regressor.vector, path)

    records = tabular.read_records(contract, files[1], need_target=False)
    expected = task.outputs(regressor.model, records.features)
    sess = session(path)
    assert [o.name for o in sess.get_outputs()] == ["value"]
    (values,) = sess.run(None, onnx_inputs(task, read_table(files[1])))
    assert values.shape == (ROWS,)
    assert values.std() > 10  # on the target's scale (hundreds), not standardised
    # Both compute in float32: onnxruntime's Gemm may round the network's output one ulp
    # apart from torch's, and `out * y_scale + y_shift` carries that to the target's scale, so
    # a value near 0 (cancellation) is held to a few ulps of the target's magnitude instead.
    ulps = 4 * float(np.finfo(np.float32).eps) * float(np.abs(expected).max())
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=ulps)


def test_onnx_metadata_holds_contract_statistics_and_input_columns(
    classifier: Trained, tmp_path: Path
) -> None:
    task, contract = classifier.task, classifier.task.contract
    assert contract is not None
    assert isinstance(task.statistics, tabular.TabularStatistics)
    path = tmp_path / "model.onnx"
    export_onnx(task, classifier.model, classifier.vector, path)

    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["contract"]) == contract.canonical()
    assert meta["contract_digest"] == contract.digest.hex()
    assert json.loads(meta["preprocessing"]) == task.statistics.describe(classifier.vector)
    assert json.loads(meta["inputs"])["credit_score"] == "credit score"
    assert json.loads(meta["inputs"])["_2nd_plan"] == "2nd plan"
    assert meta["task"] == "tabular"
    assert meta["gossiplearn_version"] == gossiplearn.__version__
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left


def test_input_names_are_identifiers_apart_from_the_outputs() -> None:
    columns = ("a b", "a_b", "label", "9lives", "ümlaut")
    contract = TaskContract(
        "names", tuple(Feature(c) for c in columns), Target("y", "classification", ("p", "q"))
    )
    assert input_names(contract) == {
        "a b": "a_b",
        "a_b": "a_b_2",
        "label": "label_2",
        "9lives": "_9lives",
        "ümlaut": "_mlaut",
    }


def test_onnx_inputs_name_the_row_and_column_of_a_bad_cell(
    classifier: Trained, tmp_path: Path
) -> None:
    rows = table_rows(np.random.default_rng(1), 3, unseen=False)
    rows[1][0] = "12k"
    path = write_csv(tmp_path / "bad.csv", rows, targets=False)
    with pytest.raises(UserError, match=r"bad.csv, line 3: column 'income' holds '12k'"):
        onnx_inputs(classifier.task, read_table(path))
    (tmp_path / "short.csv").write_text("age,region\n30,north\n", encoding="utf-8")
    with pytest.raises(UserError, match="no column 'income'"):
        onnx_inputs(classifier.task, read_table(tmp_path / "short.csv"))


# ---------------------------------------------------------------------------------- other tasks


def test_digits_onnx_matches_the_model(tmp_path: Path) -> None:
    task = digits.make_task(TaskOptions())
    torch.manual_seed(0)
    model = task.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        optimizer.zero_grad()
        task.loss(model(task.train.features), task.train.labels).backward()
        optimizer.step()
    path = tmp_path / "digits.onnx"
    export_onnx(task, model, None, path)

    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["features"]
    assert sess.get_inputs()[0].shape[1] == 64
    features = task.validation.features
    (probabilities,) = sess.run(["probabilities"], {"features": features.numpy()})
    assert np.abs(probabilities - task.outputs(model, features)).max() <= 1e-5
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta["identity_digest"] == identity_digest(task_identity(task, model)).hex()


class NumpyInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.from_numpy(np.clip(x.numpy(), -1, 1)))


class BranchOnData(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        return out if float(x.sum()) > 0 else -out


def custom_task(model: Callable[[], nn.Module], kind: str = "classification") -> Task:
    labels = torch.zeros(8, dtype=torch.int64) if kind == "classification" else torch.zeros(8)
    data = Dataset(torch.randn(8, 4), labels)
    return Task(name="acme-churn", build_model=model, train=data, validation=data, kind=kind)


@pytest.mark.parametrize("model", [NumpyInside, BranchOnData])
def test_a_model_torch_cannot_trace_is_refused_with_advice(
    model: type[nn.Module], tmp_path: Path
) -> None:
    task = custom_task(model)
    with pytest.raises(UserError) as info:
        export_onnx(task, task.build_model(), None, tmp_path / "model.onnx")
    message = str(info.value)
    assert "'acme-churn'" in message
    assert "trace would be wrong" in message
    assert "--format safetensors" in message
    assert list(tmp_path.iterdir()) == []


def test_custom_regression_exports_a_value_per_row(tmp_path: Path) -> None:
    task = custom_task(lambda: nn.Sequential(nn.Linear(4, 1)), kind="regression")
    model = task.build_model()
    export_onnx(task, model, None, tmp_path / "model.onnx")
    features = torch.randn(5, 4)
    (values,) = session(tmp_path / "model.onnx").run(["value"], {"features": features.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(values, model(features)[:, 0].numpy(), rtol=1e-6)


# ---------------------------------------------------------------------------------- safetensors


def test_safetensors_round_trips_weights_and_metadata(regressor: Trained, tmp_path: Path) -> None:
    task, model, vector = regressor.task, regressor.model, regressor.vector
    assert task.contract is not None
    assert isinstance(task.statistics, tabular.TabularStatistics)
    path = tmp_path / "model.safetensors"
    export_safetensors(task, model, vector, path)

    loaded = safetensors.torch.load_file(path)
    state = model.state_dict()
    assert set(loaded) == set(state) == {"net.0.weight", "net.0.bias"}
    for name, tensor in loaded.items():
        assert torch.equal(tensor, state[name])
    with safetensors.safe_open(path, framework="pt") as f:
        meta = f.metadata()
    assert meta["gossiplearn_version"] == gossiplearn.__version__
    assert meta["task"] == "tabular"
    assert meta["identity_digest"] == task.contract.digest.hex()  # the contract is the identity
    assert json.loads(meta["contract"]) == task.contract.canonical()
    assert json.loads(meta["statistics"]) == vector.tolist()
    assert json.loads(meta["preprocessing"]) == task.statistics.describe(vector)


def test_safetensors_of_a_plain_task_has_no_contract(tmp_path: Path) -> None:
    task = digits.make_task(TaskOptions())
    model = task.build_model()
    path = tmp_path / "digits.safetensors"
    export_safetensors(task, model, None, path)
    with safetensors.safe_open(path, framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(model.state_dict())
    assert set(meta) == {"gossiplearn_version", "task", "identity_digest"}
    assert meta["identity_digest"] == identity_digest(task_identity(task, model)).hex()
