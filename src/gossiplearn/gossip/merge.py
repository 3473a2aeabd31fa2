"""Merge rules: the sample-weighted average of two models, applied as a delta.

Push-pull gossip averaging (Kempe et al. 2003; for learning, Ormándi et al. 2013) keeps the
sample-weighted sum of all models constant when both parties of an exchange adopt
``(w_a x_a + w_b x_b) / (w_a + w_b)``: ``w_a m + w_b m = w_a x_a + w_b x_b``.

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
    """Fraction of the remote model in the average (0.5 when neither side has samples)."""
    total = own_samples + their_samples
    if total <= 0:
        return 0.5
    return their_samples / total


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


def weighted_average(a: Tensors, wa: int, b: Tensors, wb: int) -> dict[str, np.ndarray]:
    """The merge result when no training happens in between: ``a + merge_delta(a, b, ...)``."""
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
    consensus distance). ``theirs`` must have our names and shapes."""
    ours_sq = theirs_sq = diff_sq = 0.0
    for name, mine in ours.items():
        a = mine.astype(np.float64, copy=False).ravel()
        b = theirs[name].astype(np.float64, copy=False).ravel()
        d = b - a
        ours_sq += float(np.dot(a, a))
        theirs_sq += float(np.dot(b, b))
        diff_sq += float(np.dot(d, d))
    return Measures(math.sqrt(ours_sq), math.sqrt(theirs_sq), math.sqrt(diff_sq))
