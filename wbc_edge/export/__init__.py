"""Export: ONNX FP32, INT8 Q/DQ, FP16, the accuracy gate, the bundle, TensorRT engines.

Names are resolved lazily: `wbc_edge.export.tensorrt` and `wbc_edge.export.gate` are used by the
torch-free runtime and benchmarks, so importing this package must not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "InferenceModel": "onnx_export",
    "export_onnx": "onnx_export",
    "export_onnx_bytes": "onnx_export",
    "parity": "onnx_export",
    "quantize_qdq": "quantize",
    "Quantizer": "quantize",
    "convert_fp16": "fp16",
    "check_tensorrt_qdq": "qdq_rules",
    "evaluate_precisions": "gate",
    "run_gate": "gate",
    "format_table": "gate",
    "export_bundle": "pipeline",
    "compare_bundle": "pipeline",
    "ExportOptions": "pipeline",
    "build_engine": "tensorrt",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"wbc_edge.export.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'wbc_edge.export' has no attribute '{name}'")
