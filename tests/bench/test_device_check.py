"""The device check and the wbc-engine CLI: on this CPU machine every TensorRT row says why it did not
run; with the TensorRT / cuda-python stand-ins the same command builds, runs and times every engine."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from support.cli import exit_code

from wbc_edge.bench.device_check import DeviceCheckOptions, run_device_check, write_device_report
from wbc_edge.bundle import Bundle, write_bundle
from wbc_edge.runtime.backends import cuda_memory as cm
from wbc_edge.runtime.backends import tensorrt_build as tb
from wbc_edge.spec import spec_for
from support import trt_fakes as fakes

SPEC = spec_for("mimo", input_size=16)
ORIN = tb.Target("10.3.0", "Fake Orin", "8.7")


@pytest.fixture()
def bundle_path(tmp_path):
    files = {"model.fp32.onnx": fakes.tiny_onnx(SPEC, "fp32"), "model.int8-trt.onnx": fakes.tiny_onnx(SPEC, "qdq")}
    return write_bundle(tmp_path / "m.wbc", SPEC, files)


def test_without_tensorrt_every_tensorrt_row_says_why_and_the_report_is_written(bundle_path, tmp_path, monkeypatch):
    from wbc_edge.runtime import backends

    monkeypatch.setattr(backends, "tensorrt_available", lambda: (False, "tensorrt is not installed"))
    report = run_device_check(DeviceCheckOptions(model=bundle_path, out=tmp_path / "dc", cache=tmp_path / "cache", rounds=2))
    trt_rows = [r for r in report["rows"] if r["name"].startswith("tensorrt") and r["section"] != "environment"]
    assert len(trt_rows) == 3 * 3 + 1  # build, parity, benchmark per engine, and the engine gate
    assert all(r["status"] == "not run" and r["detail"] for r in trt_rows)
    assert {r["detail"] for r in trt_rows if r["section"] != "engine gate"} == {"tensorrt is not installed"}
    ort = [r for r in report["rows"] if r["name"].startswith("onnxruntime")]
    assert ort and all(r["status"] == "ok" for r in ort), "the ONNX Runtime rows run everywhere"
    json_path, md_path = write_device_report(report, tmp_path / "dc")
    assert json.loads(json_path.read_text())["rows"] == report["rows"]
    assert md_path.read_text().count("| not run |") == sum(r["status"] == "not run" for r in report["rows"])
    lint = [r for r in report["rows"] if r["name"].startswith("polygraphy check lint")]
    assert [r["name"] for r in lint] == ["polygraphy check lint model.fp32.onnx", "polygraphy check lint model.int8-trt.onnx"]
    assert all(r["status"] == "ok" and "PASSED" in r["detail"] for r in lint), lint  # needs no TensorRT: runs here


def test_with_stand_ins_every_engine_is_built_run_and_timed(bundle_path, tmp_path):
    trt = fakes.make_fake_tensorrt("10.3.0")
    rt = fakes.make_fake_cudart(trt.heap)
    report = run_device_check(DeviceCheckOptions(model=bundle_path, out=tmp_path / "dc", cache=tmp_path / "cache", rounds=2,
                                                 trt_module=trt, target=ORIN, memory=lambda: cm.CudaPythonMemory(cudart=rt), lint=False))
    by = {(r["section"], r["name"]): r for r in report["rows"]}
    for engine in ("fp32", "fp16", "int8"):
        assert by[("build", f"tensorrt {engine}")]["status"] == "ok"
        assert by[("engine parity", f"tensorrt {engine}")]["status"] == "ok"
        assert by[("benchmark", f"tensorrt {engine}")]["median_ms_per_batch"] > 0
    assert by[("engine gate", "tensorrt")]["detail"].startswith("no --data")
    assert trt.rec.names().count("build_serialized_network") == 3 and not trt.heap.blocks


def _install_fake_stack(monkeypatch, trt):
    rt = fakes.make_fake_cudart(trt.heap)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    for name, mod in (("tensorrt", trt), ("pycuda", None), ("pycuda.driver", None), ("cuda", types.ModuleType("cuda")),
                      ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt), ("cuda.bindings.utils", None)):
        monkeypatch.setitem(sys.modules, name, mod)


def test_wbc_engine_build_writes_an_engine_file_wbc_run_engine_loads(bundle_path, tmp_path, monkeypatch, capsys):
    from wbc_edge.cli import engine as engine_cli
    from wbc_edge.runtime.backends import open_engine

    trt = fakes.make_fake_tensorrt("10.3.0", dla_cores=1)
    _install_fake_stack(monkeypatch, trt)
    out = tmp_path / "wbc.engine"
    argv = ["build", "--model", str(bundle_path), "--precision", "int8", "--batch", "2,4,8", "--workspace-mb", "64",
            "--opt-level", "2", "--dla-core", "0", "--timing-cache", str(tmp_path / "t.cache"), "--output", str(out), "--cache", str(tmp_path / "c")]
    assert engine_cli.main(argv) == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "wbc.engine.json").read_text())
    assert meta["batch_range"] == [2, 4, 8] and meta["build_options"] == {"workspace_mb": 64, "optimization_level": 2, "dla_core": 0}
    assert (tmp_path / "t.cache").read_bytes().endswith(b"+timings")
    assert engine_cli.main(["check", str(out), "--model", str(bundle_path)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["precision"] == "int8"
    runner = open_engine(bundle_path, str(out), trt_module=trt)
    assert "prebuilt engine" in runner.choice_reason and runner.precision == "int8-trt"
    with runner:
        x = np.zeros(SPEC.input_shape(3), np.uint8)
        assert runner.infer({SPEC.input_name: x})["probs"].shape == (3, SPEC.num_classes)


@pytest.mark.parametrize("argv, needle", [
    (["--precision", "int8-cpu"], "--engine 'int8-cpu'"),
    (["--batch", "8,4,2"], "batch_range"),
    (["--opt-level", "9"], "--opt-level: 9 is not an integer in 0..5"),
    (["--dla-core", "0", "--precision", "fp32"], "DLA runs FP16 or INT8 only"),
])
def test_wbc_engine_build_bad_options_are_one_line_errors(bundle_path, tmp_path, monkeypatch, capsys, argv, needle):
    from wbc_edge.cli import engine as engine_cli

    trt = fakes.make_fake_tensorrt("10.3.0", dla_cores=1)
    _install_fake_stack(monkeypatch, trt)
    assert exit_code(engine_cli.main, ["build", "--model", str(bundle_path), "--cache", str(tmp_path / "c"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert "build_serialized_network" not in trt.rec.names()


def test_with_data_the_engine_gate_runs_and_auto_is_chosen_and_recorded(bundle_path, tmp_path, monkeypatch):
    import wbc_edge.export.gate as gate

    trt = fakes.make_fake_tensorrt("10.3.0")
    rt = fakes.make_fake_cudart(trt.heap)
    x = np.random.default_rng(2).integers(0, 256, SPEC.input_shape(24), dtype=np.uint8)
    # labels = what the stand-in engines predict, so every engine passes by construction
    labels = fakes.fake_model_outputs(x, trt.n_heads, trt.n_classes)[0].argmax(1)
    monkeypatch.setattr(gate, "dataset_inputs", lambda data, spec: (x, labels))
    report = run_device_check(DeviceCheckOptions(model=bundle_path, out=tmp_path / "dc", data=tmp_path / "cells", cache=tmp_path / "cache",
                                                 rounds=2, trt_module=trt, target=ORIN, memory=lambda: cm.CudaPythonMemory(cudart=rt),
                                                 lint=False, max_drop=100.0))
    gate_rows = {r["name"]: r for r in report["rows"] if r["section"] == "engine gate"}
    assert set(gate_rows) == {"trt-fp32", "trt-fp16", "trt-int8"}
    (auto,) = [r for r in report["rows"] if r["section"] == "auto precision"]
    assert auto["precision"] in ("fp16", "int8-trt") and "passed the engine gate" in auto["why"]
    assert tb.recorded_choice(tb.EngineCache(tmp_path / "cache"), Bundle.open(bundle_path), ORIN)["precision"] == auto["precision"]
