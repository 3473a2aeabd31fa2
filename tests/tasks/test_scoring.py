"""What `gossiplearn evaluate` reports, checked against scores worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from gossiplearn.tasks.scoring import classification_report, regression_report


def probabilities_for(predicted: list[int], k: int) -> np.ndarray:
    """Probabilities whose argmax is ``predicted`` (not one-hot, so argmax has work to do)."""
    p = np.full((len(predicted), k), 0.1 / (k - 1))
    p[np.arange(len(predicted)), predicted] = 0.9
    return p


def test_classification_report_by_hand() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = [0, 1, 1, 1, 0, 2]
    report = classification_report(probabilities_for(predicted, 3), labels, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    # rows: true class, columns: predicted
    assert report["confusion"] == {
        "labels": ["a", "b", "c"],
        "matrix": [[1, 1, 0], [0, 2, 0], [1, 0, 1]],
    }
    a, b, c = (report["classes"][n] for n in "abc")
    assert a == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert b == {
        "precision": pytest.approx(2 / 3),
        "recall": 1.0,
        "f1": pytest.approx(0.8),
        "support": 2,
    }
    assert c == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_classification_report_of_a_perfect_model() -> None:
    labels = np.array([2, 0, 1, 1])
    report = classification_report(probabilities_for([2, 0, 1, 1], 3), labels, ["x", "y", "z"])
    assert report["accuracy"] == 1.0
    assert report["macro_f1"] == 1.0
    assert report["confusion"]["matrix"] == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]


def test_a_class_absent_and_never_predicted_scores_zero_and_is_left_out_of_the_macro() -> None:
    labels = np.array([0, 0, 1])
    report = classification_report(probabilities_for([0, 1, 1], 3), labels, ["a", "b", "c"])
    assert report["classes"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    f1_a, f1_b = 2 * 1.0 * 0.5 / 1.5, 2 * 0.5 * 1.0 / 1.5
    assert report["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
    assert report["confusion"]["matrix"][2] == [0, 0, 0]


def test_classification_report_without_rows() -> None:
    report = classification_report(np.zeros((0, 2)), np.zeros(0, dtype=np.int64), ["n", "y"])
    assert report["accuracy"] == 0.0
    assert report["macro_f1"] == 0.0
    assert report["confusion"]["matrix"] == [[0, 0], [0, 0]]


def test_regression_report_by_hand() -> None:
    report = regression_report(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 5.0]))
    # errors 0, -1, 1, -1; truth mean 2.75, SST = 8.75
    assert report["rmse"] == pytest.approx(np.sqrt(3 / 4))
    assert report["mae"] == pytest.approx(0.75)
    assert report["r2"] == pytest.approx(1 - 3 / 8.75)


def test_regression_report_of_perfect_and_mean_predictions() -> None:
    truth = np.array([3.0, -1.0, 4.0, 2.0], dtype=np.float32)
    assert regression_report(truth.copy(), truth) == {"rmse": 0.0, "mae": 0.0, "r2": 1.0}
    mean = np.full(4, truth.mean())
    assert regression_report(mean, truth)["r2"] == pytest.approx(0.0, abs=1e-12)
    worse = regression_report(mean + 10, truth)["r2"]
    assert worse is not None
    assert worse < 0


def test_r2_is_none_when_all_truths_are_equal() -> None:
    report = regression_report(np.array([1.0, 2.0, 4.0]), np.array([2.0, 2.0, 2.0]))
    assert report["r2"] is None
    assert report["mae"] == pytest.approx(1.0)
    assert report["rmse"] == pytest.approx(np.sqrt(5 / 3))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_r2_is_none_for_equal_truths_that_do_not_average_exactly(dtype: type) -> None:
    truth = np.full(7, 0.1, dtype=dtype)
    assert regression_report(np.zeros(7, dtype=dtype), truth)["r2"] is None
