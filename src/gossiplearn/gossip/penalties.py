"""Offences and temporary bans of misbehaving peers (pure: the caller passes ``now``).

A peer that sends invalid data (a malformed frame, a model that is not finite or not ours, a
frame over the limit, a slow drip past the deadline) or a model far beyond the clipping radius
(a *far* outlier, ``screening.ScreeningConfig.far_factor``) commits an *offence*. ``strikes``
offences within ``window`` seconds ban it for ``ban_seconds``; a ban expires by itself, and the
peer then starts with a clean record. Honest peers rarely offend: a decline, a network failure
or a model clipped within ``far_factor`` radii is no offence, and an honest late joiner is a far
outlier once or twice, where a poisoner is one at every exchange.

Memory is bounded: at most ``max_tracked`` peers with offences are remembered (the stalest
record is forgotten first), each with at most ``strikes`` offence times, and at most
``max_tracked`` bans (the one ending soonest is lifted first).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BanConfig:
    strikes: int = 3
    window: float = 60.0  # seconds
    ban_seconds: float = 300.0  # 0: never ban
    max_tracked: int = 4096


@dataclass
class Penalties:
    config: BanConfig = field(default_factory=BanConfig)
    _offences: dict[str, deque[float]] = field(default_factory=dict)
    _banned: dict[str, float] = field(default_factory=dict)  # peer → ban expiry time
    bans: int = 0  # bans ever imposed

    def offend(self, peer_id: str, now: float) -> bool:
        """Record an offence. Returns True if it got ``peer_id`` banned just now."""
        if self.banned(peer_id, now) or self.config.ban_seconds <= 0:
            return False
        times = self._offences.pop(peer_id, None) or deque(maxlen=self.config.strikes)
        self._offences[peer_id] = times  # re-inserted: dict order is staleness order
        times.append(now)
        while len(self._offences) > self.config.max_tracked:
            del self._offences[next(iter(self._offences))]
        if len(times) >= self.config.strikes and now - times[0] <= self.config.window:
            del self._offences[peer_id]
            self._banned[peer_id] = now + self.config.ban_seconds
            self.bans += 1
            if len(self._banned) > self.config.max_tracked:  # forget the ban ending soonest
                del self._banned[min(self._banned, key=self._banned.__getitem__)]
            return True
        return False

    def banned(self, peer_id: str, now: float) -> bool:
        until = self._banned.get(peer_id)
        if until is None:
            return False
        if now >= until:
            del self._banned[peer_id]
            return False
        return True

    def active(self, now: float) -> dict[str, float]:
        """Peers banned now, with the time their ban ends."""
        for peer_id in [p for p, until in self._banned.items() if now >= until]:
            del self._banned[peer_id]
        return dict(self._banned)
