import subprocess
import sys

import numpy as np

from wbc_edge.calibration import CalibrationSet
from wbc_edge.calibration.capture import capture_calibration_set


def test_capture_from_the_simulated_camera(spec, tmp_path):
    calib = capture_calibration_set("synthetic://?seed=3", 3, spec, crop_px=48, max_cells=10)
    assert 0 < len(calib) <= 10
    assert calib.inputs.shape[1:] == spec.input_shape(1)[1:]
    assert calib.source["kind"] == "capture" and calib.source["sets_read"] == 3
    assert all(label is None for label in calib.labels)
    assert len(set(calib.cell_ids)) == len(calib)
    # Real crops, not fill: every light of every cell has structure.
    per_light = calib.inputs.reshape(len(calib), len(spec.modalities), -1).std(axis=2)
    assert np.all(per_light > 1.0)
    calib.save(tmp_path / "c")
    assert CalibrationSet.load(tmp_path / "c").content_hash == calib.content_hash
    assert calib.class_counts() == {"unlabelled": len(calib)}


def test_calibration_and_gate_stay_torch_free():
    code = ("import sys, wbc_edge.calibration, wbc_edge.calibration.capture, wbc_edge.export.gate, wbc_edge.export.qdq_rules, "
            "wbc_edge.export.pipeline; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
