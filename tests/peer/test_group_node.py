"""Secure group averaging on the network (``node/group.py``, docs/protocol.md 16): whole rounds
between ``Node``s on the in-memory network, dropouts at every step, hostile members and
leaders played by hand, replays, and the slot shared with pairwise exchanges.

Hand-played peers use the pure state machines (``gossip.group``) with real identities and send
what they like on the stream. The tests read the nodes' public parts (``status()``, ``stats``,
``view``, ``busy``, the learners' tensors). Time is virtual (autojump clock; the learners are
numpy), and every test runs under ``DEADLINE`` virtual seconds.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from rich.console import Console

from gossiplearn.cli.render import render_status
from gossiplearn.crypto.identity import Identity
from gossiplearn.errors import TransportError
from gossiplearn.gossip.exchange import LocalModel
from gossiplearn.gossip.group import Completed, LeaderRound, MemberRound
from gossiplearn.gossip.group_messages import (
    GroupAbort,
    GroupDecline,
    GroupJoin,
    GroupKeys,
    GroupLimits,
    GroupMessage,
    GroupShare,
    words_limits,
)
from gossiplearn.gossip.messages import (
    Accept,
    Decline,
    PeerRecord,
    PeersReply,
    Propose,
    encoded_model_size,
    specs_of,
)
from gossiplearn.peer.home.checkpoint import Checkpoint, decode_checkpoint, encode_checkpoint
from gossiplearn.peer.home.config import GossipConfig, SecurityConfig, TrainingConfig
from gossiplearn.peer.home.resume import node_state, resume_node
from gossiplearn.peer.learning.state import TrainerState
from gossiplearn.peer.net.framed import FramedStream
from gossiplearn.peer.net.transport import MemoryNetwork, MemoryTransport, Stream, Transport
from gossiplearn.peer.node.config import GroupSettings
from gossiplearn.peer.node.exchanges import GROUPS_ONLY
from gossiplearn.peer.node.group import GroupOutcome
from gossiplearn.peer.node.group_links import Link
from gossiplearn.peer.node.limits import CONTROL_LIMITS, PEERS_LIMITS
from gossiplearn.peer.node.node import (
    EXCHANGE_PROTOCOL,
    GROUP_PROTOCOL,
    PEERS_PROTOCOL,
    Node,
    NodeConfig,
)
from gossiplearn.peer.sim import VectorLearner

IDS = [Identity(bytes([i + 1]) * 32) for i in range(6)]
TASK = b"vector-learner"  # VectorLearner's task digest
DEADLINE = 300.0  # virtual seconds, for any one test
POLL = 0.01
CONTROL = GroupLimits()
QUIET = GossipConfig(interval=1e6, exchange_timeout=30.0, discovery_interval=1e6)
NO_TRAINING = TrainingConfig(enabled=False, eval_interval=1e6)


def model(offset: float) -> dict[str, np.ndarray]:
    return {
        "w": np.linspace(-1.0, 1.0, 8) + offset,
        "b": np.arange(6, dtype=np.float64).reshape(2, 3) * (1.0 + offset),
    }


def local_of(tensors: dict[str, np.ndarray], samples: int) -> LocalModel:
    return LocalModel.of(specs_of(tensors), samples, encoded_model_size(tensors), task=TASK)


def weighted_mean(models: Sequence[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    total = sum(n for n, _ in models)
    return {k: sum(n * m[k] for n, m in models) / total for k in models[0][1]}


async def until(check: Callable[[], object]) -> None:
    while not check():
        await trio.sleep(POLL)


def group_of(node: Node) -> dict[str, Any]:
    return node.status()["exchanges"]["group"]  # type: ignore[no-any-return]


def offences(node: Node) -> dict[str, int]:
    return node.status()["security"]["offences"]  # type: ignore[no-any-return]


def tensors_of(node: Node) -> dict[str, np.ndarray]:
    learner = node.learner
    assert isinstance(learner, VectorLearner)
    return learner.tensors


def assert_models(node: Node, expected: dict[str, np.ndarray], atol: float = 0.0) -> None:
    for name, tensor in expected.items():
        np.testing.assert_allclose(tensors_of(node)[name], tensor, atol=atol, rtol=0, err_msg=name)


@dataclass
class Net:
    network: MemoryNetwork
    nursery: trio.Nursery

    async def node(
        self,
        i: int,
        samples: int = 10,
        *,
        enabled: bool = True,
        size: int = 3,
        security: SecurityConfig | None = None,
    ) -> Node:
        """A running node with identity ``IDS[i]`` and model ``model(i / 10)``."""
        config = NodeConfig(
            gossip=QUIET,
            training=NO_TRAINING,
            security=security or SecurityConfig(),
            group=GroupSettings(enabled, size),
        )
        transport = self.network.transport(IDS[i].peer_id)
        learner = VectorLearner(model(i / 10), samples)
        node = Node(transport, learner, config, rng=random.Random(i), identity=IDS[i])
        await self.nursery.start(transport.run)
        await self.nursery.start(node.run)
        return node

    async def raw(self, i: int) -> MemoryTransport:
        """A hand-played peer's running transport, with identity ``IDS[i]`` (it answers peer
        exchange honestly, so the nodes' discovery keeps it in their views)."""
        transport = self.network.transport(IDS[i].peer_id)
        transport.set_handler(PEERS_PROTOCOL, answer_peers)
        await self.nursery.start(transport.run)
        return transport


async def answer_peers(stream: Stream) -> None:
    framed = FramedStream(stream)
    try:
        await framed.receive(PEERS_LIMITS)
        await framed.send(PeersReply(()))
        await stream.close()
    except TransportError:
        await stream.reset()


def know(node: Node, *peers: str) -> None:
    """Put ``peers`` (memory addresses) in ``node``'s view."""
    for peer in peers:
        node.view.learn(PeerRecord(peer, (f"/memory/{peer}/p2p/{peer}",)), trio.current_time())


@asynccontextmanager
async def network(latency: float = 0.0) -> AsyncIterator[Net]:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            yield Net(MemoryNetwork(latency), nursery)
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------ whole rounds


@pytest.mark.parametrize("size", [3, 4])
async def test_a_round_gives_every_member_the_exact_sample_weighted_average(
    autojump_clock: trio.abc.Clock, size: int
) -> None:
    async with network() as net:
        nodes = [await net.node(i, samples=10 * (i + 1), size=size) for i in range(size)]
        leader = nodes[0]
        know(leader, *(n.peer_id for n in nodes[1:]))
        before = [
            (n.learner.samples, {k: v.copy() for k, v in tensors_of(n).items()}) for n in nodes
        ]
        expected = weighted_mean(before)

        assert await leader.groups.lead() is GroupOutcome.COMPLETED
        await until(lambda: all(group_of(n)["completed"] == 1 for n in nodes))

        for node in nodes:  # the average, to the fixed point's resolution (2^-32)
            assert_models(node, expected, atol=1e-9)
            assert not node.busy
        after = [(n.learner.samples, tensors_of(n)) for n in nodes]
        total = sum(n for n, _ in before)
        for k in expected:  # the group's weighted sum is conserved
            np.testing.assert_allclose(weighted_mean(after)[k] * total, expected[k] * total)
        lead = group_of(leader)
        assert (lead["led"], lead["joined"], lead["last_size"]) == (1, 0, size)
        assert all(group_of(n)["joined"] == 1 for n in nodes[1:])
        assert all(not offences(n) for n in nodes)
        # status counts the round with each partner: the leader with every member, a member
        # with the leader (the one it talked to)
        seen = {n["peer_id"]: n["exchanges"] for n in leader.status()["neighbours"]}
        assert seen == {n.peer_id: 1 for n in nodes[1:]}
        for node in nodes[1:]:
            mine = {n["peer_id"]: n for n in node.status()["neighbours"]}
            assert mine[leader.peer_id]["exchanges"] == 1
            assert mine[leader.peer_id]["last_exchange"] is not None
        console = Console(width=200, record=True)
        console.print(render_status(leader.status()))
        rows = [r for r in console.export_text().splitlines() if r.startswith("groups")]
        assert rows[0].split(None, 1)[1].rstrip() == f"1 merged (groups of {size}): 1 led, 0 joined"


async def test_training_during_the_round_is_kept(autojump_clock: trio.abc.Clock) -> None:
    async with network(latency=0.5) as net:
        nodes = [await net.node(i) for i in range(3)]
        know(nodes[0], nodes[1].peer_id, nodes[2].peer_id)
        expected = weighted_mean([(10, dict(tensors_of(n))) for n in nodes])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(nodes[0].groups.lead)
            await until(lambda: nodes[1].busy)
            tensors_of(nodes[1])["w"] += 1.0  # a training step taken after its snapshot
        await until(lambda: group_of(nodes[1])["completed"] == 1)
        assert_models(nodes[1], {"w": expected["w"] + 1.0, "b": expected["b"]}, atol=1e-9)
        assert_models(nodes[2], expected, atol=1e-9)


async def test_the_gossip_loop_leads_rounds_and_never_falls_back_to_pairwise(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with network() as net:
        leader = await net.node(0)
        member = await net.node(1)
        know(leader, member.peer_id)  # one neighbour: too few for a group of 3
        assert await leader.groups.lead() is GroupOutcome.SKIPPED
        assert group_of(leader)["skipped"] == {"not-enough-neighbours": 1}
        assert net.network.bytes_sent == 0  # not a byte: no pairwise fallback

        # a node under secure averaging declines pairwise proposals
        raw = await net.raw(3)
        framed = FramedStream(await raw.open_stream(leader.peer_id, EXCHANGE_PROTOCOL))
        local = local_of(model(0.3), 10)
        await framed.send(Propose(local.fingerprint, 10, local.model_bytes, TASK))
        answer = await framed.receive(CONTROL_LIMITS)
        assert answer == Decline("incompatible", GROUPS_ONLY)


# ------------------------------------------------------------------------------ dropouts


class RawMember:
    """A member played by hand: honest (a real ``MemberRound``) up to ``step``, where it
    resets its stream, or where ``misbehave`` replaces what it sends."""

    def __init__(
        self,
        transport: Transport,
        identity: Identity,
        *,
        drop_at: str = "",
        misbehave: Callable[[GroupMessage], GroupMessage] | None = None,
    ) -> None:
        self.identity = identity
        self.tensors = model(0.5)
        self.local = local_of(self.tensors, 10)
        self.drop_at = drop_at
        self.misbehave = misbehave or (lambda msg: msg)
        self.ended = trio.Event()
        transport.set_handler(GROUP_PROTOCOL, self.serve)

    async def serve(self, stream: Stream) -> None:
        link = Link(stream)
        rnd = MemberRound(self.local, self.identity)
        try:
            invite = await link.receive(CONTROL)
            if self.drop_at == "invite":
                return await stream.reset()
            join = rnd.receive_invite(invite, sender=stream.remote_peer, tensors=self.tensors)
            await link.send(self.misbehave(join))
            if self.drop_at == "join":
                return await stream.reset()
            keys = await link.receive(CONTROL)
            if self.drop_at == "keys":
                return await stream.reset()
            share = rnd.receive(keys)
            assert share is not None
            await link.send(self.misbehave(share))
            if self.drop_at == "share":
                return await stream.reset()
            await link.receive(words_limits(rnd.layout.length))
        except TransportError:
            await stream.reset()
        finally:
            self.ended.set()


@pytest.mark.parametrize("drop_at", ["invite", "join", "keys"])
async def test_a_member_dropping_at_any_step_abandons_the_round_and_nobody_merges(
    autojump_clock: trio.abc.Clock, drop_at: str
) -> None:
    async with network() as net:
        leader = await net.node(0)
        member = await net.node(1)
        raw = RawMember(await net.raw(2), IDS[2], drop_at=drop_at)
        know(leader, member.peer_id, IDS[2].peer_id)
        models = {
            n.peer_id: {k: v.copy() for k, v in tensors_of(n).items()} for n in (leader, member)
        }

        assert await leader.groups.lead() is GroupOutcome.ABANDONED
        await raw.ended.wait()
        await until(lambda: not member.busy)

        assert group_of(leader)["abandoned"] == {"dropout": 1}
        assert group_of(member)["abandoned"] == {"aborted": 1}  # the leader told it
        for node in (leader, member):
            assert_models(node, models[node.peer_id])
            assert group_of(node)["completed"] == 0
            assert not offences(node)  # a dropout is no offence


async def test_a_member_dropping_after_its_share_misses_the_sum_while_the_others_merge(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with network() as net:
        leader = await net.node(0)
        member = await net.node(1)
        raw = RawMember(await net.raw(2), IDS[2], drop_at="share")
        know(leader, member.peer_id, IDS[2].peer_id)
        expected = weighted_mean(
            [(10, dict(tensors_of(n))) for n in (leader, member)] + [(10, raw.tensors)]
        )

        assert await leader.groups.lead() is GroupOutcome.COMPLETED  # docs/protocol.md 16.6
        await until(lambda: group_of(member)["completed"] == 1)
        for node in (leader, member):
            assert_models(node, expected, atol=1e-9)


async def test_a_member_that_joins_then_stalls_is_an_offence_and_the_round_ends(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with network() as net:
        leader = await net.node(0)
        member = await net.node(1)
        know(leader, member.peer_id, IDS[2].peer_id)

        async def stall(stream: Stream) -> None:  # joins honestly, then never shares
            link = Link(stream)
            rnd = MemberRound(local_of(model(0.5), 10), IDS[2])
            invite = await link.receive(CONTROL)
            await link.send(
                rnd.receive_invite(invite, sender=stream.remote_peer, tensors=model(0.5))
            )
            await trio.sleep_forever()

        (await net.raw(2)).set_handler(GROUP_PROTOCOL, stall)
        assert await leader.groups.lead() is GroupOutcome.ABANDONED
        assert group_of(leader)["abandoned"] == {"timeout": 1}
        assert offences(leader) == {"timeout": 1}
        await until(lambda: group_of(member)["abandoned"] == {"aborted": 1})


# ------------------------------------------------------------------------------ hostile members


def bad_share(msg: GroupMessage) -> GroupMessage:
    return GroupShare(msg.round_id, msg.words[:-1]) if isinstance(msg, GroupShare) else msg


def bad_signature(msg: GroupMessage) -> GroupMessage:
    if isinstance(msg, GroupJoin):
        return GroupJoin(msg.round_id, msg.public_key, msg.samples, bytes(64))
    return msg


@pytest.mark.parametrize(
    ("misbehave", "reason"), [(bad_share, "bad-share"), (bad_signature, "bad-signature")]
)
async def test_a_hostile_member_is_refused_charged_and_banned_after_repeats(
    autojump_clock: trio.abc.Clock,
    misbehave: Callable[[GroupMessage], GroupMessage],
    reason: str,
) -> None:
    security = SecurityConfig(ban_strikes=3, ban_window=600.0, ban_seconds=600.0)
    async with network() as net:
        leader = await net.node(0, security=security)
        member = await net.node(1)
        evil = IDS[2].peer_id
        RawMember(await net.raw(2), IDS[2], misbehave=misbehave)
        know(leader, member.peer_id, evil)
        models = {
            n.peer_id: {k: v.copy() for k, v in tensors_of(n).items()} for n in (leader, member)
        }

        for strike in range(1, 4):
            await trio.sleep(30.0)  # past the backoff after the last refusal
            assert await leader.groups.lead() is GroupOutcome.ABANDONED
            assert offences(leader) == {reason: strike}
        assert group_of(leader)["abandoned"] == {reason: 3}
        assert [b["peer_id"] for b in leader.status()["security"]["banned"]] == [evil]
        assert evil not in leader.view
        await until(lambda: not member.busy)
        for node in (leader, member):
            assert_models(node, models[node.peer_id])
        assert not offences(member)  # the member did nothing wrong, nor did the leader

        await trio.sleep(30.0)
        assert await leader.groups.lead() is GroupOutcome.SKIPPED  # one neighbour left


# ------------------------------------------------------------------------------ hostile leaders


class RawLeader:
    """A leader played by hand: the node under test and one in-process member (``IDS[5]``,
    never on the network) join its rounds. ``seed`` fixes the round id."""

    def __init__(self, transport: MemoryTransport, node: Node) -> None:
        self.transport = transport
        self.node = node
        self.tensors = model(0.4)

    def rounds(self, seed: int) -> tuple[LeaderRound, MemberRound]:
        lead = LeaderRound(
            local_of(self.tensors, 10),
            IDS[4],
            [self.node.peer_id, IDS[5].peer_id],
            rng=random.Random(seed),
            tensors=self.tensors,
        )
        return lead, MemberRound(local_of(self.tensors, 10), IDS[5])

    async def invite(self, seed: int) -> tuple[Link, LeaderRound, MemberRound, GroupMessage]:
        """Open a stream to the node and invite it; the node's answer."""
        lead, other = self.rounds(seed)
        link = Link(await self.transport.open_stream(self.node.peer_id, GROUP_PROTOCOL))
        await link.send(lead.invite())
        return link, lead, other, await link.receive(CONTROL)

    async def complete(self, seed: int, others: dict[str, np.ndarray] | None = None) -> None:
        """A whole round with the node, honest but for the in-process member's model
        (``others``, if given)."""
        link, lead, other, join = await self.invite(seed)
        assert lead.receive(self.node.peer_id, join) is None
        invite = lead.invite()
        keys = lead.receive(
            IDS[5].peer_id,
            other.receive_invite(invite, sender=IDS[4].peer_id, tensors=others or self.tensors),
        )
        assert isinstance(keys, GroupKeys)
        await link.send(keys)
        share = await link.receive(words_limits(lead.layout.length))
        other_share = other.receive(keys)
        assert isinstance(other_share, GroupShare)
        assert lead.receive(self.node.peer_id, share) is None
        done = lead.receive(IDS[5].peer_id, other_share)
        assert isinstance(done, Completed)
        await link.send(done.sum)
        await link.close()


async def test_a_replayed_round_id_is_refused(autojump_clock: trio.abc.Clock) -> None:
    async with network() as net:
        node = await net.node(1, enabled=False)  # it answers invites all the same
        leader = RawLeader(await net.raw(4), node)
        await leader.complete(seed=7)
        await until(lambda: group_of(node)["completed"] == 1)
        merged = {k: v.copy() for k, v in tensors_of(node).items()}

        with pytest.raises(TransportError):  # the same round id again: refused, reset
            await leader.invite(seed=7)
        await until(lambda: offences(node) == {"wrong-round": 1})
        assert group_of(node)["joined"] == 1
        assert_models(node, merged)
        await leader.complete(seed=8)  # a fresh round id is fine
        await until(lambda: group_of(node)["completed"] == 2)


async def test_a_poisoned_average_is_not_merged_and_nobody_is_blamed(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with network() as net:
        node = await net.node(1)
        before = {k: v.copy() for k, v in tensors_of(node).items()}
        poison = {k: v * 1e4 for k, v in model(0.4).items()}  # screening's norm rule refuses
        await RawLeader(await net.raw(4), node).complete(seed=1, others=poison)
        await until(lambda: group_of(node)["abandoned"] == {"screened": 1})
        assert_models(node, before)
        assert not offences(node)
        assert group_of(node)["completed"] == 0


async def test_a_leader_that_aborts_leaves_the_member_unchanged(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with network() as net:
        node = await net.node(1)
        before = {k: v.copy() for k, v in tensors_of(node).items()}
        leader = RawLeader(await net.raw(4), node)
        link, lead, _, join = await leader.invite(seed=1)
        assert isinstance(join, GroupJoin)
        assert node.busy
        await link.send(GroupAbort(lead.round_id, "dropout"))
        await until(lambda: not node.busy)
        assert group_of(node)["abandoned"] == {"aborted": 1}
        assert_models(node, before)
        assert not offences(node)


# ------------------------------------------------------------------------------ one slot


async def test_pairwise_exchanges_and_group_rounds_exclude_each_other(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with network() as net:
        node = await net.node(1, enabled=False)
        leader = RawLeader(await net.raw(4), node)
        proposer = await net.raw(3)
        local = local_of(model(0.3), 10)

        async def propose() -> tuple[FramedStream, Any]:
            framed = FramedStream(await proposer.open_stream(node.peer_id, EXCHANGE_PROTOCOL))
            await framed.send(Propose(local.fingerprint, 10, local.model_bytes, TASK))
            return framed, await framed.receive(CONTROL_LIMITS)

        # a pairwise exchange holds the slot: an invite is declined busy
        framed, answer = await propose()
        assert answer == Accept()
        _, lead, _, decline = await leader.invite(seed=1)
        assert decline == GroupDecline(lead.round_id, "busy")
        await framed.stream.reset()
        await until(lambda: not node.busy)

        # a group round holds the slot: a proposal is declined busy
        link, _, _, join = await leader.invite(seed=2)
        assert isinstance(join, GroupJoin)
        _, answer = await propose()
        assert answer == Decline("busy")
        await link.stream.reset()
        await until(lambda: not node.busy)
        assert group_of(node)["declined_inbound"] == 1


# ------------------------------------------------------------------------------ restarts


async def test_group_counters_survive_a_checkpoint_and_a_restart(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with network() as net:
        nodes = [await net.node(i) for i in range(3)]
        know(nodes[0], nodes[1].peer_id)
        assert await nodes[0].groups.lead() is GroupOutcome.SKIPPED  # one neighbour
        know(nodes[0], nodes[2].peer_id)
        assert await nodes[0].groups.lead() is GroupOutcome.COMPLETED
        await until(lambda: all(group_of(n)["completed"] == 1 for n in nodes))
        counted = group_of(nodes[0])
        assert counted["skipped"] == {"not-enough-neighbours": 1} and counted["led"] == 1

        trainer = TrainerState(b"f" * 32, 0, 0, {}, {}, b"", np.zeros(0, np.int64))
        saved = Checkpoint(0.0, trainer, node_state(nodes[0]))
        state = decode_checkpoint(encode_checkpoint(saved)).node
        again = Node(  # the same peer, started again (not yet running: resume_node's rule)
            net.network.transport(IDS[5].peer_id),
            VectorLearner(model(0.0), 10),
            NodeConfig(gossip=QUIET, training=NO_TRAINING, group=GroupSettings(True, 3)),
            rng=random.Random(0),
            identity=IDS[5],
        )
        resume_node(again, state)
        assert group_of(again) == counted
        assert again.stats.group is not state.group  # its own tables, to count on


# ------------------------------------------------------------------------------ the gossip loop


async def test_gossip_under_secure_averaging_reaches_the_weighted_mean(
    autojump_clock: trio.abc.Clock,
) -> None:
    gossip = GossipConfig(interval=1.0, exchange_timeout=30.0, discovery_interval=5.0)
    async with network(latency=0.01) as net:
        nodes = []
        for i in range(6):  # every node finds the others through the first one
            boot = () if i == 0 else (f"/memory/{IDS[0].peer_id}/p2p/{IDS[0].peer_id}",)
            config = NodeConfig(
                gossip=gossip, training=NO_TRAINING, group=GroupSettings(True, 3), bootstrap=boot
            )
            transport = net.network.transport(IDS[i].peer_id)
            learner = VectorLearner(model(i / 10), 10 * (i + 1))
            node = Node(transport, learner, config, rng=random.Random(i), identity=IDS[i])
            await net.nursery.start(transport.run)
            await net.nursery.start(node.run)
            nodes.append(node)
        expected = weighted_mean([(n.learner.samples, dict(tensors_of(n))) for n in nodes])
        await trio.sleep(20.0)
        for node in nodes:
            assert_models(node, expected, atol=1e-6)
            assert node.stats.counters.completed == 0  # not one pairwise exchange
            assert not offences(node)
        assert sum(group_of(n)["led"] for n in nodes) > 10
