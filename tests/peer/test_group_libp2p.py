"""Secure group rounds between ``Node``s on real libp2p hosts (127.0.0.1): the protocol
handler, framing, deadlines and bans over TCP + Noise + yamux, in real time. The hand-played
member is ``test_group_node``'s, on its own libp2p host."""

from __future__ import annotations

import random

import numpy as np
import pytest
import trio
from test_group_node import RawMember, answer_peers, bad_share, group_of, model, offences

from gossiplearn.crypto.identity import Identity
from gossiplearn.errors import TransportError
from gossiplearn.gossip.messages import PeerRecord
from gossiplearn.peer.home.config import GossipConfig, SecurityConfig, TrainingConfig
from gossiplearn.peer.net.host import Libp2pTransport
from gossiplearn.peer.node.config import GroupSettings
from gossiplearn.peer.node.group import GroupOutcome
from gossiplearn.peer.node.node import PEERS_PROTOCOL, Node, NodeConfig
from gossiplearn.peer.sim import VectorLearner

QUIET = GossipConfig(interval=1e6, exchange_timeout=30.0, discovery_interval=1e6)
NO_TRAINING = TrainingConfig(enabled=False, eval_interval=1e6)
LISTEN = ["/ip4/127.0.0.1/tcp/0"]


async def test_three_libp2p_peers_complete_a_round() -> None:
    config = NodeConfig(gossip=QUIET, training=NO_TRAINING, group=GroupSettings(True, 3))
    ids = [Identity.generate() for _ in range(3)]
    rng = np.random.default_rng(0)
    with trio.fail_after(20):
        async with (
            Libp2pTransport.open(ids[0], LISTEN, dial_timeout=5) as a,
            Libp2pTransport.open(ids[1], LISTEN, dial_timeout=5) as b,
            Libp2pTransport.open(ids[2], LISTEN, dial_timeout=5) as c,
            trio.open_nursery() as nursery,
        ):
            learners = [VectorLearner({"w": rng.normal(size=1000)}, 10 * (i + 1)) for i in range(3)]
            nodes = [
                Node(t, learners[i], config, rng=random.Random(i), identity=ids[i])
                for i, t in enumerate((a, b, c))
            ]
            for node in nodes:
                await nursery.start(node.run)
            for node in nodes[1:]:
                record = PeerRecord(node.peer_id, tuple(node.transport.addrs()))
                nodes[0].view.learn(record, trio.current_time())
            expected = sum(lrn.samples * lrn.tensors["w"] for lrn in learners) / 60

            assert await nodes[0].groups.lead() is GroupOutcome.COMPLETED
            while any(n.stats.group.completed == 0 for n in nodes):
                await trio.sleep(0.05)
            for learner in learners:
                np.testing.assert_allclose(learner.tensors["w"], expected, atol=1e-9)
            nursery.cancel_scope.cancel()


async def test_a_hostile_member_on_libp2p_is_refused_charged_banned_and_cut_off() -> None:
    """A member on its own libp2p host that joins honestly but sends a short masked vector:
    every round it spoils is abandoned with nothing merged, each is an offence, the third
    bans it, and the ban closes its connection and refuses its dials."""
    security = SecurityConfig(ban_strikes=3, ban_window=600.0, ban_seconds=600.0)
    config = NodeConfig(
        gossip=QUIET, training=NO_TRAINING, security=security, group=GroupSettings(True, 3)
    )
    ids = [Identity.generate() for _ in range(3)]
    with trio.fail_after(60):
        async with (
            Libp2pTransport.open(ids[0], LISTEN, dial_timeout=5) as a,
            Libp2pTransport.open(ids[1], LISTEN, dial_timeout=5) as b,
            Libp2pTransport.open(ids[2], LISTEN, dial_timeout=5) as evil,
            trio.open_nursery() as nursery,
        ):
            learners = [VectorLearner(model(0.1), 10), VectorLearner(model(0.2), 20)]
            leader, member = (
                Node(t, learner, config, rng=random.Random(i), identity=ids[i])
                for i, (t, learner) in enumerate(zip((a, b), learners, strict=True))
            )
            for node in (leader, member):
                await nursery.start(node.run)
            evil.set_handler(PEERS_PROTOCOL, answer_peers)
            RawMember(evil, ids[2], misbehave=bad_share)
            for peer, t in ((member, b), (None, evil)):
                peer_id = t.peer_id if peer is None else peer.peer_id
                leader.view.learn(PeerRecord(peer_id, tuple(t.addrs())), trio.current_time())
            before = [{k: v.copy() for k, v in lrn.tensors.items()} for lrn in learners]
            await (await evil.open_stream(leader.peer_id, PEERS_PROTOCOL, a.addrs())).reset()

            strikes = 0
            while strikes < 3:  # a round needs both neighbours: wait out the backoff between
                outcome = await leader.groups.lead()
                if outcome is GroupOutcome.ABANDONED:
                    strikes += 1
                    assert offences(leader) == {"bad-share": strikes}
                else:
                    assert outcome is GroupOutcome.SKIPPED
                    await trio.sleep(0.1)
            assert group_of(leader)["abandoned"] == {"bad-share": 3}
            banned = leader.status()["security"]["banned"]
            assert [b["peer_id"] for b in banned] == [evil.peer_id]
            while member.busy:
                await trio.sleep(0.05)
            for learner, old in zip(learners, before, strict=True):
                for k, v in old.items():
                    np.testing.assert_array_equal(learner.tensors[k], v)
            assert not offences(member)
            with pytest.raises(TransportError):  # the ban holds at the connection too
                await evil.open_stream(leader.peer_id, PEERS_PROTOCOL, a.addrs())
            nursery.cancel_scope.cancel()
