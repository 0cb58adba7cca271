"""The paper's metric, weighted F1 over all classes (paper-notes 4.6), with per-class scores and the confusion matrix.

Everything is computed by `sklearn.metrics` over a fixed label list, so the report always has every class (in label
order) even when a class never occurs; 0/0 counts as 0 (`zero_division=0`). Weighted F1 weighs each class by its gold
support, so a class that is never gold weighs nothing; macro F1 averages the classes that occur as gold or prediction,
as `sklearn.metrics.f1_score(average="macro")` does without a label list. Scores are percentages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sklearn import metrics


def _check(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> None:
    # sklearn silently drops values outside `labels`; a label the model or the data invented must be an error instead.
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold labels but {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("no labelled utterances to score")
    unknown = sorted(set(y_true).union(y_pred).difference(labels))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the label list {list(labels)}")


def classification_report(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """JSON-ready report: n, accuracy, weighted_f1, macro_f1, per_class {label: precision/recall/f1/support},
    labels and confusion (rows: gold label, columns: predicted label, both in `labels` order)."""
    _check(y_true, y_pred, labels)
    labels = list(labels)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    weighted = metrics.f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    occurring = [label for label in labels if label in set(y_true).union(y_pred)]
    macro = metrics.f1_score(y_true, y_pred, labels=occurring, average="macro", zero_division=0)
    return {
        "n": len(y_true),
        "accuracy": 100 * float(metrics.accuracy_score(y_true, y_pred)),
        "weighted_f1": 100 * float(weighted),
        "macro_f1": 100 * float(macro),
        "per_class": {
            label: {
                "precision": 100 * float(precision[i]),
                "recall": 100 * float(recall[i]),
                "f1": 100 * float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": labels,
        "confusion": metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def weighted_f1(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> float:
    """Weighted F1 × 100, the number the paper reports."""
    return classification_report(y_true, y_pred, labels)["weighted_f1"]


def render_report(report: dict[str, Any]) -> str:
    """`classification_report` as a person reads it: a per-class table, the summary scores, and the confusion
    matrix as an aligned grid (rows: gold label, columns: predicted label)."""
    labels = report["labels"]
    width = max(len("weighted F1"), *map(len, labels))
    lines = [f"{'class':<{width}}  {'precision':>9}  {'recall':>6}  {'F1':>6}  {'support':>7}"]
    for label in labels:
        m = report["per_class"][label]
        lines.append(f"{label:<{width}}  {m['precision']:9.2f}  {m['recall']:6.2f}  {m['f1']:6.2f}  {m['support']:7d}")
    lines += [
        "",
        *(
            f"{name:<{width}}  {report[key]:9.2f}"
            for name, key in (("weighted F1", "weighted_f1"), ("macro F1", "macro_f1"), ("accuracy", "accuracy"))
        ),
        f"{'utterances':<{width}}  {report['n']:9d}",
        "",
        "confusion matrix (rows: gold, columns: predicted)",
    ]
    corner = "gold \\ predicted"
    first = max(len(corner), *map(len, labels))
    columns = list(zip(*report["confusion"], strict=True))
    widths = [max(len(label), *(len(str(x)) for x in column)) for label, column in zip(labels, columns, strict=True)]
    lines.append(f"{corner:<{first}}" + "".join(f"  {label:>{w}}" for label, w in zip(labels, widths, strict=True)))
    for label, row in zip(labels, report["confusion"], strict=True):
        lines.append(f"{label:<{first}}" + "".join(f"  {x:>{w}}" for x, w in zip(row, widths, strict=True)))
    return "\n".join(lines)
