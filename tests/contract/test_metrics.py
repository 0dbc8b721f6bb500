"""Table 1 metrics against expectations computed independently (by counting), on tiny examples."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from wbc_edge.errors import DataError
from wbc_edge.metrics import compute_metrics, summarize_folds

CLASSES = ("neutrophil", "lymphocyte", "eosinophil")


def one_hot_probs(pred: list[int], n_classes: int, confidence: float = 0.8) -> np.ndarray:
    probs = np.full((len(pred), n_classes), (1 - confidence) / (n_classes - 1))
    probs[np.arange(len(pred)), pred] = confidence
    return probs


def counted(y_true: list[int], y_pred: list[int], k: int) -> dict[str, float]:
    """Per-class counts by plain loops: the reference the library is checked against."""
    tp = sum(1 for t, p in zip(y_true, y_pred) if t == k and p == k)
    fp = sum(1 for t, p in zip(y_true, y_pred) if t != k and p == k)
    fn = sum(1 for t, p in zip(y_true, y_pred) if t == k and p != k)
    tn = len(y_true) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "support": tp + fn, "recall": recall, "f1": f1,
            "specificity": tn / (tn + fp) if tn + fp else math.nan}


def pairwise_auc(scores_pos: list[float], scores_neg: list[float]) -> float:
    """AUC as the share of (positive, negative) pairs ranked correctly, ties half (Mann-Whitney)."""
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in scores_pos for n in scores_neg)
    return wins / (len(scores_pos) * len(scores_neg))


def test_tiny_example_matches_counting():
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 0]
    y_pred = [0, 0, 1, 0, 1, 1, 0, 2, 1, 0]
    m = compute_metrics(np.array(y_true), one_hot_probs(y_pred, 3), CLASSES)
    per = [counted(y_true, y_pred, k) for k in range(3)]
    n = len(y_true)
    assert m["n"] == n
    assert m["accuracy"] == pytest.approx(sum(t == p for t, p in zip(y_true, y_pred)) / n)
    assert m["weighted_f1"] == pytest.approx(sum(c["f1"] * c["support"] for c in per) / n)
    assert m["macro_f1"] == pytest.approx(sum(c["f1"] for c in per) / 3)
    assert m["sensitivity"] == pytest.approx(sum(c["recall"] * c["support"] for c in per) / n)
    assert m["specificity"] == pytest.approx(sum(c["specificity"] * c["support"] for c in per) / n)
    assert m["per_class_recall"] == {c: pytest.approx(per[k]["recall"]) for k, c in enumerate(CLASSES)}
    for k in range(3):
        assert m["confusion"][k][k] == per[k]["tp"]
        assert sum(m["confusion"][k]) == per[k]["support"]
        assert sum(row[k] for row in m["confusion"]) - per[k]["tp"] == per[k]["fp"]


def test_auc_matches_pairwise_counting_and_sklearn():
    rng = np.random.default_rng(3)
    y_true = np.array([0, 1, 2] * 6)
    probs = rng.dirichlet(np.ones(3), size=len(y_true))
    m = compute_metrics(y_true, probs, CLASSES)
    per_class = []
    for k in range(3):
        pos = [probs[i, k] for i in range(len(y_true)) if y_true[i] == k]
        neg = [probs[i, k] for i in range(len(y_true)) if y_true[i] != k]
        per_class.append((pairwise_auc(pos, neg), len(pos)))
    expected = sum(a * w for a, w in per_class) / sum(w for _, w in per_class)
    assert m["auc"] == pytest.approx(expected)
    assert m["auc"] == pytest.approx(roc_auc_score(y_true, probs, multi_class="ovr", average="weighted"))


def test_auc_with_a_class_absent_from_the_fold():
    # No eosinophil (class 2) among the labels: sklearn's multi-class AUC has no value for it.
    y_true = np.array([0, 0, 0, 1, 1, 0, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1],
                      [0.4, 0.3, 0.3], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    m = compute_metrics(y_true, probs, CLASSES)
    auc0 = pairwise_auc([probs[i, 0] for i in range(7) if y_true[i] == 0], [probs[i, 0] for i in range(7) if y_true[i] != 0])
    auc1 = pairwise_auc([probs[i, 1] for i in range(7) if y_true[i] == 1], [probs[i, 1] for i in range(7) if y_true[i] != 1])
    assert m["auc"] == pytest.approx((auc0 * 4 + auc1 * 3) / 7)
    assert m["per_class_recall"]["eosinophil"] is None
    assert m["support"]["eosinophil"] == 0
    assert math.isfinite(m["specificity"])


def test_auc_undefined_with_one_class_only():
    m = compute_metrics(np.array([1, 1, 1]), one_hot_probs([1, 0, 1], 3), CLASSES)
    assert math.isnan(m["auc"])
    assert m["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("y_true, probs, field", [
    (np.array([0, 1]), np.ones((2, 2)) / 2, "probs"),            # wrong class count
    (np.array([0, 1, 1]), np.ones((2, 3)) / 3, "y_true"),        # length mismatch
    (np.array([0, 3]), np.ones((2, 3)) / 3, "y_true"),           # label out of range
    (np.array([0, 1]), np.array([[np.nan, 0, 1], [0, 1, 0]]), "probs"),
])
def test_bad_inputs_name_the_field(y_true, probs, field):
    with pytest.raises(DataError, match=f"'{field}'"):
        compute_metrics(y_true, probs, CLASSES)


def test_summarize_folds_mean_std_and_missing_values():
    folds = [
        {"weighted_f1": 0.9, "sensitivity": 0.8, "specificity": 0.95, "auc": 0.97, "accuracy": 0.8, "macro_f1": 0.7,
         "per_class_recall": {"neutrophil": 1.0, "basophil": None}, "confusion": [[3, 1], [0, 2]]},
        {"weighted_f1": 0.7, "sensitivity": 0.6, "specificity": 0.85, "auc": float("nan"), "accuracy": 0.6,
         "macro_f1": 0.5, "per_class_recall": {"neutrophil": 0.5, "basophil": 0.25}, "confusion": [[1, 1], [2, 2]]},
    ]
    s = summarize_folds(folds)
    assert s["folds"] == 2
    assert s["weighted_f1"]["mean"] == pytest.approx(0.8)
    assert s["weighted_f1"]["std"] == pytest.approx(0.1)  # population std of 0.9, 0.7
    assert s["auc"] == {"mean": pytest.approx(0.97), "std": 0.0, "n": 1, "values": [0.97, folds[1]["auc"]]}
    assert s["per_class_recall"]["basophil"]["mean"] == pytest.approx(0.25)
    assert s["per_class_recall"]["basophil"]["n"] == 1
    assert s["confusion"] == [[4, 2], [2, 4]]
    with pytest.raises(DataError):
        summarize_folds([])


def test_the_gate_and_training_share_one_definition():
    from wbc_edge.export.gate import classification_metrics

    # Class 2 is absent from the labels but predicted once: macro F1 averages the present classes only.
    y_true = np.array([0, 0, 1, 1, 1, 0])
    y_pred = np.array([0, 2, 1, 1, 0, 0])
    train = compute_metrics(y_true, one_hot_probs(list(y_pred), 3), CLASSES)
    gate = classification_metrics(y_true, y_pred, CLASSES)
    per = [counted(list(y_true), list(y_pred), k) for k in range(2)]
    assert train["macro_f1"] == pytest.approx((per[0]["f1"] + per[1]["f1"]) / 2)
    for name in ("weighted_f1", "macro_f1", "accuracy"):
        assert gate[name] == pytest.approx(100 * train[name])
    assert gate["per_class_recall"][CLASSES[2]] is None and train["per_class_recall"][CLASSES[2]] is None
