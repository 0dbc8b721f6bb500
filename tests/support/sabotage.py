"""Graphs that are wrong by construction, for tests of the accuracy gate's rule.

A gate test must fail the gate whatever the fixture model learned on this CPU's kernels: a graph
whose class outputs are rotated by one disagrees with FP32 on every cell (argmax of the rotated
probabilities is never FP32's argmax), so an agreement floor fails it exactly.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper


def rotate_class_outputs(onnx_bytes: bytes) -> bytes:
    """Every output's last axis (the classes) rotated by one position: probs[..., k] <- probs[..., k+1]."""
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    for output in graph.output:
        dims = output.type.tensor_type.shape.dim
        n_classes = dims[-1].dim_value
        assert n_classes > 1, f"{output.name}: class axis has no static size"
        raw = f"{output.name}__unrotated"
        for node in graph.node:  # producer and any consumer read the unrotated tensor
            node.output[:] = [raw if o == output.name else o for o in node.output]
            node.input[:] = [raw if i == output.name else i for i in node.input]
        order = numpy_helper.from_array(np.roll(np.arange(n_classes, dtype=np.int64), -1), f"{output.name}__rotation")
        graph.initializer.append(order)
        graph.node.append(helper.make_node("Gather", [raw, order.name], [output.name], axis=len(dims) - 1,
                                           name=f"{output.name}__rotate"))
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def sabotage_quantizer(monkeypatch) -> None:
    """Make `Quantizer.quantize` return its real INT8 graph with the class outputs rotated."""
    from wbc_edge.export.quantize import Quantizer

    real = Quantizer.quantize

    def rotated(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        return dataclasses.replace(result, onnx_bytes=rotate_class_outputs(result.onnx_bytes))

    monkeypatch.setattr(Quantizer, "quantize", rotated)
