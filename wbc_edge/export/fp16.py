"""FP16 graph with FP32 I/O: what TensorRT 11 (strongly typed) builds as an FP16 engine.

The uint8 input, its cast and the normalisation stay in float32 (the pixel scale, 0..255 minus a mean,
is where FP16 would lose the most), as do the softmax and head average; the backbone runs in FP16.
"""
from __future__ import annotations

import logging

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16

from wbc_edge.export.quantize import output_nodes, preprocessing_nodes

LOGGER = logging.getLogger(__name__)


def convert_fp16(fp32_bytes: bytes) -> bytes:
    model = onnx.load_from_string(fp32_bytes)
    keep_fp32 = preprocessing_nodes(model) + output_nodes(model)
    fp16 = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep_fp32)
    topological_sort(fp16.graph)
    onnx.checker.check_model(fp16)
    from wbc_edge.export.onnx_export import set_metadata

    set_metadata(fp16, {"wbc_edge.precision": "fp16"})
    LOGGER.debug("fp16: kept in float32: %s", keep_fp32)
    return fp16.SerializeToString()


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after its inputs' producers (the converter appends casts at the end)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or a dangling input near node '{pending[0].name}'")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)
