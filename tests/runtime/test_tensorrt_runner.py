"""TensorRTRunner and the CUDA memory layer on fakes: a recording `tensorrt` and pycuda / cuda-python
stand-ins whose "device memory" is host memory, so every copy really moves the bytes. The real
TensorRT test at the end runs only where tensorrt and a CUDA device exist (never on our machines)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from wbc_edge.bundle import Bundle, write_bundle
from wbc_edge.errors import BackendUnavailable, BundleError, SpecError
from wbc_edge.runtime.backends import cuda_memory as cm
from wbc_edge.runtime.backends.tensorrt import TensorRTRunner
from support import trt_fakes as fakes
from wbc_edge.spec import spec_for


SPEC = spec_for("mimo", input_size=16)
BATCHES = (1, 8, 32)


def fake_engine(version="10.3.0", batch_range=BATCHES):
    """Engine bytes as the fake builder makes them (profile and names), for the given version."""
    trt = fakes.make_fake_tensorrt(version)
    return fakes.serialized_engine(trt, SPEC, batch_range)


@pytest.fixture(params=["cuda-python", "pycuda"])
def memory_kind(request):
    return request.param


def make_memory(kind, heap):
    if kind == "cuda-python":
        rt = fakes.make_fake_cudart(heap)
        return (lambda: cm.CudaPythonMemory(cudart=rt)), rt.calls
    drv = fakes.make_fake_pycuda_driver(heap)
    return (lambda: cm.PycudaMemory(driver=drv)), drv.calls


def batch(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, SPEC.input_shape(n), dtype=np.uint8)


def copy_sizes(kind, calls, direction):
    if kind == "cuda-python":
        return [c[2] for c in calls if c[0] == "cudaMemcpyAsync" and c[1] == ("H2D" if direction == "h2d" else "D2H")]
    return [c[1] for c in calls if c[0] == ("htod" if direction == "h2d" else "dtoh")]


# ---- the runner ---------------------------------------------------------------------------------
def test_runner_allocates_once_for_the_max_batch_and_copies_only_the_used_rows(memory_kind):
    trt = fakes.make_fake_tensorrt("10.3.0")
    factory, calls = make_memory(memory_kind, trt.heap)
    runner = TensorRTRunner(fake_engine(), SPEC, memory=factory, trt_module=trt)
    with runner:
        assert runner.batch_range == (1, 32)
        sizes = {b.name: b.host.nbytes for b in runner._bindings.values()}
        assert sizes == {"pixels": 32 * 12 * 16 * 16, "probs": 32 * 5 * 4, "head_probs": 32 * 4 * 5 * 4}
        assert {b.name: b.device.nbytes for b in runner._bindings.values()} == sizes
        addresses = dict(trt.rec.args("set_tensor_address"))
        assert addresses == {b.name: b.device.ptr for b in runner._bindings.values()}
        for n in (3, 8, 1):
            x = batch(n, seed=n)
            out = runner.infer({"pixels": x})
            probs, head = fakes.fake_model_outputs(x, 4, 5)
            np.testing.assert_allclose(out["probs"], probs, rtol=1e-6)
            np.testing.assert_allclose(out["head_probs"], head, rtol=1e-6)
            assert out["probs"].shape == (n, 5) and runner.last_inference_time is not None
        # one allocation round: addresses bound once, never again per batch
        assert len(trt.rec.args("set_tensor_address")) == 3
        assert [a[1] for a in trt.rec.args("set_input_shape")] == [SPEC.input_shape(n) for n in (3, 8, 1)]
        assert copy_sizes(memory_kind, calls, "h2d") == [n * 12 * 16 * 16 for n in (3, 8, 1)]
        assert copy_sizes(memory_kind, calls, "d2h") == [v for n in (3, 8, 1) for v in (n * 5 * 4, n * 4 * 5 * 4)]
    assert not trt.heap.blocks, "deactivate must free every host and device buffer"


def test_inference_on_another_thread_than_activation(memory_kind):
    # The Analyzer activates on the main thread and infers on a worker; CUDA contexts are per thread.
    import threading

    trt = fakes.make_fake_tensorrt("10.3.0")
    factory, _ = make_memory(memory_kind, trt.heap)
    runner = TensorRTRunner(fake_engine(), SPEC, memory=factory, trt_module=trt).activate()
    results, errors = [], []
    x = batch(5, seed=3)

    def work():
        try:
            results.append(runner.infer({"pixels": x}))
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(30)
    assert not errors, errors
    np.testing.assert_allclose(results[0]["probs"], fakes.fake_model_outputs(x, 4, 5)[0], rtol=1e-6)
    releaser = threading.Thread(target=runner.deactivate)  # and release from yet another thread
    releaser.start()
    releaser.join(30)
    assert not trt.heap.blocks


def test_outputs_are_copies_not_views_of_the_pinned_buffers(memory_kind):
    trt = fakes.make_fake_tensorrt("10.3.0")
    factory, _ = make_memory(memory_kind, trt.heap)
    with TensorRTRunner(fake_engine(), SPEC, memory=factory, trt_module=trt) as runner:
        first = runner.infer({"pixels": batch(2, seed=1)})
        kept = first["probs"].copy()
        runner.infer({"pixels": batch(2, seed=2)})
        np.testing.assert_array_equal(first["probs"], kept)


def test_batches_beyond_the_profile_run_in_chunks_and_below_it_are_padded():
    trt = fakes.make_fake_tensorrt("10.3.0")
    factory, _ = make_memory("cuda-python", trt.heap)
    with TensorRTRunner(fake_engine(batch_range=(2, 4, 8)), SPEC, memory=factory, trt_module=trt) as runner:
        x = batch(19, seed=5)
        out = runner.infer({"pixels": x})
        probs, head = fakes.fake_model_outputs(x, 4, 5)
        np.testing.assert_allclose(out["probs"], probs, rtol=1e-6)
        np.testing.assert_allclose(out["head_probs"], head, rtol=1e-6)
        assert [a[1][0] for a in trt.rec.args("set_input_shape")] == [8, 8, 3]
        one = batch(1, seed=6)
        out = runner.infer({"pixels": one})  # profile min is 2: padded, the pad row dropped
        assert out["probs"].shape == (1, 5)
        np.testing.assert_allclose(out["probs"], fakes.fake_model_outputs(one, 4, 5)[0], rtol=1e-6)
        assert trt.rec.args("set_input_shape")[-1][1][0] == 2


def test_feed_is_checked_on_the_first_call_only():
    trt = fakes.make_fake_tensorrt("10.3.0")
    factory, _ = make_memory("cuda-python", trt.heap)
    with TensorRTRunner(fake_engine(), SPEC, memory=factory, trt_module=trt) as runner:
        assert runner.input_metadata() == {"pixels": (np.dtype(np.uint8), (None, 12, 16, 16))}
        with pytest.raises(SpecError, match="input 'pixels' must be uint8, got float32"):
            runner.infer({"pixels": batch(2).astype(np.float32)})
        with pytest.raises(SpecError, match=r"feed inputs \['image'\]"):
            runner.infer({"image": batch(2)})
        checks = []
        original = runner._check_feed
        runner._check_feed = lambda feed: (checks.append(1), original(feed))
        for _ in range(3):
            runner.infer({"pixels": batch(2)})
        assert checks == [1]
    with pytest.raises(BackendUnavailable, match="before activate"):
        runner.infer({"pixels": batch(1)})


def test_engine_whose_io_does_not_match_the_spec_is_refused():
    trt = fakes.make_fake_tensorrt("10.3.0")
    factory, _ = make_memory("cuda-python", trt.heap)
    other = SPEC.replace(probs_name="scores")
    with pytest.raises(SpecError, match="engine has no output 'scores'"):
        TensorRTRunner(fake_engine(), other, memory=factory, trt_module=trt).activate()
    assert not trt.heap.blocks, "a failed activation must release what it allocated"


def test_engine_of_another_tensorrt_version_is_rebuilt_or_refused(tmp_path):
    trt = fakes.make_fake_tensorrt("10.7.0")
    factory, _ = make_memory("cuda-python", trt.heap)
    old = fake_engine("10.3.0")
    rebuilt = []
    runner = TensorRTRunner(old, SPEC, memory=factory, trt_module=trt, on_stale=lambda: (rebuilt.append(1), fake_engine("10.7.0"))[1])
    with runner:
        runner.infer({"pixels": batch(2)})
    assert rebuilt == [1]
    path = tmp_path / "old.engine"
    path.write_bytes(old)
    with pytest.raises(BundleError, match=r"TensorRT 10.7.0 cannot deserialize the engine") as e:
        TensorRTRunner(path, SPEC, memory=factory, trt_module=trt).activate()
    assert "\n" not in str(e.value)
    with pytest.raises(BundleError, match="no such file"):
        TensorRTRunner(tmp_path / "none.engine", SPEC, memory=factory, trt_module=trt).activate()


# ---- from_bundle: engine cache at activation ----------------------------------------------------
@pytest.fixture()
def bundle(tmp_path):
    files = {"model.fp32.onnx": fakes.tiny_onnx(SPEC, "fp32"), "model.fp16.onnx": fakes.tiny_onnx(SPEC, "fp16"),
             "model.int8-trt.onnx": fakes.tiny_onnx(SPEC, "qdq")}
    return Bundle.open(write_bundle(tmp_path / "m.wbc", SPEC, files))


def test_from_bundle_builds_at_activation_then_reuses_the_cache(bundle, tmp_path, monkeypatch):
    from wbc_edge.runtime.backends import tensorrt_build as trtx

    monkeypatch.setattr(trtx, "query_gpu", lambda: ("Fake Orin", "8.7"))
    trt = fakes.make_fake_tensorrt("10.3.0")
    factory, _ = make_memory("cuda-python", trt.heap)
    cache_dir = tmp_path / "engines"
    runner = TensorRTRunner.from_bundle(bundle, "int8-trt", cache=str(cache_dir), memory=factory, trt_module=trt)
    assert "build_serialized_network" not in trt.rec.names(), "construction must stay cheap"
    with runner:
        x = batch(4)
        np.testing.assert_allclose(runner.infer({"pixels": x})["probs"], fakes.fake_model_outputs(x, 4, 5)[0], rtol=1e-6)
    assert trt.rec.names().count("build_serialized_network") == 1
    assert len(list(cache_dir.glob("int8-*.engine"))) == 1
    with TensorRTRunner.from_bundle(bundle, "int8-trt", cache=str(cache_dir), memory=factory, trt_module=trt) as again:
        again.infer({"pixels": x})
    assert trt.rec.names().count("build_serialized_network") == 1


def test_cached_engine_tensorrt_refuses_is_evicted_and_rebuilt(bundle, tmp_path, monkeypatch, caplog):
    from wbc_edge.runtime.backends import tensorrt_build as trtx

    monkeypatch.setattr(trtx, "query_gpu", lambda: ("Fake Orin", "8.7"))
    trt = fakes.make_fake_tensorrt("10.3.0")
    factory, _ = make_memory("cuda-python", trt.heap)
    cache = trtx.EngineCache(tmp_path / "engines")
    with TensorRTRunner.from_bundle(bundle, "fp16", cache=cache, memory=factory, trt_module=trt):
        pass
    (engine_path,) = cache.root.glob("*.engine")
    # Same key and a matching sidecar, but bytes TensorRT refuses (e.g. a driver update changed them).
    garbage = b"not an engine"
    engine_path.write_bytes(garbage)
    sidecar = engine_path.with_suffix(".json")
    meta = __import__("json").loads(sidecar.read_text())
    meta["engine_sha256"] = __import__("hashlib").sha256(garbage).hexdigest()
    sidecar.write_text(__import__("json").dumps(meta))
    with caplog.at_level("WARNING"), TensorRTRunner.from_bundle(bundle, "fp16", cache=cache, memory=factory, trt_module=trt) as runner:
        runner.infer({"pixels": batch(1)})
    assert "rebuilding it" in caplog.text
    assert trt.rec.names().count("build_serialized_network") == 2
    assert engine_path.read_bytes().startswith(fakes.MAGIC)


def test_from_bundle_refuses_a_precision_tensorrt_does_not_build(bundle):
    with pytest.raises(BundleError, match="precision 'int8-cpu'"):
        TensorRTRunner.from_bundle(bundle, "int8-cpu")


def _install_fake_cuda_stack(monkeypatch, version):
    """Fake tensorrt and cuda-python importable by name; pycuda absent."""
    import types

    trt = fakes.make_fake_tensorrt(version)
    rt = fakes.make_fake_cudart(trt.heap)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    for name, mod in (("tensorrt", trt), ("pycuda", None), ("pycuda.driver", None), ("cuda", types.ModuleType("cuda")),
                      ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
        monkeypatch.setitem(sys.modules, name, mod)
    return trt


@pytest.mark.parametrize("version, member", [("10.3.0", "model.fp32.onnx"), ("11.4.1", "model.fp16.onnx")])
def test_open_backend_reaches_the_runner_through_the_cache(bundle, tmp_path, monkeypatch, version, member):
    from wbc_edge.runtime.backends import open_backend

    trt = _install_fake_cuda_stack(monkeypatch, version)
    runner = open_backend(bundle, backend="tensorrt", precision="fp16", engine_cache=str(tmp_path / "engines"))
    assert isinstance(runner, TensorRTRunner) and "tensorrt" in runner.choice_reason
    with runner:
        x = batch(3)
        np.testing.assert_allclose(runner.infer({"pixels": x})["probs"], fakes.fake_model_outputs(x, 4, 5)[0], rtol=1e-6)
    assert trt.rec.args("parse") == [(len(bundle.read(member)),)]
    (sidecar,) = (tmp_path / "engines").glob("*.json")
    meta = __import__("json").loads(sidecar.read_text())
    assert (meta["gpu_name"], meta["compute_capability"], meta["tensorrt_version"]) == ("Fake Orin", "8.7", version)
    assert not trt.heap.blocks


# ---- the CUDA memory layer --------------------------------------------------------------------
def test_open_cuda_memory_prefers_pycuda_then_cuda_python(monkeypatch):
    import types

    rt = fakes.make_fake_cudart()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    memory = cm.open_cuda_memory()
    assert isinstance(memory, cm.CudaPythonMemory)
    memory.close()

    drv = fakes.make_fake_pycuda_driver()
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = drv
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    memory = cm.open_cuda_memory()
    assert isinstance(memory, cm.PycudaMemory) and drv.context_stack() == []
    with memory.current():
        assert len(drv.context_stack()) == 1
    assert drv.context_stack() == [], "current() pops the primary context it pushed"
    memory.close()
    assert isinstance(cm.open_cuda_memory("cuda-python"), cm.CudaPythonMemory)
    assert cm.device_properties() == ("Fake RTX", (8, 9))


def test_without_pycuda_or_cuda_python_the_error_names_both(monkeypatch):
    for name in ("pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BackendUnavailable) as e:
        cm.open_cuda_memory()
    message = str(e.value)
    assert "pycuda: not importable" in message and "cuda-python: not importable" in message and "\n" not in message
    with pytest.raises(BackendUnavailable, match="'cupy'"):
        cm.open_cuda_memory("cupy")
    with pytest.raises(BackendUnavailable, match="CUDA device"):
        cm.device_properties()


def test_cuda_python_memory_round_trip_and_size_checks():
    rt = fakes.make_fake_cudart()
    with cm.CudaPythonMemory(cudart=rt) as mem:
        host = mem.pinned_empty((4, 3), np.float32)
        host[...] = np.arange(12, dtype=np.float32).reshape(4, 3)
        dev = mem.device_alloc(host.nbytes)
        stream = mem.create_stream()
        mem.copy_htod_async(dev, host[:2], stream)
        back = mem.pinned_empty((2, 3), np.float32)
        mem.copy_dtoh_async(back, dev, stream)
        mem.synchronize(stream)
        np.testing.assert_array_equal(back, host[:2])
        with pytest.raises(cm.CudaError, match="do not fit"):
            mem.copy_htod_async(mem.device_alloc(8), host, stream)
    assert not rt.heap.blocks and ("cudaStreamDestroy",) in rt.calls


def test_cuda_error_codes_become_one_line_errors():
    rt = fakes.make_fake_cudart()
    rt.cudaMalloc = lambda n: ("cudaErrorMemoryAllocation", None)
    with cm.CudaPythonMemory(cudart=rt) as mem, pytest.raises(cm.CudaError, match="cudaMalloc failed"):
        mem.device_alloc(1 << 40)


def test_importing_the_backend_pulls_in_neither_tensorrt_nor_torch_nor_export():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['tensorrt'] = None; "
            "import wbc_edge.runtime.backends.tensorrt, wbc_edge.runtime.backends.cuda_memory, wbc_edge.runtime.backends.tensorrt_build; "
            "bad = [m for m in ('pycuda', 'cuda', 'wbc_edge.export', 'wbc_edge.export.tensorrt') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_no_runtime_module_imports_export_so_there_is_no_export_runtime_export_cycle():
    # Read the imports (module level and inside functions) of every runtime module: export may use the
    # runtime's engine layer, never the reverse.
    import ast
    from pathlib import Path

    import wbc_edge.runtime as runtime_pkg

    offenders = []
    for path in Path(runtime_pkg.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(("wbc_edge.export", "wbc_edge.train"))]
    assert offenders == []


# ---- real TensorRT: only on a CUDA host with tensorrt --------------------------------------------
def _real_tensorrt_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (it cannot be on this development machine)"
    try:
        cm.device_properties()
    except BackendUnavailable as e:
        return f"no CUDA device: {e}"
    return None


@pytest.mark.tensorrt
@pytest.mark.skipif(_real_tensorrt_reason() is not None, reason=str(_real_tensorrt_reason()))
def test_real_tensorrt_engine_matches_onnxruntime(bundle, tmp_path):
    import onnxruntime as ort

    x = batch(5, seed=11)
    session = ort.InferenceSession(bundle.read("model.fp32.onnx"), providers=["CPUExecutionProvider"])
    want = session.run([SPEC.probs_name], {SPEC.input_name: x})[0]
    with TensorRTRunner.from_bundle(bundle, "fp32", cache=str(tmp_path / "engines")) as runner:
        got = runner.infer({SPEC.input_name: x})
    np.testing.assert_allclose(got[SPEC.probs_name], want, atol=1e-3)
