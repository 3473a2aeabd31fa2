"""Screening of received models: norm refusals and centred clipping of distance outliers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gossiplearn.gossip.merge import consensus_distance, measure
from gossiplearn.gossip.screening import (
    ACCEPT,
    Action,
    Measures,
    Screen,
    ScreeningConfig,
    Verdict,
)

CONFIG = ScreeningConfig()
positive = st.floats(min_value=1e-3, max_value=1e3)
anything = st.floats(allow_nan=True, allow_infinity=True)
warmups = st.integers(min_value=1, max_value=16)
ratios = st.floats(min_value=1.5, max_value=100.0)


@st.composite
def measures(draw: st.DrawFn, our_norm: float | None = None) -> Measures:
    """Measures two real vectors could have: norms > 0 within 2x, the triangle inequality."""
    ours = our_norm if our_norm is not None else draw(positive)
    theirs = ours * draw(st.floats(min_value=0.5, max_value=2.0))
    distance = draw(st.floats(min_value=abs(ours - theirs), max_value=ours + theirs))
    return Measures(ours, theirs, distance)


def honest(screen: Screen, relative: float, n: int, our_norm: float = 1.0) -> None:
    """Record ``n`` models of our norm at relative distance ``relative``."""
    for _ in range(n):
        assert screen.assess(Measures(our_norm, our_norm, relative * our_norm)).action in (
            Action.ACCEPT,
            Action.CLIP,
        )


# ---------------------------------------------------------------------------------- properties


@given(st.lists(st.tuples(anything, anything, anything), max_size=50))
def test_a_disabled_screen_accepts_everything(triples: list[tuple[float, float, float]]) -> None:
    screen = Screen(ScreeningConfig(enabled=False))
    for ours, theirs, distance in triples:
        assert screen.assess(Measures(ours, theirs, distance)) == ACCEPT
    assert screen.threshold() is None  # nothing recorded


@given(
    ours=positive,
    ratio=ratios,
    factor=st.floats(min_value=1.001, max_value=1e6),
    above=st.booleans(),
    history=st.integers(0, 40),
)
def test_a_norm_more_than_max_norm_ratio_off_is_refused(
    ours: float, ratio: float, factor: float, above: bool, history: int
) -> None:
    screen = Screen(ScreeningConfig(max_norm_ratio=ratio))
    honest(screen, 0.1, history, our_norm=ours)  # reference stays at our norm
    theirs = ours * ratio * factor if above else ours / ratio / factor
    before = screen.threshold()
    verdict = screen.assess(Measures(ours, theirs, ours + theirs))
    assert verdict.action is Action.REFUSE
    assert (verdict.scale, verdict.reason) == (0.0, "norm")
    assert f"{ratio:g}x" in verdict.detail
    assert screen.threshold() == before  # a refused model is not recorded


@given(ours=positive, ratio=ratios, inside=st.floats(min_value=0.0, max_value=0.999))
def test_a_norm_within_max_norm_ratio_is_not_refused(
    ours: float, ratio: float, inside: float
) -> None:
    for exponent in (inside, -inside):
        screen = Screen(ScreeningConfig(max_norm_ratio=ratio))  # reference: our norm
        theirs = ours * ratio**exponent
        verdict = screen.assess(Measures(ours, theirs, abs(theirs - ours)))
        assert verdict.action is not Action.REFUSE


@given(warmup=warmups, data=st.data())
def test_during_warmup_only_models_beyond_the_cold_radius_are_clipped(
    warmup: int, data: st.DataObject
) -> None:
    screen = Screen(ScreeningConfig(warmup=warmup))
    cold = screen.config.cold_radius
    for _ in range(warmup):
        assert screen.threshold() is None and screen.radius() == cold
        m = data.draw(measures(our_norm=1.0))
        verdict = screen.assess(m)
        if m.relative_distance <= cold:  # two random initialisations are ~1.41 apart
            assert verdict == ACCEPT
        else:
            assert verdict.action is Action.CLIP
            assert verdict.scale * m.relative_distance == pytest.approx(cold)
    assert screen.threshold() is not None


@given(warmup=warmups, data=st.data())
def test_after_warmup_a_clip_caps_the_pull_at_the_threshold(
    warmup: int, data: st.DataObject
) -> None:
    screen = Screen(ScreeningConfig(warmup=warmup))
    our_norm = data.draw(positive)
    for _ in range(warmup):
        screen.assess(data.draw(measures(our_norm=our_norm)))
    for _ in range(data.draw(st.integers(1, 60))):
        m = data.draw(measures(our_norm=our_norm))
        tau = screen.threshold()
        assert tau is not None
        verdict = screen.assess(m)
        assert verdict.action is not Action.REFUSE  # norms within 2x
        assert 0.0 < verdict.scale <= 1.0
        d = m.relative_distance
        if d > tau:
            assert (verdict.action, verdict.reason) == (Action.CLIP, "outlier")
            assert verdict.scale < 1.0
            assert math.isclose(verdict.scale * d, tau, rel_tol=1e-12)
        else:
            assert verdict == ACCEPT


@given(st.lists(st.floats(min_value=0.0, max_value=1e3), min_size=1, max_size=100))
def test_the_threshold_never_falls_below_min_radius(relative: list[float]) -> None:
    screen = Screen(ScreeningConfig(warmup=1))
    for d in relative:
        screen.assess(Measures(1.0, 1.0, d))
        tau = screen.threshold()
        assert tau is not None and tau >= CONFIG.min_radius


@given(
    relative=st.floats(min_value=0.0, max_value=1.9),
    n=st.integers(1, 200),
    our_norm=positive,
)
def test_identical_honest_distances_are_never_clipped(
    relative: float, n: int, our_norm: float
) -> None:
    screen = Screen()
    for _ in range(n):
        assert screen.assess(Measures(our_norm, our_norm, relative * our_norm)) == ACCEPT


@given(
    history=st.lists(st.floats(min_value=0.0, max_value=0.2), min_size=8, max_size=64),
    our_norm=positive,
)
def test_one_far_outlier_after_an_honest_history_is_clipped(
    history: list[float], our_norm: float
) -> None:
    screen = Screen()
    for d in history:
        assert screen.assess(Measures(our_norm, our_norm, d * our_norm)) == ACCEPT
    tau = screen.threshold()
    assert tau is not None
    # the opposite model: same norm, as far away as a model of that norm can be
    far = Measures(our_norm, our_norm, 2 * our_norm)
    verdict = screen.assess(far)
    assert (verdict.action, verdict.reason) == (Action.CLIP, "outlier")
    assert math.isclose(verdict.scale * 2.0, tau)
    # the same model scaled by 1e6 is refused outright
    scaled = Measures(our_norm, 1e6 * our_norm, (1e6 + 1) * our_norm)
    refused = screen.assess(scaled)
    assert (refused.action, refused.scale, refused.reason) == (Action.REFUSE, 0.0, "norm")


@pytest.mark.parametrize(
    ("their_norm", "distance"),
    [
        (math.inf, 1.0),
        (math.nan, 1.0),
        (-math.inf, 1.0),
        (1.0, math.inf),
        (1.0, math.nan),
    ],
)
@pytest.mark.parametrize("history", [0, 20])
def test_non_finite_measures_are_refused(their_norm: float, distance: float, history: int) -> None:
    screen = Screen()
    honest(screen, 0.05, history)
    verdict = screen.assess(Measures(1.0, their_norm, distance))
    assert (verdict.action, verdict.scale, verdict.reason) == (Action.REFUSE, 0.0, "norm")
    assert "not finite" in verdict.detail


def test_the_reference_norm_follows_recently_merged_models() -> None:
    screen = Screen(ScreeningConfig(max_norm_ratio=10.0))
    # the consortium's models have norm ~100 while ours was just reset to ~1
    for _ in range(20):
        screen.assess(Measures(100.0, 100.0, 5.0))
    assert screen.reference_norm(1.0) == 100.0
    assert screen.assess(Measures(1.0, 100.0, 99.0)).action is not Action.REFUSE
    assert screen.assess(Measures(1.0, 5.0, 4.0)).action is Action.REFUSE  # 20x below usual


def test_a_zero_model_of_ours_accepts_without_a_distance() -> None:
    screen = Screen()
    assert screen.assess(Measures(0.0, 3.0, 3.0)) == ACCEPT
    assert Measures(0.0, 3.0, 3.0).relative_distance == math.inf
    assert Measures(0.0, 0.0, 0.0).relative_distance == 0.0


def test_verdicts_are_values() -> None:
    assert Verdict(Action.ACCEPT, 1.0) == ACCEPT
    assert Action("clip") is Action.CLIP


# ---------------------------------------------------------------------------------- measure


finite32 = st.floats(min_value=-1e3, max_value=1e3, width=32)


@st.composite
def model_pairs(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    shapes = draw(
        st.dictionaries(
            st.text(min_size=1, max_size=8),
            st.lists(st.integers(0, 4), max_size=3).map(tuple),
            min_size=1,
            max_size=4,
        )
    )
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    ours: dict[str, np.ndarray] = {}
    theirs: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        size = math.prod(shape)
        for side in (ours, theirs):
            values = draw(st.lists(finite32, min_size=size, max_size=size))
            side[name] = np.array(values, dtype=np.float64).reshape(shape).astype(dtype)
    return ours, theirs


def flat(tensors: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([t.astype(np.float64).ravel() for t in tensors.values()])


@given(model_pairs())
def test_measure_matches_numpy_norms(
    pair: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
) -> None:
    ours, theirs = pair
    a, b = flat(ours), flat(theirs)
    m = measure(ours, theirs)
    assert math.isclose(m.our_norm, float(np.linalg.norm(a)), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(m.their_norm, float(np.linalg.norm(b)), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(m.distance, float(np.linalg.norm(b - a)), rel_tol=1e-9, abs_tol=1e-12)
    distance = consensus_distance(ours, theirs)
    relative = m.relative_distance
    assert distance == relative or (math.isnan(distance) and math.isnan(relative))


@given(model_pairs())
def test_consensus_distance_is_relative_to_our_norm(
    pair: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
) -> None:
    ours, theirs = pair
    a, b = flat(ours), flat(theirs)
    assume(np.linalg.norm(a) > 0)
    expected = float(np.linalg.norm(b - a) / np.linalg.norm(a))
    assert math.isclose(consensus_distance(ours, theirs), expected, rel_tol=1e-9)
    assert consensus_distance(ours, ours) == 0.0
