"""A company's own data through the CLI, as real processes: a task contract made with `task init`,
members on skewed CSV and Parquet files, a member with another contract refused by name, and
the model used through `evaluate`, `predict` and `export` (checked with onnxruntime)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from clitools import Peer, run, stop_all

from gossiplearn.demo.companies import customers, diabetes
from gossiplearn.tasks.contract import load_contract
from gossiplearn.tasks.export import onnx_inputs
from gossiplearn.tasks.records import read_table

DEADLINE = 120.0
FAST = ("--gossip-interval", "0.3", "--steps-per-second", "40", "--eval-interval", "0.5")


def _wait(peers: list[Peer], done: Any, what: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        statuses = [p.status() for p in peers]
        if all(s is not None for s in statuses) and done(statuses):
            return statuses  # type: ignore[return-value]
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {[p.log() for p in peers]}")


def _onnx_against_predictions(model: Path, data: Path, contract: Path, preds: Path) -> None:
    """The exported graph, fed the raw file, gives what `predict` wrote (to 1e-5)."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    from gossiplearn.peer.app import build_task  # the task `predict` used, from the contract
    from gossiplearn.peer.home.config import PeerConfig, with_overrides
    from gossiplearn.peer.home.home import Home

    config = with_overrides(PeerConfig(), {"task.contract": str(contract)})
    task = build_task(config, Home(contract.parent), need_data=False)
    feed = onnx_inputs(task, read_table(data))
    outputs = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True)
    )
    with preds.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(next(iter(feed.values())))
    if "value" in outputs:
        expected = np.array([float(r["prediction"]) for r in rows])
        np.testing.assert_allclose(outputs["value"], expected, rtol=1e-5, atol=1e-4)
        return
    names = [k for k in rows[0] if k.startswith("p_")]
    expected = np.array([[float(r[k]) for k in names] for r in rows])
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    assert [str(x) for x in outputs["label"]] == [r["prediction"] for r in rows]


def test_members_share_a_contract_and_one_with_another_contract_is_refused_by_name(
    short_tmp: Path,
) -> None:
    split = customers(short_tmp / "data", members=3, seed=1, rows=1500)
    contract = short_tmp / "task.toml"
    made = run(
        "task", "init", "--data", str(split.members[0]), "--target", split.target,
        "--model", "mlp", "--hidden", "16", "--out", str(contract),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "Left out 'customer_id'" in made.stdout  # an identifier is not a feature
    other = short_tmp / "other.toml"  # the same columns, another model: another contract
    other.write_text(contract.read_text().replace('kind = "mlp"', 'kind = "linear"'))
    for i in range(4):
        assert run("init", "--home", str(short_tmp / f"h{i}")).returncode == 0
    data = [split.members[0].with_suffix(".parquet"), *split.members[1:]]
    first = Peer(
        short_tmp / "h0", "1/1", "--contract", str(contract), "--data", str(data[0]), *FAST
    )
    peers = [first]
    try:
        boot = first.address()
        peers += [
            Peer(short_tmp / f"h{i}", "1/1", "--contract", str(contract), "--data", str(data[i]),
                 *FAST, bootstrap=boot)
            for i in (1, 2)
        ]  # fmt: skip
        stranger = Peer(
            short_tmp / "h3", "1/1", "--contract", str(other), "--data", str(data[1]), *FAST,
            bootstrap=boot,
        )  # fmt: skip
        peers.append(stranger)
        members = peers[:3]
        statuses = _wait(
            peers,
            lambda s: (
                all(x["exchanges"]["completed"] >= 8 for x in s[:3])
                and all(
                    any("task contract differs" in i["detail"] for i in x["incompatible"])
                    for x in s
                )
            ),
            "exchanges among members and the stranger's refusal",
        )
        digest = load_contract(contract).digest.hex()
        assert [s["contract"] for s in statuses[:3]] == [digest] * 3
        assert statuses[3]["contract"] == load_contract(other).digest.hex() != digest
        assert statuses[3]["exchanges"]["completed"] == 0  # nobody ever merged with it
        theirs = digest[:12]
        for s in statuses[:3]:
            details = [i["detail"] for i in s["incompatible"]]
            assert any(f"theirs {statuses[3]['contract'][:12]}" in d for d in details), details
        assert any(f"theirs {theirs}" in i["detail"] for i in statuses[3]["incompatible"])
        # every member standardises with the same consortium statistics
        incomes = [s["statistics"]["columns"]["income"] for s in statuses[:3]]
        assert max(abs(i["mean"] - incomes[0]["mean"]) for i in incomes) < 0.05 * incomes[0]["std"]

        # the running peer's model, undisturbed: evaluate and predict
        done = run("evaluate", "--home", str(members[1].home), "--data", str(split.test), "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["rows"] == len(split.test.read_text().splitlines()) - 1
        assert report["accuracy"] > 0.7
        assert "running peer" in report["model"]
        assert "unseen category values" in report["read"]
        assert set(report["confusion"]["labels"]) == {"no", "yes"}
        preds = short_tmp / "preds.csv"
        done = run("predict", "--home", str(members[1].home), "--data", str(split.test),
                   "--out", str(preds))  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert members[1].status() is not None  # still running
    finally:
        codes = stop_all(peers)
    assert codes == [0, 0, 0, 0]
    # the stopped peer's saved model: export, and the graph agrees with predict on raw records
    model = short_tmp / "model.onnx"
    done = run("export", "--home", str(short_tmp / "h1"), "--format", "onnx", "--out", str(model))
    assert done.returncode == 0, done.stderr
    # the same model predicts the same: the running peer's last model is what it saved
    again = short_tmp / "again.csv"
    done = run("predict", "--home", str(short_tmp / "h1"), "--data", str(split.test),
               "--out", str(again))  # fmt: skip
    assert done.returncode == 0, done.stderr
    _onnx_against_predictions(model, split.test, contract, again)
    done = run("export", "--home", str(short_tmp / "h1"), "--format", "safetensors",
               "--out", str(short_tmp / "model.safetensors"))  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_regression_member_alone_evaluates_and_exports_its_saved_model(short_tmp: Path) -> None:
    split = diabetes(short_tmp / "data", members=2, seed=0)
    contract = short_tmp / "task.toml"
    made = run("task", "init", "--data", str(split.members[0]), "--target", split.target,
               "--out", str(contract))  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert 'kind = "regression"' in contract.read_text()
    home = short_tmp / "h"
    assert run("init", "--home", str(home)).returncode == 0
    peer = Peer(home, "1/1", "--contract", str(contract), "--data", str(split.members[0]),
                "--max-steps", "300", "--learning-rate", "0.01", "--lr-schedule", "cosine",
                *FAST)  # fmt: skip  # the default 0.05 swings on unscaled diabetes (bench own_data)
    try:
        statuses = _wait([peer], lambda s: s[0]["training"]["steps"] >= 300, "training")
        metrics = statuses[0]["metrics"]
        assert {"rmse", "mae", "r2"} <= set(metrics), metrics
        assert statuses[0]["statistics"]["target"]["std"] > 10  # progression is in the tens
    finally:
        assert peer.stop() == 0
    done = run("evaluate", "--home", str(home), "--data", str(split.test), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) >= {"rmse", "mae", "r2", "rows"}
    assert report["r2"] > 0.2  # a linear model on diabetes reaches about 0.4-0.5
    preds, model = short_tmp / "preds.csv", short_tmp / "model.onnx"
    assert run("predict", "--home", str(home), "--data", str(split.test),
               "--out", str(preds)).returncode == 0  # fmt: skip
    assert run("export", "--home", str(home), "--format", "onnx",
               "--out", str(model)).returncode == 0  # fmt: skip
    _onnx_against_predictions(model, split.test, contract, preds)
    # a file that does not fit the contract is refused, naming file, row and column
    bad = short_tmp / "bad.csv"
    lines = split.test.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[3].split(",")
    row[header.index("bmi")] = "heavy"
    bad.write_text("\n".join([lines[0], lines[1], lines[2], ",".join(row)]) + "\n")
    done = run("evaluate", "--home", str(home), "--data", str(bad))
    assert done.returncode == 1
    assert f"{bad}, line 4: column 'bmi' holds 'heavy', not a number" in done.stderr
