"""One ``Node`` on the in-memory network, driven from outside: admission, bans, stream bounds,
the fair-share rule, the one-exchange slot, ``stop``'s grace, refused models and the
``Outcome`` of ``initiate``.

Misbehaving remotes are played by hand (``RawPeer``): they open streams on the memory transport
and write whatever frames they like. The tests read only the node's public parts
(``status()``, ``stats``, ``view``, ``busy``, the learner's ``snapshot``), return values and
what the remote sees on its stream; never a private field. Time is virtual (the autojump clock:
the learners are numpy, nothing runs in a thread), and every test runs under a deadline of
``DEADLINE`` virtual seconds (``node_on_network``), so a hang fails fast instead of blocking.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from gossiplearn.crypto.consortium import Members
from gossiplearn.errors import TransportError
from gossiplearn.gossip.exchange import LocalModel, Outcome
from gossiplearn.gossip.framing import frame_header
from gossiplearn.gossip.messages import (
    Accept,
    Decline,
    Limits,
    Message,
    ModelOffer,
    PeerRecord,
    PeersReply,
    PeersRequest,
    Propose,
    encode,
    encoded_model_size,
    specs_of,
)
from gossiplearn.peer.home.config import GossipConfig, SecurityConfig, TrainingConfig
from gossiplearn.peer.net.framed import FramedStream
from gossiplearn.peer.net.transport import MemoryNetwork, MemoryTransport, Stream
from gossiplearn.peer.node.limits import CONTROL_LIMITS, PEERS_LIMITS
from gossiplearn.peer.node.node import EXCHANGE_PROTOCOL, PEERS_PROTOCOL, Node, NodeConfig
from gossiplearn.peer.sim import VectorLearner

NODE = "node"  # the peer ID of the node under test
TASK = b"vector-learner"  # VectorLearner's task digest
SAMPLES = 100
MODEL_LIMITS = Limits(max_frame=1 << 20)  # what a remote accepts as the node's model
DEADLINE = 120.0  # virtual seconds, for any one test
POLL = 0.01  # virtual seconds between looks at the node's state

# The node never starts an exchange by itself (the tests call ``initiate``) and never trains.
QUIET = GossipConfig(interval=1e6, exchange_timeout=30.0, discovery_interval=1e6)
NO_TRAINING = TrainingConfig(enabled=False, eval_interval=1e6)


def model(offset: float = 0.0) -> dict[str, np.ndarray]:
    """The node's starting model, shifted by ``offset`` (remotes hold nearby models, so
    screening merges them without clipping)."""
    return {
        "w": np.linspace(-1.0, 1.0, 8) + offset,
        "b": np.arange(6, dtype=np.float64).reshape(2, 3) + offset,
    }


async def until(check: Callable[[], object]) -> None:
    """Poll ``check`` until it holds (virtual time; the test's deadline bounds the wait)."""
    while not check():
        await trio.sleep(POLL)


async def read_to_end(stream: Stream) -> bytes:
    """Everything the node still sends on ``stream`` before ending it (reset or close)."""
    out = b""
    try:
        while chunk := await stream.read(65536):
            out += chunk
    except TransportError:
        pass
    return out


def frame(body: bytes) -> bytes:
    return frame_header(len(body)) + body


async def answer_peers(stream: Stream) -> None:
    """A remote's honest answer to the node's peer-exchange requests (it knows nobody), so the
    node's discovery loop finds every remote in good standing."""
    framed = FramedStream(stream)
    try:
        await framed.receive(PEERS_LIMITS)
        await framed.send(PeersReply(()))
        await stream.close()
    except TransportError:
        await stream.reset()


class RawPeer:
    """A remote played by hand: it opens streams to the node and writes what it likes.

    Its honest behaviour is the protocol's (docs/protocol.md): Propose, then after Accept both
    sides send a ModelOffer; its model has our names, shapes and dtypes, near our values.
    """

    def __init__(self, transport: MemoryTransport, offset: float = 0.01) -> None:
        self.transport = transport
        self.peer_id = transport.peer_id
        self.tensors = model(offset)
        self.local = LocalModel.of(
            specs_of(self.tensors), SAMPLES, encoded_model_size(self.tensors), task=TASK
        )

    def propose(self) -> Propose:
        return Propose(self.local.fingerprint, SAMPLES, self.local.model_bytes, TASK)

    def offer(self, **changes: Any) -> ModelOffer:
        """Our honest ModelOffer, with ``changes`` to its fields."""
        offer = ModelOffer(
            fingerprint=self.local.fingerprint,
            samples=SAMPLES,
            steps=0,
            accuracy=None,
            loss=None,
            tensors=self.tensors,
            task=TASK,
        )
        return replace(offer, **changes)

    async def open(self) -> FramedStream:
        """A new exchange stream to the node. Raises TransportError if it is refused."""
        return FramedStream(await self.transport.open_stream(NODE, EXCHANGE_PROTOCOL))

    async def ask(self) -> tuple[FramedStream, Message]:
        """Open an exchange stream and propose; the stream and the node's answer."""
        framed = await self.open()
        await framed.send(self.propose())
        return framed, await framed.receive(CONTROL_LIMITS)

    async def swap(self, framed: FramedStream) -> Message:
        """After Accept: send our model; the node's model."""
        await framed.send(self.offer())
        theirs = await framed.receive(MODEL_LIMITS)
        await framed.stream.close()
        return theirs

    async def exchange(self) -> Message:
        """One whole exchange: the node's model, or its Decline."""
        framed, answer = await self.ask()
        if not isinstance(answer, Accept):
            return answer
        return await self.swap(framed)

    async def introduce(self) -> None:
        """Tell the node about ourselves (a peer-exchange request), as a joining peer does."""
        stream = await self.transport.open_stream(NODE, PEERS_PROTOCOL)
        framed = FramedStream(stream)
        await framed.send(PeersRequest(PeerRecord(self.peer_id, tuple(self.transport.addrs()))))
        assert isinstance(await framed.receive(PEERS_LIMITS), PeersReply)
        await stream.close()

    def answer_exchanges(self, answer: Accept | Decline, offer: ModelOffer | None = None) -> None:
        """Serve the node's proposals: answer with ``answer``; after Accept send ``offer``."""

        async def handler(stream: Stream) -> None:
            framed = FramedStream(stream)
            try:
                assert isinstance(await framed.receive(CONTROL_LIMITS), Propose)
                await framed.send(answer)
                if offer is not None:
                    await framed.send(offer)
                    await framed.receive(MODEL_LIMITS)
                await stream.close()
            except TransportError:  # the node ended it (a refusal resets the stream)
                await stream.reset()

        self.transport.set_handler(EXCHANGE_PROTOCOL, handler)


@dataclass
class Net:
    network: MemoryNetwork
    nursery: trio.Nursery
    node: Node
    stopped: trio.Event  # set when ``node.run`` has returned

    async def remote(self, peer_id: str, offset: float = 0.01) -> RawPeer:
        """A raw remote, reachable (it answers peer exchange honestly)."""
        transport = self.network.transport(peer_id)
        transport.set_handler(PEERS_PROTOCOL, answer_peers)
        await self.nursery.start(transport.run)
        return RawPeer(transport, offset)

    async def honest_node(self, peer_id: str, tensors: dict[str, np.ndarray]) -> Node:
        """Another running ``Node``, configured as the one under test."""
        node = _node(self.network.transport(peer_id), tensors, SecurityConfig(), Members())
        await _start(self.nursery, node, trio.Event())
        return node

    async def idle(self) -> None:
        """Wait until the node's exchange slot is free (the exchange in flight has ended)."""
        await until(lambda: not self.node.busy)


def _node(
    transport: MemoryTransport,
    tensors: dict[str, np.ndarray],
    security: SecurityConfig,
    members: Members,
) -> Node:
    config = NodeConfig(gossip=QUIET, training=NO_TRAINING, security=security, members=members)
    return Node(transport, VectorLearner(tensors, SAMPLES), config, rng=random.Random(0))


async def _start(nursery: trio.Nursery, node: Node, stopped: trio.Event) -> None:
    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        await node.run(task_status=task_status)
        stopped.set()

    assert isinstance(node.transport, MemoryTransport)
    await nursery.start(node.transport.run)
    await nursery.start(run)


@asynccontextmanager
async def node_on_network(
    *, security: SecurityConfig | None = None, members: Members | None = None
) -> AsyncIterator[Net]:
    """The node under test, running on a fresh memory network, for at most ``DEADLINE``."""
    network = MemoryNetwork()
    node = _node(
        network.transport(NODE), model(), security or SecurityConfig(), members or Members()
    )
    stopped = trio.Event()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await _start(nursery, node, stopped)
            yield Net(network, nursery, node, stopped)
            nursery.cancel_scope.cancel()


def security_of(node: Node) -> dict[str, Any]:
    return node.status()["security"]  # type: ignore[no-any-return]


def exchanges_of(node: Node) -> dict[str, Any]:
    return node.status()["exchanges"]  # type: ignore[no-any-return]


def offences(node: Node) -> int:
    return sum(security_of(node)["offences"].values())


async def assert_model(node: Node, expected: dict[str, np.ndarray]) -> None:
    now = await node.learner.snapshot()
    assert now.keys() == expected.keys()
    for name, tensor in expected.items():
        np.testing.assert_array_equal(now[name], tensor, err_msg=name)


# ------------------------------------------------------------------------------ admission


async def test_a_non_member_is_refused_at_the_gate_and_a_member_is_admitted(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with node_on_network(members=Members({"friend": "Friend"})) as net:
        stranger = await net.remote("stranger")
        with pytest.raises(TransportError, match="not-a-member"):
            await stranger.open()
        assert security_of(net.node)["connections_refused"] == {"not-a-member": 1}
        assert "stranger" not in net.node.view

        friend = await net.remote("friend")
        assert isinstance(await friend.exchange(), ModelOffer)
        await net.idle()
        assert exchanges_of(net.node)["completed"] == 1
        assert security_of(net.node)["connections_refused"] == {"not-a-member": 1}


# ------------------------------------------------------------------------------ bans

BAD_FIRST_FRAMES = {
    "not msgpack": frame(b"\xc1\xc1\xc1\xc1"),
    "not a proposal": frame(encode(Accept())),
    "over the proposal limit": frame_header(CONTROL_LIMITS.max_frame + 1),
}


async def offend_once(net: Net, peer: RawPeer, garbage: bytes) -> None:
    """Open an exchange stream, write ``garbage``; wait until the node charged it."""
    before = offences(net.node)
    stream = await peer.transport.open_stream(NODE, EXCHANGE_PROTOCOL)
    await stream.write(garbage)
    assert await read_to_end(stream) == b""  # no answer: the stream is reset
    await until(lambda: offences(net.node) == before + 1)


async def test_repeated_bad_input_bans_a_peer_until_the_ban_expires(
    autojump_clock: trio.abc.Clock,
) -> None:
    security = SecurityConfig(ban_strikes=3, ban_window=60.0, ban_seconds=30.0)
    async with node_on_network(security=security) as net:
        node = net.node
        evil = await net.remote("evil")
        await evil.introduce()
        assert "evil" in node.view

        for garbage in BAD_FIRST_FRAMES.values():
            assert not security_of(node)["banned"]
            await offend_once(net, evil, garbage)

        sec = security_of(node)
        assert sec["offences"] == {"malformed": 3}
        assert sec["bans"] == 1
        assert [ban["peer_id"] for ban in sec["banned"]] == ["evil"]
        assert "evil" not in node.view
        await until(lambda: "evil" not in node.transport.connected_peers())
        with pytest.raises(TransportError, match="banned"):
            await evil.open()
        assert security_of(node)["connections_refused"] == {"banned": 1}

        await trio.sleep(security.ban_seconds)  # virtual: the ban runs out by itself
        assert security_of(node)["banned"] == []
        assert isinstance(await evil.exchange(), ModelOffer)
        await net.idle()
        assert exchanges_of(node)["completed"] == 1


async def test_offences_further_apart_than_the_window_do_not_ban(
    autojump_clock: trio.abc.Clock,
) -> None:
    security = SecurityConfig(ban_strikes=2, ban_window=10.0, ban_seconds=30.0)
    async with node_on_network(security=security) as net:
        evil = await net.remote("evil")
        await offend_once(net, evil, BAD_FIRST_FRAMES["not msgpack"])
        await trio.sleep(security.ban_window + 1)
        await offend_once(net, evil, BAD_FIRST_FRAMES["not a proposal"])
        sec = security_of(net.node)
        assert sec["bans"] == 0
        assert sec["banned"] == []
        assert isinstance(await evil.exchange(), ModelOffer)


# ------------------------------------------------------------------------------ stream bounds


async def test_streams_beyond_the_per_peer_bound_are_reset_and_an_offence(
    autojump_clock: trio.abc.Clock,
) -> None:
    security = SecurityConfig(max_streams_per_peer=2, max_inbound_streams=32)
    async with node_on_network(security=security) as net:
        greedy = await net.remote("greedy")
        held = [await greedy.open() for _ in range(2)]
        # both are being served: their handlers wait for a proposal
        await trio.testing.wait_all_tasks_blocked()
        extra = await greedy.open()
        assert await read_to_end(extra.stream) == b""
        await until(lambda: offences(net.node) == 1)
        sec = security_of(net.node)
        assert sec["streams_refused"] == {"too-many-streams": 1}
        assert sec["offences"] == {"too-many-streams": 1}

        # the streams within the bound are still served
        await held[0].send(greedy.propose())
        assert await held[0].receive(CONTROL_LIMITS) == Accept()


async def test_streams_beyond_the_overall_bound_are_refused_as_overload(
    autojump_clock: trio.abc.Clock,
) -> None:
    security = SecurityConfig(max_streams_per_peer=4, max_inbound_streams=2)
    async with node_on_network(security=security) as net:
        first, second, third = [await net.remote(p) for p in ("first", "second", "third")]
        held = [await first.open(), await second.open()]
        await trio.testing.wait_all_tasks_blocked()
        extra = await third.open()
        assert await read_to_end(extra.stream) == b""
        await trio.testing.wait_all_tasks_blocked()
        sec = security_of(net.node)
        assert sec["streams_refused"] == {"overload": 1}
        assert sec["offences"] == {}  # no fault of the third peer's

        await held[0].send(first.propose())
        assert await held[0].receive(CONTROL_LIMITS) == Accept()


# ------------------------------------------------------------------------------ the slot


async def test_a_proposal_while_an_exchange_is_in_flight_is_declined_busy(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with node_on_network() as net:
        holder, other = await net.remote("holder"), await net.remote("other")
        held, answer = await holder.ask()
        assert answer == Accept()
        assert net.node.busy  # it holds the slot: Accept sent, no model yet

        _, answer = await other.ask()
        assert answer == Decline("busy")
        await until(lambda: exchanges_of(net.node)["declined_inbound"] == 1)

        assert isinstance(await holder.swap(held), ModelOffer)  # the one in flight completes
        await net.idle()
        counts = exchanges_of(net.node)
        assert (counts["completed"], counts["answered"], counts["declined_inbound"]) == (1, 1, 1)


async def test_a_peer_far_over_its_fair_share_is_declined_busy_while_others_exchange(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with node_on_network() as net:
        node = net.node
        pushy, polite = await net.remote("pushy"), await net.remote("polite")
        await polite.introduce()  # a second neighbour in good standing

        completed = 0
        for _ in range(10):
            answer = await pushy.exchange()
            await net.idle()
            if not isinstance(answer, ModelOffer):
                break
            completed += 1
        assert answer == Decline("busy")
        assert not node.busy  # nothing was in flight: the fair-share rule declined it
        assert completed >= 1
        assert exchanges_of(node)["completed"] == completed

        assert isinstance(await polite.exchange(), ModelOffer)  # others still get theirs
        await net.idle()
        # and once another has had its turn, the pushy peer gets one again
        assert isinstance(await pushy.exchange(), ModelOffer)
        await net.idle()
        assert exchanges_of(node)["completed"] == completed + 2


# ------------------------------------------------------------------------------ stop


async def test_stop_declines_new_proposals_and_lets_the_exchange_in_flight_finish(
    autojump_clock: trio.abc.Clock,
) -> None:
    grace = 5.0
    async with node_on_network() as net:
        holder, late = await net.remote("holder"), await net.remote("late")
        held, answer = await holder.ask()
        assert answer == Accept()

        returned = trio.Event()

        async def stop() -> None:
            await net.node.stop(grace)
            returned.set()

        start = trio.current_time()
        net.nursery.start_soon(stop)
        await trio.testing.wait_all_tasks_blocked()  # stop is waiting for the exchange

        _, answer = await late.ask()
        assert answer == Decline("closing")
        assert not returned.is_set()

        assert isinstance(await holder.swap(held), ModelOffer)
        await returned.wait()
        await net.stopped.wait()  # the node's loops ended too
        assert trio.current_time() - start < grace  # it did not wait out the grace
        assert exchanges_of(net.node)["completed"] == 1


async def test_stop_returns_after_the_grace_when_the_exchange_is_stuck(
    autojump_clock: trio.abc.Clock,
) -> None:
    grace = 1.0  # well inside the node's transfer deadline (5 s and more)
    async with node_on_network() as net:
        holder = await net.remote("holder")
        _, answer = await holder.ask()
        assert answer == Accept()  # and it never sends its model

        start = trio.current_time()
        await net.node.stop(grace)
        assert trio.current_time() - start == pytest.approx(grace)
        assert net.node.busy  # the exchange was still stuck when stop gave up on it
        await net.stopped.wait()


# ------------------------------------------------------------------------------ refused models


def _scaled(peer: RawPeer, factor: float) -> dict[str, np.ndarray]:
    return {name: tensor * factor for name, tensor in peer.tensors.items()}


# reason → the frame body a remote sends instead of an acceptable ModelOffer
BAD_MODELS: dict[str, Callable[[RawPeer], bytes]] = {
    "malformed": lambda peer: b"\xc1 not msgpack",
    "non-finite": lambda peer: encode(peer.offer(tensors=_scaled(peer, np.nan))),
    "incompatible": lambda peer: encode(  # our fingerprint claimed, another shape sent
        peer.offer(tensors={**peer.tensors, "w": peer.tensors["w"][:-1]})
    ),
    "inconsistent": lambda peer: encode(peer.offer(samples=SAMPLES + 1)),  # ≠ its proposal
    "norm": lambda peer: encode(peer.offer(tensors=_scaled(peer, 1e6))),  # screening refuses
}


@pytest.mark.parametrize("reason", list(BAD_MODELS))
async def test_a_refused_model_resets_the_stream_is_counted_and_merges_nothing(
    reason: str, autojump_clock: trio.abc.Clock
) -> None:
    async with node_on_network() as net:
        node = net.node
        before = await node.learner.snapshot()
        bad = await net.remote("bad")
        framed, answer = await bad.ask()
        assert answer == Accept()
        await framed.send_body(BAD_MODELS[reason](bad))

        await until(lambda: exchanges_of(node)["refused"] == 1)
        with pytest.raises(TransportError):  # reset: the node reads nothing more from us
            await framed.stream.write(frame(encode(bad.offer())))
        counts = exchanges_of(node)
        assert counts["refused_by_reason"] == {reason: 1}
        assert counts["completed"] == 0
        assert security_of(node)["offences"] == {reason: 1}
        assert not node.busy
        await assert_model(node, before)


# ------------------------------------------------------------------------------ initiate


async def test_initiate_completes_an_exchange_with_an_honest_node(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with node_on_network() as net:
        ours, theirs = model(), model(0.5)
        partner = await net.honest_node("partner", theirs)
        assert await net.node.initiate("partner") is Outcome.COMPLETED
        await until(lambda: not partner.busy)
        # equal weights, no training: both hold the plain average now
        average = {name: (ours[name] + theirs[name]) / 2 for name in ours}
        await assert_model(net.node, average)
        await assert_model(partner, average)
        assert exchanges_of(net.node)["completed"] == exchanges_of(partner)["answered"] == 1


async def test_initiate_is_declined_by_a_busy_remote(autojump_clock: trio.abc.Clock) -> None:
    async with node_on_network() as net:
        busy = await net.remote("busy")
        busy.answer_exchanges(Decline("busy"))
        assert await net.node.initiate("busy") is Outcome.DECLINED
        counts = exchanges_of(net.node)
        assert (counts["declined"], counts["completed"], counts["failed"]) == (1, 0, 0)


async def test_initiate_fails_for_an_unreachable_peer(autojump_clock: trio.abc.Clock) -> None:
    async with node_on_network() as net:
        assert await net.node.initiate("nobody") is Outcome.FAILED
        counts = exchanges_of(net.node)
        assert (counts["failed"], counts["completed"]) == (1, 0)
        assert security_of(net.node)["offences"] == {}


async def test_initiate_refuses_a_remote_that_sends_a_bad_model(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with node_on_network() as net:
        before = await net.node.learner.snapshot()
        bad = await net.remote("bad")
        bad.answer_exchanges(Accept(), bad.offer(tensors=_scaled(bad, np.nan)))
        assert await net.node.initiate("bad") is Outcome.REFUSED
        counts = exchanges_of(net.node)
        assert counts["refused_by_reason"] == {"non-finite": 1}
        assert counts["completed"] == 0
        assert security_of(net.node)["offences"] == {"non-finite": 1}
        await assert_model(net.node, before)
