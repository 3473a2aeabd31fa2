"""Realistic, skewed per-company data files for the walk-through, the benchmarks and the tests.

Each generator writes ``member1.csv`` … ``memberN.csv`` (one file per consortium member) and a
held-out ``test.csv`` into a folder and returns a ``Split`` naming them. Nothing is downloaded:
``wine`` and ``diabetes`` use scikit-learn's bundled copies of two public data sets,
``customers`` is synthetic (seeded numpy).

- ``wine``: 178 wines, 13 numeric features, target ``cultivar`` (``barolo`` / ``grignolino`` /
  ``barbera``). Stratified 25% test set; members get label skew (per class, Dirichlet(0.8)
  shares over members) and feature skew (member 2 is drawn toward high ``alcohol``);
  ~2% empty feature cells in the member files.
- ``customers``: synthetic churn data (``churned`` = ``yes`` / ``no``, ~30% yes) with numeric,
  categorical text and ID columns, ~4% missing cells written as a mix of empty, ``NA`` and
  ``NaN`` (test set too), members of sizes ~55/30/15%, different plan/region/channel mixes, a
  richer member 2 (member 1 of two) and a churn-prone last member; the test set has a few
  rows from a region no member file holds (``antarctica``). ``member1.parquet`` repeats
  member 1 with every column stored as text, so the missing-cell tokens survive as written.
- ``diabetes``: 442 patients, 10 features, numeric target ``progression`` (unscaled values,
  ``sex`` as ``female`` / ``male``). Uniform 25% test set; members cover overlapping ranges
  of ``bmi`` (cut on a noisy ``bmi`` rank), ~2% empty feature cells in the member files.

Invariants:
- Deterministic: the same arguments give the same bytes (rows are drawn from one seeded
  ``numpy.random.Generator`` in a fixed order; CSV is written by ``csv`` with ``\\n`` endings).
- Members and test set are disjoint and, for ``wine`` and ``diabetes``, together hold every
  source row exactly once. Member sizes are unequal: pairwise different for ``wine`` and
  ``diabetes`` (a member count that cannot give that is a ``UserError``), geometric shares
  (55/30/15% for three) for ``customers``.
- Missing cells are only in feature columns, never in the target or ``customer_id``.
- Numbers are written compactly: the shortest text that reads back as the same float
  (``14.23``, ``1065``), rounded to the source's precision for synthetic columns.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_diabetes, load_wine

from gossiplearn.errors import UserError

CLASSIFICATION = "classification"
REGRESSION = "regression"

#: The three cultivars of the UCI wine data (Forina et al.), in the order of its class labels.
CULTIVARS = ("barolo", "grignolino", "barbera")
#: ``load_diabetes(scaled=False)`` codes sex as 1 or 2 without saying which is which; this is
#: the mapping these files use, fixed so every file (and every seed) agrees.
SEXES = {1: "female", 2: "male"}
PLANS = ("basic", "plus", "premium", "enterprise")
REGIONS = ("north", "south", "east", "west", "central", "islands")
CHANNELS = ("web", "store", "phone", "partner")
UNSEEN_REGION = "antarctica"
MISSING_TOKENS = ("", "NA", "NaN")

WINE_MIN_ROWS = 12  # every wine member file has at least this many rows
_MAX_DRAWS = 10_000


@dataclass(frozen=True, slots=True)
class Split:
    """The files one generator wrote: one per member, the held-out test set, and the target."""

    members: tuple[Path, ...]
    test: Path
    target: str
    kind: str  # "classification" | "regression"


# -- writing ----------------------------------------------------------------------------------


def number(value: float) -> str:
    """Shortest text that reads back as ``value`` (no exponent, no trailing ``.0``);
    ``""`` for NaN."""
    if np.isnan(value):
        return ""
    text = np.format_float_positional(value, trim="-")
    return "0" if text == "-0" else text


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _column_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _check_members(members: int) -> None:
    if members < 1:
        raise UserError(f"--members must be at least 1, not {members}")


def _unequal_shares(members: int, smallest: float) -> np.ndarray:
    """Geometric shares, largest first, the last ``smallest`` times the first (3 members and
    ``smallest=0.3025``: 55/30/15%)."""
    if members == 1:
        return np.ones(1)
    weights = smallest ** (np.arange(members) / (members - 1))
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def _sizes(total: int, shares: np.ndarray) -> list[int]:
    """``total`` cut by ``shares`` into integers that sum to ``total``."""
    cuts = np.rint(np.cumsum(shares) * total).astype(np.int64)
    return [int(n) for n in np.diff(np.concatenate([[0], cuts]))]


def _blank_cells(rng: np.random.Generator, cells: np.ndarray, fraction: float) -> None:
    """Empty ``round(fraction * cells.size)`` cells of a string array, chosen uniformly."""
    count = round(fraction * cells.size)
    flat = rng.choice(cells.size, size=count, replace=False)
    cells.reshape(-1)[flat] = ""


# -- wine ---------------------------------------------------------------------------------------


def _stratified_test(
    rng: np.random.Generator, labels: np.ndarray, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[: round(fraction * len(idx))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def _wine_counts(rng: np.random.Generator, class_sizes: Sequence[int], members: int) -> np.ndarray:
    """counts[c, m]: rows of class c member m gets; per class Dirichlet(0.8) shares, re-drawn
    until every member has at least WINE_MIN_ROWS rows and the member sizes differ."""
    rows = sum(class_sizes)
    fits = [m for m in range(1, rows + 1) if m * WINE_MIN_ROWS + m * (m - 1) // 2 <= rows]
    if members > max(fits):
        raise UserError(
            f"the wine training rows ({rows}) cannot give {members} members different sizes of "
            f"at least {WINE_MIN_ROWS} rows: use at most {max(fits)} members"
        )
    alpha = 0.8
    for attempt in range(_MAX_DRAWS):
        if attempt and attempt % 500 == 0:
            alpha *= 1.5  # many members: skew less rather than loop for ever
        counts = np.zeros((len(class_sizes), members), dtype=np.int64)
        for c, n in enumerate(class_sizes):
            counts[c] = _sizes(n, rng.dirichlet(np.full(members, alpha)))
        totals = counts.sum(axis=0)
        if totals.min() >= WINE_MIN_ROWS and len(set(totals.tolist())) == members:
            return counts
    raise UserError(f"could not cut the wine data into {members} members; use fewer")


def wine(out_dir: Path, members: int = 3, seed: int = 0) -> Split:
    """scikit-learn's wine data cut into ``members`` label- and feature-skewed files."""
    _check_members(members)
    data = load_wine()
    x = np.asarray(data.data, dtype=np.float64)
    y = np.asarray(data.target, dtype=np.int64)
    header = [_column_name(str(name)) for name in data.feature_names] + ["cultivar"]
    alcohol = header.index("alcohol")
    rng = np.random.default_rng(seed)

    train_idx, test_idx = _stratified_test(rng, y, 0.25)
    classes = np.unique(y)
    by_class = [train_idx[y[train_idx] == c] for c in classes]
    counts = _wine_counts(rng, [len(idx) for idx in by_class], members)

    high_alcohol = 1 if members > 1 else 0  # member 2 leans toward strong wines
    spread = 0.3 * float(np.std(x[:, alcohol]))
    parts: list[list[int]] = [[] for _ in range(members)]
    for c, idx in enumerate(by_class):
        noisy = x[idx, alcohol] + rng.normal(0.0, spread, len(idx))
        order = idx[np.argsort(-noisy, kind="stable")]
        take = int(counts[c, high_alcohol])
        parts[high_alcohol].extend(int(i) for i in order[:take])
        others = [m for m in range(members) if m != high_alcohol]
        if not others:
            continue
        rest = rng.permutation(order[take:])
        cuts = np.cumsum([counts[c, m] for m in others])[:-1]
        for m, chunk in zip(others, np.split(rest, cuts), strict=True):
            parts[m].extend(int(i) for i in chunk)

    def rows(indices: np.ndarray, blank: float) -> list[list[str]]:
        cells = np.array([[number(v) for v in x[i]] for i in indices], dtype=object)
        if blank:
            _blank_cells(rng, cells, blank)
        return [[*map(str, cells[r]), CULTIVARS[y[i]]] for r, i in enumerate(indices)]

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for m, part in enumerate(parts):
        indices = rng.permutation(np.array(part, dtype=np.int64))
        paths.append(_write_csv(out_dir / f"member{m + 1}.csv", header, rows(indices, 0.02)))
    test = _write_csv(out_dir / "test.csv", header, rows(rng.permutation(test_idx), 0.0))
    return Split(tuple(paths), test, "cultivar", CLASSIFICATION)


# -- customers ----------------------------------------------------------------------------------

_PLAN_PRICE = np.array([19.0, 39.0, 69.0, 149.0])  # typical monthly spend of each plan
_CUSTOMER_HEADER = (
    "customer_id",
    "age",
    "region",
    "plan",
    "channel",
    "income",
    "tenure_months",
    "monthly_spend",
    "support_calls",
    "churned",
)
#: Fraction of missing cells per column (mean over the 8 feature columns: ~4%).
_CUSTOMER_MISSING = {
    "age": 0.04,
    "region": 0.02,
    "plan": 0.01,
    "channel": 0.06,
    "income": 0.10,
    "tenure_months": 0.03,
    "monthly_spend": 0.05,
    "support_calls": 0.04,
}
_CHURN_RATE = 0.30
_CHURN_SCALE = 2.0  # sharpness of the churn model: sets how well the label can be predicted


def _pick(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """One category index per row of ``logits`` (rows × categories)."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    u = rng.random((len(p), 1))
    picked = (u > np.cumsum(p, axis=1)).sum(axis=1)
    return np.asarray(np.minimum(picked, p.shape[1] - 1), dtype=np.int64)


@dataclass(frozen=True, slots=True)
class _Customers:
    member: np.ndarray
    age: np.ndarray
    region: np.ndarray
    plan: np.ndarray
    channel: np.ndarray
    income: np.ndarray
    tenure: np.ndarray
    spend: np.ndarray
    calls: np.ndarray
    churned: np.ndarray


def _draw_customers(rng: np.random.Generator, sizes: Sequence[int]) -> _Customers:
    members = len(sizes)
    member = np.repeat(np.arange(members), sizes)
    n = len(member)
    # member 2 (member 1 of two): customers earn ~1.8× more; the last: churn-prone customers
    rich = 1 if members > 2 else members - 2
    churny = members - 1 if members > 1 else -1

    region_mix = rng.normal(0.0, 1.0, (members, len(REGIONS)))
    plan_mix = rng.normal(0.0, 0.8, (members, len(PLANS)))
    channel_mix = rng.normal(0.0, 0.6, (members, len(CHANNELS)))
    region_effect = rng.normal(0.0, 0.25, len(REGIONS))

    age = np.clip(np.rint(rng.normal(44.0, 15.0, n)), 18, 90)
    log_income = np.log(42.0) + 0.55 * rng.standard_normal(n)
    log_income += np.where(member == rich, np.log(1.8), 0.0)
    income = np.round(np.exp(log_income), 1)
    wealth = log_income - np.log(42.0)
    plan_logits = plan_mix[member] + np.outer(wealth, [-1.0, 0.0, 0.8, 1.2])
    plan_logits += np.array([0.6, 0.4, 0.0, -1.2])
    plan = _pick(rng, plan_logits)
    region = _pick(rng, region_mix[member])
    channel = _pick(rng, channel_mix[member] + np.array([0.5, 0.2, 0.0, -0.4]))
    tenure_scale = np.where(member == churny, 14.0, 28.0)
    tenure = np.clip(np.rint(rng.exponential(tenure_scale)), 0, 120)
    spend = np.round(_PLAN_PRICE[plan] * np.exp(rng.normal(0.0, 0.35, n)), 2)
    calls_rate = 0.8 + 0.6 * (plan == 3) + np.where(member == churny, 0.8, 0.0)
    calls = rng.poisson(calls_rate).astype(np.float64)

    # the churn model: nonlinear in tenure and age, plan × spend interaction, unobserved
    # per-member propensity; the intercept is solved so that ~30% churn
    overpay = np.log(spend / _PLAN_PRICE[plan])
    z = (
        1.6 * np.exp(-tenure / 10.0)
        - 0.02 * tenure
        + 0.45 * calls
        + np.where(plan <= 1, 1.8, -1.4) * overpay
        + np.array([0.35, 0.0, -0.25, -0.7])[plan]
        + np.array([0.3, -0.25, 0.0, 0.45])[channel]
        + 0.0008 * (age - 45.0) ** 2
        - 0.015 * (age - 45.0)
        - 0.5 * wealth
        + region_effect[region]
        + np.where(member == churny, 0.8, 0.0)
    ) * _CHURN_SCALE
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(z + mid)))) < _CHURN_RATE:
            lo = mid
        else:
            hi = mid
    churned = rng.random(n) < 1.0 / (1.0 + np.exp(-(z + lo)))
    return _Customers(member, age, region, plan, channel, income, tenure, spend, calls, churned)


def _customer_cells(rng: np.random.Generator, data: _Customers) -> np.ndarray:
    """The feature columns as text (rows × 8, in _CUSTOMER_HEADER order), with missing cells."""
    cols = {
        "age": [number(v) for v in data.age],
        "region": [REGIONS[i] for i in data.region],
        "plan": [PLANS[i] for i in data.plan],
        "channel": [CHANNELS[i] for i in data.channel],
        "income": [number(v) for v in data.income],
        "tenure_months": [number(v) for v in data.tenure],
        "monthly_spend": [number(v) for v in data.spend],
        "support_calls": [number(v) for v in data.calls],
    }
    n = len(data.member)
    for name, fraction in _CUSTOMER_MISSING.items():
        rows = rng.choice(n, size=round(fraction * n), replace=False)
        tokens = rng.integers(0, len(MISSING_TOKENS), len(rows))
        for r, t in zip(rows, tokens, strict=True):
            cols[name][r] = MISSING_TOKENS[t]
    return np.array([cols[name] for name in _CUSTOMER_HEADER[1:-1]], dtype=object).T


def customers(out_dir: Path, members: int = 3, seed: int = 0, rows: int = 6000) -> Split:
    """Synthetic churn data, ``rows`` rows in all, 20% of them in ``test.csv``."""
    _check_members(members)
    if rows < 50 * members:
        raise UserError(f"--rows must be at least 50 per member ({50 * members}), not {rows}")
    rng = np.random.default_rng(seed)
    sizes = _sizes(rows, _unequal_shares(members, 0.3025))
    data = _draw_customers(rng, sizes)
    cells = _customer_cells(rng, data)
    width = max(6, len(str(rows)))
    ids = [f"C{i:0{width}d}" for i in rng.permutation(rows) + 1]

    order = rng.permutation(rows)
    test_idx, train_idx = order[: round(0.2 * rows)], order[round(0.2 * rows) :]
    # a few test customers from a region no member has seen
    known = test_idx[~np.isin(cells[test_idx, 1], MISSING_TOKENS)]
    unseen = rng.choice(known, size=max(3, round(0.01 * len(test_idx))), replace=False)
    cells[unseen, 1] = UNSEEN_REGION

    def table(indices: np.ndarray) -> list[list[str]]:
        return [[ids[i], *map(str, cells[i]), "yes" if data.churned[i] else "no"] for i in indices]

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for m in range(members):
        part = np.sort(train_idx[data.member[train_idx] == m])
        part_rows = table(rng.permutation(part))
        paths.append(_write_csv(out_dir / f"member{m + 1}.csv", _CUSTOMER_HEADER, part_rows))
        if m == 0:
            _write_text_parquet(out_dir / "member1.parquet", _CUSTOMER_HEADER, part_rows)
    test = _write_csv(out_dir / "test.csv", _CUSTOMER_HEADER, table(np.sort(test_idx)))
    return Split(tuple(paths), test, "churned", CLASSIFICATION)


def _write_text_parquet(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Every column as a string column, cells exactly as in the CSV (``""``, ``NA``, ``NaN``)."""
    import pyarrow as pa  # noqa: PLC0415 - only the Parquet writer pays for importing it
    import pyarrow.parquet as pq  # noqa: PLC0415

    columns = {
        name: pa.array([r[j] for r in rows], type=pa.string()) for j, name in enumerate(header)
    }
    pq.write_table(pa.table(columns), path)


# -- diabetes -----------------------------------------------------------------------------------


def _diabetes_sizes(rows: int, members: int) -> list[int] | None:
    """Member sizes, largest first; None unless all differ and hold at least 10 rows."""
    sizes = _sizes(rows, _unequal_shares(members, 0.36))
    return sizes if min(sizes) >= 10 and len(set(sizes)) == members else None


def diabetes(out_dir: Path, members: int = 3, seed: int = 0) -> Split:
    """scikit-learn's diabetes data (unscaled), members cut on overlapping ``bmi`` ranges."""
    _check_members(members)
    data = load_diabetes(scaled=False)
    x = np.asarray(data.data, dtype=np.float64)
    y = np.asarray(data.target, dtype=np.float64)
    header = [_column_name(str(name)) for name in data.feature_names] + ["progression"]
    bmi, sex = header.index("bmi"), header.index("sex")
    n = len(y)
    rng = np.random.default_rng(seed)

    order = rng.permutation(n)
    test_idx, train_idx = order[: round(0.25 * n)], order[round(0.25 * n) :]
    noisy = x[train_idx, bmi] + rng.normal(0.0, 0.5 * float(np.std(x[:, bmi])), len(train_idx))
    by_bmi = train_idx[np.argsort(noisy, kind="stable")]
    sizes = _diabetes_sizes(len(train_idx), members)
    if sizes is None:
        most = max(m for m in range(1, members) if _diabetes_sizes(len(train_idx), m))
        raise UserError(f"the diabetes data is too small for {members} members: use at most {most}")
    parts = np.split(by_bmi, np.cumsum(sizes)[:-1])

    def rows(indices: np.ndarray, blank: float) -> list[list[str]]:
        cells = np.array([[number(v) for v in x[i]] for i in indices], dtype=object)
        cells[:, sex] = [SEXES[int(x[i, sex])] for i in indices]
        if blank:
            _blank_cells(rng, cells, blank)
        return [[*map(str, cells[r]), number(y[i])] for r, i in enumerate(indices)]

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for m, part in enumerate(parts):
        indices = rng.permutation(part)
        paths.append(_write_csv(out_dir / f"member{m + 1}.csv", header, rows(indices, 0.02)))
    test = _write_csv(out_dir / "test.csv", header, rows(np.sort(test_idx), 0.0))
    return Split(tuple(paths), test, "progression", REGRESSION)


# -- command line -------------------------------------------------------------------------------

GENERATORS: dict[str, Callable[[Path, int, int], Split]] = {
    "wine": wine,
    "customers": customers,
    "diabetes": diabetes,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gossiplearn.demo.companies",
        description="Write a skewed per-company data set: memberN.csv files and a test.csv.",
    )
    parser.add_argument("name", choices=sorted(GENERATORS), help="which data set")
    parser.add_argument("out_dir", type=Path, help="folder to write (created if needed)")
    parser.add_argument("--members", type=int, default=3, help="member files (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    try:
        split = GENERATORS[args.name](args.out_dir, args.members, args.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in split.members:
        print(path)
    if args.name == "customers":
        print(args.out_dir / "member1.parquet")
    print(split.test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
