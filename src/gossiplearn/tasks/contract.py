"""The task contract: what every member of a consortium agrees on before any model is merged.

A contract names the feature columns in order (each ``numeric`` or ``categorical`` with its
category list), the target (``classification`` with its ordered classes, or ``regression``),
how missing cells are handled and the model (kind and widths). One member writes it once from a
sample (``gossiplearn task init``), reviews it, and sends the same file to every member, like
the consortium key; each member then trains on its own data through it.

Invariants:
- ``TaskContract.digest`` is a SHA-256 over the contract's canonical content (msgpack of plain
  values, every map written as a list of [key, value] pairs sorted by key): comments, key
  order and formatting of the file do not change it; any change of meaning does. Two peers
  merge only when their digests are equal.
- ``load_contract`` raises ``UserError`` naming the file and the key for anything invalid; a
  contract that loads is internally consistent (unique columns, at least one feature, two or
  more classes for classification, a target that is not a feature).
- Built-in and custom tasks carry an *identity* (a plain mapping) hashed the same way
  (``identity_digest``), so two different tasks never merge, whatever their shapes.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from gossiplearn.errors import UserError

FORMAT = 1
KINDS = ("classification", "regression")
FEATURE_KINDS = ("numeric", "categorical")
MODELS = ("linear", "mlp")  # "logistic" is read as "linear" (a linear model on any target)
MISSING_POLICIES = ("impute", "refuse")
DEFAULT_MISSING = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "?")
MAX_CATEGORIES = 1000  # per column: one input per category, so a key column would blow up


@dataclass(frozen=True, slots=True)
class Feature:
    """One input column. A categorical column is one-hot encoded over ``categories`` plus one
    *other* slot for any value the contract does not list."""

    column: str
    kind: str = "numeric"
    categories: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        """Model inputs this column takes: 1, or one per category plus the other slot."""
        return 1 if self.kind == "numeric" else len(self.categories) + 1


@dataclass(frozen=True, slots=True)
class Target:
    column: str
    kind: str = "classification"
    classes: tuple[str, ...] = ()  # classification: output i is classes[i]

    @property
    def outputs(self) -> int:
        return len(self.classes) if self.kind == "classification" else 1


@dataclass(frozen=True, slots=True)
class ModelSpec:
    kind: str = "linear"
    hidden: tuple[int, ...] = ()  # mlp: the hidden layers' widths (none for linear)

    def describe(self, inputs: int, outputs: int) -> str:
        if self.kind == "linear":
            return f"linear {inputs}-{outputs}"
        return "MLP " + "-".join(str(w) for w in (inputs, *self.hidden, outputs))


@dataclass(frozen=True, slots=True)
class Missing:
    """Which cells are missing, and what happens to them: ``impute`` (numeric: the consortium
    mean; categorical: the consortium's category frequencies), or ``refuse`` the file."""

    values: tuple[str, ...] = DEFAULT_MISSING
    policy: str = "impute"


@dataclass(frozen=True, slots=True)
class TaskContract:
    name: str
    features: tuple[Feature, ...]
    target: Target
    model: ModelSpec = field(default_factory=ModelSpec)
    missing: Missing = field(default_factory=Missing)

    @property
    def inputs(self) -> int:
        """Width of the encoded input row (``Feature.width`` summed)."""
        return sum(f.width for f in self.features)

    @property
    def kind(self) -> str:
        return self.target.kind

    def canonical(self) -> dict[str, Any]:
        """The contract's meaning as plain values: what ``digest`` hashes."""
        return {
            "format": FORMAT,
            "name": self.name,
            "features": [[f.column, f.kind, list(f.categories)] for f in self.features],
            "target": {
                "column": self.target.column,
                "kind": self.target.kind,
                "classes": list(self.target.classes),
            },
            "model": {"kind": self.model.kind, "hidden": list(self.model.hidden)},
            "missing": {"values": list(self.missing.values), "policy": self.missing.policy},
        }

    @property
    def digest(self) -> bytes:
        return identity_digest(self.canonical())

    def describe(self) -> str:
        target = (
            f"{self.target.column} ({len(self.target.classes)} classes)"
            if self.kind == "classification"
            else f"{self.target.column} (regression)"
        )
        return (
            f"{self.name}: {len(self.features)} columns → {target}, "
            f"{self.model.describe(self.inputs, self.target.outputs)}"
        )


def identity_digest(identity: Mapping[str, Any]) -> bytes:
    """SHA-256 of a task identity (plain values: str, int, float, bool, lists, str-keyed maps)
    in a canonical msgpack form (maps with sorted keys)."""
    return hashlib.sha256(msgpack.packb(_canon(identity), use_bin_type=True)).digest()


def short(digest: bytes) -> str:
    """The first 12 hex digits of a digest, as status and messages show it."""
    return digest.hex()[:12] if digest else "none"


def _canon(value: Any) -> Any:
    if isinstance(value, Mapping):
        return [[str(k), _canon(value[k])] for k in sorted(value, key=str)]
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return repr(value)  # msgpack holds 64-bit integers
    if isinstance(value, bool | int | str | bytes) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return repr(value)


# ---------------------------------------------------------------------------------- reading


def load_contract(path: Path) -> TaskContract:
    """Read and check a contract file. Raises ``UserError`` naming the file and the key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"task contract {path} does not exist; make one with `gossiplearn task init "
            "--data SAMPLE.csv --target COLUMN --out task.toml` (one member, once) and give "
            "every member the same file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read task contract {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"task contract {path} is not valid TOML: {exc}") from None
    return contract_from_mapping(data, str(path))


def contract_from_mapping(data: Mapping[str, Any], where: str) -> TaskContract:
    reader = _Reader(where)
    known = {"task", "target", "model", "missing", "features"}
    for key in data:
        if key not in known:
            reader.fail(key, f"unknown; a contract has {', '.join(sorted(known))}")
    task = reader.table(data, "task", keys={"name", "format"})
    fmt = task.get("format", FORMAT)
    if isinstance(fmt, bool) or fmt != FORMAT:
        reader.fail("task.format", f"is {fmt!r}; this gossiplearn reads format {FORMAT}")
    name = reader.text(task, "task.name", task.get("name"))

    t = reader.table(data, "target", keys={"column", "kind", "classes"})
    kind = reader.choice("target.kind", t.get("kind", "classification"), KINDS)
    target = Target(
        column=reader.text(t, "target.column", t.get("column")),
        kind=kind,
        classes=reader.names("target.classes", t.get("classes", [])),
    )
    if kind == "classification" and len(target.classes) < 2:
        reader.fail("target.classes", "needs at least two classes, in output order")
    if kind == "regression" and target.classes:
        reader.fail("target.classes", "is for classification; remove it for regression")

    m = reader.table(data, "model", required=False, keys={"kind", "hidden"})
    model_kind = m.get("kind", "linear")
    model_kind = "linear" if model_kind == "logistic" else model_kind
    reader.choice("model.kind", model_kind, MODELS)
    hidden = m.get("hidden", [64])
    if model_kind == "mlp" and (
        not isinstance(hidden, list)
        or not hidden
        or not all(
            isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 65536 for w in hidden
        )
    ):
        reader.fail("model.hidden", f"= {hidden!r}: expected a list of widths, e.g. [64]")
    model = ModelSpec(kind=model_kind, hidden=tuple(hidden) if model_kind == "mlp" else ())

    mi = reader.table(data, "missing", required=False, keys={"values", "policy"})
    missing = Missing(
        values=reader.names("missing.values", mi.get("values", list(DEFAULT_MISSING)), empty=True),
        policy=reader.choice("missing.policy", mi.get("policy", "impute"), MISSING_POLICIES),
    )

    raw = data.get("features")
    if not isinstance(raw, list) or not raw:
        raise UserError(f"task contract {where}: features needs at least one [[features]] entry")
    features = []
    for i, item in enumerate(raw, start=1):
        key = f"features[{i}]"
        if not isinstance(item, Mapping):
            reader.fail(key, "must be a table")
        extra = set(item) - {"column", "kind", "categories"}
        if extra:
            reader.fail(f"{key}.{sorted(extra)[0]}", "unknown; use column, kind, categories")
        fkind = reader.choice(f"{key}.kind", item.get("kind", "numeric"), FEATURE_KINDS)
        categories = reader.names(f"{key}.categories", item.get("categories", []))
        if fkind == "numeric" and categories:
            reader.fail(f"{key}.categories", "is for categorical columns only")
        if fkind == "categorical" and not categories:
            reader.fail(f"{key}.categories", "a categorical column needs its category list")
        shadowed = sorted(set(categories) & {v.strip() for v in missing.values})
        if shadowed:
            reader.fail(
                f"{key}.categories", f"lists {shadowed[0]!r}, which missing.values reads as missing"
            )
        if len(categories) > MAX_CATEGORIES:
            reader.fail(f"{key}.categories", f"has {len(categories)}; at most {MAX_CATEGORIES}")
        features.append(
            Feature(reader.text(item, f"{key}.column", item.get("column")), fkind, categories)
        )
    shadowed = sorted(set(target.classes) & {v.strip() for v in missing.values})
    if shadowed:
        reader.fail(
            "target.classes", f"lists {shadowed[0]!r}, which missing.values reads as missing"
        )
    columns = [f.column for f in features]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        reader.fail("features", f"column {dupes[0]!r} is listed twice")
    if target.column in columns:
        reader.fail("target.column", f"{target.column!r} is also a feature")
    return TaskContract(name, tuple(features), target, model, missing)


class _Reader:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, why: str) -> Any:
        raise UserError(f"task contract {self.where}: {key} {why}")

    def table(
        self, data: Mapping[str, Any], key: str, *, keys: set[str], required: bool = True
    ) -> Mapping[str, Any]:
        """The table ``[key]``, holding no keys but ``keys``."""
        value = data.get(key)
        if value is None and not required:
            return {}
        if not isinstance(value, Mapping):
            raise UserError(f"task contract {self.where}: [{key}] is missing or not a table")
        unknown = sorted(set(value) - keys)
        if unknown:
            self.fail(f"{key}.{unknown[0]}", f"is unknown; [{key}] has {', '.join(sorted(keys))}")
        return value

    def text(self, table: Mapping[str, Any], key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"= {value!r}: expected a non-empty string")
        return str(value)

    def choice(self, key: str, value: Any, allowed: Sequence[str]) -> str:
        if value not in allowed:
            self.fail(key, f"= {value!r}: expected one of {', '.join(allowed)}")
        return str(value)

    def names(self, key: str, value: Any, empty: bool = False) -> tuple[str, ...]:
        """A list of distinct strings. Unless ``empty`` (the missing tokens), each must be
        non-empty and without surrounding spaces: cells are compared after trimming."""
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, f"= {value!r}: expected a list of strings")
        if len(set(value)) != len(value):
            self.fail(key, "lists a value twice")
        if not empty and any(not v.strip() or v != v.strip() for v in value):
            bad = next(v for v in value if not v.strip() or v != v.strip())
            self.fail(key, f"holds {bad!r}: names must be non-empty, without surrounding spaces")
        return tuple(value)


# ---------------------------------------------------------------------------------- writing


def _q(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's; TOML also forbids a raw DEL)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _list(values: Sequence[str], indent: str = "", width: int = 96) -> str:
    items = [_q(v) for v in values]
    line = "[" + ", ".join(items) + "]"
    if len(indent) + len(line) <= width:
        return line
    body = "".join(f"{indent}  {item},\n" for item in items)
    return "[\n" + body + indent + "]"


def render_contract(
    contract: TaskContract, header: Sequence[str] = (), notes: Sequence[str] = ()
) -> str:
    """The contract as a commented TOML file (``load_contract`` reads it back to an equal
    contract). ``header`` lines open the file as comments; ``notes`` follow the features."""
    lines = [f"# {h}" if h else "#" for h in header]
    if lines:
        lines.append("")
    t = contract.target
    lines += [
        "# gossiplearn task contract. Every member uses this same file, unchanged: peers check",
        "# its hash before merging and refuse a peer with another contract. Review it (column",
        "# kinds, categories, classes, model) before you send it to the other members; comments",
        "# and formatting do not change the hash.",
        "",
        "[task]",
        f"name = {_q(contract.name)}",
        f"format = {FORMAT}",
        "",
        "[target]",
        f"column = {_q(t.column)}",
        f'kind = "{t.kind}"  # classification | regression',
    ]
    if t.kind == "classification":
        lines.append(
            "# Output i of the model is classes[i]; a row with a class not listed is refused."
        )
        lines.append(f"classes = {_list(t.classes)}")
    lines += [
        "",
        "[model]",
        "# linear: logistic regression for classes, least squares for a quantity; mlp: a",
        "# network with the hidden layers' widths in hidden.",
        f'kind = "{contract.model.kind}"',
    ]
    hidden = ", ".join(str(w) for w in contract.model.hidden or (64,))
    lines.append(("" if contract.model.kind == "mlp" else "# ") + f"hidden = [{hidden}]")
    lines += [
        "",
        "[missing]",
        "# Cells holding one of these (after trimming spaces) are missing. impute: numeric cells",
        "# get the consortium mean, categorical ones the consortium's category frequencies (both",
        "# computed by gossip over every member's data); refuse: a file with a missing cell is",
        "# refused, naming the row and column.",
        f"values = {_list(contract.missing.values)}",
        f'policy = "{contract.missing.policy}"',
        "",
        "# The feature columns, in model input order. numeric: standardised with the consortium's",
        "# mean and deviation. categorical: one input per category, plus one for any other value",
        "# (counted in status, never an error). Columns of a file not listed here are ignored.",
    ]
    for f in contract.features:
        lines += ["", "[[features]]", f"column = {_q(f.column)}", f'kind = "{f.kind}"']
        if f.kind == "categorical":
            lines.append(f"categories = {_list(f.categories)}")
    if notes:
        lines.append("")
        lines += [f"# {n}" for n in notes]
    return "\n".join(lines) + "\n"
