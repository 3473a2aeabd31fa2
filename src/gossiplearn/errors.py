"""The error hierarchy shared by every layer.

``GossipError`` is the root. ``RemoteProtocolError`` means a remote peer did something wrong
(we reject, count and move on); ``LocalProtocolError`` means we misused our own protocol objects
(a bug). ``UserError`` carries a message meant for a person: what was wrong and what to do.
"""

from __future__ import annotations


class GossipError(Exception):
    """Root of every error gossiplearn raises on purpose."""


class RemoteProtocolError(GossipError):
    """A remote peer sent something invalid or unexpected."""


class DecodeError(RemoteProtocolError):
    """Bytes from the network could not be decoded into a valid message."""


class LocalProtocolError(GossipError):
    """Our own code drove a protocol object into an invalid transition (a bug)."""


class TransportError(GossipError):
    """A connection or stream failed (dial refused, reset, closed early, timed out)."""


class StreamClosed(TransportError):
    """The remote ended the stream cleanly between two frames (where a frame was expected)."""


class UserError(GossipError):
    """A problem a person can fix: bad flag, bad file, no running peer. The text says how."""


class CheckpointError(GossipError):
    """A checkpoint file is missing, truncated, corrupt, of another version or another model."""
