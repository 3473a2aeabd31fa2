"""Who a node talks to, and what a remote's fault costs it.

- ``gate``: admission of an authenticated connection (banned, or not on a non-empty member
  list: refused before any stream opens).
- ``serve_bounded``: inbound streams bounded in number, overall and per peer.
- ``over_fair_share``: a peer that proposes far more often than uniform sampling explains is
  declined as busy until others have had their turn (local policy, invisible on the wire).
- ``charge``: the one place that turns a remote's fault into a counted refusal, a backoff,
  a log line and (unless it was no offence) an offence; ``offend`` bans after repeated ones
  (``gossip.penalties``).
"""

from __future__ import annotations

import logging
import math
from collections import deque

import trio

from gossiplearn.crypto.consortium import Members
from gossiplearn.errors import RemoteProtocolError
from gossiplearn.gossip.exchange import Refused
from gossiplearn.gossip.group_rules import GroupRefused
from gossiplearn.gossip.penalties import BanConfig, Penalties
from gossiplearn.gossip.sampling import PeerView
from gossiplearn.peer.home.config import SecurityConfig
from gossiplearn.peer.net.transport import Handler, Stream, Transport
from gossiplearn.peer.node.stats import NodeStats

log = logging.getLogger(__name__)

RECENT_EXCHANGES = 24  # partners remembered for the fair-share rule
FAIR_SHARE_SLACK = 2.0  # a peer may take up to this many times its fair share of them ...
FAIR_SHARE_MIN = 3  # ... and always this many


class Admission:
    """Membership, bans, stream limits and the fair-share rule of one node."""

    def __init__(
        self,
        config: SecurityConfig,
        members: Members,
        view: PeerView,
        stats: NodeStats,
        transport: Transport,
    ) -> None:
        self.config = config
        self.members = members
        self.view = view
        self.stats = stats
        self.transport = transport
        self.penalties = Penalties(
            BanConfig(
                strikes=config.ban_strikes, window=config.ban_window, ban_seconds=config.ban_seconds
            )
        )
        self._inbound: dict[str, int] = {}  # open inbound streams per peer
        self._recent: deque[str] = deque(maxlen=RECENT_EXCHANGES)  # partners, newest last

    # ---- admission

    def gate(self, peer_id: str) -> str | None:
        """Admission of an authenticated connection: None, or why it is refused."""
        reason: str | None = None
        if self.penalties.banned(peer_id, trio.current_time()):
            reason = "banned"
        elif not self.members.admits(peer_id):
            reason = "not-a-member"
        if reason is not None:
            self.stats.bump(self.stats.connections_refused, reason)
            log.info("refused a connection from %s: %s", peer_id, reason)
        return reason

    def admissible(self, peer_id: str) -> bool:
        """Whether we would talk to ``peer_id`` now: a member (if the list is restricted) and
        not banned."""
        return self.members.admits(peer_id) and not self.penalties.banned(
            peer_id, trio.current_time()
        )

    async def update_members(self, members: Members, known: set[str]) -> None:
        """Adopt a new member list; ``known`` peers no longer on it are dropped and
        disconnected."""
        self.members = members
        for peer_id in sorted(known | {e.peer_id for e in self.view.entries()}):
            if not members.admits(peer_id):
                log.info("%s is no longer a member: disconnecting", peer_id)
                self.view.forget(peer_id)
                await self.transport.disconnect(peer_id)

    # ---- inbound streams

    def _refuse_stream(self, peer: str) -> str | None:
        """Why an inbound stream from ``peer`` must not be served now, or None."""
        if not self.admissible(peer):
            return "banned" if self.members.admits(peer) else "not-a-member"
        if sum(self._inbound.values()) >= self.config.max_inbound_streams:
            return "overload"
        if self._inbound.get(peer, 0) >= self.config.max_streams_per_peer:
            return "too-many-streams"
        return None

    async def serve_bounded(self, stream: Stream, serve: Handler) -> None:
        """Run an inbound handler within the stream limits; a refused stream is reset."""
        peer = stream.remote_peer
        reason = self._refuse_stream(peer)
        if reason is not None:
            self.stats.bump(self.stats.streams_refused, reason)
            await stream.reset()
            if reason == "too-many-streams":  # honest peers open at most two at a time
                await self.offend(peer, reason)
            return
        self._inbound[peer] = self._inbound.get(peer, 0) + 1
        try:
            await serve(stream)
        finally:
            self._inbound[peer] -= 1
            if not self._inbound[peer]:
                del self._inbound[peer]

    # ---- fair share

    def exchanged_with(self, peer: str) -> None:
        """Remember a completed exchange with ``peer`` (for the fair-share rule)."""
        self._recent.append(peer)

    def over_fair_share(self, peer: str) -> bool:
        """True if ``peer`` took more than its fair share of our recent exchanges.

        With uniform neighbour sampling an honest peer takes about 1/n of them (n: connected
        neighbours in good standing; departed ones do not count); one that proposes far more
        often (to push its model at us) is declined as busy until others have had their turn.
        """
        active = sum(1 for e in self.view.entries() if e.connected and not e.failures)
        share = max(
            FAIR_SHARE_MIN, math.ceil(FAIR_SHARE_SLACK * len(self._recent) / max(1, active))
        )
        return self._recent.count(peer) >= share

    # ---- faults

    def fail(self, peer: str, why: str) -> None:
        """A network failure with ``peer`` (no offence): back off from it."""
        self.view.mark_disconnected(peer)
        dropped = self.view.failure(peer, trio.current_time())
        log.info("%s: %s%s", peer, why, " (dropped from view)" if dropped else "")

    def incompatible(self, peer: str, detail: str) -> None:
        """Record (for status) and log why we cannot merge with ``peer``."""
        if self.stats.note_incompatible(peer, detail):
            log.warning("cannot merge with %s: %s", peer, detail)

    async def charge(self, peer: str, exc: RemoteProtocolError, *, what: str = "model") -> None:
        """``peer`` sent something we refuse: back off from it, log, and count an offence
        unless the refusal says it was none (``Refused.offence``, ``GroupRefused.offence``).
        ``what`` we refused: a ``"model"`` in an exchange is counted as refused under its
        reason; anything else (a peer list, a group round's message) only as the offence."""
        refusal = exc if isinstance(exc, Refused | GroupRefused) else None
        reason = refusal.reason if refusal is not None else "malformed"
        if what == "model":
            if reason == "incompatible" and refusal is not None:
                self.incompatible(peer, f"we refused their model: {refusal.detail}")
            self.stats.counters.refuse(reason)
        self.view.failure(peer, trio.current_time())
        log.warning("refused %s from %s: %s", what, peer, exc)
        if refusal is None or refusal.offence:
            await self.offend(peer, reason)

    async def offend(self, peer: str, reason: str) -> None:
        """Count an offence (invalid data from ``peer``); ban it after repeated ones."""
        self.stats.bump(self.stats.offences, reason)
        if self.penalties.offend(peer, trio.current_time()):
            log.warning(
                "banned %s for %g s after repeated invalid data (last: %s)",
                peer,
                self.penalties.config.ban_seconds,
                reason,
            )
            self.view.forget(peer)
            await self.transport.disconnect(peer)
