"""Calibration sets for INT8 (from a dataset's training split or from device frames), and the
calibration-result cache. No torch here: it works on uint8 arrays and ONNX."""
from wbc_edge.calibration.cache import CalibrationCache, calibration_key, tool_versions
from wbc_edge.calibration.sets import (
    CalibrationSet,
    inputs_from_dataset,
    labels_in_spec_order,
    select_calibration_set,
    stratified_quota,
)

__all__ = [
    "CalibrationCache",
    "CalibrationSet",
    "calibration_key",
    "inputs_from_dataset",
    "labels_in_spec_order",
    "select_calibration_set",
    "stratified_quota",
    "tool_versions",
]
