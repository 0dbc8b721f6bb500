"""Runner interface, ONNX Runtime backend and automatic backend/precision choice."""
from __future__ import annotations

import json

import numpy as np
import pytest

from wbc_edge.bundle import Bundle, write_bundle
from wbc_edge.errors import BackendUnavailable, BundleError, SpecError, UsageError
from wbc_edge.runtime.backends import gate_verdict, open_backend
from wbc_edge.runtime.backends.onnxruntime import OnnxRuntimeRunner


def test_onnxruntime_runner_matches_numpy(rt_bundle, rt_spec, rt_fakes):
    path, weights = rt_bundle
    batch = np.random.default_rng(3).integers(0, 256, size=(5,) + rt_spec.input_shape(1)[1:], dtype=np.uint8)
    runner = OnnxRuntimeRunner.from_bundle(Bundle.open(path), "fp32", intra_op_threads=1)
    assert not runner.is_active
    with runner:
        out = runner.infer({rt_spec.input_name: batch})
        assert runner.last_inference_time is not None and runner.last_inference_time > 0
        one = runner.infer({rt_spec.input_name: batch[:1]})  # dynamic batch
    assert not runner.is_active
    ref_probs, ref_head = rt_fakes.reference(batch, rt_spec, weights)
    np.testing.assert_allclose(out[rt_spec.probs_name], ref_probs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out[rt_spec.head_probs_name], ref_head, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(one[rt_spec.probs_name][0], out[rt_spec.probs_name][0], rtol=1e-5)
    assert runner.input_metadata() == {rt_spec.input_name: (np.dtype(np.uint8), (None,) + rt_spec.input_shape(1)[1:])}


def test_feed_checked_on_first_call(rt_bundle, rt_spec):
    path, _ = rt_bundle
    with OnnxRuntimeRunner.from_bundle(Bundle.open(path), "fp32") as runner:
        good = np.zeros(rt_spec.input_shape(2), np.uint8)
        with pytest.raises(SpecError, match="must be uint8"):
            runner.infer({rt_spec.input_name: good.astype(np.float32)})
        with pytest.raises(SpecError, match="shape"):
            runner.infer({rt_spec.input_name: good[:, :3]})
        with pytest.raises(SpecError, match="feed inputs"):
            runner.infer({"image": good})
        runner.infer({rt_spec.input_name: good})
    with pytest.raises(BackendUnavailable, match="before activate"):
        runner.infer({rt_spec.input_name: good})


def test_auto_picks_gate_accepted_int8_on_cpu(rt_bundle):
    path, _ = rt_bundle
    runner = open_backend(path)
    assert (runner.backend, runner.precision, runner.device) == ("onnxruntime", "int8-cpu", "cpu")
    assert "accepted" in runner.choice_reason and "tensorrt" in runner.choice_reason
    assert open_backend(path, precision="fp32").precision == "fp32"
    assert open_backend(path, precision="int8").precision == "int8-cpu"


def test_auto_falls_back_to_fp32_when_gate_rejected_or_unrecorded(tmp_path, rt_spec, rt_fakes):
    model = rt_fakes.tiny_onnx(rt_spec, rt_fakes.tiny_weights(rt_spec))
    rejected = {"precisions": {"int8-cpu": {"passed": False, "weighted_f1_drop": 2.0}}}
    p1 = write_bundle(tmp_path / "rej.wbc", rt_spec, {"model.fp32.onnx": model, "model.int8-cpu.onnx": model,
                                                      "accuracy.json": json.dumps(rejected).encode()})
    r1 = open_backend(p1)
    assert r1.precision == "fp32" and "rejected" in r1.choice_reason
    assert gate_verdict(Bundle.open(p1), "int8-cpu")[0] is False
    p2 = write_bundle(tmp_path / "nogate.wbc", rt_spec, {"model.fp32.onnx": model, "model.int8-cpu.onnx": model})
    r2 = open_backend(p2)
    assert r2.precision == "fp32" and "no accuracy.json" in r2.choice_reason
    with pytest.raises(BundleError, match="no fp16"):
        open_backend(p2, precision="fp16")


def test_tensorrt_asked_without_tensorrt_is_a_clear_error(rt_bundle):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        open_backend(rt_bundle[0], backend="tensorrt")


def test_unknown_backend_or_broken_model(tmp_path, rt_spec):
    p = write_bundle(tmp_path / "bad.wbc", rt_spec, {"model.fp32.onnx": b"not an onnx graph"})
    with pytest.raises(UsageError, match="not one of"):
        open_backend(p, backend="openvino")
    with pytest.raises(BundleError, match="cannot load"):
        open_backend(p, backend="onnxruntime", precision="fp32").activate()


def test_auto_precision_per_target(tmp_path, rt_spec, rt_fakes):
    from wbc_edge.runtime.backends import _pick_precision

    model = rt_fakes.tiny_onnx(rt_spec, rt_fakes.tiny_weights(rt_spec))
    gate = {"precisions": {"int8-trt": {"passed": True}, "int8-cpu": {"passed": False}, "fp16": {"passed": True}}}
    b = Bundle.open(write_bundle(tmp_path / "all.wbc", rt_spec, {
        "model.fp32.onnx": model, "model.int8-cpu.onnx": model, "model.int8-trt.onnx": model,
        "model.fp16.onnx": model, "accuracy.json": json.dumps(gate).encode()}))
    assert _pick_precision(b, "tensorrt", "auto", "10.3.0")[0] == "int8-trt"
    assert _pick_precision(b, "onnxruntime-cpu", "auto")[0] == "fp32"  # its int8 failed the gate
    assert _pick_precision(b, "onnxruntime-cuda", "auto")[0] == "fp16"
    assert _pick_precision(b, "tensorrt", "int8", "11.4.1")[0] == "int8-trt"


def test_tensorrt_10_builds_fp16_from_fp32_and_says_so_but_11_never_picks_a_precision_the_bundle_lacks(rt_bundle):
    from wbc_edge.runtime.backends import _pick_precision

    b = Bundle.open(rt_bundle[0])  # fp32 + int8-cpu only
    prec, why = _pick_precision(b, "tensorrt", "auto", "10.3.0")
    assert prec == "fp16" and "model.fp32.onnx + BuilderFlag.FP16" in why and "not the graph the gate checked" in why
    assert _pick_precision(b, "tensorrt", "fp16", "10.3.0")[0] == "fp16"
    # TensorRT 11 is strongly typed only: FP16 needs model.fp16.onnx, which this bundle lacks
    prec, why = _pick_precision(b, "tensorrt", "auto", "11.4.1")
    assert prec == "fp32" and "TensorRT cannot build fp16" in why
    with pytest.raises(BundleError, match="cannot build fp16"):
        _pick_precision(b, "tensorrt", "fp16", "11.4.1")
    with pytest.raises(BundleError, match="no fp16"):
        _pick_precision(b, "onnxruntime-cpu", "fp16")


def test_a_graph_whose_embedded_spec_contradicts_spec_json_is_refused(tmp_path, rt_spec, rt_fakes):
    import dataclasses

    import onnx

    from wbc_edge.spec import ONNX_METADATA_KEY

    def with_embedded(spec) -> bytes:
        model = onnx.load_from_string(rt_fakes.tiny_onnx(rt_spec, rt_fakes.tiny_weights(rt_spec)))
        model.metadata_props.add(key=ONNX_METADATA_KEY, value=spec.to_json())
        return model.SerializeToString()

    same = write_bundle(tmp_path / "same.wbc", rt_spec, {"model.fp32.onnx": with_embedded(rt_spec)})
    open_backend(same, backend="onnxruntime", precision="fp32").activate().deactivate()
    swapped = dataclasses.replace(rt_spec, classes=tuple(reversed(rt_spec.classes)))
    bad = write_bundle(tmp_path / "swapped.wbc", rt_spec, {"model.fp32.onnx": with_embedded(swapped)})
    with pytest.raises(BundleError, match=r"spec.json says classes \['neutrophil'.*embedded spec says \['basophil'") as e:
        open_backend(bad, backend="onnxruntime", precision="fp32").activate()
    assert "\n" not in str(e.value)
