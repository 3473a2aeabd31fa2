"""Company files through a contract: reading CSV and Parquet, encoding, and drafting a contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gossiplearn.errors import UserError
from gossiplearn.tasks.contract import (
    Feature,
    Missing,
    ModelSpec,
    Target,
    TaskContract,
    load_contract,
    render_contract,
)
from gossiplearn.tasks.records import RawTable, encode, infer_contract, read_table

CHURN = TaskContract(
    name="churn",
    features=(
        Feature("age"),
        Feature("plan", "categorical", ("basic", "pro")),
        Feature("spend"),
    ),
    target=Target("churned", "classification", ("no", "yes")),
)
REGRESSION = TaskContract(
    name="price",
    features=(Feature("area"), Feature("city", "categorical", ("a", "b"))),
    target=Target("price", "regression"),
)


def csv_file(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def table(header: list[str], rows: list[list[str]], name: str = "sample.csv") -> RawTable:
    return RawTable(Path(name), tuple(header), rows, list(range(2, len(rows) + 2)))


def nan_at(array: np.ndarray) -> list[bool]:
    return [bool(v) for v in np.isnan(array)]


# ---------------------------------------------------------------------------------- read_table


def test_csv_cells_and_line_numbers(tmp_path: Path) -> None:
    path = csv_file(tmp_path, 'a, b ,c\n1,x,"y, z"\n\n  ,  ,  \n2,,w\n')
    t = read_table(path)
    assert t.header == ("a", "b", "c")  # header names trimmed
    assert t.rows == [["1", "x", "y, z"], ["2", "", "w"]]  # blank lines skipped
    assert t.lines == [2, 5]  # file lines, counting the skipped ones
    assert t.where(1) == f"{path}, line 5"


def test_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffage,churned\n3,no\n".encode())
    t = read_table(path)
    assert t.header == ("age", "churned")
    assert t.rows == [["3", "no"]]


def test_csv_row_of_the_wrong_length_names_the_line(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "a,b,c\n1,2,3\n\n4,5\n")
    with pytest.raises(UserError, match=r"line 4: 2 fields, the header has 3") as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_csv_duplicate_header_is_refused(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "a,b, a\n1,2,3\n")
    with pytest.raises(UserError, match="'a' appears twice") as info:
        read_table(path)
    assert str(path) in str(info.value)


def unreadable(tmp_path: Path, case: str) -> Path:
    if case == "csv-missing":
        return tmp_path / "missing.csv"
    if case == "parquet-missing":
        return tmp_path / "missing.parquet"
    if case == "folder":
        return tmp_path
    if case == "empty":
        return csv_file(tmp_path, "")
    if case == "not-utf8":
        path = tmp_path / "latin1.csv"
        path.write_bytes(b"a\n\xe9\n")
        return path
    assert case == "not-parquet"
    return csv_file(tmp_path, "not parquet", "bad.parquet")


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("csv-missing", "does not exist"),
        ("parquet-missing", "does not exist"),
        ("folder", "is a folder"),
        ("empty", "is empty"),
        ("not-utf8", "UTF-8"),
        ("not-parquet", "as Parquet"),
    ],
)
def test_unreadable_files_are_user_errors(tmp_path: Path, case: str, match: str) -> None:
    path = unreadable(tmp_path, case)
    with pytest.raises(UserError, match=match) as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_csv_header_only_has_no_rows(tmp_path: Path) -> None:
    t = read_table(csv_file(tmp_path, "age,plan,spend,churned\n"))
    assert t.rows == []
    encoded = encode(t, CHURN, need_target=True)
    assert encoded.features.shape == (0, CHURN.inputs)
    assert encoded.targets is not None
    assert len(encoded.targets) == 0


@pytest.fixture
def parquet(tmp_path: Path) -> Path:
    path = tmp_path / "data.parquet"
    pq.write_table(
        pa.table(
            {
                "age": pa.array([30, None, 52], type=pa.int64()),
                "plan": pa.array(["pro", "basic", None]),
                "spend": pa.array([1.5, float("nan"), None], type=pa.float64()),
                "churned": pa.array(["no", "yes", "maybe"]),
            }
        ),
        path,
    )
    return path


def test_parquet_cells_are_text_with_nulls_empty(parquet: Path) -> None:
    t = read_table(parquet)
    assert t.header == ("age", "plan", "spend", "churned")
    assert t.rows == [["30", "pro", "1.5", "no"], ["", "basic", "", "yes"], ["52", "", "", "maybe"]]
    assert t.lines == [1, 2, 3]
    assert t.where(0) == f"{parquet}, row 1"


def test_parquet_errors_name_the_row(parquet: Path) -> None:
    with pytest.raises(UserError, match=r"row 3: target 'churned' is 'maybe'") as info:
        encode(read_table(parquet), CHURN, need_target=True)
    assert str(parquet) in str(info.value)


def test_parquet_encodes_like_csv(parquet: Path, tmp_path: Path) -> None:
    csv_path = csv_file(
        tmp_path, "age,plan,spend,churned\n30,pro,1.5,no\n,basic,,yes\n52,,NaN,maybe\n"
    )
    contract = TaskContract(
        "t", CHURN.features, Target("churned", "classification", ("maybe", "no", "yes"))
    )
    from_parquet = encode(read_table(parquet), contract, need_target=True)
    from_csv = encode(read_table(csv_path), contract, need_target=True)
    np.testing.assert_array_equal(from_parquet.features, from_csv.features)
    assert from_parquet.targets is not None
    assert from_csv.targets is not None
    assert from_parquet.targets.tolist() == from_csv.targets.tolist() == [1, 2, 0]
    assert (
        from_parquet.report.missing
        == from_csv.report.missing
        == {
            "age": 1,
            "plan": 1,
            "spend": 2,
        }
    )


# ---------------------------------------------------------------------------------- encode


def test_encode_numeric_and_one_hot_blocks() -> None:
    t = table(
        ["churned", "spend", "plan", "age", "ignored"],
        [["no", "10.5", "basic", "30", "q"], ["yes", "-2", "pro", "1e2", "r"]],
    )
    encoded = encode(t, CHURN, need_target=True)
    assert encoded.features.dtype == np.float32
    np.testing.assert_array_equal(
        encoded.features,
        [[30, 1, 0, 0, 10.5], [100, 0, 1, 0, -2]],
    )
    assert encoded.targets is not None
    assert encoded.targets.dtype == np.int64
    assert encoded.targets.tolist() == [0, 1]
    assert encoded.lines == [2, 3]
    assert encoded.report.rows == 2
    assert not encoded.report.missing
    assert not encoded.report.other


def test_missing_tokens_become_nan_and_are_counted_per_column() -> None:
    t = table(
        ["age", "plan", "spend", "churned"],
        [
            ["", "basic", " NA ", "no"],
            ["NaN", "pro", "3", "yes"],
            ["  ", " nan ", "?", "no"],
            ["4", "NA", "null", "yes"],
        ],
    )
    encoded = encode(t, CHURN, need_target=True)
    x = encoded.features
    assert nan_at(x[:, 0]) == [True, True, True, False]
    assert nan_at(x[:, 4]) == [True, False, True, True]
    # a missing categorical cell makes its whole block NaN, nothing else
    assert np.isnan(x[2, 1:4]).all()
    assert np.isnan(x[3, 1:4]).all()
    assert not np.isnan(x[0, 1:4]).any()
    assert encoded.report.missing == {"age": 3, "plan": 2, "spend": 3}
    assert "8 missing cells imputed" in encoded.report.summary()


def test_unseen_category_goes_to_the_other_slot_and_is_counted() -> None:
    t = table(
        ["age", "plan", "spend", "churned"],
        [["1", "enterprise", "2", "no"], ["1", "Basic", "2", "no"], ["1", " pro ", "2", "no"]],
    )
    encoded = encode(t, CHURN, need_target=True)
    np.testing.assert_array_equal(encoded.features[:, 1:4], [[0, 0, 1], [0, 0, 1], [0, 1, 0]])
    assert encoded.report.other == {"plan": 2}
    assert "2 unseen category values" in encoded.report.summary()


def test_refuse_policy_names_the_row_and_column() -> None:
    contract = TaskContract(
        "t", CHURN.features, CHURN.target, missing=Missing(("", "NA"), "refuse")
    )
    t = table(
        ["age", "plan", "spend", "churned"], [["1", "pro", "2", "no"], ["1", "NA", "2", "no"]]
    )
    with pytest.raises(UserError, match=r"sample.csv, line 3: column 'plan' is missing") as info:
        encode(t, contract, need_target=True)
    assert "refuse" in str(info.value)


def test_refuse_policy_with_a_complete_file() -> None:
    contract = TaskContract("t", CHURN.features, CHURN.target, missing=Missing(("",), "refuse"))
    t = table(["age", "plan", "spend", "churned"], [["1", "NA", "2", "no"]])
    encoded = encode(t, contract, need_target=True)  # "NA" is not missing under this contract
    assert encoded.features[0, 1:4].tolist() == [0, 0, 1]


def test_non_number_in_a_numeric_column_names_file_line_column_and_value(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "age,plan,spend,churned\n1,pro,2,no\n1,pro,12 EUR,no\n")
    with pytest.raises(UserError) as info:
        encode(read_table(path), CHURN, need_target=True)
    message = str(info.value)
    assert f"{path}, line 3" in message
    assert "'spend'" in message
    assert "'12 EUR'" in message
    assert "not a number" in message


@pytest.mark.parametrize("cell", ["inf", "-Infinity"])
def test_non_finite_number_is_refused(cell: str) -> None:
    t = table(["age", "plan", "spend", "churned"], [["1", "pro", cell, "no"]])
    with pytest.raises(UserError, match=r"line 2: column 'spend' is not finite"):
        encode(t, CHURN, need_target=True)


def test_number_beyond_float32_is_refused_by_name() -> None:
    t = table(["age", "plan", "spend", "churned"], [["1", "pro", "1e39", "no"]])
    with pytest.raises(UserError, match="spend"):
        encode(t, CHURN, need_target=True)


def test_underscored_number_is_not_a_number() -> None:
    t = table(["age", "plan", "spend", "churned"], [["1", "pro", "1_000", "no"]])
    with pytest.raises(UserError, match="not a number"):
        encode(t, CHURN, need_target=True)


def test_unknown_class_names_the_row_and_says_how_to_fix() -> None:
    t = table(
        ["age", "plan", "spend", "churned"], [["1", "pro", "2", "no"], ["1", "pro", "2", "gone"]]
    )
    with pytest.raises(UserError) as info:
        encode(t, CHURN, need_target=True)
    message = str(info.value)
    assert "sample.csv, line 3" in message
    assert "'gone'" in message
    assert "add the class to the contract" in message


def test_regression_target_is_a_float() -> None:
    t = table(["area", "city", "price"], [["50", "a", "1.25e5"], ["70", "c", " 99.5 "]])
    encoded = encode(t, REGRESSION, need_target=True)
    assert encoded.targets is not None
    assert encoded.targets.dtype == np.float32
    np.testing.assert_allclose(encoded.targets, [125000.0, 99.5])
    t_bad = table(["area", "city", "price"], [["50", "a", "cheap"]])
    with pytest.raises(UserError, match=r"line 2: column 'price' holds 'cheap'"):
        encode(t_bad, REGRESSION, need_target=True)


def test_prediction_without_a_target_column() -> None:
    t = table(["age", "plan", "spend"], [["1", "pro", "2"], ["3", "basic", ""]])
    encoded = encode(t, CHURN, need_target=False)
    assert encoded.targets is None
    assert encoded.features.shape == (2, CHURN.inputs)
    assert encoded.report.rows == 2
    with pytest.raises(UserError, match="no target column 'churned'"):
        encode(t, CHURN, need_target=True)


def test_prediction_ignores_the_target_column_whatever_it_holds() -> None:
    t = table(
        ["age", "plan", "spend", "churned"],
        [["1", "pro", "2", "yes"], ["3", "basic", "", "a class nobody knows"]],
    )
    encoded = encode(t, CHURN, need_target=False)
    assert encoded.targets is None
    assert encoded.report.rows == 2


def test_rows_without_a_target_are_skipped_and_counted_when_training() -> None:
    t = table(
        ["age", "plan", "spend", "churned"],
        [
            ["1", "pro", "2", "yes"],
            ["2", "pro", "2", ""],
            ["3", "oops", "x", "NA"],  # skipped before its cells are read: no error
            ["4", "basic", "", "no"],
        ],
    )
    encoded = encode(t, CHURN, need_target=True)
    assert encoded.report.no_target == 2
    assert encoded.report.rows == 2
    assert encoded.lines == [2, 5]
    assert encoded.features[:, 0].tolist() == [1, 4]
    assert encoded.targets is not None
    assert encoded.targets.tolist() == [1, 0]
    assert encoded.report.missing == {"spend": 1}  # skipped rows are not counted
    assert "2 without a target skipped" in encoded.report.summary()


def test_missing_feature_column_is_named() -> None:
    t = table(["age", "spend", "churned"], [["1", "2", "no"]])
    with pytest.raises(UserError, match="no column 'plan'"):
        encode(t, CHURN, need_target=True)


# ---------------------------------------------------------------------------------- infer


def infer_rows(n: int) -> tuple[list[str], list[list[str]]]:
    header = ["customer_id", "age", "plan", "score", "churned"]
    rows = []
    for i in range(n):
        rows.append(
            [
                f"C{i:05d}",
                "" if i % 7 == 3 else str(20 + i),
                ["basic", "pro", "NA"][i % 3],
                f"{i * 0.5:.1f}",
                ["no", "yes"][i % 2],
            ]
        )
    return header, rows


def test_infer_numeric_categorical_and_identifier_columns() -> None:
    header, rows = infer_rows(30)
    contract, notes = infer_contract(table(header, rows), "churned", name="churn")
    assert contract.name == "churn"
    assert contract.features == (
        Feature("age"),  # its missing cells do not make it text
        Feature("plan", "categorical", ("basic", "pro")),  # "NA" is missing, not a category
        Feature("score"),
    )
    assert contract.target == Target("churned", "classification", ("no", "yes"))
    assert contract.model == ModelSpec()
    left_out = [n for n in notes if "customer_id" in n]
    assert len(left_out) == 1
    assert "identifier" in left_out[0]


def test_infer_keeps_a_text_column_in_a_small_sample() -> None:
    # the identifier rule needs 20 rows or more: in a small sample, distinct text is plausible
    header, rows = infer_rows(6)
    contract, _ = infer_contract(table(header, rows), "churned", name="churn")
    assert contract.features[0].column == "customer_id"
    assert contract.features[0].kind == "categorical"


def test_infer_leaves_out_a_column_missing_everywhere() -> None:
    t = table(["x", "empty", "y"], [["1", "", "a"], ["2", "NA", "b"]])
    contract, notes = infer_contract(t, "y", name="t")
    assert [f.column for f in contract.features] == ["x"]
    assert any("'empty'" in n and "every cell is missing" in n for n in notes)


@pytest.mark.parametrize(
    ("labels", "kind", "classes"),
    [
        (["b", "a", "c", "a"], "classification", ("a", "b", "c")),
        (["10", "2", "1", "2"], "classification", ("1", "2", "10")),  # ordered by value
        ([str(i) for i in range(20)], "classification", tuple(str(i) for i in range(20))),
        ([str(i) for i in range(21)], "regression", ()),
        (["1.5", "2.25", "3.5", "4.75"], "regression", ()),  # the example
        (["0", "1", "0.5", "1"], "regression", ()),
    ],
)
def test_infer_target_kind(labels: list[str], kind: str, classes: tuple[str, ...]) -> None:
    t = table(["x", "y"], [[str(i), v] for i, v in enumerate(labels)])
    contract, notes = infer_contract(t, "y", name="t")
    assert contract.target.kind == kind
    assert contract.target.classes == classes
    whole_numbers_note = any("whole numbers" in n for n in notes)
    assert whole_numbers_note == (kind == "classification" and labels[0].isdigit())


def test_infer_kind_override() -> None:
    t = table(["x", "y"], [["1", "0"], ["2", "1"], ["3", "1"]])
    as_regression, _ = infer_contract(t, "y", name="t", kind="regression")
    assert as_regression.target == Target("y", "regression")
    t2 = table(["x", "y"], [["1", "0.5"], ["2", "1.5"], ["3", "1.5"]])
    as_classes, _ = infer_contract(t2, "y", name="t", kind="classification")
    assert as_classes.target.classes == ("0.5", "1.5")
    t3 = table(["x", "y"], [["1", "low"], ["2", "high"]])
    with pytest.raises(UserError, match="--kind regression needs a numeric target"):
        infer_contract(t3, "y", name="t", kind="regression")


@pytest.mark.parametrize("kind", [None, "classification"])
def test_infer_refuses_a_one_class_target(kind: str | None) -> None:
    t = table(["x", "y"], [["1", "yes"], ["2", "yes"], ["3", ""]])
    with pytest.raises(UserError, match="one class only"):
        infer_contract(t, "y", name="t", kind=kind)


@pytest.mark.parametrize(
    ("header", "rows", "target", "match"),
    [
        (["x", "y"], [["1", "a"]], "z", "no column 'z'"),
        (["x", "y"], [], "y", "no data rows"),
        (["x", "y"], [["1", ""], ["2", "NA"]], "y", "empty in every row"),
        (["x", "y"], [["", "a"], ["", "b"]], "y", "no usable feature columns"),
    ],
)
def test_infer_errors(header: list[str], rows: list[list[str]], target: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        infer_contract(table(header, rows), target, name="t")


def test_inferred_contract_renders_and_loads_back_equal(tmp_path: Path) -> None:
    header, rows = infer_rows(30)
    contract, notes = infer_contract(
        table(header, rows), "churned", name="churn", model=ModelSpec("mlp", (8,))
    )
    path = tmp_path / "task.toml"
    path.write_text(render_contract(contract, notes=notes), encoding="utf-8")
    loaded = load_contract(path)
    assert loaded == contract
    assert loaded.digest == contract.digest


def test_inferred_contract_encodes_its_own_sample(tmp_path: Path) -> None:
    header, rows = infer_rows(30)
    path = csv_file(tmp_path, "\n".join(",".join(r) for r in [header, *rows]) + "\n")
    contract, _ = infer_contract(read_table(path), "churned", name="churn")
    encoded = encode(read_table(path), contract, need_target=True)
    assert encoded.report.rows == 30
    assert not encoded.report.other
    assert encoded.report.missing == {"age": 4, "plan": 10}
    assert encoded.features.shape == (30, contract.inputs)


def test_parquet_float_classes_match_csv_integers(tmp_path: Path) -> None:
    path = tmp_path / "sample.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0], "y": [0.0, 1.0, 1.0]}), path)
    contract, _ = infer_contract(read_table(path), "y", name="t")
    csv_path = csv_file(tmp_path, "x,y\n1,0\n2,1\n")
    encoded = encode(read_table(csv_path), contract, need_target=True)
    assert encoded.targets is not None
    assert encoded.targets.tolist() == [0, 1]
