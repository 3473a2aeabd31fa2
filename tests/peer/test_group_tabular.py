"""Secure group rounds of a task with consortium statistics (docs/protocol.md 16.1): ``Node``s on
the in-memory network sum their statistics first, rebase to the average, then sum their models.

Real tabular tasks and trainers on skewed member files (``InlineLearner``: torch in the trio
thread, so virtual time holds still while it works), and a member played by hand that drops out
after the statistics' sum. Every test runs under ``DEADLINE`` virtual seconds.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import trio
import trio.testing

from gossiplearn.crypto.identity import Identity
from gossiplearn.demo.companies import customers
from gossiplearn.errors import TransportError
from gossiplearn.gossip.aggregate import SumsLayout, check
from gossiplearn.gossip.exchange import LocalModel
from gossiplearn.gossip.group import MemberRound, StatsAverage
from gossiplearn.gossip.group_messages import GroupLimits, GroupShare, words_limits
from gossiplearn.gossip.messages import PeerRecord, encoded_model_size, specs_of
from gossiplearn.peer.home.config import GossipConfig, TrainingConfig
from gossiplearn.peer.learning.trainer import Trainer
from gossiplearn.peer.net.transport import MemoryNetwork, Stream
from gossiplearn.peer.node.config import GroupSettings
from gossiplearn.peer.node.group import GroupOutcome
from gossiplearn.peer.node.group_links import Link
from gossiplearn.peer.node.node import GROUP_PROTOCOL, Node, NodeConfig
from gossiplearn.peer.sim import InlineLearner, VectorLearner
from gossiplearn.tasks.base import TaskOptions
from gossiplearn.tasks.contract import render_contract
from gossiplearn.tasks.records import infer_contract, read_table
from gossiplearn.tasks.tabular import TabularStatistics, make_task

IDS = [Identity(bytes([i + 1]) * 32) for i in range(4)]
DEADLINE = 300.0  # virtual seconds, for any one test
QUIET = GossipConfig(interval=1e6, exchange_timeout=30.0, discovery_interval=1e6)
NO_TRAINING = TrainingConfig(enabled=False, eval_interval=1e6)
Tensors = dict[str, np.ndarray]


def config() -> NodeConfig:
    return NodeConfig(gossip=QUIET, training=NO_TRAINING, group=GroupSettings(True, 3))


def know(node: Node, *peers: str) -> None:
    for peer in peers:
        node.view.learn(PeerRecord(peer, (f"/memory/{peer}/p2p/{peer}",)), trio.current_time())


def group_of(node: Node) -> dict[str, object]:
    return node.status()["exchanges"]["group"]  # type: ignore[no-any-return]


@asynccontextmanager
async def network() -> AsyncIterator[tuple[MemoryNetwork, trio.Nursery]]:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            yield MemoryNetwork(), nursery
            nursery.cancel_scope.cancel()


async def start(net: MemoryNetwork, nursery: trio.Nursery, i: int, learner: object) -> Node:
    transport = net.transport(IDS[i].peer_id)
    node = Node(transport, learner, config(), rng=random.Random(i), identity=IDS[i])  # type: ignore[arg-type]
    await nursery.start(transport.run)
    await nursery.start(node.run)
    return node


def trainers(tmp_path: Path) -> list[Trainer]:
    """Three members of the synthetic churn data: unequal sizes, skewed numeric columns, text
    categories, empty cells; each with its own model initialisation."""
    split = customers(tmp_path / "data", members=3, seed=5, rows=600)
    contract, _ = infer_contract(read_table(split.members[0]), split.target, name="churn")
    path = tmp_path / "task.toml"
    path.write_text(render_contract(contract), encoding="utf-8")
    out = []
    for i, data in enumerate(split.members):
        task = make_task(TaskOptions(params={"contract": str(path), "data": str(data)}))
        out.append(Trainer(task, NO_TRAINING, seed=i))
    return out


def statistics_of(trainer: Trainer) -> TabularStatistics:
    statistics = trainer.task.statistics
    assert isinstance(statistics, TabularStatistics)
    return statistics


async def test_three_tabular_members_end_on_the_average_statistics_and_the_rebased_average(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """One round: every member ends with the plain average of the three statistics vectors
    and the sample-weighted average of the three models, each first rebased to it (what the
    pairwise exchange does to the model it receives); then each member leads a round, and
    they stay in agreement."""
    ts = trainers(tmp_path)
    stats = [t.statistics() for t in ts]
    assert all(s is not None for s in stats)
    assert not np.allclose(stats[0], stats[1], rtol=0.05)  # skewed: far apart at first
    average = np.mean(np.stack(stats), axis=0)  # type: ignore[arg-type]
    samples = [t.samples for t in ts]
    rebase = statistics_of(ts[0]).rebase
    rebased = [rebase(t.snapshot(), s, average) for t, s in zip(ts, stats, strict=True)]
    expected = {
        k: sum(n * m[k].astype(np.float64) for n, m in zip(samples, rebased, strict=True))
        / sum(samples)
        for k in rebased[0]
    }

    async with network() as (net, nursery):
        nodes = [await start(net, nursery, i, InlineLearner(t)) for i, t in enumerate(ts)]
        know(nodes[0], nodes[1].peer_id, nodes[2].peer_id)
        assert await nodes[0].groups.lead() is GroupOutcome.COMPLETED
        while not all(group_of(n)["completed"] == 1 for n in nodes):
            await trio.sleep(0.01)

        after = [t.statistics() for t in ts]
        for s in after:
            assert s is not None
            np.testing.assert_array_equal(s, after[0])  # the same vector everywhere
            np.testing.assert_allclose(s, average, rtol=1e-12)  # five words a value
            check(s, statistics_of(ts[0]).layout)
        for t in ts:
            for k, v in expected.items():
                np.testing.assert_allclose(t.snapshot()[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
        for n in nodes:
            assert n.status()["security"]["offences"] == {}
            assert n.stats.counters.completed == 0  # no pairwise exchange

        for leader in (1, 2):  # each leads one: they stay in agreement
            know(nodes[leader], *(n.peer_id for n in nodes if n is not nodes[leader]))
            assert await nodes[leader].groups.lead() is GroupOutcome.COMPLETED
            while not all(group_of(n)["completed"] == leader + 1 for n in nodes):
                await trio.sleep(0.01)
        final = [t.snapshot() for t in ts]
        for t, m in zip(ts, final, strict=True):
            np.testing.assert_array_equal(t.statistics(), ts[0].statistics())
            for k in m:
                np.testing.assert_allclose(m[k], final[0][k], rtol=1e-5, atol=1e-6)


class Dropper:
    """A member played by hand (a real ``MemberRound``) that is honest through the statistics
    phase, hears their sum, then resets its stream instead of sharing its model."""

    def __init__(self, transport: object, identity: Identity, tensors: Tensors) -> None:
        self.identity = identity
        self.tensors = tensors
        self.stats = np.array([4.0, 3.0, 9.0])
        self.local = LocalModel.of(
            specs_of(tensors),
            10,
            encoded_model_size(tensors),
            task=b"vector-learner",
            stats=SumsLayout(3),
        )
        self.heard: StatsAverage | None = None
        self.ended = trio.Event()
        transport.set_handler(GROUP_PROTOCOL, self.serve)  # type: ignore[attr-defined]

    async def serve(self, stream: Stream) -> None:
        link = Link(stream)
        rnd = MemberRound(self.local, self.identity)
        try:
            invite = await link.receive(GroupLimits())
            join = rnd.receive_invite(
                invite, sender=stream.remote_peer, tensors=self.tensors, stats=self.stats
            )
            await link.send(join)
            share = rnd.receive(await link.receive(GroupLimits()))
            assert share is not None and not isinstance(share, GroupShare)
            await link.send(share)  # type: ignore[arg-type]
            heard = rnd.receive(await link.receive(words_limits(3)))
            assert isinstance(heard, StatsAverage)
            self.heard = heard
            await stream.reset()  # gone before its model share
        except TransportError:
            await stream.reset()
        finally:
            self.ended.set()


def vector(offset: float) -> Tensors:
    return {"w": np.linspace(-1.0, 1.0, 8) + offset, "b": np.full((2, 3), offset)}


async def test_a_dropout_after_the_statistics_sum_leaves_models_and_statistics_unchanged(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The members heard the group's average statistics, but the round failed before the
    models were summed: nobody adopts the statistics (nor merges), and a dropout is no
    offence."""
    async with network() as (net, nursery):
        stats = [np.array([1.0, 1.0, 1.0]), np.array([2.0, 4.0, 8.0])]
        learners = [VectorLearner(vector(i / 10), 10, stats=stats[i]) for i in range(2)]
        nodes = [await start(net, nursery, i, learners[i]) for i in range(2)]
        raw = net.transport(IDS[2].peer_id)
        await nursery.start(raw.run)
        dropper = Dropper(raw, IDS[2], vector(0.5))
        know(nodes[0], nodes[1].peer_id, IDS[2].peer_id)
        before = [({k: v.copy() for k, v in lrn.tensors.items()}, lrn.stats) for lrn in learners]

        assert await nodes[0].groups.lead() is GroupOutcome.ABANDONED
        await dropper.ended.wait()
        while nodes[1].busy:
            await trio.sleep(0.01)

        assert dropper.heard is not None  # the average was out: (1+2+4)/3 rows, ...
        np.testing.assert_allclose(
            dropper.heard.stats, np.mean([*stats, dropper.stats], axis=0), rtol=1e-12
        )
        assert group_of(nodes[0])["abandoned"] == {"dropout": 1}
        assert group_of(nodes[1])["abandoned"] == {"aborted": 1}
        for lrn, (tensors, s) in zip(learners, before, strict=True):
            np.testing.assert_array_equal(lrn.stats, s)  # type: ignore[arg-type]
            for k, v in tensors.items():
                np.testing.assert_array_equal(lrn.tensors[k], v)
        for n in nodes:
            assert n.status()["security"]["offences"] == {}
            assert group_of(n)["completed"] == 0
