"""demo.companies: deterministic, skewed per-company files with the promised columns, missing
cells and unseen categories; the synthetic churn data is learnable but not trivially."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gossiplearn.demo import companies
from gossiplearn.demo.companies import Split
from gossiplearn.errors import UserError

REPO = Path(__file__).resolve().parents[2]
MISSING = {"", "NA", "NaN"}
GENERATORS: dict[str, Callable[[Path], Split]] = {
    "wine": companies.wine,
    "customers": companies.customers,
    "diabetes": companies.diabetes,
}


def read(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def column(path: Path, name: str) -> list[str]:
    header, rows = read(path)
    return [r[header.index(name)] for r in rows]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Split]:
    root = tmp_path_factory.mktemp("companies")
    return {name: make(root / name) for name, make in GENERATORS.items()}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_same_bytes(name: str, made: dict[str, Split], tmp_path: Path) -> None:
    first = made[name].test.parent
    GENERATORS[name](tmp_path)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    for n in names:
        assert (first / n).read_bytes() == (tmp_path / n).read_bytes(), n
    assert b"\r" not in (first / "test.csv").read_bytes()


def test_another_seed_other_files(made: dict[str, Split], tmp_path: Path) -> None:
    other = companies.wine(tmp_path, seed=1)
    assert other.members[0].read_bytes() != made["wine"].members[0].read_bytes()


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_members_have_unequal_sizes(name: str, made: dict[str, Split]) -> None:
    split = made[name]
    assert [p.name for p in split.members] == ["member1.csv", "member2.csv", "member3.csv"]
    sizes = [len(read(p)[1]) for p in split.members]
    assert len(set(sizes)) == 3
    assert min(sizes) >= 12


def test_wine_files(made: dict[str, Split]) -> None:
    split = made["wine"]
    assert (split.target, split.kind) == ("cultivar", "classification")
    header, _ = read(split.test)
    assert header[0] == "alcohol"
    assert "od280_od315_of_diluted_wines" in header
    assert header[-1] == "cultivar" and len(header) == 14
    files = [*split.members, split.test]
    assert sum(len(read(p)[1]) for p in files) == 178  # every wine once
    labels = {c for p in files for c in column(p, "cultivar")}
    assert labels == {"barolo", "grignolino", "barbera"}
    test_labels = column(split.test, "cultivar")
    assert 42 <= len(test_labels) <= 48 and set(test_labels) == labels  # stratified ~25%

    # label skew: class shares differ a lot between some two members
    shares = np.array(
        [
            [np.mean([v == c for v in column(p, "cultivar")]) for c in sorted(labels)]
            for p in split.members
        ]
    )
    gaps = [np.abs(a - b).sum() / 2 for a in shares for b in shares]
    assert max(gaps) > 0.3
    # feature skew: member 2's wines are stronger than other members' wines of the same cultivar
    for c in labels:
        means = []
        for p in split.members:
            header, rows = read(p)
            vals = [float(r[0]) for r in rows if r[-1] == c and r[0]]
            means.append(np.mean(vals) if vals else np.nan)
        others = [m for i, m in enumerate(means) if i != 1 and not np.isnan(m)]
        if not np.isnan(means[1]) and others:
            assert means[1] > max(others)


def test_wine_missing_cells_only_in_member_features(made: dict[str, Split]) -> None:
    split = made["wine"]
    for p in split.members:
        _, rows = read(p)
        blanks = sum(v == "" for r in rows for v in r[:-1])
        assert 0.01 <= blanks / (13 * len(rows)) <= 0.03
        assert all(r[-1] for r in rows)
    _, rows = read(split.test)
    assert all(v for r in rows for v in r)


def test_wine_examples_are_current(made: dict[str, Split]) -> None:
    """examples/wine holds what `python -m gossiplearn.demo.companies wine examples/wine` writes."""
    for p in [*made["wine"].members, made["wine"].test]:
        assert (REPO / "examples" / "wine" / p.name).read_bytes() == p.read_bytes(), p.name


def test_customers_files(made: dict[str, Split]) -> None:
    split = made["customers"]
    assert (split.target, split.kind) == ("churned", "classification")
    files = [*split.members, split.test]
    header, _ = read(split.test)
    assert set(header) == {
        "customer_id",
        "age",
        "income",
        "tenure_months",
        "monthly_spend",
        "support_calls",
        "plan",
        "region",
        "channel",
        "churned",
    }
    ids = [i for p in files for i in column(p, "customer_id")]
    assert len(ids) == 6000 and len(set(ids)) == 6000
    assert all(len(i) == 7 and i[0] == "C" and i[1:].isdigit() for i in ids)
    assert 1100 <= len(read(split.test)[1]) <= 1300

    ages = [float(v) for p in files for v in column(p, "age") if v not in MISSING]
    assert min(ages) >= 18 and max(ages) <= 90
    calls = [v for p in files for v in column(p, "support_calls") if v not in MISSING]
    assert all(v.isdigit() for v in calls)
    assert {v for v in column(split.members[0], "plan") if v not in MISSING} == set(companies.PLANS)

    churn = [np.mean([v == "yes" for v in column(p, "churned")]) for p in files]
    assert all(set(column(p, "churned")) == {"yes", "no"} for p in files)
    assert 0.22 <= churn[-1] <= 0.38  # the test set: ~30% churn
    assert max(churn[:-1]) - min(churn[:-1]) > 0.2  # label skew

    income = [
        np.median([float(v) for v in column(p, "income") if v not in MISSING])
        for p in split.members
    ]
    assert income[1] > 1.4 * max(income[0], income[2])  # member 2's customers earn more


def test_customers_missing_cells(made: dict[str, Split]) -> None:
    split = made["customers"]
    for p in [*split.members, split.test]:
        header, rows = read(p)
        found = {v for r in rows for v in r if v in MISSING}
        assert found == MISSING, p.name  # empty, NA and NaN all occur
        features = [i for i, n in enumerate(header) if n not in ("customer_id", "churned")]
        missing = sum(r[i] in MISSING for r in rows for i in features)
        assert 0.03 <= missing / (len(features) * len(rows)) <= 0.05
        columns_with_gaps = {header[i] for r in rows for i in features if r[i] in MISSING}
        assert len(columns_with_gaps) >= 5
        assert all(r[0] and r[-1] for r in rows)


def test_customers_test_set_has_an_unseen_region(made: dict[str, Split]) -> None:
    split = made["customers"]
    seen = {v for p in split.members for v in column(p, "region")}
    unseen = {v for v in column(split.test, "region")} - seen
    assert unseen == {companies.UNSEEN_REGION}
    assert column(split.test, "region").count(companies.UNSEEN_REGION) >= 3


def test_customers_parquet_holds_member1(made: dict[str, Split]) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    split = made["customers"]
    table = pq.read_table(split.test.parent / "member1.parquet")
    header, rows = read(split.members[0])
    assert table.column_names == header
    assert all(str(t) == "string" for t in table.schema.types)
    assert [list(r.values()) for r in table.to_pylist()] == rows


def _encode(
    files: list[Path], stats: dict[str, tuple[float, float]], levels: dict[str, list[str]]
) -> tuple[np.ndarray, np.ndarray]:
    numeric = ["age", "income", "tenure_months", "monthly_spend", "support_calls"]
    parts = []
    for name in numeric:
        vals = np.array(
            [np.nan if v in MISSING else float(v) for p in files for v in column(p, name)]
        )
        if name not in stats:
            stats[name] = (float(np.nanmean(vals)), float(np.nanstd(vals)))
        mean, sd = stats[name]
        parts.append(((np.where(np.isnan(vals), mean, vals) - mean) / sd)[:, None])
    for name in ("plan", "region", "channel"):
        texts = [v for p in files for v in column(p, name)]
        levels.setdefault(name, sorted(set(texts) - MISSING))
        parts.append(np.array([[v == level for level in levels[name]] for v in texts], float))
    y = np.array([v == "yes" for p in files for v in column(p, "churned")])
    return np.hstack(parts), y


def test_customers_are_learnable_but_not_trivial(made: dict[str, Split]) -> None:
    from sklearn.linear_model import LogisticRegression

    split = made["customers"]
    stats: dict[str, tuple[float, float]] = {}
    levels: dict[str, list[str]] = {}
    x, y = _encode(list(split.members), stats, levels)
    tx, ty = _encode([split.test], stats, levels)
    accuracy = LogisticRegression(max_iter=1000).fit(x, y).score(tx, ty)
    assert 0.72 <= accuracy <= 0.90
    assert accuracy > max(ty.mean(), 1 - ty.mean()) + 0.05  # well above the majority class


def test_customers_parquet_is_written_with_member_1_only(tmp_path: Path) -> None:
    split = companies.customers(tmp_path, members=2, rows=1000)
    assert len(split.members) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "member1.csv",
        "member1.parquet",
        "member2.csv",
        "test.csv",
    ]


def test_diabetes_files(made: dict[str, Split]) -> None:
    split = made["diabetes"]
    assert (split.target, split.kind) == ("progression", "regression")
    header, _ = read(split.test)
    assert header == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "progression"]
    files = [*split.members, split.test]
    assert sum(len(read(p)[1]) for p in files) == 442
    assert 105 <= len(read(split.test)[1]) <= 115
    for p in files:
        assert set(column(p, "sex")) - {""} == {"female", "male"}
        assert all(float(v) > 0 for v in column(p, "progression"))
    _, rows = read(split.test)
    assert all(v for r in rows for v in r)

    for p in split.members:
        _, rows = read(p)
        blanks = sum(v == "" for r in rows for v in r[:-1])
        assert 0.01 <= blanks / (10 * len(rows)) <= 0.03

    # feature skew on bmi, with overlapping ranges; the target follows
    bmi = [[float(v) for v in column(p, "bmi") if v] for p in split.members]
    assert np.mean(bmi[0]) < np.mean(bmi[1]) < np.mean(bmi[2])
    for a, b in itertools.pairwise(bmi):
        assert max(a) > min(b)  # neighbours overlap
    target = [np.mean([float(v) for v in column(p, "progression")]) for p in split.members]
    assert max(target) - min(target) > 30


def test_cli_writes_and_prints_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert companies.main(["wine", str(tmp_path / "w"), "--members", "2", "--seed", "4"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "w" / n) for n in ("member1.csv", "member2.csv", "test.csv")]
    assert all(Path(p).is_file() for p in printed)


def test_impossible_member_counts_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        companies.wine(tmp_path, members=0)
    with pytest.raises(UserError, match="at most 8"):
        companies.wine(tmp_path, members=9)
    assert companies.main(["diabetes", str(tmp_path), "--members", "40"]) == 2


def test_one_member_gets_everything_but_the_test_set(tmp_path: Path) -> None:
    split = companies.wine(tmp_path, members=1)
    assert len(read(split.members[0])[1]) + len(read(split.test)[1]) == 178
