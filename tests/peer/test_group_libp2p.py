"""One secure group round between three ``Node``s on real libp2p hosts (127.0.0.1): the
protocol handler, framing and deadlines over TCP + Noise + yamux, in real time."""

from __future__ import annotations

import random

import numpy as np
import trio

from gossiplearn.crypto.identity import Identity
from gossiplearn.gossip.messages import PeerRecord
from gossiplearn.peer.home.config import GossipConfig, TrainingConfig
from gossiplearn.peer.net.host import Libp2pTransport
from gossiplearn.peer.node.config import GroupSettings
from gossiplearn.peer.node.group import GroupOutcome
from gossiplearn.peer.node.node import Node, NodeConfig
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
