"""Our yamux: py-libp2p 0.8.1's, with two of its faults worked around (docs/libp2p-notes.md,
sections 13 and 14). With ``host``, the only module that imports libp2p."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import IHost, IMuxedConn, ISecureConn
from libp2p.network.connection.exceptions import RawConnError
from libp2p.peer.id import ID
from libp2p.security.exceptions import HandshakeFailure
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

log = logging.getLogger(__name__)

PENDING_CONTROL_FRAMES = 1024  # frames the yamux reader may queue before it waits to write
# A frame, once begun, is written whole whatever cancels its writer; if it cannot leave within
# this many seconds (the remote reads nothing), the connection is closed.
FRAME_WRITE_DEADLINE = 10.0


class GuardedYamux(Yamux):
    """py-libp2p 0.8.1's yamux, except that its reader never waits to write, and a frame is
    never cut.

    Upstream, the task that reads the connection answers a ping (and acknowledges a new stream)
    inline, under the connection's write lock. When both sides send a large message at once
    and both receive a ping (each side pings 0.5 s after connecting, then every 30 s), each
    reader waits for a lock held by a writer that waits for the other side's reader: the
    connection deadlocks for good (docs/libp2p-notes.md, section 13). Here the frames the reader
    writes are queued (in order) and written by a task of their own; any other write takes the
    queue first, so a stream's acknowledgement still precedes its data.

    Upstream, a writer cancelled in the middle of a frame leaves it cut, or, with a consortium
    key, encrypted but unsent (the private-network layer's keystream has moved on): the remote
    then reads garbage and every stream on the connection stalls (section 14). Here a frame,
    once its writer holds the lock, is written whole under a shield, within
    ``FRAME_WRITE_DEADLINE``; past it the connection is closed.
    """

    def __init__(
        self,
        secured_conn: ISecureConn,
        peer_id: ID,
        is_initiator: bool | None = None,
        on_close: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        super().__init__(secured_conn, peer_id, is_initiator, on_close)
        self._reader: trio.lowlevel.Task | None = None
        self._pending: deque[bytes] = deque()
        self._flushing = False

    async def handle_incoming(self) -> None:
        self._reader = trio.lowlevel.current_task()
        await super().handle_incoming()

    async def _write_frame(self, data: bytes) -> None:
        reader = trio.lowlevel.current_task() is self._reader
        if reader and self._nursery is not None and len(self._pending) < PENDING_CONTROL_FRAMES:
            self._pending.append(data)
            if not self._flushing:
                self._flushing = True
                self._nursery.start_soon(self._flush)
            return
        async with self._write_lock:
            await self._write_whole([*self._take_pending(), data])
        await trio.lowlevel.checkpoint()  # a cancellation of the caller lands here

    def _take_pending(self) -> list[bytes]:
        frames = list(self._pending)
        self._pending.clear()
        return frames

    async def _write_whole(self, frames: list[bytes]) -> None:
        """Write ``frames`` (under the write lock) to the end, shielded from the caller's
        cancellation; close the connection if they cannot leave within the deadline."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(FRAME_WRITE_DEADLINE):
                for frame in frames:
                    await self.secured_conn.write(frame)
                return
            log.warning(
                "closing the connection to %s: a frame could not be written in %.0f s",
                self.peer_id,
                FRAME_WRITE_DEADLINE,
            )
            with trio.move_on_after(2):
                await self.secured_conn.close()
        raise RawConnError(f"writing to {self.peer_id} stalled; connection closed")

    async def _flush(self) -> None:
        try:
            async with self._write_lock:
                await self._write_whole(self._take_pending())
        except Exception:  # the connection broke; its reader finds out itself
            log.debug("yamux control frames to %s not written", self.peer_id, exc_info=True)
            self._pending.clear()
        finally:
            self._flushing = False


class GuardedMuxers(MuxerMultistream):
    """Negotiates the muxer as upstream does, then builds our ``GuardedYamux``: py-libp2p
    0.8.1 builds its own ``Yamux`` for ``/yamux/1.0.0`` whatever class ``muxer_opt`` names."""

    async def new_conn(self, conn: ISecureConn, peer_id: ID) -> IMuxedConn:
        protocol, _ = await self._selector.select(conn, conn.is_initiator, self.negotiate_timeout)
        if protocol != YAMUX_PROTOCOL_ID:  # we offer nothing else
            raise HandshakeFailure(f"peer {peer_id} negotiated muxer {protocol}, not yamux")
        muxed = GuardedYamux(conn, peer_id, is_initiator=conn.is_initiator)
        return self._annotate_connection(muxed, conn, protocol)


def install_muxer(host: IHost) -> None:
    """Make ``host`` build ``GuardedYamux`` connections (see ``GuardedMuxers``)."""
    upgrader = host.get_network().upgrader  # type: ignore[attr-defined]
    current = upgrader.muxer_multistream
    if type(current) is not MuxerMultistream:  # a py-libp2p upgrade moved things: say so
        raise RuntimeError(f"unexpected libp2p muxer negotiation {type(current)!r}")
    upgrader.muxer_multistream = GuardedMuxers(
        {YAMUX_PROTOCOL_ID: GuardedYamux},  # type: ignore[dict-item]
        current.negotiate_timeout,
    )
