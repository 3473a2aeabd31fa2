"""The streams of a secure group round (``/gossiplearn/group/1.0.0``, docs/protocol.md 16) and
the one way the group driver (``node/group.py``) waits on several members at once.

- ``Link``: one framed stream carrying group messages (``gossip.group_messages``): each frame
  read under explicit ``GroupLimits``; big bodies encoded and decoded in a thread.
- ``RecentRounds``: the round ids a member answered, so that it never answers one twice.
- ``leader_abort``, ``member_abort``: the GroupAbort that ends a round, where one is due.
- ``each``: a step for every member concurrently, each under its own deadline; the first member
  that fails stops the others, and a deadline names every member that missed it. It raises
  ``Stopped``, which says who ended the step and how, so the driver can charge the right peer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import trio

from gossiplearn.errors import RemoteProtocolError, TransportError
from gossiplearn.gossip.group import LeaderRound, MemberRound, Phase
from gossiplearn.gossip.group_messages import (
    GroupAbort,
    GroupLimits,
    GroupMessage,
    GroupShare,
    GroupSum,
    decode,
    encode,
)
from gossiplearn.gossip.group_rules import GroupRefused
from gossiplearn.peer.net.framed import FramedStream, close_quietly, offload
from gossiplearn.peer.net.transport import Stream

ABORT_GRACE = 1.0  # seconds to tell the others a round is over, best-effort
RECENT_ROUNDS = 4096  # round ids a member remembers answering


class Link:
    """Our end of one group stream."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.framed = FramedStream(stream)
        self.whole = True  # False once a send was cut short: the stream holds half a frame

    @property
    def peer(self) -> str:
        return self.stream.remote_peer

    async def send(self, msg: GroupMessage) -> None:
        """Raises ``TransportError``."""
        await self.send_body(await encode_offloaded(msg))

    async def send_body(self, body: bytes) -> None:
        """Send a message ``encode_offloaded`` made (one body may go to every member).
        Raises ``TransportError``."""
        self.whole = False
        await self.framed.send_body(body)
        self.whole = True

    async def receive(self, limits: GroupLimits) -> GroupMessage:
        """The next message. Raises ``DecodeError`` or ``TransportError``."""
        body = await self.framed.receive_body(limits.max_frame)
        return await offload(len(body), decode, body, limits=limits)

    async def close(self) -> None:
        """Close after a completed round; a failure here no longer matters."""
        await close_quietly(self.stream)

    async def abort(self, msg: GroupAbort | None) -> None:
        """Send ``msg`` if any (best-effort, within ``ABORT_GRACE``; not after half a frame,
        which would turn it into garbage), then reset the stream."""
        if msg is not None and self.whole:
            with trio.move_on_after(ABORT_GRACE):
                try:
                    await self.send(msg)
                    await self.stream.close()
                except TransportError:
                    pass
        await self.stream.reset()


class Stopped(Exception):
    """A step of the round ended early. ``peers``: who ended it. ``exc``: how — a
    ``TransportError`` (a dropout), a ``RemoteProtocolError`` (a fault), ``trio.TooSlowError``
    (every member that missed its deadline) — or None when a member declined or aborted
    (``abort``: the abort the round returned, to send to the others)."""

    def __init__(
        self,
        peers: tuple[str, ...],
        exc: TransportError | RemoteProtocolError | trio.TooSlowError | None,
        abort: GroupAbort | None = None,
    ) -> None:
        super().__init__(f"{', '.join(peers)}: {exc!r}" if exc else f"{peers[0]}: {abort}")
        self.peers = peers
        self.exc = exc
        self.abort = abort


async def encode_offloaded(msg: GroupMessage) -> bytes:
    """``msg``'s frame body; a big one encoded in a thread."""
    size = msg.words.nbytes if isinstance(msg, GroupShare | GroupSum) else 0
    return await offload(size, encode, msg)


async def each(peers: Sequence[str], step: Callable[[str], Awaitable[None]]) -> None:
    """Run ``step(peer)`` for every peer at once; each step keeps its own deadline (a cancel
    scope inside it). Raises ``Stopped``: for the first peer whose step failed or raised
    ``Stopped`` itself (the other steps are cancelled), or, when the first failure is a
    deadline, for every peer whose step missed it (the others run on to their deadlines)."""
    stops: list[Stopped] = []

    async def one(peer: str, nursery: trio.Nursery) -> None:
        try:
            await step(peer)
        except trio.TooSlowError as exc:
            stops.append(Stopped((peer,), exc))
        except Stopped as stop:
            stops.append(stop)
            nursery.cancel_scope.cancel()
        except (TransportError, RemoteProtocolError) as exc:
            stops.append(Stopped((peer,), exc))
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(one, peer, nursery)
    if stops and isinstance(stops[0].exc, trio.TooSlowError):
        late = [s.peers[0] for s in stops if isinstance(s.exc, trio.TooSlowError)]
        raise Stopped(tuple(late), stops[0].exc)
    if stops:
        raise stops[0]


class RecentRounds:
    """The last ``size`` round ids a member answered (docs/protocol.md 16.6: answering one
    twice would hand the leader two shares of one model under different masks)."""

    def __init__(self, size: int = RECENT_ROUNDS) -> None:
        self._order: deque[bytes] = deque(maxlen=size)
        self._ids: set[bytes] = set()

    def add(self, round_id: bytes) -> None:
        """Remember ``round_id``. Raises ``GroupRefused`` (``wrong-round``) if it is known."""
        if round_id in self._ids:
            raise GroupRefused("wrong-round", "an invite for a round we already answered")
        if len(self._order) == self._order.maxlen:
            self._ids.discard(self._order[0])
        self._order.append(round_id)
        self._ids.add(round_id)


def leader_abort(rnd: LeaderRound, reason: str) -> GroupAbort:
    """The abort that ends a round we lead (even one whose last share came in just at its
    deadline: the members have no sum yet, and will not get one)."""
    if rnd.phase is Phase.DONE:
        return GroupAbort(rnd.round_id, reason)
    return rnd.abandon(reason)


def member_abort(rnd: MemberRound, reason: str) -> GroupAbort | None:
    """The abort to send the leader, if we joined (or were joining) its round; else None."""
    if rnd.ctx is None or rnd.phase in (Phase.IDLE, Phase.DONE, Phase.DECLINED):
        return None
    return rnd.abandon(reason)
