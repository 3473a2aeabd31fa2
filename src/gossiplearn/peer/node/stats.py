"""What a node counts and remembers for ``gossiplearn status``: one value, ``NodeStats``.

The node's parts (exchanges, discovery, admission) write here through the methods below; the
report (``node/report.py``) and the checkpoints (``home/resume.py``) read it, and a restart
continues it (``state``/``restore``), so nothing the status shows goes backwards. It holds no
reference to the node and does no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from gossiplearn.gossip.messages import ModelOffer
from gossiplearn.gossip.stats import (
    ExchangeCounters,
    GroupCounters,
    MetricPoint,
    MetricsHistory,
    NeighbourStats,
)

CONSENSUS_POINTS = 256  # consensus distances remembered (the status shows the last 60)


class Traffic(Protocol):
    """A stream that counts its bytes (``net.framed.FramedStream``)."""

    bytes_sent: int
    bytes_received: int


@dataclass(frozen=True, slots=True)
class StatsState:
    """The part of ``NodeStats`` a checkpoint keeps (``home/checkpoint.py`` writes it)."""

    counters: ExchangeCounters
    bytes_sent: int
    bytes_received: int
    history: tuple[MetricPoint, ...]
    consensus: tuple[tuple[float, float], ...]  # (unix time, consensus distance)
    group: GroupCounters = field(default_factory=GroupCounters)  # secure group rounds


@dataclass
class NodeStats:
    """Counters, traffic and histories of one node. Times are unix seconds."""

    started_at: float
    counters: ExchangeCounters = field(default_factory=ExchangeCounters)
    neighbours: dict[str, NeighbourStats] = field(default_factory=dict)
    history: MetricsHistory = field(default_factory=MetricsHistory)
    consensus: deque[tuple[float, float]] = field(
        default_factory=lambda: deque(maxlen=CONSENSUS_POINTS)
    )
    bytes_sent: int = 0
    bytes_received: int = 0
    connections_refused: dict[str, int] = field(default_factory=dict)  # by reason
    streams_refused: dict[str, int] = field(default_factory=dict)  # by reason
    offences: dict[str, int] = field(default_factory=dict)  # by reason
    incompatible: dict[str, str] = field(default_factory=dict)  # peer → why (latest)
    group: GroupCounters = field(default_factory=GroupCounters)

    @staticmethod
    def bump(table: dict[str, int], reason: str) -> None:
        table[reason] = table.get(reason, 0) + 1

    def count_bytes(self, stream: Traffic | None) -> None:
        """Move ``stream``'s byte counts into ours (and zero them, so nothing counts twice)."""
        if stream is not None:
            self.bytes_sent += stream.bytes_sent
            self.bytes_received += stream.bytes_received
            stream.bytes_sent = stream.bytes_received = 0

    def note_incompatible(self, peer: str, detail: str) -> bool:
        """Remember why we cannot merge with ``peer``; True when that is news."""
        changed = self.incompatible.get(peer) != detail
        self.incompatible[peer] = detail
        return changed

    def record_exchange(
        self, peer: str, offer: ModelOffer, distance: float, now: float, *, consensus: bool
    ) -> None:
        """Count a completed exchange with ``peer`` at unix time ``now``. ``consensus``: the
        distance joins our consensus history (not when we kept our model and ignored a fresh
        one's)."""
        self.counters.completed += 1
        n = self.neighbours.setdefault(peer, NeighbourStats(peer))
        n.last_exchange = now
        n.accuracy = offer.accuracy
        n.loss = offer.loss
        n.steps = offer.steps
        n.exchanges += 1
        n.consensus_distance = distance
        if consensus and math.isfinite(distance):
            self.consensus.append((now, distance))

    def record_group(self, size: int, partners: Iterable[str], distance: float, now: float) -> None:
        """Count a merged group round of ``size`` members at unix time ``now``; ``distance``
        (ours to the average, relative) joins the consensus history. Each of our ``partners``
        in it counts the round as an exchange with us (last exchange, exchanges: what status
        shows of a neighbour); a group round tells nothing of their accuracy or distance."""
        self.group.completed += 1
        self.group.last_size = size
        for peer in partners:
            n = self.neighbours.setdefault(peer, NeighbourStats(peer))
            n.last_exchange = now
            n.exchanges += 1
        if math.isfinite(distance):
            self.consensus.append((now, distance))

    def state(self) -> StatsState:
        """A copy of what a checkpoint keeps."""
        return StatsState(
            counters=_copy(self.counters),
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            history=tuple(self.history.points),
            consensus=tuple(self.consensus),
            group=self.group.copy(),
        )

    def restore(self, state: StatsState) -> None:
        """Continue ``state``'s counters and histories (before the node runs)."""
        self.counters = _copy(state.counters)
        self.bytes_sent = state.bytes_sent
        self.bytes_received = state.bytes_received
        for point in state.history:
            self.history.add(point)
        self.consensus.extend(state.consensus)
        self.group = state.group.copy()


def _copy(counters: ExchangeCounters) -> ExchangeCounters:
    return replace(counters, refused_by_reason=dict(counters.refused_by_reason))
