"""Merge rules: mass-conserving pairwise averaging, applied as a delta.

Push-pull gossip averaging (Kempe et al. 2003; for learning, Ormándi et al. 2013) keeps the
sample-weighted sum of all models constant when the two parties of an exchange move toward each
other by equal *mass*: ``w_a alpha_a = w_b alpha_b``. We take ``alpha = min(w_a, w_b) /
(2 w_own)`` (``merge_weight``): the plain average between equal weights, never more than
halfway, whatever a remote claims.

A peer keeps training while an exchange is in flight, so it does not overwrite its model with the
average of the *snapshot* it sent; it adds ``alpha * (theirs - snapshot)`` to whatever its model is
now. With training paused this is exactly the average; with training on, the steps taken during
the exchange are kept.

**Late joiners** (``plan_merge``). Averaging a newcomer's barely trained model into a trained one
costs the trained side half its progress, and brings the newcomer only halfway. Gossip learning
weighs models by their *age*, the examples of training behind them (Ormándi, Hegedűs & Jelasity
2013); a weighting by claimed age would let one member that claims a huge age overwrite
everybody, so here age only decides one case: a *fresh* peer (one that has never completed an
exchange) *adopts* a model more than ``adopt_ratio`` times older than its own outright, and its
partner *keeps* its own model. Both sides compute the same plan from the two offers. Only the
fresh side can be overwritten, and only in its first exchange: a claim of age gains nothing
against a peer that has exchanged before, and a claim of freshness only makes the partner
ignore the claimant's model. (The peer layer also checks an adopted model on local validation
data first, and averages instead when the model does worse than its own.) Adoption and keeping
drop the fresh model from the weighted sum: it holds a few seconds of training, not data.

A model's age is merged like a parameter, ``age += alpha * (their_age - age)``, and grows by the
examples of each local SGD step, so a peer that adopted a model inherits its age.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from gossiplearn.gossip.screening import Measures

Tensors = Mapping[str, np.ndarray]


def merge_weight(own_samples: int, their_samples: int) -> float:
    """How far we move toward the remote model: ``alpha = min(w_own, w_their) / (2 w_own)``.

    Both sides of an exchange move by the same *mass*, ``min(w_a, w_b) / 2``, so
    ``w_a alpha_a = w_b alpha_b`` and the sample-weighted sum of all models is conserved: the
    consortium converges to the exact sample-weighted average (Kempe et al. 2003). No side moves
    more than halfway (``alpha <= 1/2``), so a neighbour claiming 2^64 samples, which nobody
    can check, pulls us no harder than an equal one; between equal weights this is the plain
    push-pull average. A side with no samples moves halfway (0.5 when neither has any).
    """
    if own_samples <= 0:
        return 0.5 if their_samples > 0 or own_samples == their_samples else 0.0
    return min(own_samples, max(their_samples, 0)) / (2 * own_samples)


DEFAULT_ADOPT_RATIO = 4.0


class MergeKind(enum.Enum):
    AVERAGE = "average"  # move toward each other by equal mass (``merge_weight``)
    ADOPT = "adopt"  # we are fresh and theirs is far older: take their model (alpha 1)
    KEEP = "keep"  # they are fresh and ours is far older: they adopt ours; keep ours (alpha 0)


@dataclass(frozen=True, slots=True)
class Standing:
    """What an exchange needs to know about one side's model to plan the merge."""

    samples: int  # the side's training samples: its weight in the average
    age: float  # examples of SGD behind the model (see the module docstring)
    fresh: bool  # the side has never completed an exchange


@dataclass(frozen=True, slots=True)
class MergePlan:
    kind: MergeKind
    alpha: float  # how far we move toward their model: ``alpha * (theirs - ours)``


def plan_merge(own: Standing, their: Standing, adopt_ratio: float) -> MergePlan:
    """How our model merges theirs in one exchange (both sides agree on the kind's mirror:
    we adopt exactly when they keep).

    ``adopt_ratio`` 0 disables adoption (always ``AVERAGE``); otherwise it must be >= 1, which
    makes adopt and keep exclusive. Ages are compared strictly, so two fresh untrained models
    (both age 0) are averaged.
    """
    if adopt_ratio > 0:
        if own.fresh and their.age > adopt_ratio * own.age:
            return MergePlan(MergeKind.ADOPT, 1.0)
        if their.fresh and own.age > adopt_ratio * their.age:
            return MergePlan(MergeKind.KEEP, 0.0)
    return MergePlan(MergeKind.AVERAGE, merge_weight(own.samples, their.samples))


def merged_age(own_age: float, their_age: float, alpha: float) -> float:
    """Our model's age after moving ``alpha`` of the way toward a model of ``their_age``
    (a convex combination: exactly ``their_age`` for an adoption, ``own_age`` for keep)."""
    return (1.0 - alpha) * own_age + alpha * their_age


def merge_delta(snapshot: Tensors, theirs: Tensors, alpha: float) -> dict[str, np.ndarray]:
    """``alpha * (theirs - snapshot)`` per tensor, in float64 (the caller adds it to its model
    in float64 and rounds once, so a float16 model cannot overflow in between).

    ``theirs`` must have the snapshot's names and shapes (checked by the exchange beforehand).
    """
    out: dict[str, np.ndarray] = {}
    for name, mine in snapshot.items():
        other = theirs[name]
        diff = other.astype(np.float64, copy=False) - mine.astype(np.float64, copy=False)
        out[name] = alpha * diff
    return out


CHUNK = 1 << 20  # elements per block in the kernels below: small float64 temporaries that stay
# in cache and are reused, instead of whole-model ones (on big models the page faults of fresh
# 80 MB temporaries cost more than the arithmetic: a 10M-parameter measure went from 45-250 ms
# to ~20 ms)


def apply_merge(model: np.ndarray, snapshot: np.ndarray, theirs: np.ndarray, alpha: float) -> None:
    """``model += alpha * (theirs - snapshot)`` in place, computed in float64 and rounded once to
    ``model``'s dtype (so a float16 model cannot overflow in between). All three arrays have
    the same shape; ``model`` must be writable."""
    if not model.flags.c_contiguous:  # a flat view would be a copy: update it whole instead
        diff = theirs.astype(np.float64) - snapshot
        model[...] = model + alpha * diff
        return
    out = model.reshape(-1)
    mine, other = snapshot.reshape(-1), theirs.reshape(-1)
    for i in range(0, out.size, CHUNK):
        j = i + CHUNK
        diff = other[i:j].astype(np.float64) - mine[i:j]
        diff *= alpha
        diff += out[i:j]
        out[i:j] = diff


def merged(a: Tensors, wa: int, b: Tensors, wb: int) -> dict[str, np.ndarray]:
    """What ``a`` becomes when it merges ``b`` with no training in between."""
    alpha = merge_weight(wa, wb)
    delta = merge_delta(a, b, alpha)
    return {k: (a[k].astype(np.float64) + delta[k]).astype(a[k].dtype) for k in a}


def norm(tensors: Tensors) -> float:
    """Euclidean norm over all tensors together."""
    total = 0.0
    for arr in tensors.values():
        flat = arr.astype(np.float64, copy=False).ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def consensus_distance(ours: Tensors, theirs: Tensors) -> float:
    """``||ours - theirs|| / ||ours||`` over all tensors (``inf`` if ours is all zero)."""
    return measure(ours, theirs).relative_distance


def measure(ours: Tensors, theirs: Tensors) -> Measures:
    """Norms of both models and the distance between them, in one pass (for screening and the
    consensus distance). ``theirs`` must have our names and shapes.

    Squares of values below ~1e-154 or above ~1e154 leave float64's normal range; such models
    are measured again after scaling by their largest magnitude, so the results stay exact.
    """
    sums = _squared_sums(ours, theirs, 1.0)
    tiny, huge = 1e-280, 1e280
    if any(x < tiny or x > huge for x in sums):  # 0 too: the squares may have underflowed
        peak = max(
            (float(np.max(np.abs(t))) for m in (ours, theirs) for t in m.values() if t.size),
            default=0.0,
        )
        if math.isfinite(peak) and peak > 0.0:
            o, t, d = (math.sqrt(x) * peak for x in _squared_sums(ours, theirs, peak))
            return Measures(o, t, d)
    return Measures(*(math.sqrt(x) for x in sums))


def _squared_sums(ours: Tensors, theirs: Tensors, divisor: float) -> tuple[float, float, float]:
    ours_sq = theirs_sq = diff_sq = 0.0
    for name, mine in ours.items():
        flat_a, flat_b = mine.reshape(-1), theirs[name].reshape(-1)
        for i in range(0, flat_a.size, CHUNK):
            a = flat_a[i : i + CHUNK].astype(np.float64)
            b = flat_b[i : i + CHUNK].astype(np.float64)
            if divisor != 1.0:  # the rare rescaled pass only
                a /= divisor  # divided: 1 / a subnormal peak would overflow
                b /= divisor
            d = b - a
            ours_sq += float(np.dot(a, a))
            theirs_sq += float(np.dot(b, b))
            diff_sq += float(np.dot(d, d))
    return ours_sq, theirs_sq, diff_sq
