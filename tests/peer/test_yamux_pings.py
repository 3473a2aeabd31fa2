"""Both sides of a connection send a large message at once while yamux pings fly both ways.

py-libp2p 0.8.1's yamux answers a ping from the task that reads the connection, under the write
lock; with both sides mid-send and both answering a ping, each reader waits on a writer that
waits on the other reader, and the connection hangs for good (docs/libp2p-notes.md, 13). Each
side pings 0.5 s after connecting and every 30 s, so a model exchange met it now and then; the
pings here are sent on purpose, so that the race is met at once (upstream hangs in the first
round of this test).
"""

from __future__ import annotations

import struct

import trio
from libp2p.stream_muxer.yamux.yamux import FLAG_SYN, TYPE_PING, YAMUX_HEADER_FORMAT

from gossiplearn.crypto.identity import Identity
from gossiplearn.peer.net.host import Libp2pStream, Libp2pTransport
from gossiplearn.peer.net.transport import Stream

PROTO = "/gossiplearn/test-bulk/1.0.0"
SIZE = 8 << 20  # bytes each side sends per round
CHUNK = 1 << 20
ROUNDS = 3


async def send_and_receive(stream: Stream) -> int:
    """Send SIZE bytes while receiving SIZE bytes and pinging the remote every millisecond;
    returns the bytes received."""
    assert isinstance(stream, Libp2pStream)
    conn = stream._s.muxed_conn
    ping = struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_PING, FLAG_SYN, 0, 7)
    received = 0
    done = trio.Event()

    async def send() -> None:
        for _ in range(SIZE // CHUNK):
            await stream.write(b"x" * CHUNK)

    async def pings() -> None:
        while not done.is_set():  # never cancelled mid-frame: that would corrupt the link
            await conn._write_frame(ping)  # type: ignore[attr-defined]
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(pings)
        while received < SIZE:
            chunk = await stream.read(CHUNK)
            assert chunk, "stream ended early"
            received += len(chunk)
        done.set()
    return received


async def test_simultaneous_sends_survive_pings_both_ways() -> None:
    listen = ["/ip4/127.0.0.1/tcp/0"]
    answered: list[int] = []

    async def handler(stream: Stream) -> None:
        answered.append(await send_and_receive(stream))
        await stream.close()

    with trio.fail_after(120):
        async with (
            Libp2pTransport.open(Identity.generate(), listen, dial_timeout=5) as a,
            Libp2pTransport.open(Identity.generate(), listen, dial_timeout=5) as b,
        ):
            b.set_handler(PROTO, handler)
            peer = await a.connect(b.addrs()[0])
            for _ in range(ROUNDS):
                stream = await a.open_stream(peer, PROTO)
                with trio.fail_after(30):  # upstream hangs here, in the first round
                    assert await send_and_receive(stream) == SIZE
                    assert await stream.read(1) == b""  # the responder closed after its part
                await stream.close()
            assert answered == [SIZE] * ROUNDS
