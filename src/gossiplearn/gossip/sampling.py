"""The peer view: which peers we know, how to reach them, and uniform neighbour sampling.

Pure: the caller passes ``now`` (seconds, any monotonic origin) and a ``random.Random``.
A peer that fails is not sampled again until its backoff expires (doubling per consecutive
failure, capped); after ``max_failures`` consecutive failures it is dropped from the view and
must be learnt again (from peer exchange or a bootstrap address).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from gossiplearn.gossip.messages import PeerRecord


@dataclass(slots=True)
class PeerEntry:
    peer_id: str
    addrs: tuple[str, ...] = ()
    connected: bool = False
    failures: int = 0  # consecutive
    retry_at: float = 0.0
    last_seen: float | None = None


@dataclass(frozen=True, slots=True)
class ViewConfig:
    max_peers: int = 1000
    backoff_base: float = 1.0  # seconds after the first failure
    backoff_max: float = 60.0
    max_failures: int = 8
    max_addrs: int = 8


@dataclass
class PeerView:
    """Known peers (never ourselves)."""

    self_id: str
    config: ViewConfig = field(default_factory=ViewConfig)
    _peers: dict[str, PeerEntry] = field(default_factory=dict)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._peers.get(peer_id)

    def entries(self) -> list[PeerEntry]:
        return list(self._peers.values())

    def learn(self, record: PeerRecord, now: float, *, authoritative: bool = True) -> bool:
        """Add a peer, or refresh its addresses. Returns True if the peer is new to us.

        A third party's record (``authoritative=False``, from peer exchange) never replaces
        addresses we already hold: only the peer itself (or our own configuration) may.
        """
        if record.peer_id == self.self_id:
            return False
        entry = self._peers.get(record.peer_id)
        addrs = tuple(dict.fromkeys(record.addrs))[: self.config.max_addrs]
        if entry is None:
            if len(self._peers) >= self.config.max_peers:
                return False
            self._peers[record.peer_id] = PeerEntry(record.peer_id, addrs)
            return True
        if addrs and (authoritative or not entry.addrs):
            entry.addrs = addrs
        return False

    def learn_all(self, records: Iterable[PeerRecord], now: float, source: str) -> list[str]:
        """Learn the records ``source`` sent; returns the IDs that were new. Only the record
        ``source`` gives for itself is authoritative."""
        return [r.peer_id for r in records if self.learn(r, now, authoritative=r.peer_id == source)]

    def forget(self, peer_id: str) -> None:
        """Drop a peer from the view (banned, or no longer a member)."""
        self._peers.pop(peer_id, None)

    def mark_connected(self, peer_id: str, now: float) -> None:
        if peer_id == self.self_id:
            return
        entry = self._peers.get(peer_id)
        if entry is None:
            if len(self._peers) >= self.config.max_peers:
                return
            entry = self._peers[peer_id] = PeerEntry(peer_id)
        entry.connected = True
        entry.last_seen = now

    def mark_disconnected(self, peer_id: str) -> None:
        entry = self._peers.get(peer_id)
        if entry is not None:
            entry.connected = False

    def success(self, peer_id: str, now: float) -> None:
        entry = self._peers.get(peer_id)
        if entry is not None:
            entry.failures = 0
            entry.retry_at = 0.0
            entry.last_seen = now

    def failure(self, peer_id: str, now: float) -> bool:
        """Record a failed dial or exchange. Returns True if the peer was dropped."""
        entry = self._peers.get(peer_id)
        if entry is None:
            return False
        entry.failures += 1
        if entry.failures >= self.config.max_failures:
            del self._peers[peer_id]
            return True
        delay = min(self.config.backoff_max, self.config.backoff_base * 2 ** (entry.failures - 1))
        entry.retry_at = now + delay
        return False

    def eligible(self, now: float, exclude: Iterable[str] = ()) -> list[str]:
        """Peers that may be picked now: out of backoff, reachable, not excluded."""
        skip = set(exclude)
        return [
            e.peer_id
            for e in self._peers.values()
            if e.peer_id not in skip and e.retry_at <= now and (e.connected or e.addrs)
        ]

    def next_retry(self) -> float | None:
        """When the first peer that is reachable but in backoff may be picked again (same
        clock as ``now``), or None if there is no such peer."""
        times = [e.retry_at for e in self._peers.values() if e.connected or e.addrs]
        return min(times) if times else None

    def sample(self, rng: random.Random, now: float, exclude: Iterable[str] = ()) -> str | None:
        """A uniformly random eligible peer, or None."""
        candidates = self.eligible(now, exclude)
        if not candidates:
            return None
        return rng.choice(sorted(candidates))

    def records(self, limit: int) -> list[PeerRecord]:
        """Records worth passing on in peer exchange: peers with addresses, most recent first."""
        known = [e for e in self._peers.values() if e.addrs and e.failures == 0]
        known.sort(key=lambda e: e.last_seen or 0.0, reverse=True)
        return [PeerRecord(e.peer_id, e.addrs) for e in known[:limit]]
