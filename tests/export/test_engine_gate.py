"""The accuracy gate on TensorRT engines (export's gate metrics on engine outputs), auto's choice between
INT8 and FP16 by the gate and timing, and the recorded choice open_backend reads. Engines are stand-in
runners whose outputs are the FP32 graph's own (pass by construction) or shifted by one class (fail by
construction), so no rule here depends on a trained model or on the CPU."""
from __future__ import annotations

import json

import numpy as np
import pytest

from wbc_edge.bundle import Bundle, write_bundle
from wbc_edge.export import engine_gate
from wbc_edge.export.gate import run_onnx
from wbc_edge.runtime.backends import tensorrt_build as tb
from wbc_edge.spec import spec_for
from support import trt_fakes as fakes

SPEC = spec_for("mimo", input_size=16)
ORIN = tb.Target("10.3.0", "Orin", "8.7")


@pytest.fixture()
def bundle(tmp_path):
    files = {"model.fp32.onnx": fakes.tiny_onnx(SPEC, "fp32"), "model.int8-trt.onnx": fakes.tiny_onnx(SPEC, "qdq")}
    return Bundle.open(write_bundle(tmp_path / "m.wbc", SPEC, files))


class StubEngine:
    """A runner whose outputs are the FP32 graph's, optionally with every prediction moved to the next class."""

    def __init__(self, bundle, wrong: bool):
        self.fp32 = bundle.model_bytes("fp32")
        self.wrong = wrong
        self.active = False

    def activate(self):
        self.active = True
        return self

    def deactivate(self):
        self.active = False

    def infer(self, feed):
        out = run_onnx(self.fp32, SPEC, feed[SPEC.input_name])
        if self.wrong:
            out = {k: np.roll(v, 1, axis=-1) for k, v in out.items()}
        return out


def labelled_cells(bundle, n=40):
    x = np.random.default_rng(1).integers(0, 256, SPEC.input_shape(n), dtype=np.uint8)
    labels = run_onnx(bundle.model_bytes("fp32"), SPEC, x)[SPEC.probs_name].argmax(1)  # fp32 is right on every cell
    return x, labels


def test_engine_rows_go_through_the_export_gate_and_a_wrong_engine_fails(bundle):
    x, labels = labelled_cells(bundle)
    opened = {}

    def open_runner(b, precision):
        opened[precision] = StubEngine(b, wrong=(precision == "int8"))
        return opened[precision]

    report = engine_gate.gate_engines(bundle, x, labels, ("fp16", "int8"), open_runner=open_runner, timing_rounds=2)
    rows = report["precisions"]
    assert set(rows) == {"fp32", "trt-fp16", "trt-int8"} and report["reference"] == "onnxruntime fp32"
    assert rows["trt-fp16"]["passed"] is True and rows["trt-fp16"]["agreement_with_fp32"] == 100.0
    assert rows["trt-int8"]["passed"] is False and rows["trt-int8"]["agreement_with_fp32"] < 100.0
    assert report["failed"] == ["trt-int8"]
    assert all(r["median_ms_per_batch"] > 0 for r in report["engines"].values())
    assert not any(r.active for r in opened.values()), "every engine is released"


@pytest.mark.parametrize("int8_ms, fp16_ms, int8_passed, expected", [
    (1.0, 2.0, True, "int8-trt"),   # INT8 passed and is faster
    (3.0, 2.0, True, "fp16"),       # INT8 passed but is slower than FP16: a known TensorRT outcome
    (1.0, 2.0, False, "fp16"),      # INT8 fast but failed the gate
])
def test_auto_chooses_the_fastest_engine_that_passed(int8_ms, fp16_ms, int8_passed, expected):
    report = {"engines": {"int8": {"passed": int8_passed, "median_ms_per_batch": int8_ms, "batch": 8},
                          "fp16": {"passed": True, "median_ms_per_batch": fp16_ms, "batch": 8}}}
    precision, why = engine_gate.choose_precision(report)
    assert precision == expected and "passed the engine gate" in why
    report["engines"]["fp16"]["passed"] = False
    report["engines"]["int8"]["passed"] = False
    assert engine_gate.choose_precision(report)[0] == "fp32"


def test_the_recorded_choice_is_what_open_backend_auto_uses_on_this_target(bundle, tmp_path, monkeypatch):
    from wbc_edge.runtime import backends

    cache = tb.EngineCache(tmp_path / "engines")
    path = tb.record_choice(cache, bundle, "fp16", "fastest engine that passed", target=ORIN)
    assert json.loads(path.read_text())["precision"] == "fp16"
    assert tb.recorded_choice(cache, bundle, ORIN)["precision"] == "fp16"
    assert tb.recorded_choice(cache, bundle, tb.Target("10.3.0", "RTX 4090", "8.9")) is None, "another GPU chooses again"
    recalibrated = Bundle.open(write_bundle(tmp_path / "m2.wbc", SPEC, {"model.fp32.onnx": bundle.read("model.fp32.onnx"),
                                                                      "model.int8-trt.onnx": bundle.read("model.int8-trt.onnx") + b" "}))
    assert tb.recorded_choice(cache, recalibrated, ORIN) is None, "a new INT8 graph (same FP32) is gated again"
    monkeypatch.setattr(tb, "current_target", lambda *a, **k: ORIN)
    prec, why = backends._engine_gate_choice(bundle, str(cache.root))
    assert prec == "fp16" and "chosen on this device by the engine gate" in why


def test_compare_engines_on_a_dataset_records_the_choice(bundle, tmp_path, monkeypatch):
    x, labels = labelled_cells(bundle)
    monkeypatch.setattr(engine_gate, "dataset_inputs", lambda data, spec: (x, labels))
    report = engine_gate.compare_engines(bundle.path, tmp_path / "cells", ("fp16", "int8"), tmp_path / "engines", target=ORIN,
                                         open_runner=lambda b, p: StubEngine(b, wrong=(p == "int8")), timing_rounds=2)
    assert report["auto_precision"]["precision"] == "fp16"
    recorded = json.loads(open(report["auto_precision"]["recorded"]).read())
    assert recorded["precision"] == "fp16" and recorded["gpu_name"] == "Orin"
