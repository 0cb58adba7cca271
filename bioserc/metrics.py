"""The paper's metric, weighted F1 over all classes (paper-notes 4.6), with per-class scores and the confusion matrix.

Computed from one confusion matrix over a fixed label list, so the report always has every class (in label order)
even when a class never occurs; the weighted F1 equals `sklearn.metrics.f1_score(average="weighted")` (classes with
no support weigh nothing either way, and 0/0 counts as 0 as sklearn does). Scores are percentages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """(C, C) counts: rows are gold labels, columns predictions, both in `labels` order."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold labels but {len(y_pred)} predictions")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({y for y in (*y_true, *y_pred) if y not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not in the label list {list(labels)}")
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, ([index[y] for y in y_true], [index[y] for y in y_pred]), 1)
    return matrix


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def classification_report(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """JSON-ready report: n, accuracy, weighted_f1, macro_f1, per_class {label: precision/recall/f1/support},
    labels and confusion (list of rows)."""
    matrix = confusion_matrix(y_true, y_pred, labels)
    tp = np.diag(matrix).astype(float)
    support, predicted = matrix.sum(1), matrix.sum(0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    n = int(support.sum())
    return {
        "n": n,
        "accuracy": 100 * float(tp.sum() / n) if n else 0.0,
        "weighted_f1": 100 * float((f1 * support).sum() / n) if n else 0.0,
        "macro_f1": 100 * float(f1[(support + predicted) > 0].mean()) if n else 0.0,
        "per_class": {label: {"precision": 100 * float(precision[i]), "recall": 100 * float(recall[i]),
                              "f1": 100 * float(f1[i]), "support": int(support[i])}
                      for i, label in enumerate(labels)},
        "labels": list(labels),
        "confusion": matrix.tolist(),
    }


def weighted_f1(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> float:
    """Weighted F1 × 100, the number the paper reports."""
    return classification_report(y_true, y_pred, labels)["weighted_f1"]
