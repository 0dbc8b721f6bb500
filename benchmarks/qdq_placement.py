"""Q/DQ placement for the TensorRT INT8 variant: the old placement (Q/DQ around every quantizable op)
against weighted-layer inputs only, on a bundle's FP32 graph. Prints the placement rule counts and
each graph's agreement / max probability difference with FP32 under ONNX Runtime CPU.

    nice -n 10 .venv/bin/python benchmarks/qdq_placement.py --model wbc_edge/demo/demo.wbc \
        --calib /work/shared/data/pbc_dev --data /work/shared/data/pbc_sample     # ~35 s on 2 cores
"""
from __future__ import annotations

import argparse

import numpy as np
import onnx

from wbc_edge.bundle import Bundle
from wbc_edge.calibration import CalibrationSet
from wbc_edge.export import quantize as q
from wbc_edge.export.gate import dataset_inputs, evaluate_precisions
from wbc_edge.export.qdq_rules import check_qdq_placement, check_tensorrt_qdq


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--calib", required=True, help="labelled cells to calibrate on (128 drawn, seeded)")
    p.add_argument("--data", required=True, help="labelled cells to compare on")
    a = p.parse_args()
    bundle = Bundle.open(a.model)
    spec = bundle.spec
    cal, _ = dataset_inputs(a.calib, spec)
    cal = cal[np.random.default_rng(0).permutation(len(cal))[:128]]
    calib = CalibrationSet(cal, spec.input_name, [str(i) for i in range(len(cal))], [None] * len(cal))
    current = q.variant_settings

    def old(variant: str) -> dict:  # the previous trt placement: every op type of the CPU variant, outputs too
        s = current(variant)
        s["op_types_to_quantize"] = list(q.OP_TYPES)
        s["extra_options"] = {k: v for k, v in s["extra_options"].items() if k != "OpTypesToExcludeOutputQuantization"}
        return s

    models = {"fp32": bundle.model_bytes("fp32")}
    for name, settings in (("int8-trt around every op", old), ("int8-trt weighted inputs only", current)):
        q.variant_settings = settings
        graph = q.quantize_qdq(bundle.model_bytes("fp32"), calib, "trt").onnx_bytes
        n_qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in onnx.load_from_string(graph).graph.node)
        print(f"{name}: {n_qdq} Q/DQ nodes, TensorRT rule violations {len(check_tensorrt_qdq(graph))}, placement",
              {k: len(v) for k, v in check_qdq_placement(graph).items()})
        models[name] = graph
    q.variant_settings = current
    x, y = dataset_inputs(a.data, spec)
    report = evaluate_precisions(models, spec, x, y)
    for name, row in report["precisions"].items():
        print(f"{name:32s} agreement with fp32 {row['agreement_with_fp32']:6.2f}%  max |dp| {row['max_prob_diff']:.4f}")


if __name__ == "__main__":
    main()
