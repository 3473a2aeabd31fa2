"""Deterministic partitions of a labelled data set into disjoint shards.

``iid``: a seeded random permutation cut into N near-equal parts. ``dirichlet:ALPHA``: the usual
label-skew partition (Hsu et al. 2019): for each class, shard proportions are drawn from
Dirichlet(ALPHA); small ALPHA gives each shard few classes. Same seed, same N → same shards, so
the N members of a consortium, each computing only its own shard, hold disjoint data.
"""

from __future__ import annotations

import numpy as np

from gossiplearn.errors import UserError


def parse_partition(text: str) -> tuple[str, float]:
    """``"iid"`` → ("iid", 0); ``"dirichlet:0.5"`` → ("dirichlet", 0.5)."""
    if text == "iid":
        return "iid", 0.0
    kind, _, arg = text.partition(":")
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = -1.0
        if alpha > 0 and np.isfinite(alpha):
            return "dirichlet", alpha
    raise UserError(f"partition {text!r} is not valid: use 'iid' or 'dirichlet:ALPHA' (ALPHA > 0)")


def partition_indices(
    labels: np.ndarray, shards: int, partition: str, seed: int, min_size: int = 2
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into ``shards`` disjoint, sorted index arrays."""
    kind, alpha = parse_partition(partition)
    n = len(labels)
    if shards < 1 or shards * min_size > n:
        raise UserError(f"cannot cut {n} samples into {shards} shards of at least {min_size}")
    rng = np.random.default_rng(seed)
    if kind == "iid":
        perm = rng.permutation(n)
        return [np.sort(part) for part in np.array_split(perm, shards)]
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(shards)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(shards, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for s, chunk in enumerate(np.split(idx, cuts)):
                parts[s].extend(int(i) for i in chunk)
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise UserError(
        f"dirichlet:{alpha} left a shard with fewer than {min_size} samples in 1000 draws; "
        "use fewer shards or a larger alpha"
    )


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/6"`` → (2, 6); the index is 1-based."""
    idx, sep, count = text.partition("/")
    try:
        i, n = int(idx), int(count)
    except ValueError:
        i = n = 0
    if not sep or n < 1 or not 1 <= i <= n:
        raise UserError(f"shard {text!r} is not valid: use I/N with 1 <= I <= N, e.g. 2/6")
    return i, n
