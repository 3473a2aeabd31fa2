"""Members only, on real libp2p hosts: the consortium key (private network) and the member list."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import numpy as np
import pytest
import trio

from gossiplearn.crypto.consortium import ConsortiumKey, Members
from gossiplearn.crypto.identity import Identity
from gossiplearn.errors import TransportError
from gossiplearn.gossip.messages import PeerRecord
from gossiplearn.peer.home.config import GossipConfig, TrainingConfig
from gossiplearn.peer.net.host import Libp2pTransport
from gossiplearn.peer.node.node import PEERS_PROTOCOL, Node, NodeConfig
from gossiplearn.peer.sim import VectorLearner

LISTEN = ["/ip4/127.0.0.1/tcp/0"]
DIAL = 2.0
GOSSIP = GossipConfig(interval=0.2, exchange_timeout=5.0, discovery_interval=0.3)
TRAINING = TrainingConfig(enabled=False, eval_interval=60.0)


@asynccontextmanager
async def host(identity: Identity, key: ConsortiumKey | None) -> AsyncIterator[Libp2pTransport]:
    async with Libp2pTransport.open(
        identity, LISTEN, dial_timeout=DIAL, consortium_key=key
    ) as transport:
        yield transport


def learner(seed: int) -> VectorLearner:
    rng = np.random.default_rng(seed)
    return VectorLearner({"w": rng.normal(size=(8,)).astype(np.float32)}, samples=10)


@asynccontextmanager
async def nodes(
    identities: list[Identity], key: ConsortiumKey | None, members: Members
) -> AsyncIterator[list[Node]]:
    """One node per identity, all with the same key and member list, bootstrapped off node 0."""
    async with AsyncExitStack() as stack:
        transports = [await stack.enter_async_context(host(i, key)) for i in identities]
        nursery = await stack.enter_async_context(trio.open_nursery())
        out: list[Node] = []
        for i, transport in enumerate(transports):
            boot = (transports[0].addrs()[0],) if i else ()
            config = NodeConfig(gossip=GOSSIP, training=TRAINING, bootstrap=boot, members=members)
            node = Node(transport, learner(i), config)
            await nursery.start(node.run)
            out.append(node)
        yield out
        nursery.cancel_scope.cancel()


async def test_only_holders_of_the_same_key_can_connect() -> None:
    key, other = ConsortiumKey.generate(), ConsortiumKey.generate()
    async with host(Identity.generate(), key) as member:
        target = member.addrs()[0]
        async with host(Identity.generate(), key) as insider:
            with trio.fail_after(10):
                assert await insider.connect(target) == member.peer_id
        for outsider_key in (None, other):
            async with host(Identity.generate(), outsider_key) as outsider:
                with trio.fail_after(DIAL + 5), pytest.raises(TransportError):
                    await outsider.connect(target)
        # and a keyed peer cannot reach an open one either: the networks do not mix
        async with (
            host(Identity.generate(), None) as open_peer,
            host(Identity.generate(), key) as keyed,
        ):
            with trio.fail_after(DIAL + 5), pytest.raises(TransportError):
                await keyed.connect(open_peer.addrs()[0])


async def test_a_non_member_holding_the_key_is_refused_before_any_protocol_runs() -> None:
    key = ConsortiumKey.generate()
    a, b, stranger = Identity.generate(), Identity.generate(), Identity.generate()
    members = Members({a.peer_id: "Acme", b.peer_id: "Bolt"})
    async with nodes([a, b], key, members) as (na, nb):
        with trio.fail_after(30):  # the members gossip with each other
            while na.stats.counters.completed == 0 or nb.stats.counters.completed == 0:
                await trio.sleep(0.05)
        async with host(stranger, key) as outsider:
            with trio.fail_after(DIAL + 5):
                with pytest.raises(TransportError):
                    await outsider.connect(na.transport.addrs()[0])
                # opening a gossip stream directly fails the same way: nothing reaches a handler
                with pytest.raises(TransportError):
                    await outsider.open_stream(na.peer_id, PEERS_PROTOCOL, na.transport.addrs())
        assert na.stats.connections_refused.get("not-a-member", 0) >= 2
        assert stranger.peer_id not in na.view
        assert nb.peer_id in na.view and na.status()["neighbours"][0]["name"] == "Bolt"
        status = na.status()["security"]
        assert status["connections_refused"]["not-a-member"] >= 2
        assert status["members"] == {a.peer_id: "Acme", b.peer_id: "Bolt"}


async def test_peer_exchange_does_not_spread_non_members_and_removal_disconnects() -> None:
    a, b, c = Identity.generate(), Identity.generate(), Identity.generate()
    everyone = Members({a.peer_id: "A", b.peer_id: "B", c.peer_id: "C"})
    async with nodes([a, b, c], None, everyone) as (na, nb, nc):
        with trio.fail_after(30):
            while not all(len(n.view) == 2 for n in (na, nb, nc)):
                await trio.sleep(0.05)
        # B knows an unlisted peer (as a compromised member would claim to); A asks B for its
        # peers and does not learn it
        ghost = Identity.generate().peer_id
        nb.view.learn(PeerRecord(ghost, (f"/ip4/127.0.0.1/tcp/9/p2p/{ghost}",)), 0.0)
        with trio.fail_after(10):
            await na.ask_peers(nb.peer_id)
        assert ghost in nb.view and ghost not in na.view
        # removing C from A's list drops it and its connection; C can no longer reach A
        await na.update_members(Members({a.peer_id: "A", b.peer_id: "B"}))
        assert nc.peer_id not in na.view
        assert nc.peer_id not in na.transport.connected_peers()
        with trio.fail_after(DIAL + 5), pytest.raises(TransportError):
            await nc.transport.open_stream(na.peer_id, PEERS_PROTOCOL, na.transport.addrs())
        assert na.stats.connections_refused["not-a-member"] >= 1


async def test_a_banned_peer_is_refused_at_connection_until_the_ban_expires() -> None:
    a, b = Identity.generate(), Identity.generate()
    async with nodes([a, b], None, Members()) as (na, nb):
        with trio.fail_after(30):
            while na.stats.counters.completed == 0:
                await trio.sleep(0.05)
        now = trio.current_time()
        for _ in range(na.admission.penalties.config.strikes):
            await na.admission.offend(nb.peer_id, "malformed")
        assert na.admission.penalties.banned(nb.peer_id, now)
        assert nb.peer_id not in na.view
        with trio.fail_after(DIAL + 5), pytest.raises(TransportError):
            await nb.transport.open_stream(na.peer_id, PEERS_PROTOCOL, na.transport.addrs())
        assert na.stats.connections_refused["banned"] >= 1
        banned = na.status()["security"]["banned"]
        assert [b["peer_id"] for b in banned] == [nb.peer_id]
        # the ban expires: lift it by moving its end into the past
        na.admission.penalties._banned[nb.peer_id] = trio.current_time() - 1
        with trio.fail_after(DIAL + 5):
            stream = await nb.transport.open_stream(
                na.peer_id, PEERS_PROTOCOL, na.transport.addrs()
            )
            await stream.reset()
