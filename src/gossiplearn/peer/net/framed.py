"""Messages over a ``Stream``: length-prefixed msgpack frames, read under explicit limits.

``FramedStream.receive`` raises ``DecodeError`` for a bad frame (one over the limit, or one the
sender ends before its declared length), ``TransportError`` if the stream breaks, and
``StreamClosed`` (a ``TransportError``) at a clean end of stream between frames. (py-libp2p
0.8.1 reports a remote's reset as a clean end of stream, so a peer killed mid-frame also counts
as a truncated frame: one offence, far from a ban.) It never buffers more than the frame limit
in force. ``offload`` runs work on big bodies in a thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from gossiplearn.errors import DecodeError, StreamClosed, TransportError
from gossiplearn.gossip.framing import FrameDecoder, frame_header
from gossiplearn.gossip.messages import Limits, Message, decode, encode
from gossiplearn.peer.net.transport import Stream

WRITE_CHUNK = 1 << 20  # 1 MiB writes: measured faster than 64 KiB on Noise + yamux
READ_CHUNK = 1 << 20
THREAD_THRESHOLD = 1 << 20  # encode/decode bodies above this size off the event loop

T = TypeVar("T")


class FramedStream:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(max_frame=0)
        self._frames: list[bytes] = []
        self.bytes_sent = 0
        self.bytes_received = 0

    async def send(self, msg: Message) -> None:
        body = encode(msg)
        await self.send_body(body)

    async def send_body(self, body: bytes) -> None:
        await self.stream.write(frame_header(len(body)))
        view = memoryview(body)
        for start in range(0, len(body), WRITE_CHUNK):
            await self.stream.write(bytes(view[start : start + WRITE_CHUNK]))
        self.bytes_sent += 4 + len(body)

    async def receive_body(self, max_frame: int) -> bytes:
        self._decoder.set_max_frame(max_frame)
        while not self._frames:
            data = await self.stream.read(min(READ_CHUNK, max(self._decoder.wanted(), 1)))
            if not data:
                if self._decoder.buffered:  # the sender cut its own frame short
                    raise DecodeError("stream ended in the middle of a frame")
                raise StreamClosed("stream ended")
            self.bytes_received += len(data)
            self._frames.extend(self._decoder.feed(data))
        return self._frames.pop(0)

    async def receive(self, limits: Limits) -> Message:
        body = await self.receive_body(limits.max_frame)
        return await offload(len(body), decode, body, limits=limits)


async def offload(size: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, in a worker thread when ``size`` (bytes of the model or frame
    it works on) is above ``THREAD_THRESHOLD``, so big models never stall the event loop and
    small ones do not pay for a thread. Not cancellable while in the thread (trio's rule)."""
    if size > THREAD_THRESHOLD:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    return fn(*args, **kwargs)


async def close_quietly(stream: Stream | None) -> None:
    """Close after a completed exchange; a failure here no longer matters (the merge is done)."""
    if stream is None:
        return
    try:
        await stream.close()
    except TransportError:
        await stream.reset()


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf that is not a cancellation (a concurrent send/receive failed)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if not isinstance(exc, trio.Cancelled):
            return exc
    return group
