"""Length-prefixed framing, sans-IO.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of msgpack body.
``FrameDecoder`` rejects a declared length above its limit as soon as the 4-byte header has
arrived, before buffering any of the body, so a peer cannot make us allocate more than the limit.
"""

from __future__ import annotations

import struct

from gossiplearn.errors import DecodeError

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
MAX_FRAME_LIMIT = (1 << 32) - 1


def frame_header(body_len: int) -> bytes:
    """The 4-byte prefix announcing a body of ``body_len`` bytes."""
    if not 0 <= body_len <= MAX_FRAME_LIMIT:
        raise ValueError(f"frame body of {body_len} bytes cannot be framed")
    return HEADER.pack(body_len)


class FrameDecoder:
    """Accumulates stream bytes and yields whole frame bodies.

    ``feed`` raises ``DecodeError`` when a header declares more than ``max_frame`` bytes; the
    decoder is then unusable (the stream must be dropped: framing is lost).
    """

    def __init__(self, max_frame: int) -> None:
        self._max = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # body length of the frame in progress
        self._failed = False

    @property
    def max_frame(self) -> int:
        return self._max

    def set_max_frame(self, max_frame: int) -> None:
        """Change the limit for frames whose header has not arrived yet."""
        self._max = max_frame

    def wanted(self) -> int:
        """How many more bytes complete the next header or body (a good read size)."""
        if self._need is None:
            return HEADER_SIZE - len(self._buf)
        return self._need - len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the frame bodies completed by them, in order."""
        if self._failed:
            raise DecodeError("framing already failed on this stream")
        self._buf += data
        out: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER_SIZE:
                    return out
                (length,) = HEADER.unpack_from(self._buf)
                if length > self._max:
                    self._failed = True
                    raise DecodeError(
                        f"frame declares {length} bytes, above the limit of {self._max}"
                    )
                del self._buf[:HEADER_SIZE]
                self._need = length
            if len(self._buf) < self._need:
                return out
            body = bytes(self._buf[: self._need])
            del self._buf[: self._need]
            self._need = None
            out.append(body)

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole frame."""
        return len(self._buf)
