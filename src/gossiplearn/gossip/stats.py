"""Counters and per-neighbour records a peer keeps for its status report. Pure data."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace


@dataclass(slots=True)
class NeighbourStats:
    peer_id: str
    last_exchange: float | None = None  # unix time of the last completed exchange
    accuracy: float | None = None  # their last reported validation accuracy
    loss: float | None = None
    steps: int = 0
    exchanges: int = 0
    consensus_distance: float | None = None


@dataclass(slots=True)
class ExchangeCounters:
    completed: int = 0  # both models merged
    declined: int = 0  # a remote declined our proposal (busy, closing, incompatible)
    failed: int = 0  # the stream or the remote failed, or the deadline passed
    refused: int = 0  # we refused what a remote sent (incompatible, non-finite, malformed)
    initiated: int = 0
    answered: int = 0  # completed exchanges a remote started
    declined_inbound: int = 0  # proposals we declined (we were busy or closing)
    clipped: int = 0  # merged, but with the remote's pull clipped (screening outliers)
    adopted: int = 0  # we were fresh and took a far older model outright (0 or 1 per home)
    seeded: int = 0  # a fresh peer took our model; we kept ours
    refused_by_reason: dict[str, int] = field(default_factory=dict)

    def refuse(self, reason: str) -> None:
        self.refused += 1
        self.refused_by_reason[reason] = self.refused_by_reason.get(reason, 0) + 1


@dataclass(slots=True)
class GroupCounters:
    """Secure group rounds (docs/protocol.md 16), as leader and as member."""

    led: int = 0  # rounds we started (invites sent)
    joined: int = 0  # invites we joined
    completed: int = 0  # rounds whose average we merged, in either role
    declined_inbound: int = 0  # invites we declined (busy, closing, incompatible)
    clipped: int = 0  # merged, but screening capped the average's pull
    last_size: int | None = None  # members of the last completed round, us included
    skipped: dict[str, int] = field(default_factory=dict)  # rounds not started, by reason
    abandoned: dict[str, int] = field(default_factory=dict)  # rounds ended unmerged, by reason

    def copy(self) -> GroupCounters:
        """A copy that shares no table with this one."""
        return replace(self, skipped=dict(self.skipped), abandoned=dict(self.abandoned))


@dataclass(frozen=True, slots=True)
class MetricPoint:
    time: float  # unix seconds
    steps: int
    accuracy: float | None
    loss: float | None
    scores: dict[str, float] = field(default_factory=dict)  # others: rmse, mae, r2 (regression)


@dataclass(slots=True)
class MetricsHistory:
    """The last ``capacity`` evaluations, oldest first."""

    capacity: int = 512
    points: deque[MetricPoint] = field(default_factory=deque)

    def add(self, point: MetricPoint) -> None:
        self.points.append(point)
        while len(self.points) > self.capacity:
            self.points.popleft()

    @property
    def latest(self) -> MetricPoint | None:
        return self.points[-1] if self.points else None

    def trend(self, window: int = 5) -> dict[str, float | None]:
        """Change of accuracy and loss between the mean of the last ``window`` points and the
        mean of the ``window`` before them (None when there is not enough history)."""
        pts = list(self.points)
        if len(pts) < 2 * window:
            window = len(pts) // 2
        if window == 0:
            return {"accuracy": None, "loss": None}
        recent, before = pts[-window:], pts[-2 * window : -window]

        def mean(values: list[float | None]) -> float | None:
            vals = [v for v in values if v is not None]
            return sum(vals) / len(vals) if vals else None

        out: dict[str, float | None] = {}
        for key in ("accuracy", "loss"):
            a = mean([getattr(p, key) for p in recent])
            b = mean([getattr(p, key) for p in before])
            out[key] = None if a is None or b is None else a - b
        return out
