"""Plots: real PNGs of sensible size, and Figure 4's numbers from a predictor with known behaviour."""
from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from wbc_edge.errors import DataError
from wbc_edge.spec import spec_for
from wbc_edge.train.plots import (
    head_confidence_conditions, plot_confusion, plot_head_confidence, plot_learning_curves, plot_method_comparison,
)


def assert_png(path, min_w=300, min_h=200):
    assert path.is_file() and path.stat().st_size > 5000
    image = mpimg.imread(path)
    h, w = image.shape[:2]
    assert w >= min_w and h >= min_h
    assert image[..., :3].std() > 0.01  # something is drawn, not a blank canvas


def test_learning_curves(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,train_loss,val_loss,val_weighted_f1,lr\n1,1.6,1.5,0.42,0.002\n2,1.1,1.2,0.61,0.001\n"
                       "3,0.8,0.9,0.74,0.0005\n")
    out = plot_learning_curves(history, tmp_path / "plots" / "learning.png")
    assert_png(out)


def test_learning_curves_bad_file_names_it(tmp_path):
    empty = tmp_path / "history.csv"
    empty.write_text("epoch,train_loss\n")
    with pytest.raises(DataError, match="history.csv"):
        plot_learning_curves(empty, tmp_path / "x.png")


def test_confusion(tmp_path):
    classes = ("neutrophil", "lymphocyte", "eosinophil", "monocyte", "basophil")
    cm = [[50, 2, 1, 0, 0], [3, 30, 0, 1, 0], [1, 0, 6, 0, 0], [0, 1, 0, 2, 0], [0, 0, 0, 0, 0]]
    assert_png(plot_confusion(cm, classes, tmp_path / "cm.png"), min_w=600)
    with pytest.raises(DataError, match="5 classes"):
        plot_confusion([[1, 2], [3, 4]], classes, tmp_path / "bad.png")


def test_method_comparison(tmp_path):
    rows = [{"method": "early", "weighted_f1": {"mean": 0.9, "std": 0.02}},
            {"method": "mimo", "weighted_f1": {"mean": 0.93, "std": 0.01}}]
    assert_png(plot_method_comparison(rows, tmp_path / "bars.png"))


# A fake MM-MIMO: light k of a cell of class c is a flat image of value code(c, k); head h decodes only
# its own code, reading slot h. Independent heads by construction, so Figure 4's numbers are known.
N_CLASSES, CONF = 5, 0.9


def code(label: int, light: int) -> int:
    return (label * 37 + light * 53 + 11) % 256


def fake_cells(labels: np.ndarray, spec) -> np.ndarray:
    n, m, s = len(labels), len(spec.modalities), spec.input_size
    cells = np.empty((n, 3 * m, s, s), dtype=np.uint8)
    for i, c in enumerate(labels):
        for k in range(m):
            cells[i, 3 * k : 3 * k + 3] = code(int(c), k)
    return cells


def fake_predict(batch: np.ndarray) -> np.ndarray:
    n_heads = batch.shape[1] // 3
    out = np.full((len(batch), n_heads, N_CLASSES), 1.0 / N_CLASSES)
    for i in range(len(batch)):
        for h in range(n_heads):
            value = int(batch[i, 3 * h, 0, 0])
            matches = [c for c in range(N_CLASSES) if code(c, h) == value]
            if matches:
                out[i, h] = (1 - CONF) / (N_CLASSES - 1)
                out[i, h, matches[0]] = CONF
    return out


def test_head_confidence_numbers_and_png(tmp_path):
    spec = spec_for("mimo", input_size=16)
    labels = np.array([1, 2, 3, 4, 0, 1, 2, 3, 4, 1, 2])
    cells = fake_cells(labels, spec)
    stats = plot_head_confidence(fake_predict, cells, labels, spec, tmp_path / "fig4.png", batch_size=4)
    assert_png(tmp_path / "fig4.png", min_w=800)
    heads = list(spec.modalities)
    assert stats["heads"] == heads and stats["n"] == len(labels)
    assert list(stats["conditions"]) == ["all lights"] + [f"only {m}" for m in heads]
    share_of_class0 = float(np.mean(labels == 0))  # a uniform head's arg-max is class 0
    for h in heads:
        assert stats["conditions"]["all lights"][h] == {"mean_confidence": pytest.approx(CONF), "accuracy": 1.0}
    for k, light in enumerate(heads):
        for h in heads:
            got = stats["conditions"][f"only {light}"][h]
            if h == light:  # the head of the light given keeps its confidence
                assert got == {"mean_confidence": pytest.approx(CONF), "accuracy": 1.0}
            else:  # the other heads read a light they cannot decode
                assert got["mean_confidence"] == pytest.approx(1.0 / N_CLASSES)
                assert got["accuracy"] == pytest.approx(share_of_class0)


def test_conditions_copy_one_light_into_every_slot():
    spec = spec_for("mimo", input_size=16)
    cells = np.random.default_rng(0).integers(0, 256, size=(3, 12, 16, 16), dtype=np.uint8)
    conditions = head_confidence_conditions(cells, spec)
    np.testing.assert_array_equal(conditions["all lights"], cells)
    for slot in range(4):
        np.testing.assert_array_equal(conditions["only color2"][:, 3 * slot : 3 * slot + 3], cells[:, 6:9])


def test_head_confidence_rejects_wrong_input(tmp_path):
    spec = spec_for("mimo", input_size=16)
    with pytest.raises(DataError, match="uint8"):
        plot_head_confidence(fake_predict, np.zeros((2, 12, 8, 8), np.uint8), [0, 1], spec, tmp_path / "x.png")
    with pytest.raises(DataError, match="predict returned"):
        plot_head_confidence(lambda b: np.zeros((len(b), 2, 5)), np.zeros((2, 12, 16, 16), np.uint8), [0, 1], spec,
                             tmp_path / "x.png")
