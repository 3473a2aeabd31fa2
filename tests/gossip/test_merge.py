"""Merge rules: push-pull averaging conserves the weighted sum and converges (Kempe et al. 2003)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossiplearn.gossip.merge import (
    CHUNK,
    MergeKind,
    MergePlan,
    Standing,
    Tensors,
    apply_merge,
    consensus_distance,
    merge_delta,
    merge_weight,
    merged,
    merged_age,
    norm,
    plan_merge,
)

RELAXED = settings(deadline=None)
weights = st.integers(min_value=0, max_value=10**6)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


def finite(dtype: np.dtype, bound: float) -> st.SearchStrategy[float]:
    width = 8 * np.dtype(dtype).itemsize
    return st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=width)


@st.composite
def model_pairs(draw: st.DrawFn, dtype: np.dtype, bound: float = 1e3) -> tuple[Tensors, Tensors]:
    """Two models with the same names, shapes and dtype (what an exchange has checked)."""
    names = draw(st.lists(st.sampled_from(["w", "b", "emb"]), min_size=1, unique=True))
    a, b = {}, {}
    for name in names:
        shape = draw(shapes)
        a[name] = draw(hnp.arrays(dtype, shape, elements=finite(dtype, bound)))
        b[name] = draw(hnp.arrays(dtype, shape, elements=finite(dtype, bound)))
    return a, b


def weighted_sum(models: list[Tensors], ws: list[int], name: str) -> np.ndarray:
    return sum(w * m[name].astype(np.float64) for m, w in zip(models, ws, strict=True))


# ---------------------------------------------------------------------------------- merge_weight


@pytest.mark.parametrize(
    ("own", "theirs", "alpha"),
    [(0, 0, 0.5), (1, 1, 0.5), (0, 7, 0.5), (7, 0, 0.0), (1, 3, 0.5), (300, 100, 1 / 6)],
)
def test_merge_weight(own: int, theirs: int, alpha: float) -> None:
    assert merge_weight(own, theirs) == pytest.approx(alpha)


@given(weights, st.integers(min_value=0, max_value=2**64 - 1))
def test_both_sides_move_by_equal_mass_and_never_more_than_halfway(wa: int, wb: int) -> None:
    alpha, beta = merge_weight(wa, wb), merge_weight(wb, wa)
    assert 0.0 <= alpha <= 0.5 and 0.0 <= beta <= 0.5  # whatever a remote claims
    assert wa * alpha == pytest.approx(wb * beta)  # the weighted sum is conserved


# ---------------------------------------------------------------------------------- averages


@RELAXED
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@given(data=st.data(), wa=weights, wb=weights)
def test_merging_a_model_with_itself_changes_nothing(
    dtype: type, data: st.DataObject, wa: int, wb: int
) -> None:
    m, _ = data.draw(model_pairs(np.dtype(dtype)))
    out = merged(m, wa, m, wb)
    assert out.keys() == m.keys()
    for name in m:
        assert out[name].dtype == m[name].dtype
        assert np.array_equal(out[name], m[name])


@RELAXED
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(data=st.data(), wa=weights, wb=weights)
def test_push_pull_conserves_the_weighted_sum(
    dtype: type, data: st.DataObject, wa: int, wb: int
) -> None:
    a, b = data.draw(model_pairs(np.dtype(dtype)))
    avg_a = merged(a, wa, b, wb)  # what the initiator becomes
    avg_b = merged(b, wb, a, wa)  # what the responder becomes
    for name in a:
        assert avg_a[name].dtype == avg_b[name].dtype == a[name].dtype
        before = weighted_sum([a, b], [wa, wb], name)
        # Rounding scales with the magnitudes involved, not with the (possibly cancelling) sum.
        magnitude = 1.0 + np.abs(a[name]).max(initial=0) + np.abs(b[name]).max(initial=0)
        atol = 8 * np.finfo(dtype).eps * (wa + wb) * magnitude
        adopted_by_each = weighted_sum([avg_a, avg_b], [wa, wb], name)
        np.testing.assert_allclose(adopted_by_each, before, rtol=0, atol=atol)


@RELAXED
@given(data=st.data(), wa=weights, wb=weights)
def test_the_average_lies_between_the_two_models(data: st.DataObject, wa: int, wb: int) -> None:
    a, b = data.draw(model_pairs(np.dtype(np.float64)))
    avg = merged(a, wa, b, wb)
    for name in a:
        lo, hi = np.minimum(a[name], b[name]), np.maximum(a[name], b[name])
        slack = 1e-12 * (1 + np.abs(a[name]) + np.abs(b[name]))
        assert np.all(avg[name] >= lo - slack)
        assert np.all(avg[name] <= hi + slack)


def test_weighted_average_example() -> None:
    a = {"w": np.array([0.0, 4.0])}
    b = {"w": np.array([8.0, 0.0])}
    assert merged(a, 1, b, 1)["w"].tolist() == [4.0, 2.0]  # equal weights: the plain mean
    assert merged(a, 4, b, 1)["w"].tolist() == [1.0, 3.5]  # moves by 1/(2*4) of the way
    assert merged(b, 1, a, 4)["w"].tolist() == [4.0, 2.0]  # the lighter side moves halfway
    assert merged(a, 0, b, 0)["w"].tolist() == [4.0, 2.0]  # no samples: plain mean
    assert merged(a, 0, b, 5)["w"].tolist() == [4.0, 2.0]  # ours has no weight: halfway
    assert merged(a, 5, b, 0)["w"].tolist() == [0.0, 4.0]  # theirs has none: we stay


def test_merge_delta_keeps_training_done_during_the_exchange() -> None:
    snapshot = {"w": np.array([1.0, 2.0], np.float32)}
    theirs = {"w": np.array([3.0, 6.0], np.float32)}
    trained_meanwhile = {"w": snapshot["w"] + np.float32(0.5)}
    delta = merge_delta(snapshot, theirs, 0.25)
    assert delta["w"].dtype == np.float64  # added in float64, rounded once by the caller
    assert delta["w"].tolist() == [0.5, 1.0]
    # The average of the snapshots plus the local step taken in between.
    assert (trained_meanwhile["w"] + delta["w"]).tolist() == [2.0, 3.5]
    assert merge_delta(snapshot, theirs, 0.0)["w"].tolist() == [0.0, 0.0]
    assert merge_delta(snapshot, theirs, 1.0)["w"].tolist() == [2.0, 4.0]


# ---------------------------------------------------------------------------------- distances


@RELAXED
@given(data=st.data())
def test_consensus_distance_to_itself_is_zero(data: st.DataObject) -> None:
    x, _ = data.draw(model_pairs(np.dtype(np.float64)))
    assert consensus_distance(x, x) == 0.0


@RELAXED
@given(data=st.data(), scale=st.sampled_from([-3.0, 0.5, 2.0, 1024.0]))
def test_consensus_distance_is_scale_invariant(data: st.DataObject, scale: float) -> None:
    x, y = data.draw(model_pairs(np.dtype(np.float64)))
    # scaling a subnormal value is not exact (0.5 * 5e-324 == 0): invariance holds above them
    assume(all(np.all((v == 0) | (np.abs(v) > 1e-300)) for m in (x, y) for v in m.values()))
    d = consensus_distance(x, y)
    scaled = consensus_distance(
        {k: scale * v for k, v in x.items()}, {k: scale * v for k, v in y.items()}
    )
    if math.isinf(d):
        assert math.isinf(scaled)
    else:
        assert scaled == pytest.approx(d, rel=1e-9, abs=1e-12)


def test_consensus_distance_values() -> None:
    x = {"w": np.array([3.0, 0.0]), "b": np.array([4.0])}
    zero = {k: np.zeros_like(v) for k, v in x.items()}
    assert norm(x) == 5.0
    assert consensus_distance(x, zero) == 1.0
    assert consensus_distance(x, {k: 2 * v for k, v in x.items()}) == 1.0
    assert consensus_distance(x, {k: -v for k, v in x.items()}) == 2.0
    assert consensus_distance(zero, zero) == 0.0
    assert consensus_distance(zero, x) == math.inf
    # Relative to ours, so not symmetric.
    assert consensus_distance({"w": np.array([1.0])}, {"w": np.array([3.0])}) == 2.0
    assert consensus_distance({"w": np.array([3.0])}, {"w": np.array([1.0])}) == pytest.approx(
        2 / 3
    )


def test_consensus_distance_mixes_dtypes_in_float64() -> None:
    ours = {"w": np.array([1.0], np.float16)}
    theirs = {"w": np.array([1.0 + 2**-20], np.float64)}
    assert consensus_distance(ours, theirs) == pytest.approx(2**-20)


# ---------------------------------------------------------------------------------- gossip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_pairwise_exchanges_converge_to_the_merged(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 8
    models: list[Tensors] = [
        {"w": rng.normal(0, 10, (3, 2)), "b": rng.normal(0, 10, 4)} for _ in range(n)
    ]
    ws = [int(w) for w in rng.integers(0, 1000, n)]
    ws[0] = 0  # a peer without data still converges to the others' average
    total = sum(ws)
    sums = {k: weighted_sum(models, ws, k) for k in models[0]}
    target = {k: s / total for k, s in sums.items()}

    for _ in range(600):
        i, j = (int(v) for v in rng.choice(n, 2, replace=False))
        models[i], models[j] = (
            merged(models[i], ws[i], models[j], ws[j]),
            merged(models[j], ws[j], models[i], ws[i]),
        )
        for k, s in sums.items():
            np.testing.assert_allclose(weighted_sum(models, ws, k), s, rtol=1e-9, atol=1e-9)

    for m in models:
        for k in m:
            np.testing.assert_allclose(m[k], target[k], rtol=0, atol=1e-5)


def test_float16_models_far_apart_merge_without_overflow() -> None:
    a = {"w": np.array([-60000.0, 1.0], np.float16)}
    b = {"w": np.array([60000.0, 3.0], np.float16)}
    avg = merged(a, 1, b, 1)["w"]
    assert np.isfinite(avg).all()
    assert avg.tolist() == [0.0, 2.0]


# ---------------------------------------------------------------------------------- late joiners

ages = st.floats(min_value=0.0, max_value=1e18, allow_nan=False)
standings = st.builds(Standing, samples=weights, age=ages, fresh=st.booleans())
ratios = st.sampled_from([0.0, 1.0, 2.0, 4.0, 100.0])


@given(standings, standings, ratios)
def test_the_two_sides_plan_mirror_images(a: Standing, b: Standing, ratio: float) -> None:
    at_a, at_b = plan_merge(a, b, ratio), plan_merge(b, a, ratio)
    mirror = {MergeKind.ADOPT: MergeKind.KEEP, MergeKind.KEEP: MergeKind.ADOPT}
    assert at_b.kind is mirror.get(at_a.kind, MergeKind.AVERAGE)
    if at_a.kind is MergeKind.AVERAGE:  # then the usual equal-mass rule
        assert (at_a.alpha, at_b.alpha) == (
            merge_weight(a.samples, b.samples),
            merge_weight(b.samples, a.samples),
        )


@given(standings, standings, ratios)
def test_only_a_fresh_side_is_overwritten_and_only_by_a_far_older_model(
    own: Standing, their: Standing, ratio: float
) -> None:
    plan = plan_merge(own, their, ratio)
    if plan.kind is MergeKind.ADOPT:
        assert own.fresh and ratio > 0 and their.age > ratio * own.age
        assert plan.alpha == 1.0
    elif plan.kind is MergeKind.KEEP:
        assert their.fresh and ratio > 0 and own.age > ratio * their.age
        assert plan.alpha == 0.0
    else:
        assert plan.alpha <= 0.5  # a side that has exchanged before never moves past halfway


@given(standings, st.floats(min_value=0.0, max_value=1e300), ratios)
def test_no_claimed_age_overwrites_a_peer_that_has_exchanged(
    own: Standing, claimed: float, ratio: float
) -> None:
    veteran = Standing(own.samples, own.age, fresh=False)
    for fresh in (False, True):
        plan = plan_merge(veteran, Standing(10**6, claimed, fresh), ratio)
        assert plan.kind is not MergeKind.ADOPT and plan.alpha <= 0.5


def test_adoption_examples() -> None:
    old, new = Standing(100, 16_000.0, False), Standing(100, 640.0, True)
    assert plan_merge(new, old, 4.0) == MergePlan(MergeKind.ADOPT, 1.0)
    assert plan_merge(old, new, 4.0) == MergePlan(MergeKind.KEEP, 0.0)
    assert plan_merge(new, old, 0.0) == MergePlan(MergeKind.AVERAGE, 0.5)  # off
    assert plan_merge(new, old, 100.0).kind is MergeKind.AVERAGE  # 25x is not 100x older
    # two fresh peers that have not trained yet are averaged, not swapped
    blank = Standing(100, 0.0, True)
    assert plan_merge(blank, blank, 4.0) == MergePlan(MergeKind.AVERAGE, 0.5)
    # the older of two fresh peers keeps its model; the younger adopts it
    early = Standing(100, 5_000.0, True)
    assert plan_merge(early, new, 4.0).kind is MergeKind.KEEP
    assert plan_merge(new, early, 4.0).kind is MergeKind.ADOPT


@given(ages, ages, st.floats(0.0, 1.0))
def test_age_merges_like_a_parameter(own: float, their: float, alpha: float) -> None:
    age = merged_age(own, their, alpha)
    assert min(own, their) * (1 - 1e-12) <= age <= max(own, their) * (1 + 1e-12)
    assert merged_age(own, their, 0.0) == own
    assert math.isclose(merged_age(own, their, 1.0), their, rel_tol=1e-12, abs_tol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_apply_merge_in_blocks_equals_the_whole_model_formula(dtype: type, layout: str) -> None:
    rng = np.random.default_rng(3)
    shape = (3, CHUNK + 7)  # several blocks, the last one short
    model, snap, theirs = (rng.normal(size=shape).astype(dtype) for _ in range(3))
    if layout == "transposed":  # not C-contiguous: updated whole
        model, snap, theirs = model.T, snap.T, theirs.T
    expected = (model.astype(np.float64) + 0.3 * (theirs.astype(np.float64) - snap)).astype(dtype)
    apply_merge(model, snap, theirs, 0.3)
    assert model.dtype == dtype
    assert np.array_equal(model, expected)
