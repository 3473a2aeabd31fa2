"""What the node needs from a network, and an in-memory implementation of it.

``Transport`` is the small interface the node drives; ``peer/net/host.py`` implements it on libp2p
and ``MemoryNetwork`` here implements it in one trio process (for the simulator and tests). Both
raise ``TransportError`` (and only that) for failed dials and broken streams, and both run each
inbound stream handler in a task of their own whose exceptions never escape.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from gossiplearn.errors import TransportError

log = logging.getLogger(__name__)


class Stream(Protocol):
    """A bidirectional byte stream to one remote peer."""

    @property
    def remote_peer(self) -> str: ...

    async def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` at end of stream. Raises TransportError."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None:
        """Finish cleanly (the remote reads EOF after what we wrote)."""
        ...

    async def reset(self) -> None:
        """Abort the stream; never raises."""
        ...


Handler = Callable[[Stream], Awaitable[None]]

# Admission control, asked about every authenticated remote peer before any stream opens:
# returns None to admit it, or a short reason ("not-a-member", "banned") to refuse it.
Gate = Callable[[str], str | None]


def open_gate(peer_id: str) -> str | None:
    """The gate of a transport nobody has restricted: admits everyone."""
    return None


class Transport(Protocol):
    @property
    def peer_id(self) -> str: ...

    def addrs(self) -> list[str]:
        """Addresses others can dial us on, each ending in /p2p/<our peer id>."""
        ...

    def set_handler(self, protocol: str, handler: Handler) -> None: ...

    def set_gate(self, gate: Gate) -> None:
        """Admission control for every connection, inbound and outbound (default: admit)."""
        ...

    async def disconnect(self, peer_id: str) -> None:
        """Close every connection to ``peer_id``; never raises."""
        ...

    async def connect(self, addr: str) -> str:
        """Dial a multiaddr ending in /p2p/<id>; returns that peer ID. Raises TransportError."""
        ...

    async def open_stream(self, peer_id: str, protocol: str, addrs: Sequence[str] = ()) -> Stream:
        """Open a stream, dialing ``addrs`` first if not connected. Raises TransportError."""
        ...

    def connected_peers(self) -> list[str]: ...


# ------------------------------------------------------------------------------ in memory


class MemoryStream:
    """One end of an in-memory stream pair (a bounded byte queue each way)."""

    def __init__(
        self,
        remote: str,
        send: trio.MemorySendChannel[bytes],
        recv: trio.MemoryReceiveChannel[bytes],
        counter: Callable[[int], None] | None = None,
        latency: float = 0.0,
    ) -> None:
        self._latency = latency
        self._remote = remote
        self._send = send
        self._recv = recv
        self._pending = b""
        self._counter = counter

    @property
    def remote_peer(self) -> str:
        return self._remote

    async def read(self, max_bytes: int) -> bytes:
        if not self._pending:
            try:
                self._pending = await self._recv.receive()
            except trio.EndOfChannel:
                return b""
            except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
                raise TransportError(f"stream to {self._remote} is closed") from exc
        out, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return out

    async def write(self, data: bytes) -> None:
        if self._counter is not None:
            self._counter(len(data))
        if self._latency:
            await trio.sleep(self._latency)
        try:
            await self._send.send(bytes(data))
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise TransportError(f"stream to {self._remote} is broken") from exc

    async def close(self) -> None:
        await self._send.aclose()

    async def reset(self) -> None:
        await self._send.aclose()
        await self._recv.aclose()


class MemoryNetwork:
    """A set of in-memory transports that can reach each other by peer ID.

    ``addrs`` are ``/memory/<peer id>/p2p/<peer id>``. A transport must be running
    (``MemoryTransport.run``) for streams to it to be served. ``latency`` (seconds) delays every
    write, so exchanges take time and can overlap as they do on a real network.
    """

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.transports: dict[str, MemoryTransport] = {}
        self.bytes_sent = 0

    def transport(self, peer_id: str) -> MemoryTransport:
        t = MemoryTransport(self, peer_id)
        self.transports[peer_id] = t
        return t

    def _count(self, n: int) -> None:
        self.bytes_sent += n


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, peer_id: str) -> None:
        self._net = network
        self._id = peer_id
        self._handlers: dict[str, Handler] = {}
        self._nursery: trio.Nursery | None = None
        self._connected: set[str] = set()
        self._gate: Gate = open_gate
        self.down = False  # a downed transport refuses dials and streams

    @property
    def peer_id(self) -> str:
        return self._id

    def addrs(self) -> list[str]:
        return [f"/memory/{self._id}/p2p/{self._id}"]

    def set_handler(self, protocol: str, handler: Handler) -> None:
        self._handlers[protocol] = handler

    def set_gate(self, gate: Gate) -> None:
        self._gate = gate

    async def disconnect(self, peer_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self._connected.discard(peer_id)
        other = self._net.transports.get(peer_id)
        if other is not None:
            other._connected.discard(self._id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve inbound streams until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def _target(self, peer_id: str) -> MemoryTransport:
        target = self._net.transports.get(peer_id)
        if target is None or target.down or target._nursery is None or self.down:
            raise TransportError(f"peer {peer_id} is unreachable")
        if peer_id not in self._connected:  # a new connection: both sides' gates decide
            for side, remote in ((target, self._id), (self, peer_id)):
                reason = side._gate(remote)
                if reason is not None:
                    raise TransportError(f"connection to {peer_id} refused: {reason}")
        return target

    async def connect(self, addr: str) -> str:
        peer_id = addr.rsplit("/p2p/", 1)[-1]
        self._target(peer_id)
        await trio.lowlevel.checkpoint()
        self._connected.add(peer_id)
        self._net.transports[peer_id]._connected.add(self._id)
        return peer_id

    async def open_stream(self, peer_id: str, protocol: str, addrs: Sequence[str] = ()) -> Stream:
        target = self._target(peer_id)
        handler = target._handlers.get(protocol)
        if handler is None:
            raise TransportError(f"peer {peer_id} does not speak {protocol}")
        await trio.lowlevel.checkpoint()
        a_send, b_recv = trio.open_memory_channel[bytes](math.inf)
        b_send, a_recv = trio.open_memory_channel[bytes](math.inf)
        net = self._net
        ours = MemoryStream(peer_id, a_send, a_recv, net._count, net.latency)
        theirs = MemoryStream(self._id, b_send, b_recv, net._count, net.latency)
        self._connected.add(peer_id)
        target._connected.add(self._id)
        assert target._nursery is not None
        target._nursery.start_soon(_serve, handler, theirs)
        return ours

    def connected_peers(self) -> list[str]:
        return sorted(self._connected)


async def _serve(handler: Handler, stream: Stream) -> None:
    try:
        await handler(stream)
    except Exception:
        log.exception("stream handler failed")
        await stream.reset()
