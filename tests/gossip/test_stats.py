"""Status counters and the bounded metrics history."""

from __future__ import annotations

import pytest

from gossiplearn.gossip.stats import ExchangeCounters, MetricPoint, MetricsHistory


def point(t: float, accuracy: float | None = None, loss: float | None = None) -> MetricPoint:
    return MetricPoint(time=t, steps=int(t) * 10, accuracy=accuracy, loss=loss)


def test_history_keeps_the_last_capacity_points_oldest_first() -> None:
    h = MetricsHistory(capacity=3)
    assert h.latest is None
    for t in range(5):
        h.add(point(t))
    assert [p.time for p in h.points] == [2, 3, 4]
    assert h.latest == point(4)


def test_trend_without_enough_history_is_none() -> None:
    h = MetricsHistory()
    assert h.trend() == {"accuracy": None, "loss": None}
    h.add(point(0, accuracy=0.5, loss=1.0))
    assert h.trend() == {"accuracy": None, "loss": None}


def test_trend_compares_the_last_window_with_the_one_before() -> None:
    h = MetricsHistory()
    for t in range(12):  # the first two points fall outside both windows
        h.add(point(t, accuracy=t / 10, loss=10.0 - t))
    trend = h.trend(window=5)
    # mean(0.7..1.1) - mean(0.2..0.6) = 0.5; loss falls by 5.
    assert trend["accuracy"] == pytest.approx(0.5)
    assert trend["loss"] == pytest.approx(-5.0)


def test_trend_shrinks_the_window_to_the_history_available() -> None:
    h = MetricsHistory()
    for t, acc in enumerate([0.1, 0.2, 0.3, 0.6, 0.7]):
        h.add(point(t, accuracy=acc))
    # 5 points, window 5 -> 2: mean(0.6, 0.7) - mean(0.2, 0.3)
    assert h.trend(window=5)["accuracy"] == pytest.approx(0.4)


def test_trend_ignores_missing_values_and_is_none_without_any() -> None:
    h = MetricsHistory()
    for t, acc in enumerate([0.2, None, 0.4, None]):
        h.add(point(t, accuracy=acc))
    assert h.trend(window=2) == {"accuracy": pytest.approx(0.2), "loss": None}


def test_trend_sees_only_what_capacity_keeps() -> None:
    h = MetricsHistory(capacity=4)
    for t, acc in enumerate([0.9, 0.9, 0.9, 0.1, 0.1, 0.5, 0.5]):
        h.add(point(t, accuracy=acc))
    assert h.trend(window=5)["accuracy"] == pytest.approx(0.4)


def test_refuse_counts_in_total_and_by_reason() -> None:
    c = ExchangeCounters()
    c.refuse("non-finite")
    c.refuse("incompatible")
    c.refuse("non-finite")
    assert c.refused == 3
    assert c.refused_by_reason == {"non-finite": 2, "incompatible": 1}
    assert (c.completed, c.declined, c.failed) == (0, 0, 0)


def test_counters_do_not_share_state() -> None:
    a, b = ExchangeCounters(), ExchangeCounters()
    a.refuse("malformed")
    assert b.refused_by_reason == {}
