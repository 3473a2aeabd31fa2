"""Finding peers: joining through the bootstrap addresses, and the peer-exchange protocol.

``Discovery.run`` redials the bootstrap addresses with growing backoff while we know nobody we
can dial (py-libp2p's own bootstrap never retries), then keeps asking a random neighbour for the
peers it knows (``/gossiplearn/peers/1.0.0``, docs/protocol.md section 6). Peers that are not
admissible (banned, not members) are never learnt; a peer may only speak for itself in its own
record. Every wait is under a deadline; a remote's fault is charged through ``Admission``.
"""

from __future__ import annotations

import logging
import random

import trio

from gossiplearn.errors import DecodeError, RemoteProtocolError, TransportError
from gossiplearn.gossip.messages import PeerRecord, PeersReply, PeersRequest
from gossiplearn.gossip.sampling import PeerView
from gossiplearn.peer.home.config import GossipConfig
from gossiplearn.peer.net.framed import FramedStream, close_quietly
from gossiplearn.peer.net.transport import Stream, Transport
from gossiplearn.peer.node.admission import Admission
from gossiplearn.peer.node.limits import PEERS_LIMITS, control_timeout
from gossiplearn.peer.node.stats import NodeStats

log = logging.getLogger(__name__)

PEERS_PROTOCOL = "/gossiplearn/peers/1.0.0"
PEERS_PER_REPLY = 64
MAX_BACKOFF = 30.0  # seconds between bootstrap attempts, at most
SMALL_VIEW = 8  # below this many known peers, ask for more every second


class Discovery:
    def __init__(
        self,
        transport: Transport,
        admission: Admission,
        config: GossipConfig,
        *,
        bootstrap: tuple[str, ...],
        rng: random.Random,
    ) -> None:
        self.transport = transport
        self.admission = admission
        self.view: PeerView = admission.view
        self.stats: NodeStats = admission.stats
        self.config = config
        self.bootstrap = bootstrap
        self.rng = rng
        self.control_timeout = control_timeout(config)

    async def run(self) -> None:
        """Join, then keep learning peers from peers, until cancelled.

        Known peers (from the address book, or learnt earlier) are the fallback: the wait after
        a failed bootstrap dial ends as soon as one of them is out of its backoff, so a peer
        whose bootstrap node is gone rejoins through the peers it knew.
        """
        backoff = 1.0
        while True:
            if not self.view.eligible(trio.current_time()) and self.bootstrap:
                joined = await self.dial_bootstrap()
                backoff = 1.0 if joined else min(backoff * 2, MAX_BACKOFF)
                if not joined:
                    wait = backoff * self.rng.uniform(0.8, 1.2)
                    retry_at = self.view.next_retry()
                    if retry_at is not None:
                        wait = min(wait, max(0.0, retry_at - trio.current_time()))
                    await trio.sleep(wait)
                    continue
            peer = self.view.sample(self.rng, trio.current_time())
            if peer is not None:
                await self.ask_peers(peer)
            # learn quickly while the view is small, then settle to the configured pace
            pace = self.config.discovery_interval if len(self.view) >= SMALL_VIEW else 1.0
            await trio.sleep(min(pace, self.config.discovery_interval) * self.rng.uniform(0.8, 1.2))

    async def dial_bootstrap(self) -> bool:
        """Dial every bootstrap address; True if any answered (with another peer than us)."""
        joined = False
        for addr in self.bootstrap:
            try:
                peer = await self.transport.connect(addr)
            except TransportError as exc:
                log.warning("bootstrap %s unreachable: %s", addr, exc)
                continue
            if peer == self.transport.peer_id:
                continue
            now = trio.current_time()
            self.view.learn(PeerRecord(peer, (addr,)), now)
            self.view.mark_connected(peer, now)
            log.info("joined through %s", addr)
            joined = True
        return joined

    def own_record(self) -> PeerRecord:
        return PeerRecord(self.transport.peer_id, tuple(self.transport.addrs()[:8]))

    async def ask_peers(self, peer: str) -> int:
        """Ask ``peer`` for the peers it knows; returns how many were new to us. Never raises
        for the remote's fault."""
        entry = self.view.get(peer)
        framed: FramedStream | None = None
        stream: Stream | None = None
        try:
            with trio.fail_after(self.config.exchange_timeout):
                stream = await self.transport.open_stream(
                    peer, PEERS_PROTOCOL, entry.addrs if entry else ()
                )
                framed = FramedStream(stream)
                await framed.send(PeersRequest(self.own_record()))
                reply = await framed.receive(PEERS_LIMITS)
                if not isinstance(reply, PeersReply):
                    raise DecodeError(f"expected a peer list, got {type(reply).__name__}")
        except (TransportError, trio.TooSlowError) as exc:
            self.admission.fail(peer, f"peer exchange failed: {exc!r}")
            if stream is not None:
                await stream.reset()
            return 0
        except RemoteProtocolError as exc:
            if stream is not None:
                await stream.reset()
            await self.admission.charge(peer, exc, what="peer list")
            return 0
        finally:
            self.stats.count_bytes(framed)
        await close_quietly(stream)
        now = trio.current_time()
        self.view.success(peer, now)
        self.view.mark_connected(peer, now)
        admitted = [r for r in reply.peers if self.admission.admissible(r.peer_id)]
        new = self.view.learn_all(admitted, now, source=peer)
        if new:
            log.info("learnt %d peer(s) from %s", len(new), peer)
        return len(new)

    async def on_stream(self, stream: Stream) -> None:
        """The protocol handler: answer a peers request within the stream limits."""
        await self.admission.serve_bounded(stream, self._answer)

    async def _answer(self, stream: Stream) -> None:
        framed = FramedStream(stream)
        try:
            with trio.fail_after(self.control_timeout):
                msg = await framed.receive(PEERS_LIMITS)
                if not isinstance(msg, PeersRequest):
                    raise DecodeError(f"expected a peers request, got {type(msg).__name__}")
                now = trio.current_time()
                if msg.sender.peer_id == stream.remote_peer:  # a peer may only speak for itself
                    self.view.learn(msg.sender, now)
                self.view.mark_connected(stream.remote_peer, now)
                records = [self.own_record(), *self.view.records(PEERS_PER_REPLY - 1)]
                await framed.send(PeersReply(tuple(records)))
                await stream.close()
        except TransportError:
            await stream.reset()
        except trio.TooSlowError:
            await stream.reset()
            await self.admission.offend(stream.remote_peer, "timeout")
        except RemoteProtocolError as exc:
            await stream.reset()
            await self.admission.charge(stream.remote_peer, exc, what="peer list")
        finally:
            self.stats.count_bytes(framed)
