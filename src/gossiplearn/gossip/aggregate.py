"""Consortium-wide statistics without a coordinator: push-pull averaging of sufficient statistics.

Each peer starts from the sums of its own data (row counts, per-column counts, sums and sums of
squares, category counts): a vector ``s_i``. In every exchange the two sides replace their
vectors by the pair's average. Pairwise averaging conserves the sum of all vectors (the mass),
so every peer's vector converges to ``(1/N) Σ s_i`` (Kempe et al. 2003; Boyd et al. 2006), and
every *ratio* of its entries to the union's: a mean is ``Σ sums / Σ counts`` whatever N is. No
peer needs to know N or to hold anyone else's raw data. A peer that joins late brings its sums
in and the consortium's estimate moves to include them; one that leaves takes an average share
with it, which leaves the others' ratios unchanged.

The vectors are sums, so the pair's *plain* average is the sample-weighted one: a member with
more rows already weighs more through its counts.

``SumsLayout`` says where each kind of sum sits, so a received vector can be checked (finite,
counts not negative, sums of squares consistent with sums) before it is averaged in
(``check``; ``check_sum`` for a secure group's average, decoded from fixed point); ``moments``
turns a vector into means and deviations. Pure: no I/O, no clocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gossiplearn.errors import RemoteProtocolError

TOLERANCE = 1e-9  # relative slack for the consistency checks (float64 rounding of the average)
# A variance below this share of mean² is rounding noise of ``squares/count - mean²`` (float64
# sums of float32 values), not spread: such a column is constant.
NOISE = 1e-10


class BadStatistics(RemoteProtocolError):
    """A received statistics vector is not a valid set of sums for our layout."""

    reason = "statistics"


@dataclass(frozen=True, slots=True)
class SumsLayout:
    """Positions in a statistics vector. ``moments``: (count, sum, sum of squares) triples;
    ``counts``: every other entry that counts rows (category counts, row totals)."""

    size: int
    moments: tuple[tuple[int, int, int], ...] = ()
    counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        used = [i for m in self.moments for i in m] + list(self.counts)
        if len(set(used)) != len(used) or any(not 0 <= i < self.size for i in used):
            raise ValueError("statistics layout positions overlap or fall outside the vector")


def average(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """The pair's average: what both sides of an exchange hold afterwards (mass-conserving)."""
    return (np.asarray(ours, dtype=np.float64) + np.asarray(theirs, dtype=np.float64)) / 2.0


def check(vector: np.ndarray, layout: SumsLayout, *, error: float = 0.0) -> np.ndarray:
    """``vector`` as float64 if it is a valid set of sums for ``layout``; raises
    ``BadStatistics`` otherwise (wrong size, non-finite, a negative count, a sum of squares
    below what its sum requires). ``error``: how far each entry may be from the true value
    (fixed-point rounding, ``check_sum``); the moments' consistency is loosened by what that
    can do to ``sum² ≤ count · sum of squares``, counts are not (non-negative values round to
    non-negative words, whose sum cannot go below 0)."""
    v = np.asarray(vector, dtype=np.float64)
    if v.shape != (layout.size,):
        raise BadStatistics(f"{v.size} statistics, ours has {layout.size}")
    if not np.isfinite(v).all():
        raise BadStatistics("statistics hold NaN or Inf")
    for i in layout.counts:
        if v[i] < 0:
            raise BadStatistics(f"count at {i} is negative")
    for c, s, q in layout.moments:
        count, total, squares = v[c], v[s], v[q]
        if count < 0 or squares < 0:
            raise BadStatistics(f"count or sum of squares at {c} is negative")
        # Cauchy-Schwarz: sum² <= count · sum of squares, with float rounding's slack and
        # (|t| + e)² - (c - e)(q - e) ≤ e (2|t| + c + q): how far an error e can push the sides
        slack = error * (2 * abs(total) + count + squares + 4 * error)
        if total * total > count * squares * (1 + TOLERANCE) + TOLERANCE + slack:
            raise BadStatistics(f"sums at {c} are inconsistent (sum² > count · squares)")
    return v


def check_sum(vector: np.ndarray, layout: SumsLayout, *, error: float) -> np.ndarray:
    """A secure group's average statistics (``gossip.group``), decoded from fixed point with
    each entry within ``error`` of the true average, as a valid set of sums; raises
    ``BadStatistics`` for one that honest members cannot produce (``check`` with ``error``).
    A sum of squares that rounding left just below what its sum requires is then raised to it,
    so the result passes ``check`` as it stands (and every member, decoding the same words,
    holds the same one)."""
    v = check(vector, layout, error=error).copy()
    for c, s, q in layout.moments:
        count, total, squares = v[c], v[s], v[q]
        if total * total > count * squares:
            if count > 0:
                v[q] = total * total / count
            else:  # no rows: the sum is rounding noise
                v[s] = 0.0
    return check(v, layout)


@dataclass(frozen=True, slots=True)
class Moment:
    count: float  # the share of rows that held a value (averaged: count / N)
    mean: float
    std: float  # population standard deviation; 0 when undefined


def moment(vector: np.ndarray, at: tuple[int, int, int]) -> Moment:
    """Mean and deviation from the (count, sum, sum of squares) at ``at``."""
    count, total, squares = (float(vector[i]) for i in at)
    if count <= 0:
        return Moment(0.0, 0.0, 0.0)
    mean = total / count
    var = squares / count - mean * mean
    if var <= NOISE * mean * mean:
        var = 0.0
    return Moment(count, mean, math.sqrt(var))


def spread(vectors: list[np.ndarray]) -> float:
    """Largest relative difference between any vector and their mean (0 when they agree):
    ``max_i ||v_i - mean|| / ||mean||``. For tests and benchmarks."""
    stack = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
    mean = stack.mean(axis=0)
    scale = float(np.linalg.norm(mean)) or 1.0
    return float(max(np.linalg.norm(v - mean) for v in stack) / scale)
