"""Merge rules: mass-conserving pairwise averaging, applied as a delta.

Push-pull gossip averaging (Kempe et al. 2003; for learning, Ormándi et al. 2013) keeps the
sample-weighted sum of all models constant when the two parties of an exchange move toward each
other by equal *mass*: ``w_a alpha_a = w_b alpha_b``. We take ``alpha = min(w_a, w_b) /
(2 w_own)`` (``merge_weight``): the plain average between equal weights, never more than
halfway, whatever a remote claims.

A peer keeps training while an exchange is in flight, so it does not overwrite its model with the
average of the *snapshot* it sent; it adds ``alpha * (theirs - snapshot)`` to whatever its model is
now, with ``alpha = w_b / (w_a + w_b)``. With training paused this is exactly the average; with
training on, the steps taken during the exchange are kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

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
        a = mine.astype(np.float64, copy=False).ravel()
        b = theirs[name].astype(np.float64, copy=False).ravel()
        if divisor != 1.0:  # the rare rescaled pass only; the usual one copies nothing
            a, b = a / divisor, b / divisor  # divided: 1 / a subnormal peak would overflow
        d = b - a
        ours_sq += float(np.dot(a, a))
        theirs_sq += float(np.dot(b, b))
        diff_sq += float(np.dot(d, d))
    return ours_sq, theirs_sq, diff_sq
