"""Export: ONNX FP32, INT8 Q/DQ, FP16, the accuracy gate, the bundle, TensorRT engines.

Names are resolved lazily: `wbc_edge.export.gate` is used by the
torch-free runtime and benchmarks, so importing this package must not import torch.
"""
from __future__ import annotations

from wbc_edge._lazy import lazy_exports

_LAZY = {
    "InferenceModel": "wbc_edge.export.onnx_export",
    "export_onnx": "wbc_edge.export.onnx_export",
    "export_onnx_bytes": "wbc_edge.export.onnx_export",
    "parity": "wbc_edge.export.onnx_export",
    "quantize_qdq": "wbc_edge.export.quantize",
    "Quantizer": "wbc_edge.export.quantize",
    "convert_fp16": "wbc_edge.export.fp16",
    "check_tensorrt_qdq": "wbc_edge.export.qdq_rules",
    "evaluate_precisions": "wbc_edge.export.gate",
    "run_gate": "wbc_edge.export.gate",
    "format_table": "wbc_edge.export.gate",
    "export_bundle": "wbc_edge.export.pipeline",
    "compare_bundle": "wbc_edge.export.pipeline",
    "ExportOptions": "wbc_edge.export.pipeline",
    "build_engine": "wbc_edge.runtime.backends.tensorrt_build",
    "compare_engines": "wbc_edge.export.engine_gate",
    "check_qdq_placement": "wbc_edge.export.qdq_rules",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports("wbc_edge.export", _LAZY, globals())
