"""TensorRT's rules for explicit (Q/DQ) INT8, checked on an ONNX graph before it reaches a builder.

TensorRT 10.x and 11.x accept: symmetric int8 quantization (zero point 0, int8, never uint8),
per-channel weights on the output-channel axis (0) for convolutions, and biases left in float
(no DequantizeLinear of an int32 bias).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(onnx.helper.get_attribute_value(attr))
    return default


def check_tensorrt_qdq(model: onnx.ModelProto | bytes) -> list[str]:
    """Violations of TensorRT's Q/DQ rules, one line each naming the node (empty: the graph passes)."""
    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    consts = _constants(model)
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    problems: list[str] = []
    n_qdq = 0
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        n_qdq += 1
        where = f"{node.op_type} '{node.name or node.output[0]}'"
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        data = consts.get(node.input[0])
        if node.op_type == "DequantizeLinear" and data is not None and data.dtype == np.int32:
            problems.append(f"{where}: dequantizes an int32 bias; TensorRT needs float biases (QuantizeBias=False)")
            continue
        if zp_name is None:
            problems.append(f"{where}: no zero point (defaults to uint8); TensorRT needs int8 with zero point 0")
        elif zp_name not in consts:
            problems.append(f"{where}: zero point '{zp_name}' is not a constant")
        else:
            zp = consts[zp_name]
            if zp.dtype != np.int8:
                problems.append(f"{where}: zero point is {zp.dtype}, TensorRT needs int8")
            if np.any(zp != 0):
                problems.append(f"{where}: zero point is not 0 (asymmetric); TensorRT needs symmetric quantization")
        if node.op_type != "DequantizeLinear":
            continue
        for consumer, slot in consumers.get(node.output[0], []):
            if consumer.op_type == "Conv" and slot == 1:
                scale = consts.get(node.input[1])
                out_channels = data.shape[0] if data is not None else None
                if scale is None or scale.ndim != 1 or (out_channels is not None and scale.size != out_channels) or (out_channels or 0) > 1 and scale.size == 1:
                    problems.append(f"{where}: weights of Conv '{consumer.name}' are not quantized per channel")
                elif _attr(node, "axis", 1) != 0:
                    problems.append(f"{where}: weights of Conv '{consumer.name}' are per-channel on axis {_attr(node, 'axis', 1)}, TensorRT needs axis 0")
    if n_qdq == 0:
        problems.append("graph has no QuantizeLinear/DequantizeLinear nodes: not an explicit-quantization INT8 graph")
    return problems
