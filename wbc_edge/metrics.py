"""Classification metrics, one definition for training (Table 1), the accuracy gate and the bench.

The paper reports weighted F1, sensitivity, specificity and AUC. With basophils at 0.3% a weighted
score hides the rare classes, so accuracy, macro F1, per-class recall and the confusion matrix are
reported beside them. Values are fractions; `as_percent` gives the gate's and bench's percent view.
Macro F1 averages the classes present in the labels: a class absent from the held-out cells has no
recall to lose (cells wrongly called that class still lower the other classes' recall).
NumPy + scikit-learn only (no torch).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score, roc_auc_score

from wbc_edge.errors import DataError

log = logging.getLogger(__name__)

# Scalar metrics, in the order tables show them (the paper's four first).
SCALAR_METRICS = ("weighted_f1", "sensitivity", "specificity", "auc", "accuracy", "macro_f1")


def _check_inputs(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = len(classes)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise DataError(f"metrics field 'probs': expected shape [N, {n_classes}], got {list(probs.shape)}")
    if y_true.ndim != 1 or y_true.shape[0] != probs.shape[0]:
        raise DataError(f"metrics field 'y_true': expected {probs.shape[0]} labels, got shape {list(y_true.shape)}")
    if y_true.size == 0:
        raise DataError("metrics field 'y_true': no samples")
    if not np.issubdtype(y_true.dtype, np.integer) or y_true.min() < 0 or y_true.max() >= n_classes:
        raise DataError(f"metrics field 'y_true': labels must be integers in 0..{n_classes - 1}")
    if not np.all(np.isfinite(probs)):
        raise DataError("metrics field 'probs': contains NaN or infinity")
    return y_true.astype(np.int64), probs


def weighted_specificity(confusion: np.ndarray) -> float:
    """Per-class TN / (TN + FP), averaged with the classes' support as weights (like weighted recall)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    true_pos = np.diag(confusion)
    false_pos = predicted - true_pos
    true_neg = total - support - false_pos
    negatives = true_neg + false_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(negatives > 0, true_neg / np.where(negatives > 0, negatives, 1), np.nan)
    present = (support > 0) & ~np.isnan(per_class)
    if not present.any():
        return float("nan")
    return float(np.average(per_class[present], weights=support[present]))


def weighted_ovr_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest ROC AUC averaged with class support as weights.

    Equals scikit-learn's `roc_auc_score(multi_class="ovr", average="weighted")` when every class is
    present; a class absent from `y_true` (common for basophils in a small fold) has no ROC curve and
    weight zero, so it is left out instead of failing. NaN when fewer than two classes are present.
    """
    present = np.unique(y_true)
    if present.size < 2:
        return float("nan")
    aucs, weights = [], []
    for k in present:
        positive = y_true == k
        aucs.append(roc_auc_score(positive.astype(np.int64), probs[:, k]))
        weights.append(int(positive.sum()))
    return float(np.average(aucs, weights=weights))


def label_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Metrics of predicted labels against true labels (integers in 0..K-1), as fractions.

    Weighted scores use the true-class support as weights; sensitivity is the weighted recall (which
    equals accuracy by construction), specificity the weighted per-class TN/(TN+FP). Per-class recall
    is None for a class with no sample.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = list(range(len(classes)))
    confusion = confusion_matrix(y_true, y_pred, labels=labels)
    support = confusion.sum(axis=1)
    present = [k for k in labels if support[k] > 0]
    recalls = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "n": int(y_true.size),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "sensitivity": float(recall_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "specificity": weighted_specificity(confusion),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "per_class_recall": {c: (float(recalls[k]) if support[k] > 0 else None) for k, c in enumerate(classes)},
        "support": {c: int(support[k]) for k, c in enumerate(classes)},
        "confusion": confusion.astype(int).tolist(),
    }


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Table 1 metrics for one fold from integer labels [N] and class probabilities [N, K]:
    `label_metrics` of the arg-max class, plus the weighted one-vs-rest AUC of the probabilities."""
    y_true, probs = _check_inputs(y_true, probs, classes)
    metrics = label_metrics(y_true, probs.argmax(axis=1), classes)
    metrics["auc"] = weighted_ovr_auc(y_true, probs)
    return metrics


PERCENT_METRICS = ("weighted_f1", "macro_f1", "accuracy", "sensitivity", "specificity")


def as_percent(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The fraction metrics in percent (the gate's and bench's tables), per-class recall too."""
    out = dict(metrics)
    for name in PERCENT_METRICS:
        if out.get(name) is not None:
            out[name] = 100.0 * out[name]
    out["per_class_recall"] = {c: (None if r is None else 100.0 * r) for c, r in metrics["per_class_recall"].items()}
    return out


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    finite = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not finite:
        return {"mean": None, "std": None, "n": 0, "values": list(values)}
    arr = np.asarray(finite)
    # Population std (ddof=0), as most CV reports (and scikit-learn's cross_validate users) print it.
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": len(finite), "values": list(values)}


def summarize_folds(fold_metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and std over folds of each scalar metric and of each class's recall; confusions summed.

    Folds where a value is undefined (None / NaN, e.g. a class absent from that fold) are left out of
    that value's mean; `n` says how many folds contributed.
    """
    if not fold_metrics:
        raise DataError("metrics: no folds to summarise")
    summary: dict[str, Any] = {"folds": len(fold_metrics)}
    for name in SCALAR_METRICS:
        summary[name] = mean_std([m.get(name) for m in fold_metrics])
    classes: list[str] = []
    for m in fold_metrics:
        classes.extend(c for c in m.get("per_class_recall", {}) if c not in classes)
    summary["per_class_recall"] = {
        c: mean_std([m.get("per_class_recall", {}).get(c) for m in fold_metrics]) for c in classes
    }
    confusions = [np.asarray(m["confusion"]) for m in fold_metrics if m.get("confusion") is not None]
    if confusions and all(c.shape == confusions[0].shape for c in confusions):
        summary["confusion"] = np.sum(confusions, axis=0).astype(int).tolist()
    return summary
