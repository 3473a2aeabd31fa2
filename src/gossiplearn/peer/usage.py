"""Using the learnt model: ``gossiplearn evaluate``, ``predict`` and ``export``.

``open_model`` finds the model to use: the running peer's latest (fetched from its
``model.sock``: a snapshot, training goes on undisturbed), else the ``model.glm`` a stopped
peer saved. It rebuilds the task from the home's configuration without the member's own data
(``TaskOptions.need_data``), with the contract given, else the one in peer.toml, else the copy
a peer started with ``--contract`` keeps in its home (``contract.toml``); checks that the saved
model belongs to that task (fingerprint and task digest) and loads its tensors and statistics
into a fresh model.

Invariants: nothing here writes to the home or talks to other peers; a model of another task
or architecture is refused with a ``UserError`` naming both.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gossiplearn.errors import UserError
from gossiplearn.gossip.messages import ModelOffer, fingerprint, short_digest, specs_of
from gossiplearn.peer.app import build_task
from gossiplearn.peer.home.config import with_overrides
from gossiplearn.peer.home.home import Home
from gossiplearn.peer.home.modelfile import parse_model_file
from gossiplearn.peer.status import fetch_model
from gossiplearn.tasks.base import Records, Task, task_identity
from gossiplearn.tasks.contract import identity_digest
from gossiplearn.tasks.scoring import classification_report, regression_report


@dataclass(frozen=True)
class UsableModel:
    task: Task
    model: nn.Module
    stats: np.ndarray | None  # the statistics the model is trained under (tabular)
    steps: int
    source: str  # "the running peer in HOME" or the model file's path


async def open_model(home: Home, overrides: Mapping[str, Any] | None = None) -> UsableModel:
    """The model of the peer in ``home``: running (latest), else saved. ``UserError`` if there
    is none, or if it does not belong to the configured task."""
    config = home.config(overrides)
    copy = home.contract_copy
    if (
        home.contract(config) is None
        and config.task.name in ("", "digits", "tabular")
        and copy.exists()
    ):
        # started with --contract: the peer kept a copy of it beside its model
        config = with_overrides(config, {"task.contract": str(copy)})
    task = build_task(config, home, need_data=False)
    data = await fetch_model(home)
    if data is not None:
        offer = parse_model_file(data, f"the model of the peer running in {home}")
        source = f"the running peer in {home}"
    else:
        saved = home.saved_model()
        if saved is None:
            raise UserError(
                f"no model in {home}: no peer is running there and it holds no "
                f"{home.model_file.name} (a peer saves it when it stops); start one with "
                "`gossiplearn start`"
            )
        offer, source = saved, str(home.model_file)
    model = task.build_model()
    load_offer(task, model, offer, source)
    if task.statistics is not None and offer.stats is not None:
        task.statistics.apply(model, offer.stats)
    return UsableModel(task, model, offer.stats, offer.steps, source)


def load_offer(task: Task, model: nn.Module, offer: ModelOffer, source: str) -> None:
    """Put ``offer``'s tensors into ``model`` after checking they belong to ``task``."""
    digest = identity_digest(task_identity(task, model))
    if offer.task and offer.task != digest:
        raise UserError(
            f"{source} was trained under another task contract ({short_digest(offer.task)}; "
            f"the configured one is {short_digest(digest)}): use the contract it was trained "
            "with (--contract FILE)"
        )
    tensors = {n: t for n, t in model.state_dict().items() if t.is_floating_point()}
    ours = fingerprint(specs_of({n: t.numpy() for n, t in tensors.items()}))
    if offer.fingerprint != ours or fingerprint(specs_of(offer.tensors)) != ours:
        raise UserError(f"{source} holds another model architecture than the configured task")
    if (task.statistics is None) != (offer.stats is None):
        raise UserError(f"{source} does not carry the statistics the task needs")
    with torch.no_grad():
        for name, t in tensors.items():
            t.copy_(torch.from_numpy(np.array(offer.tensors[name], copy=True)))


def read(task: Task, path: Path, *, need_target: bool) -> Records:
    """The task's records in ``path``; ``UserError`` if the task cannot read files."""
    if task.reader is None:
        raise UserError(
            f"task {task.name!r} does not say how to read a data file: a custom task passes "
            "reader=... to Task (see README, Tasks)"
        )
    records = task.reader(path, need_target)
    if need_target and records.labels is None:
        raise UserError(f"{path}: no target values to evaluate against")
    if len(records.features) == 0:
        raise UserError(f"{path}: no rows to use")
    return records


def class_names(task: Task, count: int) -> tuple[str, ...]:
    return task.classes if len(task.classes) == count else tuple(str(i) for i in range(count))


def evaluate(usable: UsableModel, path: Path) -> dict[str, Any]:
    """Metrics of the model on the labelled records in ``path`` (JSON-serialisable)."""
    task = usable.task
    records = read(task, path, need_target=True)
    assert records.labels is not None
    outputs = task.outputs(usable.model, records.features)
    if task.kind == "regression":
        report = regression_report(outputs, records.labels.double().numpy())
    else:
        report = classification_report(
            outputs, records.labels.numpy(), class_names(task, outputs.shape[1])
        )
    return {
        "data": str(path),
        "rows": len(records.features),
        "read": records.note,
        "model": usable.source,
        "steps": usable.steps,
        "kind": task.kind,
        **report,
    }


def predict(usable: UsableModel, path: Path, out: Path) -> int:
    """Write predictions for every record of ``path`` to the CSV ``out``; returns the rows.
    Columns: ``row`` (the record's line in the file, or Parquet row), then ``prediction`` and,
    for classification, one ``p_<class>`` column per class."""
    task = usable.task
    records = read(task, path, need_target=False)
    outputs = task.outputs(usable.model, records.features)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            if task.kind == "regression":
                writer.writerow(["row", "prediction"])
                for line, value in zip(records.lines, outputs, strict=True):
                    writer.writerow([line, f"{float(value):.9g}"])
            else:
                names = class_names(task, outputs.shape[1])
                writer.writerow(["row", "prediction", *(f"p_{c}" for c in names)])
                best = outputs.argmax(axis=1)
                for line, k, probs in zip(records.lines, best, outputs, strict=True):
                    writer.writerow([line, names[k], *(f"{float(p):.6g}" for p in probs)])
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write predictions to {out}: {exc.strerror or exc}") from None
    return len(records.features)
