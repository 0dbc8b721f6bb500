"""The precisions a bundle can hold: one table read by export, the bundle, the runtime and the bench.

In the spirit of Ultralytics' export-formats table: a row says what a precision is called (the one
name users type and reports print), which bundle member holds its graph, how export builds it, what
TensorRT builds from it, and which backends run it. Adding a precision is adding a row here.
"""
from __future__ import annotations

from dataclasses import dataclass

from wbc_edge.errors import UsageError


@dataclass(frozen=True)
class Precision:
    name: str
    member: str  # bundle member holding the ONNX graph
    built_by: str  # how export makes the graph (documentation and --help)
    runs_on: tuple[str, ...]  # targets that run this graph: onnxruntime-cpu, onnxruntime-cuda, tensorrt, torch
    engine: str | None  # TensorRT engine precision built from this graph, None if TensorRT does not build it

    @property
    def quantized(self) -> bool:
        """INT8: chosen automatically only with the accuracy gate's explicit pass."""
        return self.name.startswith("int8")


PRECISIONS: tuple[Precision, ...] = (
    Precision("fp32", "model.fp32.onnx", "ONNX export of the trained model (uint8 in, softmax inside)",
              ("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt", "torch"), "fp32"),
    Precision("fp16", "model.fp16.onnx", "FP16 conversion of the FP32 graph, FP32 I/O kept",
              ("onnxruntime-cuda", "tensorrt"), "fp16"),
    Precision("int8-trt", "model.int8-trt.onnx", "Q/DQ INT8 for TensorRT: symmetric int8, per-channel weights, float bias",
              ("onnxruntime-cpu", "tensorrt"), "int8"),
    Precision("int8-cpu", "model.int8-cpu.onnx", "Q/DQ INT8 for ONNX Runtime on x86: uint8 activations, 7-bit weights",
              ("onnxruntime-cpu",), None),
)
BY_NAME = {p.name: p for p in PRECISIONS}
NAMES = tuple(BY_NAME)
MEMBERS = {p.name: p.member for p in PRECISIONS}

# Names a user may type beyond the table's: "auto" (chosen per backend) and "int8" (the INT8 variant
# for the backend that runs it).
AUTO = "auto"
INT8 = "int8"
CHOICES = (AUTO, *NAMES, INT8)
INT8_FOR_BACKEND = {"tensorrt": "int8-trt", "onnxruntime": "int8-cpu"}

# What "auto" tries, best first, per target (then fp32). ONNX Runtime on CPU wants the
# uint8-activation Q/DQ variant; on CUDA its INT8 Q/DQ kernels gain little, so FP16 there.
AUTO_ORDER = {"tensorrt": ("int8-trt", "fp16"), "onnxruntime-cpu": ("int8-cpu",), "onnxruntime-cuda": ("fp16",)}

# TensorRT engine precisions, and the bundle precision each is built from.
ENGINE_PRECISIONS = tuple(p.engine for p in PRECISIONS if p.engine)
ENGINE_SOURCE = {p.engine: p.name for p in PRECISIONS if p.engine}


def get(name: str, what: str = "precision") -> Precision:
    try:
        return BY_NAME[name]
    except KeyError:
        raise UsageError(f"{what} '{name}': not one of {list(NAMES)}") from None


def resolve(name: str, backend: str) -> str:
    """A typed name for a backend: 'int8' becomes that backend's INT8 variant; 'auto' stays."""
    if name == INT8:
        return INT8_FOR_BACKEND[backend]
    if name != AUTO:
        get(name)
    return name


def engine_precision(name: str) -> str:
    """The TensorRT engine precision for a bundle or engine name ('int8-trt' and 'int8' -> 'int8')."""
    if name in ENGINE_SOURCE:
        return name
    engine = get(name).engine
    if engine is None:
        raise UsageError(f"precision '{name}': TensorRT does not build it (builds {list(ENGINE_PRECISIONS)})")
    return engine


def engine_member(engine: str) -> str:
    """The bundle member TensorRT reads for an engine precision."""
    return BY_NAME[ENGINE_SOURCE[engine]].member


def run_on(target: str) -> tuple[str, ...]:
    """Bundle precisions a target (onnxruntime-cpu, onnxruntime-cuda, tensorrt, torch) is meant to run."""
    return tuple(p.name for p in PRECISIONS if target in p.runs_on)
