"""The TensorRT builder layer against fake 10.x / 11.x `tensorrt` modules: version dispatch, option
checks, profile, timing cache, progress, parser errors. Nothing here needs TensorRT or a GPU."""
from __future__ import annotations

import logging

import pytest

from wbc_edge.errors import BackendUnavailable, UsageError, WbcError
from wbc_edge.runtime.backends import tensorrt_build as trtx
from support import trt_fakes as fakes
from wbc_edge.spec import spec_for



@pytest.fixture(scope="module")
def trt_spec():
    return spec_for("mimo", input_size=16)


@pytest.fixture(scope="module")
def graphs(trt_spec):
    return {v: fakes.tiny_onnx(trt_spec, v) for v in ("fp32", "fp16", "qdq")}


# ---- plan_build: what each TensorRT major does with each precision ------------------------------
@pytest.mark.parametrize("version", ["10.0.1", "10.3.0.30", "10.15.1"])
def test_plan_on_10x_fp16_flag_is_weakly_typed_but_qdq_int8_is_strongly_typed(version):
    fp16 = trtx.plan_build(version, "fp16")
    assert (fp16.onnx_member, fp16.builder_flags, fp16.network_flags, fp16.strongly_typed) == ("model.fp32.onnx", ("FP16",), (), False)
    int8 = trtx.plan_build(version, "int8")
    assert (int8.onnx_member, int8.builder_flags, int8.network_flags, int8.strongly_typed, int8.needs_qdq) == (
        "model.int8-trt.onnx", (), ("STRONGLY_TYPED",), True, True)
    fp32 = trtx.plan_build(version, "fp32")
    assert (fp32.onnx_member, fp32.builder_flags) == ("model.fp32.onnx", ())
    graph = trtx.plan_build(version, "fp16", fp16_source="graph")
    assert (graph.onnx_member, graph.builder_flags, graph.network_flags, graph.needs_fp16_graph) == ("model.fp16.onnx", (), ("STRONGLY_TYPED",), True)


@pytest.mark.parametrize("version", ["11.0.0", "11.4.1"])
def test_plan_on_11x_sets_no_precision_flags_and_takes_precision_from_the_graph(version):
    for precision, member in (("fp16", "model.fp16.onnx"), ("int8", "model.int8-trt.onnx"), ("fp32", "model.fp32.onnx")):
        plan = trtx.plan_build(version, precision)
        assert plan.onnx_member == member and plan.builder_flags == () and plan.network_flags == () and plan.strongly_typed
    with pytest.raises(trtx.TensorRTError, match="BuilderFlag.FP16 no longer exists"):
        trtx.plan_build(version, "fp16", fp16_source="flag")


def test_plan_refuses_old_tensorrt_and_treats_newer_as_11(caplog):
    with pytest.raises(trtx.TensorRTError, match="8.6.1: wbc-edge builds with TensorRT 10.x or 11.x"):
        trtx.plan_build("8.6.1", "fp16")
    with caplog.at_level(logging.WARNING):
        plan = trtx.plan_build("12.0.0", "int8")
    assert plan.builder_flags == () and plan.onnx_member == "model.int8-trt.onnx"
    assert "newer than the versions wbc-edge knows" in caplog.text


def test_parse_version_and_trt_version(monkeypatch):
    assert trtx.parse_version("10.3.0.30") == (10, 3, 0, 30)
    assert trtx.parse_version("11.0.0b1") == (11, 0, 0)
    assert trtx.parse_version((10, 7)) == (10, 7)
    with pytest.raises(trtx.TensorRTError):
        trtx.parse_version("dev")
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", fakes.make_fake_tensorrt("11.4.1"))
    assert trtx.trt_version() == (11, 4, 1)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)  # None in sys.modules: import fails
    assert trtx.trt_version() is None
    with pytest.raises(BackendUnavailable, match="tensorrt: not importable"):
        trtx.import_tensorrt()


# ---- option validation ------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, field", [
    ({"precision": "int4"}, "precision 'int4'"),
    ({"batch_range": (0, 1, 2)}, "batch_range"),
    ({"batch_range": (8, 1, 32)}, "batch_range"),
    ({"batch_range": (1, 8)}, "batch_range"),
    ({"batch_range": (1, 8.5, 32)}, "batch_range"),
    ({"batch_range": ("a", 1, 2)}, "batch_range"),
    ({"workspace_mb": 0}, "workspace_mb"),
    ({"workspace_mb": 1.5}, "workspace_mb"),
    ({"fp16_source": "magic"}, "fp16_source"),
])
def test_bad_options_fail_before_any_build_with_one_line(kwargs, field, trt_spec, graphs):
    fake = fakes.make_fake_tensorrt("10.3.0")
    args = {"precision": "fp16", "batch_range": (1, 8, 32), "workspace_mb": 256, "fp16_source": "auto", **kwargs}
    with pytest.raises(UsageError) as e:
        trtx.build_engine(graphs["fp32"], trt_spec, trt_module=fake, **args)
    assert field in str(e.value) and "\n" not in str(e.value) and isinstance(e.value, WbcError)
    assert "build_serialized_network" not in fake.rec.names()


def test_parse_batch_range_for_the_cli():
    assert trtx.parse_batch_range("1,8,32") == (1, 8, 32)
    for bad in ("1,8", "a,b,c", "32,8,1"):
        with pytest.raises(UsageError, match="batch_range"):
            trtx.parse_batch_range(bad)


def test_corrupt_timing_cache_is_replaced_not_fatal(trt_spec, graphs, tmp_path, caplog):
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"corrupt")
    fake = fakes.make_fake_tensorrt("10.3.0")
    original = fake.Builder.create_builder_config

    def config_refusing_corrupt_cache(self):
        config = original(self)
        create = config.create_timing_cache
        config.create_timing_cache = lambda data: (_ for _ in ()).throw(RuntimeError("bad cache\nmore")) if data else create(data)
        return config

    fake.Builder.create_builder_config = config_refusing_corrupt_cache
    with caplog.at_level(logging.WARNING):
        trtx.build_engine(graphs["fp32"], trt_spec, "fp32", timing_cache=cache, trt_module=fake)
    assert "unreadable by this TensorRT (bad cache)" in caplog.text
    assert cache.read_bytes() == b"+timings"


def test_profile_shapes_follow_the_spec(trt_spec):
    lo, opt, hi = trtx.profile_shapes(trt_spec, (2, 4, 16))
    assert lo == (2, 12, 16, 16) and opt == (4, 12, 16, 16) and hi == (16, 12, 16, 16)


# ---- build_engine on the fakes ----------------------------------------------------------------
def test_build_on_10x_fp16_sets_fp16_flag_workspace_and_profile(trt_spec, graphs, tmp_path):
    fake = fakes.make_fake_tensorrt("10.3.0")
    engine = trtx.build_engine(graphs["fp32"], trt_spec, "fp16", batch_range=(1, 8, 32), workspace_mb=512, trt_module=fake)
    rec = fake.rec
    assert rec.args("set_flag") == [(fake.BuilderFlag.FP16,)]
    assert rec.args("create_network") == [(0,)]  # weakly typed: FP16 flag applies
    assert rec.args("set_memory_pool_limit") == [("WORKSPACE", 512 << 20)]
    assert rec.args("set_shape") == [("pixels", (1, 12, 16, 16), (8, 12, 16, 16), (32, 12, 16, 16))]
    assert rec.args("parse") == [(len(graphs["fp32"]),)]
    assert engine.startswith(fakes.MAGIC + b"10.3.0|")


def test_build_on_10x_int8_is_a_strongly_typed_qdq_network_without_the_int8_flag(trt_spec, graphs):
    fake = fakes.make_fake_tensorrt("10.3.0")
    trtx.build_engine(graphs["qdq"], trt_spec, "int8", trt_module=fake)
    assert fake.rec.args("create_network") == [(1 << fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED,)]
    assert fake.rec.args("set_flag") == []  # the fake, like TensorRT, fails a strongly typed build with INT8 set


def test_a_build_with_precision_flags_on_a_strongly_typed_network_fails_in_one_line(trt_spec, graphs, monkeypatch):
    # What the old plan did wrong would now be a failed build: the stand-in returns None as TensorRT does.
    fake = fakes.make_fake_tensorrt("10.3.0")
    bad = trtx.BuildPlan((10, 3, 0), "int8", "model.int8-trt.onnx", True, ("STRONGLY_TYPED",), ("INT8",), True, False)
    monkeypatch.setattr(trtx, "plan_build", lambda *a, **k: bad)
    with pytest.raises(trtx.TensorRTError, match="building the TensorRT 10.3.0 int8 engine .* failed") as e:
        trtx.build_engine(graphs["qdq"], trt_spec, "int8", trt_module=fake)
    assert "\n" not in str(e.value)


def test_build_on_10x_strongly_typed_fp16_graph_sets_the_creation_flag(trt_spec, graphs):
    fake = fakes.make_fake_tensorrt("10.7.0")
    trtx.build_engine(graphs["fp16"], trt_spec, "fp16", fp16_source="graph", trt_module=fake)
    assert fake.rec.args("create_network") == [(1 << fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED,)]
    assert fake.rec.args("set_flag") == []


@pytest.mark.parametrize("precision, graph", [("fp16", "fp16"), ("int8", "qdq"), ("fp32", "fp32")])
def test_build_on_11x_touches_no_removed_flag(trt_spec, graphs, precision, graph):
    # The fake 11.x BuilderFlag has no FP16/INT8: any attempt to set them raises AttributeError.
    fake = fakes.make_fake_tensorrt("11.4.1")
    engine = trtx.build_engine(graphs[graph], trt_spec, precision, trt_module=fake)
    assert fake.rec.args("set_flag") == [] and fake.rec.args("create_network") == [(0,)]
    assert engine.startswith(fakes.MAGIC + b"11.4.1|")


def test_wrong_graph_for_the_plan_is_refused_before_parsing(trt_spec, graphs):
    fake = fakes.make_fake_tensorrt("11.0.0")
    with pytest.raises(trtx.TensorRTError, match=r"needs the FP16 graph \(model.fp16.onnx\)"):
        trtx.build_engine(graphs["fp32"], trt_spec, "fp16", trt_module=fake)
    with pytest.raises(trtx.TensorRTError, match="INT8 needs a Q/DQ graph"):
        trtx.build_engine(graphs["fp32"], trt_spec, "int8", trt_module=fakes.make_fake_tensorrt("10.3.0"))
    other = trt_spec.replace(input_name="image")
    with pytest.raises(trtx.TensorRTError, match="not the spec's input 'image'"):
        trtx.build_engine(graphs["fp32"], other, "fp32", trt_module=fake)
    with pytest.raises(trtx.TensorRTError, match="not a readable ONNX model"):
        trtx.build_engine(b"\x00garbage", trt_spec, "fp32", trt_module=fake)
    assert "parse" not in fake.rec.names()


def test_onnx_path_is_read_and_a_missing_one_named(trt_spec, graphs, tmp_path):
    path = tmp_path / "model.fp32.onnx"
    path.write_bytes(graphs["fp32"])
    fake = fakes.make_fake_tensorrt("10.3.0")
    trtx.build_engine(path, trt_spec, "fp32", trt_module=fake)
    assert fake.rec.args("parse") == [(len(graphs["fp32"]),)]
    with pytest.raises(trtx.TensorRTError, match=r"onnx .*missing.onnx: no such file"):
        trtx.build_engine(tmp_path / "missing.onnx", trt_spec, "fp32", trt_module=fake)


def test_parser_errors_are_one_line_each(trt_spec, graphs, caplog):
    fake = fakes.make_fake_tensorrt("10.3.0", parse_errors=("node Conv_3: unsupported\nattribute", "node Add_9: bad type"))
    with caplog.at_level(logging.ERROR), pytest.raises(trtx.TensorRTError) as e:
        trtx.build_engine(graphs["fp32"], trt_spec, "fp32", trt_module=fake)
    assert "2 error(s)" in str(e.value) and "Conv_3" in str(e.value) and "\n" not in str(e.value)
    lines = [r.getMessage() for r in caplog.records if "TensorRT parser" in r.getMessage()]
    assert len(lines) == 2 and all("\n" not in line for line in lines)


def test_failed_build_raises(trt_spec, graphs):
    with pytest.raises(trtx.TensorRTError, match="failed"):
        trtx.build_engine(graphs["fp32"], trt_spec, "fp32", trt_module=fakes.make_fake_tensorrt("10.3.0", build_fails=True))


def test_timing_cache_is_loaded_and_saved(trt_spec, graphs, tmp_path):
    cache = tmp_path / "timing" / "trt.cache"
    first = fakes.make_fake_tensorrt("10.3.0")
    trtx.build_engine(graphs["fp32"], trt_spec, "fp32", timing_cache=cache, trt_module=first)
    assert first.rec.args("create_timing_cache") == [(b"",)] and first.rec.args("set_timing_cache") == [(False,)]
    saved = cache.read_bytes()
    assert saved == b"+timings"
    second = fakes.make_fake_tensorrt("10.3.0")
    trtx.build_engine(graphs["fp32"], trt_spec, "fp32", timing_cache=cache, trt_module=second)
    # loaded, then at save the file is read again under the lock and merged with combine(), as Polygraphy does
    assert second.rec.args("create_timing_cache") == [(saved,), (saved,)]
    assert second.rec.args("combine") == [(saved, False)]
    assert cache.read_bytes() == saved + b"|" + saved + b"+timings"
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]


def test_timing_cache_written_by_another_build_meanwhile_is_merged_not_overwritten(trt_spec, graphs, tmp_path, monkeypatch):
    cache = tmp_path / "trt.cache"
    fake = fakes.make_fake_tensorrt("10.3.0")
    real_build = fake.Builder.build_serialized_network

    def build_while_another_process_saves(self, network, config):
        cache.write_bytes(b"OTHER")  # a concurrent build saved its timings after ours loaded the (empty) file
        return real_build(self, network, config)

    monkeypatch.setattr(fake.Builder, "build_serialized_network", build_while_another_process_saves)
    trtx.build_engine(graphs["fp32"], trt_spec, "fp32", timing_cache=cache, trt_module=fake)
    assert cache.read_bytes() == b"OTHER|+timings"  # both builds' timings survive
    assert (tmp_path / "trt.cache.lock").is_file()


def test_timing_cache_refused_by_tensorrt_fails_in_one_line(trt_spec, graphs, tmp_path):
    fake = fakes.make_fake_tensorrt("10.3.0", refuse=("set_timing_cache",))
    with pytest.raises(trtx.TensorRTError, match="timing cache .*trt.cache: TensorRT refused it") as e:
        trtx.build_engine(graphs["fp32"], trt_spec, "fp32", timing_cache=tmp_path / "trt.cache", trt_module=fake)
    assert "\n" not in str(e.value) and "build_serialized_network" not in fake.rec.names()


def test_a_timing_cache_tensorrt_will_not_combine_is_replaced_with_a_warning(trt_spec, graphs, tmp_path, caplog):
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"FOREIGN")
    fake = fakes.make_fake_tensorrt("10.3.0", refuse=("combine",))
    with caplog.at_level(logging.WARNING):
        trtx.build_engine(graphs["fp32"], trt_spec, "fp32", timing_cache=cache, trt_module=fake)
    assert "not merged" in caplog.text and cache.read_bytes() == b"FOREIGN+timings"


def test_optimization_level_and_dla_core_reach_the_builder_config(trt_spec, graphs):
    fake = fakes.make_fake_tensorrt("10.3.0", dla_cores=2)
    engine = trtx.build_engine(graphs["qdq"], trt_spec, "int8", trt_module=fake, optimization_level=5, dla_core=1)
    body = __import__("json").loads(engine.split(b"|", 2)[2])
    assert (body["optimization_level"], body["device"], body["dla_core"]) == (5, "DLA", 1)
    assert fake.BuilderFlag.GPU_FALLBACK in body["flags"]  # layers DLA cannot run fall back to the GPU


@pytest.mark.parametrize("kwargs, version, needle", [
    ({"optimization_level": 6}, "10.3.0", "optimization_level 6"),
    ({"dla_core": -1}, "10.3.0", "dla_core -1"),
    ({"dla_core": 0}, "10.3.0", "this device has 0 DLA core"),
    ({"dla_core": 0}, "11.4.1", "has no DLA support"),
])
def test_bad_optimization_level_or_dla_core_fail_before_the_build(trt_spec, graphs, kwargs, version, needle):
    fake = fakes.make_fake_tensorrt(version)
    graph = graphs["qdq"]
    with pytest.raises(trtx.TensorRTError, match=needle):
        trtx.build_engine(graph, trt_spec, "int8", trt_module=fake, **kwargs)
    assert "build_serialized_network" not in fake.rec.names()


def test_progress_monitor_logs_phases(trt_spec, graphs, caplog):
    fake = fakes.make_fake_tensorrt("10.3.0")
    with caplog.at_level(logging.INFO, logger="wbc_edge.runtime.backends.tensorrt_build"):
        trtx.build_engine(graphs["fp32"], trt_spec, "fp32", trt_module=fake)
    assert "IProgressMonitor.__init__" in fake.rec.names()
    text = caplog.text
    assert "Building engine (2 steps)" in text and "  Tactic selection (3 steps)" in text and "Tactic selection done in" in text


def test_without_a_progress_monitor_the_build_says_it_can_take_minutes(trt_spec, graphs, caplog):
    fake = fakes.make_fake_tensorrt("10.3.0", progress_monitor=False)
    with caplog.at_level(logging.INFO, logger="wbc_edge.runtime.backends.tensorrt_build"):
        trtx.build_engine(graphs["fp32"], trt_spec, "fp32", trt_module=fake)
    assert "this can take minutes" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wbc_edge.runtime.backends.tensorrt_build"):
        trtx.build_engine(graphs["fp32"], trt_spec, "fp32", progress=False, trt_module=fakes.make_fake_tensorrt("10.3.0"))
    assert "this can take minutes" in caplog.text


def test_required_onnx_member_and_via_torch_tensorrt_int8_refused(trt_spec):
    from wbc_edge.export import tensorrt as export_trt

    assert trtx.plan_build("10.3", "fp16").onnx_member == "model.fp32.onnx"
    assert trtx.plan_build("11.1", "fp16").onnx_member == "model.fp16.onnx"
    with pytest.raises(trtx.TensorRTError, match="--via torch-tensorrt"):
        export_trt.build_engine_via_torch_tensorrt(object(), trt_spec, "int8")


def test_via_torch_tensorrt_without_it_is_backend_unavailable(trt_spec, monkeypatch):
    from wbc_edge.export import tensorrt as export_trt

    monkeypatch.setitem(__import__("sys").modules, "torch_tensorrt", None)
    with pytest.raises(BackendUnavailable, match="torch-tensorrt: not importable"):
        export_trt.build_engine_via_torch_tensorrt(object(), trt_spec, "fp16")


def test_the_builder_module_imports_without_torch_or_tensorrt():
    # The runtime reaches the engine cache through this module on torch-free devices (Jetson firmware),
    # so neither it nor the `wbc_edge.export` package may import torch at import time.
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; sys.modules['tensorrt'] = None; "
            "import wbc_edge.runtime.backends.tensorrt_build as t; assert t.trt_version() is None")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
