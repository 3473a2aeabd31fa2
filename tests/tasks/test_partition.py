"""Partitions: disjoint, complete, reproducible shards; and the parsing of --shard/--partition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.errors import UserError
from gossiplearn.tasks.partition import parse_partition, parse_shard, partition_indices

LABELS = np.repeat(np.arange(10), 100)  # 10 balanced classes, 1,000 samples


def assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n  # no index twice ...
    assert np.array_equal(np.sort(joined), np.arange(n))  # ... and every index once
    for p in parts:
        assert np.array_equal(p, np.sort(p))


@settings(deadline=None, max_examples=30)
@given(
    shards=st.integers(1, 12),
    partition=st.sampled_from(["iid", "dirichlet:0.1", "dirichlet:1", "dirichlet:100"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_shards_are_disjoint_and_cover_everything(shards: int, partition: str, seed: int) -> None:
    parts = partition_indices(LABELS, shards, partition, seed)
    assert len(parts) == shards
    assert_disjoint_cover(parts, len(LABELS))
    assert min(len(p) for p in parts) >= 2


def test_iid_shards_are_near_equal() -> None:
    parts = partition_indices(np.zeros(103), 10, "iid", seed=0)
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3


@pytest.mark.parametrize("partition", ["iid", "dirichlet:0.5"])
def test_same_seed_same_shards_other_seed_other_shards(partition: str) -> None:
    a = partition_indices(LABELS, 5, partition, seed=42)
    b = partition_indices(LABELS, 5, partition, seed=42)
    c = partition_indices(LABELS, 5, partition, seed=43)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def _dominant_class_share(parts: list[np.ndarray]) -> float:
    """Mean over shards of the share of its most common class (0.1 when perfectly mixed)."""
    return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dirichlet_with_small_alpha_is_skewed(seed: int) -> None:
    skewed = _dominant_class_share(partition_indices(LABELS, 5, "dirichlet:0.05", seed))
    mixed = _dominant_class_share(partition_indices(LABELS, 5, "iid", seed))
    large_alpha = _dominant_class_share(partition_indices(LABELS, 5, "dirichlet:1000", seed))
    assert skewed > 0.4
    assert mixed < 0.2
    assert large_alpha < 0.2


def test_too_many_shards_is_a_user_error() -> None:
    partition_indices(np.zeros(10), 5, "iid", seed=0)  # exactly 2 each: fine
    with pytest.raises(UserError, match="cannot cut 10 samples into 6 shards"):
        partition_indices(np.zeros(10), 6, "iid", seed=0)
    with pytest.raises(UserError):
        partition_indices(np.zeros(10), 0, "iid", seed=0)


def test_impossible_dirichlet_draw_is_a_user_error() -> None:
    # One class and 5 shards at a tiny alpha: almost all mass lands on one shard every time.
    with pytest.raises(UserError, match="larger alpha"):
        partition_indices(np.zeros(10, dtype=int), 5, "dirichlet:0.001", seed=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iid", ("iid", 0.0)),
        ("dirichlet:0.5", ("dirichlet", 0.5)),
        ("dirichlet:3", ("dirichlet", 3.0)),
    ],
)
def test_parse_partition(text: str, expected: tuple[str, float]) -> None:
    assert parse_partition(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "IID",
        "iid:1",
        "random",
        "dirichlet",
        "dirichlet:",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:nan",
        "dirichlet:inf",
        "dirichlet:abc",
        "dirichlet:0.5:1",
    ],
)
def test_parse_partition_errors(text: str) -> None:
    with pytest.raises(UserError, match="iid' or 'dirichlet:ALPHA"):
        parse_partition(text)
    with pytest.raises(UserError):
        partition_indices(LABELS, 2, text, seed=0)


@pytest.mark.parametrize(
    ("text", "expected"), [("1/1", (1, 1)), ("2/6", (2, 6)), ("6/6", (6, 6)), ("10/12", (10, 12))]
)
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize(
    "text", ["", "1", "/", "0/3", "4/3", "-1/3", "1/0", "a/b", "1/2/3", "1.5/3", "2 of 3"]
)
def test_parse_shard_errors(text: str) -> None:
    with pytest.raises(UserError, match="use I/N"):
        parse_shard(text)
