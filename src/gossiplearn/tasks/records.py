"""Company files as a contract reads them: CSV and Parquet in, encoded rows out.

``read_table`` reads a file into text cells (a CSV with a header row, or a Parquet file);
``encode`` turns them into the model's raw input rows by the contract; ``infer_contract``
drafts a contract from a sample (``gossiplearn task init``).

The encoded row is what the model's preprocessing layer takes (``tasks.tabular``): a numeric
column is its value, NaN when missing; a categorical column is a one-hot block over the
contract's categories plus an *other* slot, all NaN when missing. Encoding needs no statistics,
so a file is encoded once; standardisation and imputation happen in the model with the
consortium's statistics.

Invariants:
- Every problem with a file is a ``UserError`` naming the file, the row (CSV line number, or
  Parquet row number) and the column, and saying what the contract expects.
- An unseen category never fails: it goes to the other slot and is counted. A missing cell is
  counted, and refused only under ``missing.policy = "refuse"``. A row without a target is
  skipped and counted when the target is needed.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gossiplearn.errors import UserError
from gossiplearn.tasks.contract import (
    DEFAULT_MISSING,
    MAX_CATEGORIES,
    Feature,
    Missing,
    ModelSpec,
    Target,
    TaskContract,
)

PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class RawTable:
    """A file's cells as text. ``rows[i]`` is at ``lines[i]`` (CSV line, or Parquet row)."""

    path: Path
    header: tuple[str, ...]
    rows: list[list[str]]
    lines: list[int]
    row_word: str = "line"  # how ``lines`` are named in messages

    def where(self, i: int) -> str:
        return f"{self.path}, {self.row_word} {self.lines[i]}"


def read_table(path: Path) -> RawTable:
    """Read a CSV (header row, comma-separated, UTF-8) or a Parquet file. ``UserError`` if it
    cannot be read."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _read_parquet(path)
    return _read_csv(path)


def _read_csv(path: Path) -> RawTable:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header_row = next(reader, None)
            if header_row is None:
                raise UserError(f"data file {path} is empty; it needs a header row and data rows")
            header = tuple(h.strip() for h in header_row)
            rows, lines = [], []
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise UserError(
                        f"{path}, line {reader.line_num}: {len(row)} fields, the header has "
                        f"{len(header)}"
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except FileNotFoundError:
        raise UserError(f"data file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"data file {path} is a folder, not a file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read data file {path} as UTF-8 CSV: {exc}") from None
    _check_header(path, header)
    return RawTable(path, header, rows, lines)


def _read_parquet(path: Path) -> RawTable:
    import pyarrow.parquet as pq  # noqa: PLC0415 - only Parquet users pay for importing it

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise UserError(f"data file {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types; all mean unreadable
        raise UserError(f"cannot read data file {path} as Parquet: {exc}") from None
    header = tuple(str(n) for n in table.column_names)
    _check_header(path, header)
    columns = [[_cell(v) for v in col.to_pylist()] for col in table.columns]
    rows = [list(r) for r in zip(*columns, strict=True)] if columns else []
    return RawTable(path, header, rows, list(range(1, len(rows) + 1)), "row")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))  # as a CSV writes it: 3, not 3.0 (class labels must match)
        return repr(value)
    return str(value)


def _check_header(path: Path, header: Sequence[str]) -> None:
    seen = set()
    for name in header:
        if name in seen:
            raise UserError(f"{path}: column {name!r} appears twice in the header")
        seen.add(name)


# ---------------------------------------------------------------------------------- encoding


@dataclass
class EncodeReport:
    """What encoding a file counted: rows kept, rows without a target, missing cells and
    values outside the contract's categories, per column."""

    rows: int = 0
    no_target: int = 0
    missing: Counter[str] = field(default_factory=Counter)
    other: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        parts = [f"{self.rows} rows"]
        if self.no_target:
            parts.append(f"{self.no_target} without a target skipped")
        if self.missing:
            parts.append(f"{sum(self.missing.values())} missing cells imputed")
        if self.other:
            parts.append(f"{sum(self.other.values())} unseen category values")
        return ", ".join(parts)


@dataclass(frozen=True)
class Encoded:
    features: np.ndarray  # float32 [rows, contract.inputs]; NaN marks missing
    targets: np.ndarray | None  # int64 class indices, or float32 values; None if not read
    report: EncodeReport
    lines: list[int]  # the source line (or row) of each kept row


def encode(table: RawTable, contract: TaskContract, *, need_target: bool) -> Encoded:
    """Encode ``table`` by ``contract``. ``need_target``: the target column must exist and rows
    without a target are skipped (training, evaluation); otherwise the target is not read at
    all (prediction: the column may be absent or hold anything)."""
    path = table.path
    index = {name: i for i, name in enumerate(table.header)}
    absent = [f.column for f in contract.features if f.column not in index]
    if absent:
        raise UserError(
            f"{path}: no column {absent[0]!r}, which the task contract lists as a feature "
            f"({len(absent)} missing: {', '.join(absent[:5])}); columns found: "
            f"{', '.join(table.header[:12])}"
        )
    target = contract.target
    has_target = need_target and target.column in index  # predictions ignore the target
    if need_target and target.column not in index:
        raise UserError(
            f"{path}: no target column {target.column!r} (columns: {', '.join(table.header[:12])})"
        )
    missing_values = frozenset(v.strip() for v in contract.missing.values)
    refuse_missing = contract.missing.policy == "refuse"
    report = EncodeReport()
    out = np.full((len(table.rows), contract.inputs), np.nan, dtype=np.float32)
    class_index = {c: i for i, c in enumerate(target.classes)}
    targets: list[float | int] = []
    kept: list[int] = []
    t_col = index.get(target.column)
    slots = [
        (f, index[f.column], {c: i for i, c in enumerate(f.categories)}) for f in contract.features
    ]
    row_out = 0
    for r, row in enumerate(table.rows):
        label: float | int | None = None
        if has_target and t_col is not None:
            cell = row[t_col].strip()
            if cell in missing_values:
                if need_target:
                    report.no_target += 1
                    continue
            elif target.kind == "classification":
                if cell not in class_index:
                    raise UserError(
                        f"{table.where(r)}: target {target.column!r} is {cell!r}, not one of the "
                        f"contract's classes {list(target.classes)[:10]}; fix the file, or add "
                        "the class to the contract (every member then needs the new contract)"
                    )
                label = class_index[cell]
            else:
                label = _number(cell, table, r, target.column, "the target")
        col = 0
        dest = out[row_out]
        for feature, source, categories in slots:
            cell = row[source].strip()
            if cell in missing_values:
                if refuse_missing:
                    raise UserError(
                        f"{table.where(r)}: column {feature.column!r} is missing ({cell!r}) and "
                        'the contract\'s missing.policy is "refuse"'
                    )
                report.missing[feature.column] += 1
            elif feature.kind == "numeric":
                dest[col] = _number(cell, table, r, feature.column, "a numeric column")
            else:
                dest[col : col + feature.width] = 0.0
                slot = categories.get(cell)
                if slot is None:
                    slot = len(feature.categories)
                    report.other[feature.column] += 1
                dest[col + slot] = 1.0
            col += feature.width
        if label is not None:
            targets.append(label)
        kept.append(table.lines[r])
        row_out += 1
    report.rows = row_out
    features = out[:row_out]
    labels: np.ndarray | None = None
    if has_target:
        dtype = np.int64 if target.kind == "classification" else np.float32
        labels = np.asarray(targets, dtype=dtype)
    return Encoded(features, labels, report, kept)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _number(cell: str, table: RawTable, r: int, column: str, what: str) -> float:
    try:
        if "_" in cell:  # Python's float() reads 1_000; a data file does not mean that
            raise ValueError(cell)
        value = float(cell)
    except ValueError:
        raise UserError(
            f"{table.where(r)}: column {column!r} holds {cell!r}, not a number "
            f"({what} in the task contract)"
        ) from None
    if not math.isfinite(value):
        raise UserError(f"{table.where(r)}: column {column!r} is not finite ({cell!r})")
    if abs(value) > FLOAT32_MAX:
        raise UserError(
            f"{table.where(r)}: column {column!r} holds {cell!r}, beyond what a float32 model "
            "input can hold; rescale the column"
        )
    return value


# ---------------------------------------------------------------------------------- inference


ID_SHARE = 0.5  # a text column with more distinct values than this share of rows is a key
CLASS_LIMIT = 20  # a numeric target with at most this many distinct integers may be classes


def infer_contract(
    table: RawTable,
    target: str,
    *,
    name: str,
    kind: str | None = None,
    model: ModelSpec | None = None,
    missing: Missing | None = None,
) -> tuple[TaskContract, list[str]]:
    """Draft a contract from a sample file: each column numeric if every present cell is a
    number, else categorical with the values seen; text columns that look like identifiers
    are left out. Returns the contract and notes for the reviewer."""
    if kind not in (None, "classification", "regression"):
        raise UserError(f"target kind {kind!r} is not valid: use classification or regression")
    missing = missing or Missing(DEFAULT_MISSING, "impute")
    absent = frozenset(v.strip() for v in missing.values)
    if target not in table.header:
        raise UserError(
            f"{table.path}: no column {target!r} for the target (columns: "
            f"{', '.join(table.header[:20])})"
        )
    if not table.rows:
        raise UserError(f"{table.path}: no data rows to infer a contract from")
    notes: list[str] = [f"Inferred from {table.path.name} ({len(table.rows)} rows)."]
    features: list[Feature] = []
    n = len(table.rows)
    for c, column in enumerate(table.header):
        if column == target:
            continue
        values = [row[c].strip() for row in table.rows]
        present = [v for v in values if v not in absent]
        if not present:
            notes.append(f"Left out {column!r}: every cell is missing in the sample.")
            continue
        if all(_is_number(v) for v in present):
            features.append(Feature(column, "numeric"))
            continue
        distinct = sorted(set(present))
        if len(distinct) > MAX_CATEGORIES or (len(distinct) > ID_SHARE * n and n >= 20):
            notes.append(
                f"Left out {column!r}: text with {len(distinct)} distinct values in {n} rows "
                "looks like an identifier or free text; add it as categorical if it is not."
            )
            continue
        features.append(Feature(column, "categorical", tuple(distinct)))
    if not features:
        raise UserError(f"{table.path}: no usable feature columns besides {target!r}")

    t = table.header.index(target)
    labels = [row[t].strip() for row in table.rows if row[t].strip() not in absent]
    if not labels:
        raise UserError(f"{table.path}: the target {target!r} is empty in every row")
    numeric = all(_is_number(v) for v in labels)
    if kind is None:
        few_integers = (
            numeric
            and len(set(labels)) <= CLASS_LIMIT
            and all(float(v).is_integer() for v in labels)
        )
        kind = "classification" if not numeric or few_integers else "regression"
        if numeric and few_integers:
            notes.append(
                f"The target {target!r} holds {len(set(labels))} distinct whole numbers: taken "
                "as classes. Use --kind regression if it is a quantity."
            )
    if kind == "regression":
        if not numeric:
            bad = next(v for v in labels if not _is_number(v))
            raise UserError(
                f"{table.path}: --kind regression needs a numeric target; {target!r} holds {bad!r}"
            )
        spec = Target(target, "regression")
    else:
        distinct_labels = set(labels)
        if len(distinct_labels) < 2:
            raise UserError(
                f"{table.path}: the target {target!r} holds one class only "
                f"({labels[0]!r}); a classifier needs at least two"
            )
        ordered = (
            sorted(distinct_labels, key=lambda v: (float(v), v))
            if numeric
            else sorted(distinct_labels)
        )
        spec = Target(target, "classification", tuple(ordered))
        notes.append(
            "Classes are those in the sample: add any class other members hold that the "
            "sample lacks, before sending the contract."
        )
    contract = TaskContract(name, tuple(features), spec, model or ModelSpec(), missing)
    return contract, notes


def _is_number(text: str) -> bool:
    if "_" in text:
        return False
    try:
        return abs(float(text)) <= FLOAT32_MAX
    except ValueError:
        return False
