"""Screening of received models before they are merged (pure: no clock, no I/O).

A received model has already passed the structural checks (fingerprint, names, shapes, dtypes,
finite values; ``exchange.check_offer``). Screening then asks whether it is *plausible*, from
three numbers measured against the snapshot we sent: our norm, its norm, and the distance
between the two. Two rules, in this order:

1. **Norm.** A model whose norm is more than ``max_norm_ratio`` times above or below the
   reference norm is refused (reason ``"norm"``). The reference is the median of the norms of
   recently merged models (ours and theirs), or our own norm before any merge. This catches
   scaling attacks (a model times 1e6) that the distance rule would only clip.
2. **Distance outlier.** Once ``warmup`` distances have been recorded, the relative distance
   ``d = ||theirs - ours|| / ||ours||`` is compared with a threshold computed from the last
   ``window`` recorded distances: ``tau = max(median + k * 1.4826 * MAD, median_factor *
   median, min_radius)``, the Hampel identifier (Hampel 1974; the constant makes the median
   absolute deviation a consistent estimate of the standard deviation, Rousseeuw & Croux
   1993), floored so that ordinary spread among honest models is never cut. The floors matter
   when training is slow or off: two peers that have just averaged are at distance ~0, so the
   recent distances are bimodal and the Hampel bound alone would clip every honest model that
   has not met us lately. A pull smaller than ``min_radius`` (a quarter of our own norm by
   default) is therefore never clipped. A model with ``d > tau`` is not
   refused but *clipped*: we merge ``ours + scale * (theirs - ours)`` with ``scale = tau / d``,
   i.e. the remote's pull is capped at radius ``tau`` around our model. This is centred
   clipping (Karimireddy, He & Jaggi, ICML 2021) as used for gossip by ClippedGossip (He,
   Karimireddy & Jaggi, 2022): a Byzantine neighbour can move us at most ``alpha * tau`` per
   exchange, while an honest but distant model (a late joiner, a peer back from a long outage)
   still contributes, so it is not locked out.

   While warming up (fewer than ``warmup`` recorded distances) the radius is ``cold_radius``
   (3): two independent random initialisations lie ~1.41 apart, so honest first merges pass,
   and a hostile one moves us by at most ``alpha * 3`` times our own norm.

   The clip is on the distance, not on the pull ``alpha * d``: capping the pull would also cap
   honest members with many more samples than ours (their ``alpha`` is near 1), breaking the
   sample weighting; a claimed weight is bounded separately (``exchange.LocalModel.weight``).

What is recorded: each accepted model's distance; while warming up, a clipped one at the cold
radius; once warm, a clipped one at the current median, so outliers never move the radius,
however many of them a hostile member sends (recording them at the radius let a member that
won more than half of a peer's exchanges ratchet the radius up by its "2 x median" floor).
The price: if every honest distance really grew at once, the radius would not follow and
those models would stay clipped (merged with a reduced pull) until the history turned over.

Clipping breaks the exact conservation of the weighted sum (the two sides no longer move by
opposite amounts); with honest peers and the default settings it does not trigger in the
tests that check conservation.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD * this estimates sigma for normal data


@dataclass(frozen=True, slots=True)
class ScreeningConfig:
    enabled: bool = True
    max_norm_ratio: float = 10.0
    window: int = 16  # recent distances and norms kept
    warmup: int = 8  # distances needed before the distance rule applies
    mad_k: float = 3.0  # Hampel multiplier
    median_factor: float = 2.0  # tau is never below this multiple of the median distance
    min_radius: float = 0.25  # ... nor below this relative distance
    cold_radius: float = 3.0  # the radius while warming up (two random inits are ~1.41 apart)
    far_factor: float = 2.0  # a model beyond this many radii is a far outlier (an offence)


@dataclass(frozen=True, slots=True)
class Measures:
    """What screening needs from one exchange, measured against the snapshot we sent."""

    our_norm: float
    their_norm: float
    distance: float  # ||theirs - ours||, absolute

    @property
    def relative_distance(self) -> float:
        if self.our_norm > 0:
            return self.distance / self.our_norm
        return 0.0 if self.distance == 0 else math.inf


class Action(Enum):
    ACCEPT = "accept"
    CLIP = "clip"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    scale: float  # factor applied to the remote's pull: 1 accept, (0, 1) clip, 0 refuse
    reason: str = ""  # "norm" for a refusal, "outlier" for a clip
    detail: str = ""
    far: bool = False  # a clip of a model beyond ``far_factor`` radii


ACCEPT = Verdict(Action.ACCEPT, 1.0)


@dataclass
class Screen:
    """Screening state of one peer: the recent distances and norms it has accepted."""

    config: ScreeningConfig = field(default_factory=ScreeningConfig)
    _distances: deque[float] = field(init=False)
    _norms: deque[float] = field(init=False)

    def __post_init__(self) -> None:
        self._distances = deque(maxlen=self.config.window)
        self._norms = deque(maxlen=self.config.window)

    def reference_norm(self, our_norm: float) -> float:
        return statistics.median(self._norms) if self._norms else our_norm

    def threshold(self) -> float | None:
        """The current clipping radius ``tau`` (relative distance), None while warming up."""
        if len(self._distances) < self.config.warmup:
            return None
        median = statistics.median(self._distances)
        mad = statistics.median(abs(d - median) for d in self._distances)
        return max(
            median + self.config.mad_k * MAD_TO_SIGMA * mad,
            self.config.median_factor * median,
            self.config.min_radius,
        )

    def radius(self) -> float:
        """The clipping radius in force: ``threshold()``, or ``cold_radius`` while warming up."""
        tau = self.threshold()
        return self.config.cold_radius if tau is None else tau

    def _norm_refusal(self, m: Measures) -> Verdict | None:
        if not (math.isfinite(m.their_norm) and math.isfinite(m.distance)):
            return Verdict(Action.REFUSE, 0.0, "norm", "the model's norm is not finite")
        ref = self.reference_norm(m.our_norm)
        ratio = self.config.max_norm_ratio
        if ref > 0 and not ref / ratio <= m.their_norm <= ref * ratio:
            return Verdict(
                Action.REFUSE,
                0.0,
                "norm",
                f"norm {m.their_norm:.4g} is more than {ratio:g}x off the usual {ref:.4g}",
            )
        return None

    def assess_adoption(self, m: Measures) -> Verdict:
        """Judge a model we would adopt outright (``merge.MergeKind.ADOPT``): the norm rule
        only, and nothing recorded. The distance rule measures pulls against a model worth
        keeping; a fresh model is not one (a trained model lies ~2.5-3.5 of a random
        initialisation's norm away from it, beyond the cold radius), so the peer checks an
        adoption on its validation data instead. Never raises."""
        if not self.config.enabled:
            return ACCEPT
        return self._norm_refusal(m) or ACCEPT

    def assess(self, m: Measures) -> Verdict:
        """Judge one received model and record it; the verdict's ``scale`` multiplies the merge
        weight. Never raises."""
        if not self.config.enabled:
            return ACCEPT
        refusal = self._norm_refusal(m)
        if refusal is not None:
            return refusal
        d = m.relative_distance
        radius = self.radius()
        if m.our_norm > 0:
            self._norms.append(m.our_norm)
        self._norms.append(m.their_norm)
        if not math.isfinite(d):
            return ACCEPT  # our model is all zeros: nothing to measure the distance against
        warm = len(self._distances) >= self.config.warmup
        if d <= radius or not warm:
            self._distances.append(min(d, radius))
        else:  # an outlier is recorded at the median: outliers never move the radius
            self._distances.append(statistics.median(self._distances))
        if d > radius:
            return Verdict(
                Action.CLIP,
                radius / d,
                "outlier",
                f"distance {d:.4g} above the clipping radius {radius:.4g}",
                far=d > self.config.far_factor * radius,
            )
        return ACCEPT
