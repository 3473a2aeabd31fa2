"""The tabular task: a member's file through a shared contract, a model whose preprocessing
follows the consortium's statistics, and rebasing a model from one set of statistics to another."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gossiplearn.errors import UserError
from gossiplearn.gossip.aggregate import average, check
from gossiplearn.tasks import digits
from gossiplearn.tasks.base import Task, TaskOptions
from gossiplearn.tasks.contract import (
    Feature,
    ModelSpec,
    Target,
    TaskContract,
    render_contract,
)
from gossiplearn.tasks.tabular import (
    OBSOLETE,
    TabularModel,
    TabularStatistics,
    make_task,
    read_records,
)

CLASSIFY = TaskContract(
    name="churn",
    features=(
        Feature("age"),
        Feature("plan", "categorical", ("basic", "pro")),
        Feature("spend"),
    ),
    target=Target("churned", "classification", ("no", "yes", "maybe")),
    model=ModelSpec("mlp", (8,)),
)
REGRESS = TaskContract(
    name="price",
    features=(Feature("area"), Feature("city", "categorical", ("north", "south")), Feature("age")),
    target=Target("price", "regression"),
    model=ModelSpec("linear", ()),
)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def churn_rows(seed: int, n: int, *, missing: bool = True, shift: float = 0.0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        age = f"{rng.normal(40 + shift, 12):.2f}"
        plan = str(rng.choice(["basic", "pro", "team"], p=[0.5, 0.4, 0.1]))
        spend = f"{rng.lognormal(3 + shift / 10, 1):.3f}"
        if missing and i % 5 == 1:
            age = ""
        if missing and i % 7 == 2:
            plan = "NA"
        rows.append([age, plan, spend, ["no", "yes", "maybe"][i % 3]])
    return rows


def price_rows(seed: int, n: int, *, unit: float = 1.0, shift: float = 0.0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        area = rng.uniform(30 + shift, 150 + shift)
        city = str(rng.choice(["north", "south"]))
        age = rng.integers(0, 80)
        price = (2000 * area + (30000 if city == "north" else 0) - 500 * age) * unit
        rows.append([f"{area:.2f}", city, str(age), repr(float(price))])
    return rows


CHURN_HEADER = ["age", "plan", "spend", "churned"]
PRICE_HEADER = ["area", "city", "age", "price"]


def setup(
    tmp_path: Path,
    contract: TaskContract,
    header: list[str],
    rows: list[list[str]],
    **options: float,
) -> Task:
    contract_path = tmp_path / f"{contract.name}.toml"
    contract_path.write_text(render_contract(contract), encoding="utf-8")
    data = write_csv(tmp_path / f"{contract.name}.csv", header, rows)
    return make_task(
        TaskOptions(
            seed=1,
            validation_fraction=float(options.get("validation_fraction", 0.25)),
            params={"contract": str(contract_path), "data": str(data)},
        )
    )


# Module-scoped: the hypothesis tests reuse them. Every test that depends on the target scale
# the statistics hold builds a model first (which applies the local statistics).
@pytest.fixture(scope="module")
def churn(tmp_path_factory: pytest.TempPathFactory) -> Task:
    return setup(tmp_path_factory.mktemp("churn"), CLASSIFY, CHURN_HEADER, churn_rows(0, 40))


def all_rows(task: Task) -> torch.Tensor:
    return torch.cat([task.train.features, task.validation.features])


def stats_of(task: Task) -> TabularStatistics:
    assert isinstance(task.statistics, TabularStatistics)
    return task.statistics


# ---------------------------------------------------------------------------------- the task


def test_make_task_gives_a_tabular_model_over_encoded_rows(churn: Task) -> None:
    assert churn.name == "tabular"
    assert churn.contract == CLASSIFY
    assert churn.identity == CLASSIFY.canonical()
    assert churn.kind == "classification"
    assert churn.classes == ("no", "yes", "maybe")
    assert len(churn.train) + len(churn.validation) == 40
    assert len(churn.validation) == 10
    x = all_rows(churn)
    assert x.shape == (40, CLASSIFY.inputs)
    assert torch.isnan(x).any()  # missing cells travel as NaN ...
    model = churn.build_model()
    assert isinstance(model, TabularModel)
    out = model(x)
    assert out.shape == (40, 3)
    assert torch.isfinite(out).all()  # ... and the model imputes them
    probabilities = churn.outputs(model, x)
    assert probabilities.shape == (40, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-9)
    metrics = churn.metrics(model, churn.validation)
    assert set(metrics) == {"accuracy", "loss"}


def test_statistics_layout_and_local_sums(churn: Task) -> None:
    stats = stats_of(churn)
    # rows, age (3), plan (3 slots), spend (3)
    assert stats.layout.size == 1 + 3 + 3 + 3
    assert stats.layout.moments == ((1, 2, 3), (7, 8, 9))
    assert stats.layout.counts == (0, 4, 5, 6)
    check(stats.local, stats.layout)
    x = all_rows(churn).double().numpy()
    np.testing.assert_allclose(stats.local, TabularStatistics.sums(CLASSIFY, x, None))


def test_sums_count_only_present_cells() -> None:
    nan = np.nan
    x = np.array(
        [
            # age, plan (basic, pro, other), spend
            [1.0, 1, 0, 0, 10.0],
            [nan, 0, 0, 1, 20.0],
            [3.0, nan, nan, nan, nan],
            [4.0, 0, 1, 0, 30.0],
        ],
        dtype=np.float32,
    )
    expected = [4, 3, 8, 1 + 9 + 16, 1, 1, 1, 3, 60, 100 + 400 + 900]
    assert TabularStatistics.sums(CLASSIFY, x, None).tolist() == expected
    y = np.array([1.0, 2.0, 4.0, 5.0], dtype=np.float32)
    x3 = np.array([[1.0, 1, 0, 0, nan]] * 4, dtype=np.float32)
    assert TabularStatistics.sums(REGRESS, x3, y).tolist() == [
        4,
        4, 4, 4,
        4, 0, 0,
        0, 0, 0,
        4, 12, 46,
    ]  # fmt: skip


def test_statistics_refuse_a_vector_of_another_layout() -> None:
    with pytest.raises(ValueError, match="layout has 10"):
        TabularStatistics(CLASSIFY, np.zeros(9))


def test_apply_with_local_statistics_standardises_the_training_inputs(tmp_path: Path) -> None:
    task = setup(tmp_path, CLASSIFY, CHURN_HEADER, churn_rows(3, 60), validation_fraction=0.0)
    x = task.train.features
    assert len(x) == 60
    model = task.build_model()  # built with the task's own local statistics applied
    assert isinstance(model, TabularModel)
    model.net = nn.Sequential()  # the preprocessing alone
    z = model(x).double()
    for col in (0, 4):  # numeric: age, spend
        present = ~torch.isnan(x[:, col])
        assert z[present, col].mean().item() == pytest.approx(0.0, abs=1e-5)
        assert z[present, col].std(unbiased=False).item() == pytest.approx(1.0, rel=1e-5)
        assert (z[~present, col] == 0).all()  # a missing cell gets the mean
    block = slice(1, 4)  # categorical: untouched one-hot, missing rows get frequencies
    present = ~torch.isnan(x[:, 1])
    assert torch.equal(z[present, block], x[present, block].double())
    frequencies = x[present, block].double().mean(dim=0)
    assert torch.allclose(z[~present, block], frequencies.expand(int((~present).sum()), 3))
    assert (~present).sum() > 0


def test_apply_sets_the_target_scale_of_the_loss(tmp_path: Path) -> None:
    task = setup(tmp_path, REGRESS, PRICE_HEADER, price_rows(0, 30), validation_fraction=0.0)
    stats = stats_of(task)
    y = task.train.labels.double()
    task.build_model()
    assert stats.y_shift == pytest.approx(y.mean().item(), rel=1e-9)
    assert stats.y_scale == pytest.approx(y.std(unbiased=False).item(), rel=1e-6)
    assert stats.target_scale(stats.local) == (stats.y_shift, stats.y_scale)


# ---------------------------------------------------------------------------------- rebase


def state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def outputs(task: Task, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the model computes: logits, or for regression values on the target's scale."""
    with torch.no_grad():
        out = model(x)
    if task.kind == "regression":
        assert isinstance(model, TabularModel)
        return model.values(out).double()
    return out.double()


def rebased_outputs(
    task: Task, old: np.ndarray, new: np.ndarray, x: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """Outputs of a model under ``old``, and of the same model rebased to ``new``."""
    stats = stats_of(task)
    torch.manual_seed(seed)
    model = task.build_model()
    stats.apply(model, old)
    before = outputs(task, model, x)
    moved = stats.rebase(state(model), old, new)
    assert set(moved) == set(state(model))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in moved.items()})
    stats.apply(model, new)
    return before, outputs(task, model, x), model


def complete(x: torch.Tensor) -> torch.Tensor:
    return x[~torch.isnan(x).any(dim=1)]


def other_vectors(task: Task, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two valid statistics vectors, different from the local one and from each other: the
    local sums averaged with those of other members' (shifted, rescaled) data."""
    stats = stats_of(task)
    contract = task.contract
    assert contract is not None
    vectors = []
    for k in (1, 2):
        if contract.kind == "regression":
            rows, header = price_rows(seed + k, 25, unit=3.0 * k, shift=40.0 * k), PRICE_HEADER
        else:
            rows, header = churn_rows(seed + k, 25, shift=15.0 * k), CHURN_HEADER
        x, y = _encode(contract, header, rows)
        theirs = TabularStatistics.sums(contract, x, y if contract.kind == "regression" else None)
        vectors.append(check(average(stats.local, theirs), stats.layout))
    return vectors[0], vectors[1]


def _encode(
    contract: TaskContract, header: list[str], rows: list[list[str]]
) -> tuple[np.ndarray, np.ndarray]:
    from gossiplearn.tasks.records import RawTable, encode

    encoded = encode(
        RawTable(Path("other.csv"), tuple(header), rows, list(range(len(rows)))),
        contract,
        need_target=True,
    )
    assert encoded.targets is not None
    return encoded.features, encoded.targets


@pytest.fixture(scope="module")
def price(tmp_path_factory: pytest.TempPathFactory) -> Task:
    return setup(tmp_path_factory.mktemp("price"), REGRESS, PRICE_HEADER, price_rows(0, 40))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_rebase_keeps_an_mlp_classifier_s_outputs(churn: Task, seed: int) -> None:
    a, b = other_vectors(churn, seed)
    x = complete(all_rows(churn))
    assert len(x) > 20
    for old, new in [(stats_of(churn).local, a), (a, b), (b, stats_of(churn).local)]:
        before, after, _ = rebased_outputs(churn, old, new, x, seed)
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_rebase_keeps_a_linear_regression_s_values(price: Task, seed: int) -> None:
    a, b = other_vectors(price, seed)
    x = all_rows(price)
    scale = stats_of(price).target_scale(a)[1]
    for old, new in [(stats_of(price).local, a), (a, b)]:
        assert not np.allclose(stats_of(price).target_scale(old), stats_of(price).target_scale(new))
        before, after, _ = rebased_outputs(price, old, new, x, seed)
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5 * scale)


def test_rebase_leaves_its_inputs_and_other_tensors(churn: Task) -> None:
    stats = stats_of(churn)
    a, _ = other_vectors(churn, 0)
    tensors = state(churn.build_model())
    copy = {k: v.copy() for k, v in tensors.items()}
    moved = stats.rebase(tensors, stats.local, a)
    for k in tensors:
        np.testing.assert_array_equal(tensors[k], copy[k])
        assert moved[k].dtype == tensors[k].dtype
    np.testing.assert_array_equal(moved["net.2.weight"], tensors["net.2.weight"])  # no target
    assert not np.array_equal(moved["net.0.weight"], tensors["net.0.weight"])
    same = stats.rebase(tensors, a, a)
    for k in tensors:
        np.testing.assert_allclose(same[k], tensors[k], rtol=1e-6)


def test_rebase_imputes_missing_cells_with_the_new_statistics(churn: Task) -> None:
    """A row with missing cells is not kept exactly (its imputed values move with the
    statistics): the rebased model computes what the old one did on the row filled with the
    *new* means and frequencies."""
    stats = stats_of(churn)
    a, _ = other_vectors(churn, 5)
    x = all_rows(churn)
    gaps = torch.isnan(x).any(dim=1)
    assert torch.isnan(x[:, 0]).any()  # missing numeric cells ...
    assert torch.isnan(x[:, 1]).any()  # ... and missing categorical ones
    torch.manual_seed(0)
    model = churn.build_model()
    stats.apply(model, stats.local)
    fill_new = torch.from_numpy(stats.preprocessing(a)[0]).float()
    filled = torch.where(torch.isnan(x), fill_new, x)
    expected = outputs(churn, model, filled)
    assert not torch.allclose(expected[gaps], outputs(churn, model, x)[gaps], atol=1e-4)
    _, after, _ = rebased_outputs(churn, stats.local, a, x, 0)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- regression


def test_regression_loss_is_on_the_standardised_target(tmp_path: Path) -> None:
    rows = price_rows(4, 40)
    scaled = [[*r[:3], repr(float(r[3]) * 1000)] for r in rows]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    small = setup(tmp_path / "a", REGRESS, PRICE_HEADER, rows)
    large = setup(tmp_path / "b", REGRESS, PRICE_HEADER, scaled)
    torch.testing.assert_close(large.train.labels, small.train.labels * 1000, rtol=1e-6, atol=0)
    losses, rmse = [], []
    for task in (small, large):
        torch.manual_seed(0)
        model = task.build_model()
        with torch.no_grad():
            losses.append(float(task.loss(model(task.train.features), task.train.labels)))
        metrics = task.metrics(model, task.validation)
        assert set(metrics) == {"rmse", "mae", "r2", "loss"}
        rmse.append(metrics["rmse"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert 0.05 < losses[0] < 50  # the order of a standardised target's variance
    assert rmse[1] == pytest.approx(1000 * rmse[0], rel=1e-4)  # metrics on the target's scale


def test_regression_predictions_are_on_the_target_s_scale(price: Task) -> None:
    torch.manual_seed(0)
    model = price.build_model()
    x = price.validation.features
    values = price.outputs(model, x)
    stats = stats_of(price)
    y_shift, y_scale = stats.target_scale(stats.local)
    with torch.no_grad():
        raw = model(x).reshape(-1).double()
    np.testing.assert_allclose(values, (raw * y_scale + y_shift).numpy(), rtol=1e-6)
    assert values.shape == (len(x),)


# ---------------------------------------------------------------------------------- describe


def test_describe_lists_every_column(churn: Task) -> None:
    stats = stats_of(churn)
    x = all_rows(churn).double()
    described = stats.describe(stats.local)
    assert list(described["columns"]) == ["age", "plan", "spend"]
    age = x[:, 0][~torch.isnan(x[:, 0])]
    assert described["columns"]["age"] == {
        "mean": pytest.approx(age.mean().item()),
        "std": pytest.approx(age.std(unbiased=False).item()),
        "present": pytest.approx(len(age) / 40),
    }
    assert described["columns"]["spend"]["present"] == 1.0
    plan = described["columns"]["plan"]
    assert list(plan["frequencies"]) == ["basic", "pro"]  # the other slot is apart, so a
    assert sum(plan["frequencies"].values()) + plan["other"] == pytest.approx(1.0)  # category
    # may be named anything
    assert "target" not in described


def test_describe_of_a_regression_has_the_target(price: Task) -> None:
    stats = stats_of(price)
    described = stats.describe(stats.local)
    assert list(described["columns"]) == ["area", "city", "age"]
    y = torch.cat([price.train.labels, price.validation.labels]).double()
    assert described["target"]["mean"] == pytest.approx(y.mean().item(), rel=1e-9)
    assert described["target"]["std"] == pytest.approx(y.std(unbiased=False).item(), rel=1e-6)


# ---------------------------------------------------------------------------------- errors


def test_make_task_without_a_contract_says_how_to_make_one(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "d.csv", CHURN_HEADER, churn_rows(0, 5))
    with pytest.raises(UserError, match="gossiplearn task init"):
        make_task(TaskOptions(params={"data": str(data)}))


@pytest.mark.parametrize("key", OBSOLETE)
def test_make_task_refuses_obsolete_keys(tmp_path: Path, key: str) -> None:
    contract = tmp_path / "task.toml"
    contract.write_text(render_contract(CLASSIFY), encoding="utf-8")
    with pytest.raises(UserError, match=rf"\[task\] {key} is no longer read") as info:
        make_task(TaskOptions(params={"contract": str(contract), key: "x"}))
    assert "gossiplearn task init" in str(info.value)


def test_make_task_without_data(tmp_path: Path) -> None:
    contract = tmp_path / "task.toml"
    contract.write_text(render_contract(CLASSIFY), encoding="utf-8")
    with pytest.raises(UserError, match="needs this member's data"):
        make_task(TaskOptions(params={"contract": str(contract)}))


def test_make_task_with_a_missing_contract_file(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "d.csv", CHURN_HEADER, churn_rows(0, 5))
    missing = tmp_path / "none.toml"
    with pytest.raises(UserError, match="does not exist") as info:
        make_task(TaskOptions(params={"contract": str(missing), "data": str(data)}))
    assert str(missing) in str(info.value)


def test_data_file_lacking_a_contract_column(tmp_path: Path) -> None:
    rows = [[r[0], r[2], r[3]] for r in churn_rows(0, 5)]
    with pytest.raises(UserError, match="no column 'plan'"):
        setup(tmp_path, CLASSIFY, ["age", "spend", "churned"], rows)


def test_fewer_than_two_labelled_rows(tmp_path: Path) -> None:
    rows = churn_rows(0, 4)
    for r in rows[1:]:
        r[3] = ""
    with pytest.raises(UserError, match="needs at least 2 labelled rows, found 1"):
        setup(tmp_path, CLASSIFY, CHURN_HEADER, rows)


def test_need_data_false_builds_without_a_data_file(tmp_path: Path) -> None:
    contract = tmp_path / "task.toml"
    contract.write_text(render_contract(REGRESS), encoding="utf-8")
    task = make_task(
        TaskOptions(params={"contract": str(contract), "data": "nowhere.csv"}, need_data=False)
    )
    assert len(task.train) == 0
    assert task.contract == REGRESS
    assert task.kind == "regression"
    model = task.build_model()
    assert model(torch.zeros(2, REGRESS.inputs)).shape == (2, 1)
    # the saved model's statistics come later; the task's reader encodes files meanwhile
    data = write_csv(tmp_path / "p.csv", PRICE_HEADER[:3], [r[:3] for r in price_rows(0, 3)])
    assert task.reader is not None
    records = task.reader(data, False)
    assert records.labels is None
    assert records.features.shape == (3, REGRESS.inputs)
    assert task.outputs(model, records.features).shape == (3,)


def test_read_records_reports_what_it_read(tmp_path: Path) -> None:
    rows = churn_rows(0, 10)
    rows[3][3] = ""
    data = write_csv(tmp_path / "d.csv", CHURN_HEADER, rows)
    records = read_records(CLASSIFY, data, need_target=True)
    assert records.labels is not None
    assert len(records.labels) == len(records.features) == 9
    assert 5 not in records.lines  # line 5 held the row without a target
    assert "9 rows" in records.note
    assert "1 without a target skipped" in records.note


# ---------------------------------------------------------------------------------- digits


def test_digits_reader_scales_pixels_by_a_sixteenth(tmp_path: Path) -> None:
    header = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    rows = [[str((i + j) % 17) for j in range(64)] for i in range(3)]
    data = write_csv(
        tmp_path / "d.csv", [*header, "target"], [[*r, str(i)] for i, r in enumerate(rows)]
    )
    records = digits.read_file(data, True)
    expected = torch.tensor([[float(v) / 16 for v in r] for r in rows])
    torch.testing.assert_close(records.features, expected)
    assert records.labels is not None
    assert records.labels.tolist() == [0, 1, 2]
    assert records.lines == [2, 3, 4]
    unlabelled = write_csv(tmp_path / "u.csv", header, rows)
    assert digits.read_file(unlabelled, False).labels is None
    gap = write_csv(tmp_path / "g.csv", header, [["", *rows[0][1:]]])
    with pytest.raises(UserError, match=r"line 2: column 'pixel_0_0' is missing"):
        digits.read_file(gap, False)


def test_a_column_constant_in_a_members_file_keeps_its_weights_when_rebased(
    tmp_path: Path,
) -> None:
    """A member whose rows all hold one age saw that column as 0 and never learnt its weights;
    when the consortium's ages (deviation ~12) arrive, the weights keep their size, and the
    member's own rows keep their outputs."""
    rows = [["37", *r[1:]] for r in churn_rows(1, 30, missing=False)]
    task = setup(tmp_path, CLASSIFY, CHURN_HEADER, rows)
    stats = stats_of(task)
    consortium, _ = other_vectors(task, 3)
    assert stats.describe(stats.local)["columns"]["age"]["std"] == 0.0
    assert stats.describe(consortium)["columns"]["age"]["std"] > 5.0
    x = all_rows(task)
    before, after, model = rebased_outputs(task, stats.local, consortium, x, 0)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    fresh = task.build_model()
    age = fresh.state_dict()["net.0.weight"][:, 0]
    torch.testing.assert_close(model.state_dict()["net.0.weight"][:, 0], age)
