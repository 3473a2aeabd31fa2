"""Consortium statistics by gossip, end to end in simulation: real tabular tasks and trainers on
skewed member files, the deployed node code, virtual time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trio

from gossiplearn.demo.companies import customers
from gossiplearn.gossip.aggregate import spread
from gossiplearn.peer.home.config import GossipConfig, TrainingConfig
from gossiplearn.peer.learning.trainer import Trainer
from gossiplearn.peer.sim import InlineLearner, build_simulation
from gossiplearn.tasks.base import TaskOptions
from gossiplearn.tasks.contract import render_contract
from gossiplearn.tasks.records import infer_contract, read_table
from gossiplearn.tasks.tabular import TabularStatistics, make_task, read_records

MEMBERS = 6
TRAINING = TrainingConfig(enabled=False, eval_interval=30.0)
GOSSIP = GossipConfig(interval=1.0, exchange_timeout=10.0, discovery_interval=1.0)


def _preprocessing(trainer: Trainer) -> np.ndarray:
    statistics = trainer.task.statistics
    assert isinstance(statistics, TabularStatistics) and trainer.stats is not None
    return np.concatenate(statistics.preprocessing(trainer.stats))


def _union(contract_path: Path, files: list[Path]) -> np.ndarray:
    """The preprocessing computed centrally from the concatenated files."""
    task = make_task(TaskOptions(params={"contract": str(contract_path), "data": str(files[0])}))
    statistics = task.statistics
    assert isinstance(statistics, TabularStatistics)
    records = [read_records(statistics.contract, f, need_target=True) for f in files]
    features = torch.cat([r.features for r in records]).numpy()
    return np.concatenate(
        statistics.preprocessing(statistics.sums(statistics.contract, features, None))
    )


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-6)))


async def test_six_skewed_members_agree_on_the_union_statistics_and_a_late_joiner_is_counted(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    split = customers(tmp_path / "data", members=MEMBERS + 1, seed=3, rows=2100)
    files = list(split.members)
    contract, _ = infer_contract(read_table(files[0]), split.target, name="churn")
    contract_path = tmp_path / "task.toml"
    contract_path.write_text(render_contract(contract), encoding="utf-8")

    def trainer(path: Path) -> Trainer:
        options = TaskOptions(params={"contract": str(contract_path), "data": str(path)})
        return Trainer(make_task(options), TRAINING)

    trainers = [trainer(f) for f in files]
    before = [_preprocessing(t) for t in trainers[:MEMBERS]]
    assert max(_relative(p, before[0]) for p in before) > 0.05  # skewed: far apart at first
    sim = build_simulation(
        [InlineLearner(t) for t in trainers], gossip=GOSSIP, training=TRAINING, seed=3
    )
    founders, joiner = sim.nodes[:MEMBERS], sim.nodes[MEMBERS]
    async with trio.open_nursery() as nursery:
        for node in founders:
            await nursery.start(sim.network.transports[node.peer_id].run)
            await nursery.start(node.run)
        await trio.sleep(60)
        agreed = [_preprocessing(t) for t in trainers[:MEMBERS]]
        vectors = [t.stats for t in trainers[:MEMBERS]]
        union = _union(contract_path, files[:MEMBERS])
        # the joiner brings in rows nobody else holds
        await nursery.start(sim.network.transports[joiner.peer_id].run)
        await nursery.start(joiner.run)
        with trio.fail_after(600):
            while joiner.stats.counters.completed < 20:
                await trio.sleep(1)
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert min(n.stats.counters.completed for n in founders) >= 20
    assert spread([v for v in vectors if v is not None]) <= 1e-3
    assert max(_relative(p, agreed[0]) for p in agreed) <= 1e-3
    assert _relative(agreed[0], union) <= 1e-3
    everyone = [_preprocessing(t) for t in trainers]
    union_all = _union(contract_path, files)
    assert max(_relative(p, union_all) for p in everyone) <= 1e-3
    assert _relative(union_all, union) > 1e-3  # the joiner's rows did move the statistics
