"""Exports of a trained model for use outside gossiplearn: ONNX for inference, safetensors for
the weights.

``export_onnx`` writes a self-contained inference model. For a tabular task it takes *raw
records*, one graph input per contract column (``input_names``; ``onnx_inputs`` builds the feed
from a file), and carries everything between a company's file and a prediction inside the
graph: the contract's encoding (``tasks.records.encode``: one-hot over the categories plus the
*other* slot, missing cells marked), the consortium's preprocessing (``TabularModel``: impute,
then standardise) with the statistics' values baked in as constants, the network, and the
outputs (class probabilities and label, or the value on the target's scale). For any other task
it is the task's model on a ``features`` tensor, followed by a softmax for classification.
``export_safetensors`` writes the exchanged tensors with the task's identity as metadata.

Invariants:
- Tabular: onnxruntime on ``onnx_inputs(task, table)`` computes what ``task.outputs(model,
  encode(table).features)`` computes once the statistics the export was given are applied to
  the model. The graph is ``encode`` followed by ``TabularModel.forward``, with the same NaN
  marks and the same float32 fill, shift, scale and target scale, so the two differ only by
  kernel rounding (an ulp of float32 on the network's output).
- Other tasks: the graph is the model and a softmax, i.e. ``Task.outputs`` without a custom
  ``predict`` (which cannot be exported).
- A file is written whole or not at all: a temporary file in the same folder, then
  ``os.replace``. A model torch cannot export raises ``UserError`` and leaves nothing behind.
- The ONNX graph itself cannot strip spaces: categorical inputs must be stripped (as
  ``onnx_inputs`` does). A categorical cell is missing when it equals one of the contract's
  missing tokens (stripped); a numeric cell is missing when it is NaN.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import safetensors.torch
import torch
from onnx import TensorProto, compose, helper, numpy_helper
from torch import nn

import gossiplearn
from gossiplearn.errors import UserError
from gossiplearn.tasks.base import Task, task_identity
from gossiplearn.tasks.contract import TaskContract, identity_digest
from gossiplearn.tasks.records import RawTable
from gossiplearn.tasks.tabular import TabularModel, TabularStatistics

OPSET = 17  # the TorchScript exporter's reliable opset back to torch 2.2
ML_OPSET = 3  # ai.onnx.ml: LabelEncoder-2 (string keys → int64 values)
OUTPUTS = ("probabilities", "label", "value")  # graph outputs: no input may take these names
BATCH = "N"  # the symbolic row dimension every input and output shares


# ---------------------------------------------------------------------------------- ONNX


def export_onnx(task: Task, model: nn.Module, statistics: np.ndarray | None, path: Path) -> None:
    """Write ``model`` as an ONNX inference model to ``path``.

    ``statistics``: the consortium statistics vector the model is trained under (tabular task;
    None: the task's own sums, which ``build_model`` applies). Raises ``UserError`` when torch
    cannot export the model (suggesting ``--format safetensors``) or ``path`` cannot be
    written.
    """
    if task.contract is not None and isinstance(task.statistics, TabularStatistics):
        vector = _vector(task.statistics, statistics)
        proto = _tabular_onnx(task, task.contract, task.statistics, model, vector)
    else:
        proto = _plain_onnx(task, model)
    onnx.checker.check_model(proto, full_check=True)
    _write_atomic(path, proto.SerializeToString())


def input_names(contract: TaskContract) -> dict[str, str]:
    """The ONNX input name of each feature column (column → name): the column itself when it
    is an identifier, else with every other character replaced by ``_``; never one of
    ``OUTPUTS``, and unique (``_2``, ``_3``, ... appended)."""
    names: dict[str, str] = {}
    taken = set(OUTPUTS)
    for f in contract.features:
        base = re.sub(r"[^A-Za-z0-9_]", "_", f.column)
        if not base or base[0].isdigit():
            base = "_" + base
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        names[f.column] = name
    return names


def onnx_inputs(task: Task, table: RawTable) -> dict[str, np.ndarray]:
    """The feed for a tabular task's ONNX export from a raw table (``tasks.records.read_table``):
    per feature column, float32 [rows] with NaN for missing cells (numeric), or the stripped
    cells as strings [rows] (categorical). Raises ``UserError`` naming the file, row and column
    for a column that is absent or a numeric cell that is not a finite number."""
    contract = task.contract
    if contract is None:
        raise ValueError(f"task {task.name!r} has no contract; its ONNX input is `features`")
    index = {name: i for i, name in enumerate(table.header)}
    absent = [f.column for f in contract.features if f.column not in index]
    if absent:
        raise UserError(
            f"{table.path}: no column {absent[0]!r}, which the task contract lists as a feature "
            f"({len(absent)} missing: {', '.join(absent[:5])})"
        )
    missing = frozenset(v.strip() for v in contract.missing.values)
    names = input_names(contract)
    feed: dict[str, np.ndarray] = {}
    for f in contract.features:
        cells = [row[index[f.column]].strip() for row in table.rows]
        if f.kind == "categorical":
            feed[names[f.column]] = np.array(cells, dtype=object)
            continue
        values = np.full(len(cells), np.nan, dtype=np.float32)
        for r, cell in enumerate(cells):
            if cell not in missing:
                values[r] = _number(cell, table, r, f.column)
        feed[names[f.column]] = values
    return feed


def _number(cell: str, table: RawTable, r: int, column: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise UserError(
            f"{table.where(r)}: column {column!r} holds {cell!r}, not a number "
            "(a numeric column in the task contract)"
        ) from None
    if not np.isfinite(value):
        raise UserError(f"{table.where(r)}: column {column!r} is not finite ({cell!r})")
    return value


class _Graph:
    """Nodes and constants of a graph under construction; every name it makes starts with
    ``prefix`` (which holds a ``/``, so no sanitised input name can collide with it)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self._name(hint)
        self.constants.append(numpy_helper.from_array(value, name))
        return name

    def strings(self, hint: str, values: Sequence[str]) -> str:
        name = self._name(hint)
        self.constants.append(numpy_helper.from_array(np.array(list(values), dtype=object), name))
        return name

    def op(
        self,
        op: str,
        inputs: Sequence[str],
        *,
        out: str | None = None,
        domain: str = "",
        **attrs: Any,
    ) -> str:
        output = out or self._name(op)
        self.nodes.append(
            helper.make_node(
                op, list(inputs), [output], name=self._name(op), domain=domain, **attrs
            )
        )
        return output


def _tabular_onnx(
    task: Task,
    contract: TaskContract,
    stats: TabularStatistics,
    model: nn.Module,
    vector: np.ndarray,
) -> onnx.ModelProto:
    """``encode`` → ``TabularModel.forward`` (``model.net`` exported by torch) → outputs."""
    if not isinstance(model, TabularModel):
        raise TypeError(f"a tabular task's model is a TabularModel, not {type(model).__name__}")
    net = compose.add_prefix(
        _torch_onnx(task, model.net, torch.zeros(2, contract.inputs), "x", "y"), "net/"
    )
    pre, post = _Graph("pre/"), _Graph("post/")
    names = input_names(contract)
    inputs, encoded = _encode(pre, contract, names)
    # TabularModel.forward, with the statistics' values as float32 constants as in its buffers
    fill, shift, scale = (v.astype(np.float32) for v in stats.preprocessing(vector))
    filled = pre.op(
        "Where", [pre.op("IsNaN", [encoded]), pre.const("fill", fill), encoded], out="pre/filled"
    )
    centred = pre.op("Sub", [filled, pre.const("shift", shift)])
    pre.op("Div", [centred, pre.const("scale", scale)], out=net.graph.input[0].name)
    outputs = _decode(post, contract, stats.target_scale(vector), net.graph.output[0].name)

    graph = helper.make_graph(
        [*pre.nodes, *net.graph.node, *post.nodes],
        f"gossiplearn {contract.name}",
        inputs,
        outputs,
        [*pre.constants, *net.graph.initializer, *post.constants],
        doc_string=(
            "Raw records in, one input per contract column (metadata `inputs`: input → column). "
            "Strip categorical cells before feeding them."
        ),
        value_info=list(net.graph.value_info),
    )
    domains = {o.domain: o.version for o in net.opset_import}
    proto = _model(graph, domains={**domains, "ai.onnx.ml": ML_OPSET})
    _set_metadata(
        proto,
        task,
        model,
        {
            "contract": json.dumps(contract.canonical(), ensure_ascii=False),
            "contract_digest": contract.digest.hex(),
            "preprocessing": json.dumps(stats.describe(vector), ensure_ascii=False),
            "inputs": json.dumps({names[f.column]: f.column for f in contract.features}),
        },
    )
    return proto


def _encode(
    g: _Graph, contract: TaskContract, names: Mapping[str, str]
) -> tuple[list[onnx.ValueInfoProto], str]:
    """The graph inputs, and ``records.encode``'s row ([N, contract.inputs], NaN = missing)."""
    missing = sorted({v.strip() for v in contract.missing.values})
    axis1 = g.const("axis1", np.array([1], dtype=np.int64))
    nan = g.const("nan", np.array([np.nan], dtype=np.float32))
    inputs: list[onnx.ValueInfoProto] = []
    blocks: list[str] = []
    for f in contract.features:
        name = names[f.column]
        if f.kind == "numeric":
            doc = f"column {f.column!r}: NaN = missing"
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH], doc))
            blocks.append(g.op("Unsqueeze", [name, axis1]))
            continue
        doc = (
            f"column {f.column!r}, stripped: {len(f.categories)} categories, anything else is "
            f"other, missing: {missing}"
        )
        inputs.append(helper.make_tensor_value_info(name, TensorProto.STRING, [BATCH], doc))
        # category i → slot i, a missing token → slot `width` (out of range: an all-zero
        # one-hot row, then NaN as encode writes it), anything else → the other slot
        slots = {c: i for i, c in enumerate(f.categories)}
        slots.update({token: f.width for token in missing})  # as in encode: missing wins
        slot = g.op(
            "LabelEncoder",
            [name],
            domain="ai.onnx.ml",
            keys_strings=list(slots),
            values_int64s=list(slots.values()),
            default_int64=len(f.categories),
        )
        width = g.const("width", np.array(f.width, dtype=np.int64))
        off_on = g.const("off_on", np.array([0, 1], dtype=np.float32))
        onehot = g.op("OneHot", [slot, width, off_on], axis=1)
        absent = g.op("Unsqueeze", [g.op("Equal", [slot, width]), axis1])
        blocks.append(g.op("Where", [absent, nan, onehot]))
    return inputs, g.op("Concat", blocks, axis=1, out="pre/encoded")


def _decode(
    g: _Graph, contract: TaskContract, target_scale: tuple[float, float], logits: str
) -> list[onnx.ValueInfoProto]:
    """The graph outputs from the network's: probabilities and label, or the value."""
    if contract.kind == "classification":
        classes = contract.target.classes
        g.op("Softmax", [logits], out="probabilities", axis=1)
        best = g.op("ArgMax", [logits], axis=1, keepdims=0)
        g.op("Gather", [g.strings("classes", classes), best], out="label", axis=0)
        return [
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, [BATCH, len(classes)], "in classes order"
            ),
            helper.make_tensor_value_info(
                "label", TensorProto.STRING, [BATCH], "the most probable class"
            ),
        ]
    # TabularStatistics.values: out * y_scale + y_shift, in float32 as torch computes it
    y_shift, y_scale = (np.array(v, dtype=np.float32) for v in target_scale)
    flat = g.op("Reshape", [logits, g.const("rows", np.array([-1], dtype=np.int64))])
    scaled = g.op("Mul", [flat, g.const("y_scale", y_scale)])
    g.op("Add", [scaled, g.const("y_shift", y_shift)], out="value")
    doc = f"{contract.target.column}, on its own scale"
    return [helper.make_tensor_value_info("value", TensorProto.FLOAT, [BATCH], doc)]


class _Outputs(nn.Module):
    """A task's model followed by what ``Task.outputs`` does by default: a softmax over the
    classes; for regression the model's output, as [rows] when it has one column."""

    def __init__(self, model: nn.Module, classification: bool) -> None:
        super().__init__()
        self.model = model
        self.classification = classification

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(features)
        if self.classification:
            return torch.softmax(out, dim=1)
        return out.squeeze(-1) if out.dim() > 1 else out  # [rows, 1] → [rows]


def _plain_onnx(task: Task, model: nn.Module) -> onnx.ModelProto:
    classification = task.kind == "classification"
    output = "probabilities" if classification else "value"
    features = task.train.features
    example = features[:2] if len(features) >= 2 else torch.zeros(2, *features.shape[1:])
    proto = _torch_onnx(task, _Outputs(model, classification), example.float(), "features", output)
    proto.graph.doc_string = f"gossiplearn task {task.name!r}: float32 `features` → `{output}`"
    extra = {"kind": task.kind}
    if task.classes:
        extra["classes"] = json.dumps(list(task.classes), ensure_ascii=False)
    _set_metadata(proto, task, model, extra)
    return proto


def _torch_onnx(
    task: Task, module: nn.Module, example: torch.Tensor, input_name: str, output_name: str
) -> onnx.ModelProto:
    """``module`` as ONNX, traced on ``example`` with the first dimension symbolic.

    The TorchScript exporter: quick, quiet and at home with the small feed-forward models of
    gossiplearn. It traces; a trace that torch warns may be wrong (a tensor turned into a
    Python value: ``.numpy()``, ``.item()``, a branch on data) is refused rather than written,
    as is anything the exporter raises.
    """
    options: dict[str, Any] = {"dynamo": False} if _HAS_DYNAMO_FLAG else {}
    try:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(record=True) as seen:
            # the exporter's own deprecation notices are not the user's business, but a trace
            # torch cannot vouch for is an export we cannot vouch for
            warnings.simplefilter("always")
            file = Path(folder) / "model.onnx"
            torch.onnx.export(
                module,
                (example,),
                file,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: BATCH}, output_name: {0: BATCH}},
                opset_version=OPSET,
                do_constant_folding=True,
                **options,
            )
            doubts = [w for w in seen if issubclass(w.category, _TRACER_WARNING)]
            if doubts:
                raise _Untraceable(str(doubts[0].message))
            proto = onnx.load(file)
    except Exception as exc:  # the exporter raises anything; all of it means "cannot"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        kind = "the trace would be wrong" if isinstance(exc, _Untraceable) else type(exc).__name__
        raise UserError(
            f"cannot export the model of task {task.name!r} to ONNX: torch's exporter failed "
            f"({kind}: {reason[:300]}). ONNX needs a model torch can trace (no .numpy(), "
            ".item() or branches on tensor values in forward); export its weights instead "
            "with --format safetensors"
        ) from exc
    return proto


class _Untraceable(Exception):
    """torch traced the model but warned that the trace may not compute what forward does."""


_HAS_DYNAMO_FLAG = "dynamo" in inspect.signature(torch.onnx.export).parameters
_TRACER_WARNING: type[Warning] = torch.jit.TracerWarning  # type: ignore[attr-defined]


def _model(graph: onnx.GraphProto, domains: Mapping[str, int]) -> onnx.ModelProto:
    opsets = [helper.make_opsetid(domain, version) for domain, version in domains.items()]
    return helper.make_model(
        graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets)
    )


def _set_metadata(
    proto: onnx.ModelProto, task: Task, model: nn.Module, extra: Mapping[str, str]
) -> None:
    proto.producer_name = "gossiplearn"
    proto.producer_version = gossiplearn.__version__
    helper.set_model_props(proto, {**_identity(task, model), **extra})


# ---------------------------------------------------------------------------------- safetensors


def export_safetensors(
    task: Task, model: nn.Module, statistics: np.ndarray | None, path: Path
) -> None:
    """Write the exchanged tensors of ``model`` (every floating-point ``state_dict`` entry) to
    ``path`` as safetensors, with string metadata: ``gossiplearn_version``, ``task``,
    ``identity_digest`` (hex), ``statistics`` (JSON list of the sums vector, when given) and,
    for a tabular task, ``contract`` (JSON) and ``preprocessing`` (JSON: the values ``statistics``
    gives, or the task's own sums when it is None). Raises ``UserError`` if ``path`` cannot be
    written."""
    tensors = {
        name: t.detach().cpu().contiguous().clone()  # clone: no shared storage, as it requires
        for name, t in model.state_dict().items()
        if t.is_floating_point()
    }
    metadata = dict(_identity(task, model))
    if statistics is not None:
        metadata["statistics"] = json.dumps([float(v) for v in np.asarray(statistics).ravel()])
    if task.contract is not None and isinstance(task.statistics, TabularStatistics):
        vector = _vector(task.statistics, statistics)
        metadata["contract"] = json.dumps(task.contract.canonical(), ensure_ascii=False)
        metadata["preprocessing"] = json.dumps(task.statistics.describe(vector), ensure_ascii=False)
    _write_atomic(path, safetensors.torch.save(tensors, metadata=metadata))


# ---------------------------------------------------------------------------------- shared


def _identity(task: Task, model: nn.Module) -> dict[str, str]:
    return {
        "gossiplearn_version": gossiplearn.__version__,
        "task": task.name,
        "identity_digest": identity_digest(task_identity(task, model)).hex(),
    }


def _vector(stats: TabularStatistics, statistics: np.ndarray | None) -> np.ndarray:
    vector = stats.local if statistics is None else np.asarray(statistics, dtype=np.float64)
    if vector.shape != (stats.layout.size,):
        raise ValueError(f"{vector.size} statistics, the task's layout has {stats.layout.size}")
    return vector


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` whole or not at all (same-folder temporary file, then replace)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path}: {exc}") from None
        raise
