"""Writes cancelled half-way leave the connection usable, with and without a consortium key.

A cancelled write could leave a frame cut (some of its bytes sent) or, over the consortium key's
private-network layer, a frame encrypted but never sent: py-libp2p's ``PskConn.write``
advances its Salsa20 keystream and then writes, so a cancellation in between puts the two ends'
keystreams out of step, the receiver reads a garbage frame length and waits for ever, and
every stream on the connection stalls with no error (docs/libp2p-notes.md, 14). Secure group
rounds cancel the other members' transfers when one declines, so they met it often. Our yamux
writes every frame whole, shielded from the caller's cancellation.
"""

from __future__ import annotations

import random

import pytest
import trio

from gossiplearn.crypto.consortium import ConsortiumKey
from gossiplearn.crypto.identity import Identity
from gossiplearn.peer.net.host import Libp2pTransport
from gossiplearn.peer.net.transport import Stream

BULK = "/gossiplearn/test-bulk/1.0.0"
ECHO = "/gossiplearn/test-echo/1.0.0"
LISTEN = ["/ip4/127.0.0.1/tcp/0"]
CANCELLED_WRITES = 60


async def drain(stream: Stream) -> None:
    try:
        while await stream.read(1 << 20):
            pass
    except Exception:  # the writer reset it
        pass


async def echo(stream: Stream) -> None:
    data = await stream.read(64)
    await stream.write(data)
    await stream.close()


@pytest.mark.parametrize("keyed", [True, False], ids=["consortium-key", "no-key"])
async def test_writes_cancelled_mid_transfer_leave_the_connection_usable(keyed: bool) -> None:
    key = ConsortiumKey.generate() if keyed else None
    rng = random.Random(5)
    with trio.fail_after(90):
        async with (
            Libp2pTransport.open(
                Identity.generate(), LISTEN, dial_timeout=5, consortium_key=key
            ) as a,
            Libp2pTransport.open(
                Identity.generate(), LISTEN, dial_timeout=5, consortium_key=key
            ) as b,
        ):
            b.set_handler(BULK, drain)
            b.set_handler(ECHO, echo)
            peer = await a.connect(b.addrs()[0])
            cut = 0
            for _ in range(CANCELLED_WRITES):
                stream = await a.open_stream(peer, BULK)
                with trio.move_on_after(rng.uniform(0.0, 0.004)) as scope:
                    await stream.write(b"x" * (4 << 20))
                cut += scope.cancelled_caught
                await stream.reset()
            assert cut >= CANCELLED_WRITES // 2  # most writes were cut short
            with trio.fail_after(10):  # upstream: stalls here, with a key, for ever
                stream = await a.open_stream(peer, ECHO)
                await stream.write(b"still there?")
                assert await stream.read(64) == b"still there?"
