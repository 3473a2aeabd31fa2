"""Push-pull averaging of sufficient statistics (Kempe et al. 2003; Boyd et al. 2006): the mass is
conserved, every peer's ratios converge to the union's, and invalid vectors are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.crypto.fixedpoint import STATS_FORMAT, FixedPoint, SplitFixedPoint
from gossiplearn.gossip.aggregate import (
    BadStatistics,
    SumsLayout,
    average,
    check,
    check_sum,
    moment,
    spread,
)

# [rows, (count, sum, squares) x NUMERIC, one count per category slot]
NUMERIC = 2
SLOTS = 3
LAYOUT = SumsLayout(
    size=1 + 3 * NUMERIC + SLOTS,
    moments=tuple((1 + 3 * i, 2 + 3 * i, 3 + 3 * i) for i in range(NUMERIC)),
    counts=(0, *range(1 + 3 * NUMERIC, 1 + 3 * NUMERIC + SLOTS)),
)


def sums(x: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """The statistics vector of rows ``x`` [rows, NUMERIC] (NaN: missing) and category indices
    (-1: missing), in LAYOUT."""
    out = [float(len(x))]
    for j in range(NUMERIC):
        v = x[~np.isnan(x[:, j]), j]
        out += [float(len(v)), float(v.sum()), float(np.dot(v, v))]
    out += [float(np.sum(categories == k)) for k in range(SLOTS)]
    return np.asarray(out)


def local_data(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """A peer's skewed data: its own size, means and scales, some missing cells."""
    means = rng.uniform(-100, 100, NUMERIC)
    scales = 10.0 ** rng.uniform(-2, 2, NUMERIC)
    x = rng.normal(means, scales, size=(rows, NUMERIC))
    x[rng.random((rows, NUMERIC)) < rng.uniform(0, 0.3)] = np.nan
    categories = rng.choice(np.arange(-1, SLOTS), size=rows, p=rng.dirichlet(np.ones(SLOTS + 1)))
    return x, categories


def peers(seed: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    # at least two values per column at every peer, so no moment is empty
    return [local_data(rng, int(rng.integers(2, 300))) for _ in range(n)]


seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=50)
@given(seed=seeds, n=st.integers(2, 8), data=st.data())
def test_pairwise_averaging_conserves_the_total(seed: int, n: int, data: st.DataObject) -> None:
    vectors = [sums(x, c) for x, c in peers(seed, n)]
    total = np.sum(vectors, axis=0)
    pairs = data.draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=60)
    )
    for i, j in pairs:
        if i != j:
            vectors[i] = vectors[j] = average(vectors[i], vectors[j])
        np.testing.assert_allclose(np.sum(vectors, axis=0), total, rtol=1e-9, atol=0)


def test_average_is_symmetric_and_leaves_its_inputs() -> None:
    a, b = np.array([1.0, 2.0, 4.0]), np.array([3.0, 0.0, 4.0])
    before = a.copy(), b.copy()
    assert average(a, b).tolist() == average(b, a).tolist() == [2.0, 1.0, 4.0]
    assert average(a, a).tolist() == a.tolist()
    np.testing.assert_array_equal(a, before[0])
    np.testing.assert_array_equal(b, before[1])


@settings(max_examples=25, deadline=None)
@given(seed=seeds)
def test_gossip_among_six_skewed_peers_reaches_the_union_moments(seed: int) -> None:
    data = peers(seed, 6)
    union_x = np.concatenate([x for x, _ in data])
    vectors = [sums(x, c) for x, c in data]
    rng = np.random.default_rng(seed + 1)
    for _ in range(40):  # rounds; each a random perfect matching of the six peers
        order = rng.permutation(6)
        for i, j in order.reshape(3, 2):
            vectors[i] = vectors[j] = average(vectors[i], vectors[j])
    for v in vectors:
        check(v, LAYOUT)
        for j, at in enumerate(LAYOUT.moments):
            column = union_x[~np.isnan(union_x[:, j]), j]
            m = moment(v, at)
            assert abs(m.mean - column.mean()) <= 1e-3 * (abs(column.mean()) + column.std())
            assert m.std == pytest.approx(column.std(), rel=1e-3)
            # the count is the average share, not the union's: count / N
            assert m.count == pytest.approx(len(column) / 6, rel=1e-3)
    assert spread(vectors) < 1e-3


@settings(max_examples=50)
@given(seed=seeds, n=st.integers(1, 6), exchanges=st.integers(0, 20))
def test_check_accepts_real_sums_before_and_after_averaging(
    seed: int, n: int, exchanges: int
) -> None:
    vectors = [sums(x, c) for x, c in peers(seed, n)]
    rng = np.random.default_rng(seed)
    for _ in range(exchanges):
        i, j = rng.integers(0, n, size=2)
        vectors[i] = vectors[j] = average(vectors[i], vectors[j])
    for v in vectors:
        out = check(v, LAYOUT)
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, v)


def test_check_accepts_constant_and_empty_columns() -> None:
    x = np.full((50, NUMERIC), 3.7)
    x[:, 1] = np.nan  # no value at all
    v = sums(x, np.zeros(50, dtype=int))
    assert check(v, LAYOUT).tolist() == v.tolist()
    assert check(average(v, sums(x[:7], np.zeros(7, dtype=int))), LAYOUT) is not None


def valid() -> np.ndarray:
    return sums(*peers(7, 1)[0])


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda v: v[:-1], "statistics, ours has"),
        (lambda v: np.append(v, 1.0), "statistics, ours has"),
        (lambda v: v.reshape(1, -1), "statistics, ours has"),
        (lambda v: np.where(np.arange(v.size) == 2, np.nan, v), "NaN or Inf"),
        (lambda v: np.where(np.arange(v.size) == 3, np.inf, v), "NaN or Inf"),
        (lambda v: np.where(np.arange(v.size) == 0, -1.0, v), "count at 0 is negative"),
        (lambda v: np.where(np.arange(v.size) == 8, -0.5, v), "count at 8 is negative"),
        (lambda v: np.where(np.arange(v.size) == 1, -1.0, v), "at 1 is negative"),
        (lambda v: np.where(np.arange(v.size) == 6, -1.0, v), "at 4 is negative"),
        (lambda v: np.where(np.arange(v.size) == 2, v[2] + 10 * np.sqrt(v[1] * v[3]), v), "at 1"),
        (lambda v: np.where(np.arange(v.size) == 4, 0.0, v), "inconsistent"),  # count 0, sum != 0
        (lambda v: np.where(np.arange(v.size) == 6, 0.0, v), "inconsistent"),  # squares 0
    ],
)
def test_check_refuses_each_invalid_kind(corrupt, match: str) -> None:  # type: ignore[no-untyped-def]
    v = valid()
    check(v, LAYOUT)  # the starting point is valid
    with pytest.raises(BadStatistics, match=match):
        check(corrupt(v), LAYOUT)


@settings(max_examples=50)
@given(seed=seeds, at=st.sampled_from(LAYOUT.moments), factor=st.floats(0.0, 0.999))
def test_check_refuses_squares_below_what_the_sum_needs(
    seed: int, at: tuple[int, int, int], factor: float
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(rng.uniform(1, 50), rng.uniform(0.01, 1), size=(20, NUMERIC))
    v = sums(x, np.zeros(20, dtype=int))
    c, s, q = at
    v[q] = factor * v[s] ** 2 / v[c]  # below sum² / count
    with pytest.raises(BadStatistics, match="inconsistent"):
        check(v, LAYOUT)


Format = FixedPoint | SplitFixedPoint
COARSE = FixedPoint(16)  # one word a value, 2^-16: rounding often breaks constant columns


def group_average(vectors: list[np.ndarray], fmt: Format = STATS_FORMAT) -> np.ndarray:
    """What a secure group decodes: each member's ``v / g`` in fixed point, summed mod 2^64."""
    words = np.zeros(fmt.encode(vectors[0]).size, np.uint64)
    for v in vectors:
        np.add(words, fmt.encode(v * (1 / len(vectors))), out=words)
    return fmt.decode(words)


@settings(max_examples=50)
@given(
    seed=seeds,
    g=st.integers(3, 16),
    value=st.floats(-1e4, 1e4),
    constant=st.booleans(),
    fmt=st.sampled_from([STATS_FORMAT, COARSE]),
)
def test_check_sum_accepts_a_groups_rounded_average_and_makes_it_consistent(
    seed: int, g: int, value: float, constant: bool, fmt: Format
) -> None:
    """Fixed point rounds each entry by up to half a step per member; a column that is
    constant at every member (sum² = count · squares exactly) then can fail ``check``'s float
    slack (with ``COARSE``, about one time in three). ``check_sum`` accepts it and returns sums
    that pass ``check``, within rounding of the true average."""
    rng = np.random.default_rng(seed)
    vectors = [sums(*p) for p in peers(seed, g)]
    if constant:
        rows = [np.full((int(rng.integers(1, 500)), NUMERIC), value) for _ in range(g)]
        vectors = [sums(x, np.zeros(len(x), dtype=int)) for x in rows]
    decoded = group_average(vectors, fmt)
    out = check_sum(decoded, LAYOUT, error=g * fmt.resolution)
    np.testing.assert_array_equal(check(out, LAYOUT), out)
    tolerance = g * fmt.resolution if fmt is COARSE else 1e-12
    np.testing.assert_allclose(out, np.mean(vectors, axis=0), rtol=1e-6, atol=tolerance)
    if fmt is STATS_FORMAT:  # five words a value: float64's precision, for small sums too
        np.testing.assert_allclose(out, np.mean(vectors, axis=0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda v: np.where(np.arange(v.size) == 0, -(2.0**-40), v), "count at 0 is negative"),
        (lambda v: np.where(np.arange(v.size) == 3, np.nan, v), "NaN or Inf"),
        (lambda v: np.where(np.arange(v.size) == 3, 0.5 * v[2] ** 2 / v[1], v), "inconsistent"),
        (lambda v: v[:-1], "statistics, ours has"),
    ],
)
def test_check_sum_refuses_what_rounding_cannot_explain(corrupt, match: str) -> None:  # type: ignore[no-untyped-def]
    v = group_average([sums(*p) for p in peers(7, 3)])
    check_sum(v, LAYOUT, error=3 * STATS_FORMAT.resolution)
    with pytest.raises(BadStatistics, match=match):
        check_sum(corrupt(v), LAYOUT, error=3 * STATS_FORMAT.resolution)


def test_layout_refuses_overlapping_or_outside_positions() -> None:
    with pytest.raises(ValueError, match="overlap"):
        SumsLayout(4, moments=((0, 1, 2),), counts=(2,))
    with pytest.raises(ValueError, match="outside"):
        SumsLayout(3, moments=((0, 1, 3),))


@settings(max_examples=60)
@given(
    value=st.floats(-1e4, 1e4, width=32),
    n=st.integers(1, 32),  # up to 32 float32 squares sum exactly in float64
)
def test_moment_of_a_constant_column_has_no_deviation(value: float, n: int) -> None:
    x = np.full(n, value, dtype=np.float32).astype(np.float64)  # what encode produces
    m = moment(np.array([n, x.sum(), np.dot(x, x)]), (0, 1, 2))
    assert m.count == n
    assert m.mean == pytest.approx(value, rel=1e-12, abs=1e-300)
    assert m.std == 0.0


@pytest.mark.parametrize(
    ("value", "n"),
    [(np.float32(8972.989), 1246), (-849.6202537674111, 398), (565.6399165703483, 125)],
)
def test_moment_of_a_long_constant_column_has_no_deviation(value: float, n: int) -> None:
    x = np.full(n, value, dtype=np.float64)
    m = moment(np.array([n, x.sum(), np.dot(x, x)]), (0, 1, 2))
    assert m.std == 0.0


def test_moment_of_known_values_and_of_an_empty_column() -> None:
    x = np.array([1.0, 2.0, 3.0, 6.0])
    m = moment(np.array([0.0, 4.0, x.sum(), np.dot(x, x)]), (1, 2, 3))
    assert (m.count, m.mean) == (4.0, 3.0)
    assert m.std == pytest.approx(np.std(x))
    assert moment(np.zeros(3), (0, 1, 2)) == moment(np.array([0.0, 5.0, 9.0]), (0, 1, 2))
    assert moment(np.zeros(3), (0, 1, 2)).std == 0.0
    # averaging (halving every entry) leaves mean and deviation where they were
    half = moment(np.array([0.0, 4.0, x.sum(), np.dot(x, x)]) / 2, (1, 2, 3))
    assert (half.count, half.mean, half.std) == (2.0, m.mean, pytest.approx(m.std))


@settings(max_examples=30)
@given(seed=seeds, n=st.integers(1, 6))
def test_spread_is_zero_for_equal_vectors_and_positive_otherwise(seed: int, n: int) -> None:
    v = sums(*peers(seed, 1)[0])
    assert spread([v.copy(), v.copy()]) == 0.0
    # the mean of n equal float64 values is not always bit-equal to them (n = 3, 5, 6)
    assert spread([v.copy() for _ in range(n)]) < 1e-15
    other = v.copy()
    other[0] += 0.01 * np.linalg.norm(v)
    # each is half the difference away from the mean: max ||v_i - mean|| / ||mean||
    expected = 0.005 * np.linalg.norm(v) / np.linalg.norm((v + other) / 2)
    assert spread([v, other]) == pytest.approx(expected, rel=1e-9)
    assert spread([np.zeros(3), np.zeros(3)]) == 0.0
