"""One conformance suite for both transports: in-memory and libp2p (real hosts on 127.0.0.1)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio

from gossiplearn.crypto.identity import Identity
from gossiplearn.errors import TransportError
from gossiplearn.peer.net.host import Libp2pTransport
from gossiplearn.peer.net.transport import MemoryNetwork, Stream, Transport

PROTO = "/gossiplearn/test-echo/1.0.0"

Pair = Callable[[], AbstractAsyncContextManager[tuple[Transport, Transport]]]


@asynccontextmanager
async def memory_pair() -> AsyncIterator[tuple[Transport, Transport]]:
    net = MemoryNetwork()
    a, b = net.transport("peer-a"), net.transport("peer-b")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        yield a, b
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def libp2p_pair() -> AsyncIterator[tuple[Transport, Transport]]:
    listen = ["/ip4/127.0.0.1/tcp/0"]
    async with (
        Libp2pTransport.open(Identity.generate(), listen, dial_timeout=5) as a,
        Libp2pTransport.open(Identity.generate(), listen, dial_timeout=5) as b,
    ):
        yield a, b


@pytest.fixture(params=[memory_pair, libp2p_pair], ids=["memory", "libp2p"])
def pair(request: pytest.FixtureRequest) -> Pair:
    return request.param  # type: ignore[no-any-return]


async def echo(stream: Stream) -> None:
    data = b""
    while chunk := await stream.read(65536):
        data += chunk
        if data.endswith(b"\n"):
            break
    await stream.write(data.upper())
    await stream.close()


async def read_all(stream: Stream) -> bytes:
    out = b""
    while chunk := await stream.read(65536):
        out += chunk
    return out


async def test_stream_round_trip_and_eof(pair: Pair) -> None:
    with trio.fail_after(30):
        async with pair() as (a, b):
            b.set_handler(PROTO, echo)
            assert await a.connect(b.addrs()[0]) == b.peer_id
            stream = await a.open_stream(b.peer_id, PROTO)
            assert stream.remote_peer == b.peer_id
            payload = b"x" * 300_000 + b"\n"
            await stream.write(payload)
            assert await read_all(stream) == payload.upper()
            # EOF is b"" every time after the end
            assert await stream.read(10) == b""
            assert a.peer_id in b.connected_peers()


async def test_open_stream_dials_known_addresses(pair: Pair) -> None:
    with trio.fail_after(30):
        async with pair() as (a, b):
            b.set_handler(PROTO, echo)
            stream = await a.open_stream(b.peer_id, PROTO, b.addrs())
            await stream.write(b"hi\n")
            assert await read_all(stream) == b"HI\n"


async def test_a_failing_handler_does_not_take_the_transport_down(pair: Pair) -> None:
    async def broken(stream: Stream) -> None:
        await stream.read(10)
        raise RuntimeError("handler bug")

    with trio.fail_after(30):
        async with pair() as (a, b):
            b.set_handler("/broken/1.0.0", broken)
            b.set_handler(PROTO, echo)
            bad = await a.open_stream(b.peer_id, "/broken/1.0.0", b.addrs())
            await bad.write(b"boom")
            # the stream is reset: reads end or fail (never hang: fail_after above)
            with contextlib.suppress(TransportError):
                assert await read_all(bad) == b""
            good = await a.open_stream(b.peer_id, PROTO, b.addrs())
            await good.write(b"still up\n")
            assert await read_all(good) == b"STILL UP\n"


async def test_unknown_protocol_and_unreachable_peer_raise_transport_error(pair: Pair) -> None:
    with trio.fail_after(30):
        async with pair() as (a, b):
            with pytest.raises(TransportError):
                await a.open_stream(b.peer_id, "/nobody/speaks/this", b.addrs())
            stranger = Identity.generate().peer_id
            with pytest.raises(TransportError):
                await a.open_stream(stranger, PROTO, [f"/ip4/127.0.0.1/tcp/1/p2p/{stranger}"])


async def test_libp2p_addrs_end_in_our_peer_id() -> None:
    with trio.fail_after(30):
        async with libp2p_pair() as (a, _):
            assert a.addrs()
            assert all(addr.endswith(f"/p2p/{a.peer_id}") for addr in a.addrs())
            assert all(addr.startswith("/ip4/127.0.0.1/tcp/") for addr in a.addrs())
