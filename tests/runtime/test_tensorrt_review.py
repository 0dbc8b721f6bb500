"""The review of the TensorRT layer (issue 14), one stand-in test per defect: CUDA probe order, stream
handles, boolean returns, pycuda context and stream lifetimes, zero-copy on integrated GPUs, Torch-TensorRT
output names, prebuilt engine files, and the install extras. The stand-ins follow the real APIs' failure
returns (False / None / error codes), so each test fails when the code ignores them."""
from __future__ import annotations

import configparser
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from wbc_edge.bundle import Bundle, write_bundle
from wbc_edge.errors import BackendUnavailable, SpecError
from wbc_edge.runtime.backends import cuda_memory as cm
from wbc_edge.runtime.backends import tensorrt_build as tb
from wbc_edge.runtime.backends.tensorrt import TensorRTRunner
from wbc_edge.spec import spec_for
from support import trt_fakes as fakes

SPEC = spec_for("mimo", input_size=16)
ROOT = Path(__file__).resolve().parents[2]


def engine_bytes(trt, batch_range=(1, 8, 32)):
    return fakes.serialized_engine(trt, SPEC, batch_range)


def pixels(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, SPEC.input_shape(n), dtype=np.uint8)


def install(monkeypatch, pycuda_driver=None, cudart=None):
    """Make pycuda / cuda-python importable by name (or absent, for None)."""
    if pycuda_driver is not None:
        pkg = types.ModuleType("pycuda")
        pkg.driver = pycuda_driver
        monkeypatch.setitem(sys.modules, "pycuda", pkg)
        monkeypatch.setitem(sys.modules, "pycuda.driver", pycuda_driver)
    else:
        monkeypatch.setitem(sys.modules, "pycuda", None)
        monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    if cudart is not None:
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime = cudart
        monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    else:
        for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
            monkeypatch.setitem(sys.modules, name, None)


# ---- 1: one probe order for the chooser and the memory layer -----------------------------------
def test_cuda_bindings_13_on_a_cuda_12_driver_does_not_hide_a_working_pycuda(monkeypatch):
    # JetPack 6: cuda-bindings 13 imports but every call says cudaErrorInsufficientDriver; pycuda works.
    install(monkeypatch, pycuda_driver=fakes.make_fake_pycuda_driver(), cudart=fakes.make_fake_cudart(driver_too_old=True))
    n, why = cm.cuda_device_count()
    assert (n, why) == (1, "1 CUDA device(s) via pycuda")
    monkeypatch.setitem(sys.modules, "tensorrt", fakes.make_fake_tensorrt("10.3.0"))
    from wbc_edge.runtime.backends import tensorrt_available

    assert tensorrt_available() == (True, "tensorrt with 1 CUDA device(s) via pycuda")
    assert isinstance(cm.open_cuda_memory(), cm.PycudaMemory)  # the memory layer agrees


def test_a_failing_binding_falls_through_and_the_reason_names_each(monkeypatch):
    install(monkeypatch, pycuda_driver=None, cudart=fakes.make_fake_cudart(driver_too_old=True))
    n, why = cm.cuda_device_count()
    assert n == 0 and "pycuda: not importable" in why and f"cudaGetDeviceCount failed ({fakes.CUDA_ERROR_INSUFFICIENT_DRIVER})" in why
    install(monkeypatch, pycuda_driver=None, cudart=None)
    assert cm.cuda_device_count()[0] is None
    install(monkeypatch, pycuda_driver=None, cudart=fakes.make_fake_cudart())
    assert cm.cuda_device_count() == (1, "1 CUDA device(s) via cuda-python")


# ---- 4: the stream handle ----------------------------------------------------------------------
def test_stream_handle_uses_get_cuda_native_handle_where_cuda_bindings_has_it(monkeypatch):
    rt = fakes.make_fake_cudart()
    rt.__name__ = "cuda.bindings.runtime"
    asked = []
    utils = types.ModuleType("cuda.bindings.utils")
    utils.get_cuda_native_handle = lambda obj: (asked.append(obj), 0xBEEF)[1]
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", utils)
    with cm.CudaPythonMemory(cudart=rt) as mem:
        stream = mem.create_stream()
    assert stream.handle == 0xBEEF and asked == [stream.owner]


def test_stream_handle_falls_back_to_int_on_older_bindings(monkeypatch):
    rt = fakes.make_fake_cudart()
    rt.__name__ = "cuda.bindings.runtime"
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)  # 12.x before 12.9.1: no utils accessor
    with cm.CudaPythonMemory(cudart=rt) as mem:
        assert mem.create_stream().handle == 77
    old = fakes.make_fake_cudart()  # the pre-12.6 `cuda.cudart` module
    old.__name__ = "cuda.cudart"
    with cm.CudaPythonMemory(cudart=old) as mem:
        assert mem.create_stream().handle == 77


# ---- 6: boolean returns --------------------------------------------------------------------------
def test_a_refused_tensor_address_fails_activation_in_one_line_and_frees_everything():
    trt = fakes.make_fake_tensorrt("10.3.0", refuse=("set_tensor_address",))
    drv = fakes.make_fake_pycuda_driver(trt.heap)
    runner = TensorRTRunner(engine_bytes(trt), SPEC, memory=lambda: cm.PycudaMemory(driver=drv), trt_module=trt)
    with pytest.raises(BackendUnavailable, match="refused the device address of tensor 'pixels'") as e:
        runner.activate()
    assert "\n" not in str(e.value) and not trt.heap.blocks and drv.retained == []


def test_a_refused_input_shape_fails_the_batch_in_one_line():
    trt = fakes.make_fake_tensorrt("10.3.0")
    rt = fakes.make_fake_cudart(trt.heap)
    with TensorRTRunner(engine_bytes(trt), SPEC, memory=lambda: cm.CudaPythonMemory(cudart=rt), trt_module=trt) as runner:
        runner._context.engine.body["profile"][0][0] = 4  # TensorRT now refuses batch 2 (outside 4..32)
        with pytest.raises(SpecError, match=r"refused input shape \(2, 12, 16, 16\)") as e:
            runner.infer({"pixels": pixels(2)})
        assert "\n" not in str(e.value)
        assert "execute_async_v3" not in trt.rec.names(), "nothing runs on a shape TensorRT refused"


# ---- 7: pycuda context, stream and memory lifetimes; zero-copy --------------------------------------
def test_pycuda_primary_context_is_detached_after_streams_and_memory_are_released():
    trt = fakes.make_fake_tensorrt("10.3.0")
    drv = fakes.make_fake_pycuda_driver(trt.heap)
    with TensorRTRunner(engine_bytes(trt), SPEC, memory=lambda: cm.PycudaMemory(driver=drv), trt_module=trt) as runner:
        runner.infer({"pixels": pixels(3)})
        assert len(drv.retained) == 1 and len(drv.live_streams) == 1
    # the fake's detach() fails if a stream is still alive or the context is still pushed
    assert drv.retained == [] and len(drv.live_streams) == 0 and not trt.heap.blocks


@pytest.mark.parametrize("kind", ["pycuda", "cuda-python"])
def test_integrated_gpu_uses_mapped_host_memory_and_copies_nothing(kind):
    trt = fakes.make_fake_tensorrt("10.3.0")
    if kind == "pycuda":
        drv = fakes.make_fake_pycuda_driver(trt.heap, integrated=True)
        factory, calls = (lambda: cm.PycudaMemory(driver=drv)), drv.calls
        copies = lambda: [c for c in calls if c[0] in ("htod", "dtoh")]  # noqa: E731
    else:
        rt = fakes.make_fake_cudart(trt.heap, integrated=True)
        factory, calls = (lambda: cm.CudaPythonMemory(cudart=rt)), rt.calls
        copies = lambda: [c for c in calls if c[0] == "cudaMemcpyAsync"]  # noqa: E731
    with TensorRTRunner(engine_bytes(trt), SPEC, memory=factory, trt_module=trt) as runner:
        assert runner._memory.zero_copy
        bound = dict(trt.rec.args("set_tensor_address"))
        assert all(bound[b.engine_name] == b.host.ctypes.data for b in runner._bindings.values()), "the device reads the host buffer"
        x = pixels(5, seed=4)
        out = runner.infer({"pixels": x})
        np.testing.assert_allclose(out["probs"], fakes.fake_model_outputs(x, 4, 5)[0], rtol=1e-6)
        assert copies() == []
    assert not trt.heap.blocks


def test_discrete_gpu_keeps_device_buffers_and_copies():
    trt = fakes.make_fake_tensorrt("10.3.0")
    rt = fakes.make_fake_cudart(trt.heap, integrated=False)
    with TensorRTRunner(engine_bytes(trt), SPEC, memory=lambda: cm.CudaPythonMemory(cudart=rt), trt_module=trt) as runner:
        assert not runner._memory.zero_copy
        runner.infer({"pixels": pixels(2)})
    assert [c[1] for c in rt.calls if c[0] == "cudaMemcpyAsync"] == ["H2D", "D2H", "D2H"]
    assert not [c for c in rt.calls if c[0] == "cudaHostAlloc"]


# ---- 3: Torch-TensorRT engines name their outputs output0, output1 --------------------------------
def test_torch_tensorrt_outputs_are_mapped_by_position():
    trt = fakes.make_fake_tensorrt("10.3.0", output_names=("output0", "output1"))
    rt = fakes.make_fake_cudart(trt.heap)
    with TensorRTRunner(engine_bytes(trt), SPEC, memory=lambda: cm.CudaPythonMemory(cudart=rt), trt_module=trt) as runner:
        x = pixels(4, seed=2)
        out = runner.infer({"pixels": x})
    probs, head = fakes.fake_model_outputs(x, 4, 5)
    np.testing.assert_allclose(out["probs"], probs, rtol=1e-6)
    np.testing.assert_allclose(out["head_probs"], head, rtol=1e-6)


def test_outputs_of_the_wrong_rank_are_not_mapped_by_position():
    trt = fakes.make_fake_tensorrt("10.3.0", output_names=("output0", "output1"))
    trt.n_heads = 4
    rt = fakes.make_fake_cudart(trt.heap)
    runner = TensorRTRunner(engine_bytes(trt), SPEC, memory=lambda: cm.CudaPythonMemory(cudart=rt), trt_module=trt)
    original = trt.Runtime.deserialize_cuda_engine

    def swapped(self, data):  # an engine whose outputs come in the other order
        engine = original(self, data)
        engine.out_shapes = {"output0": (-1, 4, 5), "output1": (-1, 5)}
        return engine

    trt.Runtime.deserialize_cuda_engine = swapped
    with pytest.raises(SpecError, match="output 'output0' has shape .* not the rank-2 'probs'"):
        runner.activate()
    assert not trt.heap.blocks


# ---- wbc-run --engine FILE: a prebuilt engine checked against the bundle and this target ----------
@pytest.fixture()
def bundle(tmp_path):
    files = {"model.fp32.onnx": fakes.tiny_onnx(SPEC, "fp32"), "model.int8-trt.onnx": fakes.tiny_onnx(SPEC, "qdq")}
    return Bundle.open(write_bundle(tmp_path / "m.wbc", SPEC, files))


ORIN = tb.Target("10.3.0", "Orin", "8.7")


def test_engine_file_with_sidecar_loads_and_runs(bundle, tmp_path):
    trt = fakes.make_fake_tensorrt("10.3.0")
    (row,) = tb.build_bundle_engines(bundle, ["int8"], tmp_path / "cache", batch_range=(1, 4, 16), trt_module=trt, target=ORIN,
                                     optimization_level=4, output=tmp_path / "wbc.engine")
    assert row["path"] == str(tmp_path / "wbc.engine")
    meta = json.loads((tmp_path / "wbc.engine.json").read_text())
    assert meta["build_options"] == {"workspace_mb": 1024, "optimization_level": 4} and meta["precision"] == "int8"
    rt = fakes.make_fake_cudart(trt.heap)
    runner = TensorRTRunner.from_engine_file(tmp_path / "wbc.engine", bundle, trt_module=trt, target=ORIN,
                                             memory=lambda: cm.CudaPythonMemory(cudart=rt))
    assert runner.precision == "int8-trt"
    with runner:
        x = pixels(3)
        np.testing.assert_allclose(runner.infer({"pixels": x})["probs"], fakes.fake_model_outputs(x, 4, 5)[0], rtol=1e-6)


def test_engine_file_for_another_gpu_spec_or_corrupt_is_refused_in_one_line(bundle, tmp_path):
    trt = fakes.make_fake_tensorrt("10.3.0")
    tb.build_bundle_engines(bundle, ["fp32"], tmp_path / "cache", trt_module=trt, target=ORIN, output=tmp_path / "e.engine")
    cases = [
        (lambda: None, tb.Target("10.3.0", "RTX 4090", "8.9"), SPEC, "built for TensorRT 10.3.0 on Orin .* this is TensorRT 10.3.0 on RTX 4090"),
        (lambda: None, ORIN, spec_for("mimo", input_size=32), "built for another model spec \\(differs in input_size\\)"),
        (lambda: (tmp_path / "e.engine").write_bytes(b"junk"), ORIN, SPEC, "fails the SHA-256"),
        (lambda: (tmp_path / "e.engine.json").unlink(), ORIN, SPEC, "no sidecar e.engine.json"),
    ]
    for damage, target, spec, needle in cases:
        damage()
        with pytest.raises(tb.TensorRTError, match=needle) as e:
            tb.read_engine_file(tmp_path / "e.engine", spec, target)
        assert "\n" not in str(e.value)


# ---- 2: install extras per CUDA major, torch-tensorrt apart ------------------------------------------
def test_tensorrt_extras_pin_cuda_python_per_cuda_major_and_keep_torch_out():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = {k: [l.strip() for l in v.strip().splitlines() if l.strip()] for k, v in cfg["options.extras_require"].items()}
    assert "trt" not in extras or not any("torch" in r for r in extras["trt"])
    for name, major in (("trt-cu12", 12), ("trt-cu13", 13)):
        reqs = extras[name]
        assert any(r.startswith("cuda-python") and f">={major}" in r and f"<{major + 1}" in r for r in reqs), reqs
        assert not any("torch" in r for r in reqs), "the TensorRT runtime extras stay torch-free"
    assert any(r.startswith("torch-tensorrt") for r in extras["torch-tensorrt"])


def test_mapped_memory_the_driver_refuses_falls_back_to_copies(caplog):
    import logging

    trt = fakes.make_fake_tensorrt("10.3.0")
    drv = fakes.make_fake_pycuda_driver(trt.heap, integrated=True)

    class LogicError(Exception):
        pass

    def refuse_devicemap(shape, dtype, order="C", mem_flags=0):
        if mem_flags:
            raise LogicError("cuMemHostAlloc failed: invalid argument")
        return np.empty(shape, dtype)

    drv.pagelocked_empty = refuse_devicemap
    with caplog.at_level(logging.WARNING), TensorRTRunner(engine_bytes(trt), SPEC, memory=lambda: cm.PycudaMemory(driver=drv), trt_module=trt) as runner:
        assert not runner._memory.zero_copy and not any(b.zero_copy for b in runner._bindings.values())
        x = pixels(3, seed=5)
        np.testing.assert_allclose(runner.infer({"pixels": x})["probs"], fakes.fake_model_outputs(x, 4, 5)[0], rtol=1e-6)
    assert "mapped host memory refused" in caplog.text
    assert [c[0] for c in drv.calls if c[0] in ("htod", "dtoh")] == ["htod", "dtoh", "dtoh"]
