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


# ---- where Q/DQ sits: NVIDIA's placement guidance for explicit quantization ----------------------
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops TensorRT runs in the precision of their input, so Q/DQ around them only adds reformats.
PASS_THROUGH_OPS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "MaxPool", "AveragePool", "GlobalAveragePool", "Reshape",
                    "Transpose", "Flatten", "Split", "Slice", "Concat")


def _through_reshapes(producer: dict[str, onnx.NodeProto], name: str) -> str | None:
    """The op that made `name`, looking through shape-only ops (Reshape, Transpose, Flatten, Squeeze)."""
    node = producer.get(name)
    while node is not None and node.op_type in ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze") and node.input:
        node = producer.get(node.input[0])
    return node.op_type if node is not None else None


def _quantized_output_of_weighted(producer: dict[str, onnx.NodeProto], name: str) -> bool:
    """`name` is DequantizeLinear(QuantizeLinear(<Conv/Gemm/MatMul output>))."""
    dq = producer.get(name)
    q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    src = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
    return src is not None and src.op_type in WEIGHTED_OPS


def check_qdq_placement(model: onnx.ModelProto | bytes) -> dict[str, list[str]]:
    """Departures from NVIDIA's Q/DQ placement guidance, by rule (empty lists: the graph follows it).

    - `weighted_inputs_only`: Q/DQ belongs on the inputs of weighted layers (Conv, Gemm, MatMul); a
      DequantizeLinear feeding anything else (ReLU between two Q/DQ pairs, a pooling) makes TensorRT
      insert reformat layers instead of fusing.
    - `logits_before_softmax`: quantized logits lose resolution exactly where Softmax is sensitive.
    - `concat_mixed`: a Concat of DQ and float inputs forces reformats (TensorRT wants all or none).
    - `residual_add`: an Add joining a weighted layer's output with a skip branch: the weighted layer's
      output must stay float (TensorRT fuses the Add into the Conv) and the skip input should come
      through a DequantizeLinear, as NVIDIA's ResNet examples place it; an Add whose two inputs are
      both quantized or both float is fine only when neither comes straight from a weighted layer.
    """
    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    consts = set(_constants(model))

    def made_by(name: str) -> str | None:
        node = producer.get(name)
        return node.op_type if node is not None else None

    def label(node: onnx.NodeProto) -> str:
        return f"{node.op_type} '{node.name or node.output[0]}'"

    rules: dict[str, list[str]] = {"weighted_inputs_only": [], "logits_before_softmax": [], "concat_mixed": [], "residual_add": []}
    for node in model.graph.node:
        activations = [i for i in node.input if i and i not in consts]
        from_dq = [made_by(i) == "DequantizeLinear" for i in activations]
        if node.op_type == "Softmax" and any(_through_reshapes(producer, i) == "DequantizeLinear" for i in activations):
            rules["logits_before_softmax"].append(f"{label(node)}: its input is dequantized INT8")
        elif node.op_type == "Concat" and any(from_dq) and not all(from_dq):
            rules["concat_mixed"].append(f"{label(node)}: {sum(from_dq)} of {len(from_dq)} inputs dequantized, the rest float")
        elif node.op_type == "Add" and len(activations) == 2:
            weighted = [made_by(i) in WEIGHTED_OPS or (made_by(i) == "BatchNormalization") for i in activations]
            if any(weighted):
                skip = activations[weighted.index(False)] if not all(weighted) else None
                if skip is not None and made_by(skip) != "DequantizeLinear":
                    rules["residual_add"].append(f"{label(node)}: the skip input '{skip}' is float; quantize it so TensorRT fuses the Add into the Conv")
            elif any(_quantized_output_of_weighted(producer, i) for i in activations):
                rules["residual_add"].append(f"{label(node)}: a weighted layer's output is quantized before the Add")
        elif node.op_type in PASS_THROUGH_OPS and node.op_type != "Concat" and any(from_dq):
            rules["weighted_inputs_only"].append(f"{label(node)}: fed by a DequantizeLinear (Q/DQ belongs on weighted layers' inputs)")
    return rules
