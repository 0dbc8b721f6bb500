import logging

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from wbc_edge.calibration import select_calibration_set
from wbc_edge.export.fp16 import convert_fp16
from wbc_edge.export.gate import check_gate, evaluate_precisions, format_table
from wbc_edge.export.qdq_rules import check_tensorrt_qdq
from wbc_edge.export.quantize import Quantizer, compute_nodes, layer_sensitivity


@pytest.fixture(scope="module")
def calib(dataset, split, spec):
    return select_calibration_set(dataset, split["train"], spec, size=48, seed=0)


@pytest.fixture(scope="module")
def quantizer(fp32_bytes, calib):
    with Quantizer(fp32_bytes, calib) as q:
        yield q


@pytest.fixture(scope="module")
def int8(quantizer):
    return {v: quantizer.quantize(v) for v in ("trt", "cpu")}


def test_trt_variant_follows_tensorrt_qdq_rules(int8):
    assert check_tensorrt_qdq(int8["trt"].onnx_bytes) == []
    model = onnx.load_from_string(int8["trt"].onnx_bytes)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops


def test_cpu_variant_is_flagged_for_tensorrt(int8):
    problems = check_tensorrt_qdq(int8["cpu"].onnx_bytes)
    assert any("uint8" in p for p in problems)


def test_rules_catch_per_tensor_weights_and_plain_graphs(int8, fp32_bytes):
    assert check_tensorrt_qdq(fp32_bytes) and "no QuantizeLinear" in check_tensorrt_qdq(fp32_bytes)[0]
    model = onnx.load_from_string(int8["trt"].onnx_bytes)
    conv_weight_dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear"
                          and any(c.op_type == "Conv" and c.input[1] == n.output[0] for c in model.graph.node))
    for attr in conv_weight_dq.attribute:
        if attr.name == "axis":
            attr.i = 1
    assert any("axis 1" in p for p in check_tensorrt_qdq(model))


def test_int8_agreement_and_f1_drop_are_reported(fp32_bytes, int8, spec, val_data):
    inputs, labels = val_data
    models = {"fp32": fp32_bytes, "int8-trt": int8["trt"].onnx_bytes, "int8-cpu": int8["cpu"].onnx_bytes}
    report = evaluate_precisions(models, spec, inputs, labels)
    failed = check_gate(report, max_drop=100.0)
    table = format_table(report, spec.classes)
    print(table)
    assert failed == []
    fp32 = report["precisions"]["fp32"]
    assert fp32["agreement_with_fp32"] == 100.0 and fp32["max_prob_diff"] == 0.0
    assert fp32["weighted_f1"] > 60  # the fixture model learned something
    for p in ("int8-trt", "int8-cpu"):
        row = report["precisions"][p]
        assert 0 < row["max_prob_diff"] < 1  # really quantized, still close
        assert row["agreement_with_fp32"] >= 70
        assert row["weighted_f1_drop"] == pytest.approx(fp32["weighted_f1"] - row["weighted_f1"])
        assert p in table
    # A limit just below both measured drops fails both by construction, whatever this CPU's kernels gave.
    below_both = min(report["precisions"][p]["weighted_f1_drop"] for p in ("int8-trt", "int8-cpu")) - 0.01
    assert check_gate(report, max_drop=below_both) == ["int8-trt", "int8-cpu"]
    # Agreement floor: above 100% nothing but fp32 itself can pass.
    assert check_gate(report, max_drop=100.0, min_agreement=100.01) == ["int8-trt", "int8-cpu"]
    assert report["precisions"]["fp32"]["passed"] is True


def test_activation_ranges_are_reused_only_for_the_same_model(fp32_bytes, calib, tmp_path, caplog):
    with Quantizer(fp32_bytes, calib, cache_dir=tmp_path) as q:
        first = q.quantize("trt")
    assert first.ranges_reused is False
    with Quantizer(fp32_bytes, calib, cache_dir=tmp_path) as q:
        assert q.ranges_reused is True
        assert q.quantize("trt").onnx_bytes == first.onnx_bytes
    # A retrained model (here: one weight changed) must not get the old ranges.
    model = onnx.load_from_string(fp32_bytes)
    weight = next(t for t in model.graph.initializer if len(t.dims) == 4)
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[0] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    with caplog.at_level(logging.INFO):
        with Quantizer(model.SerializeToString(), calib, cache_dir=tmp_path) as q:
            assert q.ranges_reused is False
    assert "stale (model_sha256 changed)" in caplog.text


def test_kept_float_nodes_stay_unquantized(fp32_bytes, quantizer, int8, spec, val_data):
    q = quantizer
    first_conv = compute_nodes(q.model)[0]
    result = q.quantize("trt", [first_conv])
    ranked = layer_sensitivity(fp32_bytes, int8["trt"].onnx_bytes, val_data[0][:16], spec.input_name)
    assert result.kept_float == [first_conv]
    model = onnx.load_from_string(result.onnx_bytes)
    node = next(n for n in model.graph.node if n.name == first_conv)
    producers = {o: n for n in model.graph.node for o in n.output}
    assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input)
    assert {n for n, _ in ranked} == set(compute_nodes(q.model))
    assert all(np.isfinite(score) for _, score in ranked)


def test_fp16_graph_keeps_fp32_io_and_matches(fp32_bytes, spec, val_data):
    fp16 = convert_fp16(fp32_bytes)
    model = onnx.load_from_string(fp16)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    inputs, labels = val_data
    report = evaluate_precisions({"fp32": fp32_bytes, "fp16": fp16}, spec, inputs, labels)
    row = report["precisions"]["fp16"]
    assert 0 < row["max_prob_diff"] < 0.02
    assert row["agreement_with_fp32"] >= 97


# ---- Q/DQ placement for TensorRT (NVIDIA's guidance), checked by qdq_rules.check_qdq_placement --------
def test_trt_variant_places_qdq_on_weighted_layer_inputs_only(int8):
    from wbc_edge.export.qdq_rules import check_qdq_placement

    assert check_qdq_placement(int8["trt"].onnx_bytes) == {"weighted_inputs_only": [], "logits_before_softmax": [], "concat_mixed": [], "residual_add": []}
    model = onnx.load_from_string(int8["trt"].onnx_bytes)
    producer = {o: n for n in model.graph.node for o in n.output}
    dq_consumers = {n.op_type for n in model.graph.node for i in n.input if i in producer and producer[i].op_type == "DequantizeLinear"}
    assert dq_consumers <= {"Conv", "Gemm", "MatMul"}, dq_consumers


def test_cpu_variant_keeps_qdq_around_every_op_and_the_checker_says_where(int8):
    from wbc_edge.export.qdq_rules import check_qdq_placement

    rules = check_qdq_placement(int8["cpu"].onnx_bytes)
    assert rules["weighted_inputs_only"], "ONNX Runtime's x86 variant quantizes ReLU/pooling too; the rule sees it"
    assert all("fed by a DequantizeLinear" in line for line in rules["weighted_inputs_only"])
