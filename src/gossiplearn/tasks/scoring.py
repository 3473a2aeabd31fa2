"""Scores of a model's outputs against true values: what ``gossiplearn evaluate`` reports.

Pure numpy. Classification: accuracy, per-class precision, recall, F1 and support, their macro
averages, and the confusion matrix (rows: true class, columns: predicted). Regression: RMSE,
MAE and R² (1 - SSE / SST around the evaluated rows' own mean; None when the values are all
equal). Macro F1 averages the classes that occur among the true labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_report(
    probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    k = len(classes)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class: dict[str, dict[str, float | int]] = {}
    for i, name in enumerate(classes):
        tp = int(confusion[i, i])
        predicted_i = int(confusion[:, i].sum())
        support = int(confusion[i, :].sum())
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
        }
    present = [c for c in per_class.values() if c["support"]]
    return {
        "accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
        "macro_f1": float(np.mean([c["f1"] for c in present])) if present else 0.0,
        "classes": per_class,
        "confusion": {
            "labels": list(classes),
            "matrix": confusion.tolist(),
        },
    }


def regression_report(predictions: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    truth = truth.astype(np.float64)
    err = predictions.astype(np.float64) - truth
    mean = float(truth.mean())
    sst = float(np.sum((truth - mean) ** 2))
    constant = sst <= 1e-12 * len(truth) * max(mean * mean, 1e-300)  # rounding noise only
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": None if constant else 1.0 - float(np.sum(err**2)) / sst,
    }
