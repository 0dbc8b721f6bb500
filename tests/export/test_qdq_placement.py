"""qdq_rules.check_qdq_placement on hand-built graphs: each rule fires by construction, and not on the
placement NVIDIA recommends."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wbc_edge.export.qdq_rules import check_qdq_placement


def qdq(name, src):
    return [helper.make_node("QuantizeLinear", [src, "s", "z"], [f"{name}_q"], name=f"{name}_Q"),
            helper.make_node("DequantizeLinear", [f"{name}_q", "s", "z"], [f"{name}_dq"], name=f"{name}_DQ")]


def graph(nodes, out="y"):
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z"),
             numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_weighted_inputs_only_passes_and_relu_between_pairs_fails():
    good = graph([*qdq("a", "x"), helper.make_node("Conv", ["a_dq", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"], name="relu")])
    assert check_qdq_placement(good)["weighted_inputs_only"] == []
    bad = graph([*qdq("a", "x"), helper.make_node("Conv", ["a_dq", "w"], ["c"], name="conv"), *qdq("b", "c"),
                 helper.make_node("Relu", ["b_dq"], ["y"], name="relu")])
    assert check_qdq_placement(bad)["weighted_inputs_only"] == ["Relu 'relu': fed by a DequantizeLinear (Q/DQ belongs on weighted layers' inputs)"]


def test_logits_quantized_before_softmax_are_found_through_reshapes():
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [*qdq("a", "x"), helper.make_node("Reshape", ["a_dq", "shape"], ["r"], name="reshape"),
             helper.make_node("Softmax", ["r"], ["y"], name="softmax")]
    model = onnx.load_from_string(graph(nodes))
    model.graph.initializer.append(shape)
    assert check_qdq_placement(model)["logits_before_softmax"] == ["Softmax 'softmax': its input is dequantized INT8"]


def test_concat_of_dq_and_float_inputs_is_flagged_but_all_float_is_not():
    mixed = graph([*qdq("a", "x"), helper.make_node("Relu", ["x"], ["f"], name="relu"),
                   helper.make_node("Concat", ["a_dq", "f"], ["y"], axis=1, name="cat")])
    assert check_qdq_placement(mixed)["concat_mixed"] == ["Concat 'cat': 1 of 2 inputs dequantized, the rest float"]
    plain = graph([helper.make_node("Relu", ["x"], ["f"], name="relu"), helper.make_node("Concat", ["x", "f"], ["y"], axis=1, name="cat")])
    assert check_qdq_placement(plain)["concat_mixed"] == []


def test_residual_add_wants_the_skip_branch_quantized_and_the_conv_output_float():
    conv = [*qdq("a", "x"), helper.make_node("Conv", ["a_dq", "w"], ["c"], name="conv")]
    float_skip = graph([*conv, helper.make_node("Add", ["c", "x"], ["y"], name="add")])
    assert check_qdq_placement(float_skip)["residual_add"] == [
        "Add 'add': the skip input 'x' is float; quantize it so TensorRT fuses the Add into the Conv"]
    nvidia = graph([*conv, helper.make_node("Add", ["c", "a_dq"], ["y"], name="add")])  # skip shares the Conv input's Q/DQ
    assert check_qdq_placement(nvidia)["residual_add"] == []
    conv_out_quantized = graph([*conv, *qdq("b", "c"), helper.make_node("Add", ["b_dq", "a_dq"], ["y"], name="add")])
    assert check_qdq_placement(conv_out_quantized)["residual_add"] == ["Add 'add': a weighted layer's output is quantized before the Add"]
