"""Export's side of TensorRT: ask the runtime's engine layer to build for a bundle, and the torch-tensorrt path.

The torch-free engine code (plan, cache, build, logger, target) lives in
`wbc_edge.runtime.backends.tensorrt_build`; only `--via torch-tensorrt`, which compiles the PyTorch
module and so needs torch, is here. Its engines are cached under their own key (build path
'torch-tensorrt'), never under the ONNX engine's, and the runner maps their `output0`/`output1` to
(probs, head_probs) by position.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from wbc_edge.errors import BackendUnavailable
from wbc_edge.runtime.backends.tensorrt_build import (  # noqa: F401  (export's names for the engine layer)
    DEFAULT_BATCH_RANGE,
    DEFAULT_WORKSPACE_MB,
    EngineCache,
    Target,
    TensorRTError,
    TensorRTOptionError,
    build_engine,
    import_tensorrt,
    parse_batch_range,
    parse_engine_list,
    validate_options,
)
from wbc_edge.runtime.backends import tensorrt_build
from wbc_edge.spec import ModelSpec

log = logging.getLogger(__name__)

VIAS = ("onnx", "torch-tensorrt")


def build_engine_via_torch_tensorrt(module: Any, spec: ModelSpec, precision: str, batch_range: Sequence[int] = DEFAULT_BATCH_RANGE) -> bytes:
    """`--via torch-tensorrt`: serialize an engine straight from a PyTorch module.

    `module` must take the bundle's uint8 input and return (probs, head_probs), as the exported ONNX
    does. INT8 needs Q/DQ in the graph, which this path does not add: use the ONNX path for INT8.
    """
    precision, batch_range, _, _ = validate_options(precision, batch_range, DEFAULT_WORKSPACE_MB)
    if precision == "int8":
        raise TensorRTError("precision 'int8' with --via torch-tensorrt: not supported; build INT8 from the Q/DQ ONNX")
    try:
        import torch  # noqa: PLC0415
        import torch_tensorrt  # noqa: PLC0415
    except ImportError as e:
        raise BackendUnavailable(f"torch-tensorrt: not importable ({e}); pip install 'wbc-edge[torch-tensorrt]' on a CUDA host") from None
    lo, opt, hi = tensorrt_build.profile_shapes(spec, batch_range)
    inputs = [torch_tensorrt.Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=torch.uint8)]
    dtypes = {torch.float32} | ({torch.float16} if precision == "fp16" else set())
    log.info("building a %s engine via torch-tensorrt: this can take minutes", precision)
    return bytes(torch_tensorrt.convert_method_to_trt_engine(module.eval().cuda(), "forward", inputs=inputs, enabled_precisions=dtypes))


def build_bundle_engines(bundle: Any, precisions: Sequence[str], cache: EngineCache | str | os.PathLike | None = None,
                         via: str = "onnx", torch_module: Any | None = None, **options: Any) -> list[dict[str, Any]]:
    """`wbc-export --engine fp16,int8 [--via torch-tensorrt]`: this target's engines into the engine cache.

    `options` are the engine layer's (batch_range, workspace_mb, optimization_level, dla_core, ...).
    """
    if via not in VIAS:
        raise TensorRTOptionError(f"--via '{via}': not one of {list(VIAS)}")
    if via == "onnx":
        return tensorrt_build.build_bundle_engines(bundle, precisions, cache, **options)
    if torch_module is None:
        raise TensorRTError("--via torch-tensorrt: needs the PyTorch model (a checkpoint), not only a bundle")

    def build(_onnx: bytes, spec: ModelSpec, precision: str, batch_range: Sequence[int], **_: Any) -> bytes:
        return build_engine_via_torch_tensorrt(torch_module, spec, precision, batch_range)

    return tensorrt_build.build_bundle_engines(bundle, precisions, cache, build=build, build_path="torch-tensorrt", **options)
