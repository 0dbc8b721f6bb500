import json
import logging

import numpy as np
import pytest

from wbc_edge.calibration import CalibrationCache, CalibrationSet, calibration_key, select_calibration_set, stratified_quota
from wbc_edge.errors import CalibrationError


def test_stratified_quota_keeps_rare_classes():
    counts = [9616, 4448, 677, 124, 47]  # the paper's class counts
    quota = stratified_quota(counts, 256, min_per_class=8)
    assert sum(quota) == 256
    assert all(q >= 8 for q in quota)
    assert quota[0] > quota[1] > quota[2]
    assert stratified_quota([3, 100], 50, min_per_class=8)[0] == 3  # all there are
    assert stratified_quota([5, 5, 5], 100) == [5, 5, 5]
    assert sorted(stratified_quota([100, 100, 2, 1], 3)) == [0, 1, 1, 1]


def test_selection_uses_training_split_only_and_is_seeded(dataset, split, spec, caplog):
    with caplog.at_level(logging.WARNING):
        calib = select_calibration_set(dataset, split["train"], spec, size=40, seed=3)
    assert "300 or more" in caplog.text
    assert len(calib) == 40
    assert set(calib.cell_ids) <= set(split["train"])
    assert not set(calib.cell_ids) & set(split["val"])
    assert set(calib.class_counts()) == set(dataset.classes)  # every class, basophils included
    assert calib.inputs.shape == spec.input_shape(40) and calib.inputs.dtype == np.uint8
    again = select_calibration_set(dataset, split["train"], spec, size=40, seed=3)
    assert again.cell_ids == calib.cell_ids and again.content_hash == calib.content_hash
    other = select_calibration_set(dataset, split["train"], spec, size=40, seed=4)
    assert other.cell_ids != calib.cell_ids


def test_save_load_round_trip_and_tamper_detection(dataset, split, spec, tmp_path):
    calib = select_calibration_set(dataset, split["train"], spec, size=20)
    calib.save(tmp_path / "c")
    manifest = json.loads((tmp_path / "c" / "calibration.json").read_text())
    assert manifest["sha256"] == calib.content_hash and manifest["n"] == 20
    assert manifest["class_counts"] == calib.class_counts() and manifest["source"]["split"] == "train"
    loaded = CalibrationSet.load(tmp_path / "c")
    assert loaded.cell_ids == calib.cell_ids and np.array_equal(loaded.inputs, calib.inputs)
    batches = list(loaded.batches(8))
    assert [len(b[spec.input_name]) for b in batches] == [8, 8, 4]
    with pytest.raises(CalibrationError, match="fewer than the batch size"):
        next(loaded.batches(64))
    # Different tensors under the old manifest: refused.
    np.savez_compressed(tmp_path / "c" / "inputs.npz", inputs=calib.inputs[::-1].copy())
    with pytest.raises(CalibrationError, match="content hash"):
        CalibrationSet.load(tmp_path / "c")


def test_cache_reuses_only_on_matching_key(tmp_path, caplog):
    cache = CalibrationCache(tmp_path)
    key = calibration_key("model-a", "calib-1", {"method": "minmax"})
    calls = []

    def build(tag):
        return lambda: calls.append(tag) or tag.encode()

    assert cache.get_or_build("ranges", key, build("first")) == (b"first", False)
    assert cache.get_or_build("ranges", calibration_key("model-a", "calib-1", {"method": "minmax"}), build("x")) == (b"first", True)
    with caplog.at_level(logging.INFO):
        data, reused = cache.get_or_build("ranges", calibration_key("model-b", "calib-1", {"method": "minmax"}), build("second"))
    assert (data, reused) == (b"second", False)
    assert "stale (model_sha256 changed)" in caplog.text
    with caplog.at_level(logging.INFO):
        assert cache.get_or_build("ranges", calibration_key("model-b", "calib-2", {"method": "minmax"}), build("third"))[1] is False
    assert "calibration_sha256 changed" in caplog.text
    assert calls == ["first", "second", "third"]
