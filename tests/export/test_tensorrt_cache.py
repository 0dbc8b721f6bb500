"""The engine cache: keys, sidecars, atomic files, stale engines (another TensorRT or GPU), and the
bundle -> engine path on fake 10.x / 11.x TensorRT. No TensorRT or GPU needed."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from wbc_edge.bundle import Bundle, sha256_bytes, write_bundle
from wbc_edge.errors import UsageError
from wbc_edge.runtime.backends import tensorrt_build as trtx
from support import trt_fakes as fakes
from wbc_edge.spec import spec_for


ORIN = trtx.Target("10.3.0", "Orin", "8.7")
KEY_PARTS = {"onnx_sha256": "ab" * 32, "trt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "precision": "fp16", "batch_range": (1, 8, 32)}


@pytest.fixture(scope="module")
def trt_spec():
    return spec_for("mimo", input_size=16)


class CountingBuild:
    """A build function whose engine bytes depend on what it was asked to build."""

    def __init__(self):
        self.calls = []

    def __call__(self, onnx_bytes, spec, precision, batch_range, **kw):
        self.calls.append((precision, tuple(batch_range), kw))
        return f"engine:{sha256_bytes(onnx_bytes)}:{precision}:{batch_range}".encode()


# ---- keys -------------------------------------------------------------------------------------
def test_key_is_stable_file_name_safe_and_changes_with_every_part():
    key = trtx.engine_cache_key(**KEY_PARTS)
    assert key == trtx.engine_cache_key(**KEY_PARTS)
    assert key.startswith("fp16-b1_8_32-") and all(c.isalnum() or c in "-_" for c in key)
    changed = {"onnx_sha256": "cd" * 32, "trt_version": "10.3.1", "gpu_name": "RTX 4090", "compute_capability": "8.9",
               "precision": "int8", "batch_range": (1, 8, 16)}
    keys = {key}
    for part, value in changed.items():
        other = trtx.engine_cache_key(**{**KEY_PARTS, part: value})
        assert other != key, part
        keys.add(other)
    assert len(keys) == 1 + len(changed)


def test_key_normalises_equivalent_spellings():
    a = trtx.engine_cache_key(**{**KEY_PARTS, "trt_version": (10, 3, 0), "compute_capability": (8, 7), "batch_range": [1, 8, 32]})
    assert a == trtx.engine_cache_key(**KEY_PARTS)


def test_key_refuses_bad_batch_range():
    with pytest.raises(trtx.TensorRTError, match="batch_range"):
        trtx.engine_cache_key(**{**KEY_PARTS, "batch_range": (4, 2, 1)})


# ---- the cache --------------------------------------------------------------------------------
def test_get_or_build_builds_once_then_hits_with_sidecar(tmp_path, trt_spec):
    cache, build = trtx.EngineCache(tmp_path / "engines"), CountingBuild()
    engine, key = cache.get_or_build(b"onnx-a", trt_spec, "fp16", (1, 8, 32), target=ORIN, build=build)
    again, key2 = cache.get_or_build(b"onnx-a", trt_spec, "fp16", (1, 8, 32), target=ORIN, build=build)
    assert len(build.calls) == 1 and again == engine and key2 == key
    assert cache.engine_path(key).read_bytes() == engine
    meta = json.loads(cache.sidecar_path(key).read_text())
    assert meta["onnx_sha256"] == sha256_bytes(b"onnx-a") and meta["tensorrt_version"] == "10.3.0"
    assert (meta["gpu_name"], meta["compute_capability"], meta["precision"], meta["batch_range"]) == ("Orin", "8.7", "fp16", [1, 8, 32])
    assert meta["engine_sha256"] == sha256_bytes(engine) and meta["model.spec.json"] == trt_spec.to_dict()
    assert key == trtx.engine_cache_key(sha256_bytes(b"onnx-a"), "10.3.0", "Orin", "8.7", "fp16", (1, 8, 32))
    # the build got a per-target timing cache in the cache folder
    assert build.calls[0][2]["timing_cache"] == cache.root / "timing-trt10.3.0-sm8.7.cache"
    assert not [p for p in cache.root.iterdir() if p.name.endswith(".tmp")]


def test_another_model_precision_or_batch_range_is_another_engine(tmp_path, trt_spec):
    cache, build = trtx.EngineCache(tmp_path), CountingBuild()
    keys = {cache.get_or_build(b"a", trt_spec, "fp16", target=ORIN, build=build)[1],
            cache.get_or_build(b"b", trt_spec, "fp16", target=ORIN, build=build)[1],
            cache.get_or_build(b"a", trt_spec, "int8", target=ORIN, build=build)[1],
            cache.get_or_build(b"a", trt_spec, "fp16", (1, 4, 8), target=ORIN, build=build)[1]}
    assert len(keys) == 4 and len(build.calls) == 4


def test_engine_for_another_tensorrt_or_gpu_is_rebuilt_with_a_message(tmp_path, trt_spec, caplog):
    cache, build = trtx.EngineCache(tmp_path), CountingBuild()
    _, old_key = cache.get_or_build(b"a", trt_spec, "fp16", target=ORIN, build=build)
    for target in (trtx.Target("10.7.0", "Orin", "8.7"), trtx.Target("10.3.0", "RTX 4090", "8.9")):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            _, key = cache.get_or_build(b"a", trt_spec, "fp16", target=target, build=build)
        assert key != old_key
        assert f"{old_key} was built for TensorRT 10.3.0 on Orin (sm 8.7)" in caplog.text
        assert f"this is TensorRT {target.tensorrt_version} on {target.gpu_name}" in caplog.text
    assert len(build.calls) == 3
    assert cache.get(old_key, ORIN) is not None  # the other target's engine stays for that target


def test_corrupt_or_incomplete_entries_are_rebuilt_not_crashed_on(tmp_path, trt_spec, caplog):
    cache, build = trtx.EngineCache(tmp_path), CountingBuild()
    engine, key = cache.get_or_build(b"a", trt_spec, "fp16", target=ORIN, build=build)
    cache.engine_path(key).write_bytes(engine[:5])  # truncated
    with caplog.at_level(logging.WARNING):
        again, _ = cache.get_or_build(b"a", trt_spec, "fp16", target=ORIN, build=build)
    assert again == engine and len(build.calls) == 2 and "SHA-256" in caplog.text
    cache.sidecar_path(key).write_text("{not json")
    assert cache.get(key, ORIN) is None
    cache.sidecar_path(key).unlink()  # an engine without sidecar: an interrupted write
    assert cache.get(key, ORIN) is None
    cache.get_or_build(b"a", trt_spec, "fp16", target=ORIN, build=build)
    assert len(build.calls) == 3


def test_sidecar_naming_another_target_is_not_trusted(tmp_path, trt_spec, caplog):
    cache, build = trtx.EngineCache(tmp_path), CountingBuild()
    _, key = cache.get_or_build(b"a", trt_spec, "fp16", target=ORIN, build=build)
    meta = json.loads(cache.sidecar_path(key).read_text())
    meta["gpu_name"] = "Xavier"
    cache.sidecar_path(key).write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        assert cache.get(key, ORIN) is None
    assert "built for TensorRT 10.3.0 on Xavier" in caplog.text


def test_invalidate_and_default_root(tmp_path, trt_spec, monkeypatch):
    cache, build = trtx.EngineCache(tmp_path), CountingBuild()
    _, key = cache.get_or_build(b"a", trt_spec, "fp16", target=ORIN, build=build)
    cache.invalidate(key)
    assert not cache.engine_path(key).exists() and not cache.sidecar_path(key).exists()
    cache.invalidate(key)  # twice is fine
    monkeypatch.setenv(trtx.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert trtx.EngineCache().root == tmp_path / "elsewhere"
    monkeypatch.delenv(trtx.CACHE_ENV)
    assert trtx.EngineCache().root == Path.home() / ".cache" / "wbc-edge" / "engines"


def test_current_target_from_fake_tensorrt_and_gpu():
    target = trtx.current_target(fakes.make_fake_tensorrt("10.3.0.30"), gpu=("Orin", (8, 7)))
    assert target == trtx.Target("10.3.0.30", "Orin", "8.7")


# ---- bundle -> engine on fake TensorRT --------------------------------------------------------
@pytest.fixture()
def bundle(tmp_path, trt_spec):
    files = {"model.fp32.onnx": fakes.tiny_onnx(trt_spec, "fp32"), "model.fp16.onnx": fakes.tiny_onnx(trt_spec, "fp16"),
             "model.int8-trt.onnx": fakes.tiny_onnx(trt_spec, "qdq")}
    return Bundle.open(write_bundle(tmp_path / "m.wbc", trt_spec, files))


@pytest.mark.parametrize("version, precision, member", [
    ("10.3.0", "fp16", "model.fp32.onnx"), ("10.3.0", "int8", "model.int8-trt.onnx"),
    ("11.4.1", "fp16", "model.fp16.onnx"), ("11.4.1", "int8", "model.int8-trt.onnx"),
])
def test_engine_from_bundle_builds_from_the_member_the_version_needs(bundle, tmp_path, version, precision, member):
    fake = fakes.make_fake_tensorrt(version)
    cache = trtx.EngineCache(tmp_path / "cache")
    target = trtx.Target(version, "Orin", "8.7")
    engine, key = trtx.engine_from_bundle(bundle, precision, cache, trt_module=fake, target=target)
    assert fake.rec.args("parse") == [(len(bundle.read(member)),)]
    meta = json.loads(cache.sidecar_path(key).read_text())
    assert meta["onnx_sha256"] == sha256_bytes(bundle.read(member)) and meta["tensorrt_version"] == version
    assert cache.root.joinpath(f"timing-trt{version}-sm8.7.cache").is_file()
    # a second call is a cache hit: no second parse
    trtx.engine_from_bundle(bundle, precision, cache, trt_module=fake, target=target)
    assert len(fake.rec.args("parse")) == 1


def test_bundle_without_the_needed_member_names_it(tmp_path, trt_spec):
    only_fp32 = Bundle.open(write_bundle(tmp_path / "b.wbc", trt_spec, {"model.fp32.onnx": fakes.tiny_onnx(trt_spec, "fp32")}))
    with pytest.raises(trtx.TensorRTError, match=r"fp16 on TensorRT 11.0.0 builds from model.fp16.onnx, which this bundle lacks"):
        trtx.engine_from_bundle(only_fp32, "fp16", trtx.EngineCache(tmp_path / "c"), trt_module=fakes.make_fake_tensorrt("11.0.0"),
                                target=trtx.Target("11.0.0", "GPU", "9.0"))


# ---- wbc-export --engine ----------------------------------------------------------------------
def test_parse_engine_list():
    assert trtx.parse_engine_list("fp16, int8,fp16") == ["fp16", "int8"]
    assert trtx.parse_engine_list("int8-trt") == ["int8"]
    for bad, needle in (("", "name one or more"), ("fp16,bf16", "'bf16'")):
        with pytest.raises(UsageError, match=needle):
            trtx.parse_engine_list(bad)


def test_build_bundle_engines_fills_the_cache_the_runtime_reads(bundle, tmp_path):
    fake = fakes.make_fake_tensorrt("10.3.0")
    cache = trtx.EngineCache(tmp_path / "engines")
    rows = trtx.build_bundle_engines(bundle, ["fp16", "int8"], cache, batch_range=(1, 4, 16), workspace_mb=256,
                                     trt_module=fake, target=ORIN)
    assert [r["precision"] for r in rows] == ["fp16", "int8"]
    assert all(Path(r["path"]).is_file() and r["bytes"] == Path(r["path"]).stat().st_size for r in rows)
    assert fake.rec.args("set_memory_pool_limit") == [("WORKSPACE", 256 << 20)] * 2
    # the runtime's lookup (same bundle, precision, batch range, target) is a hit: no new build
    trtx.engine_from_bundle(bundle, "int8", cache, (1, 4, 16), trt_module=fake, target=ORIN)
    assert fake.rec.names().count("build_serialized_network") == 2


def test_build_bundle_engines_option_errors(bundle, tmp_path):
    from wbc_edge.export import tensorrt as export_trt

    fake = fakes.make_fake_tensorrt("10.3.0")
    with pytest.raises(trtx.TensorRTError, match="--via 'tflite'"):
        export_trt.build_bundle_engines(bundle, ["fp16"], tmp_path, via="tflite", trt_module=fake, target=ORIN)
    with pytest.raises(trtx.TensorRTError, match="needs the PyTorch model"):
        export_trt.build_bundle_engines(bundle, ["fp16"], tmp_path, via="torch-tensorrt", trt_module=fake, target=ORIN)
    with pytest.raises(trtx.TensorRTError, match="workspace_mb"):
        trtx.build_bundle_engines(bundle, ["fp16"], tmp_path, workspace_mb=1, trt_module=fake, target=ORIN)
    assert "build_serialized_network" not in fake.rec.names()


def test_torch_tensorrt_engines_have_their_own_cache_key_and_never_answer_for_the_onnx_build(bundle, tmp_path, monkeypatch):
    from wbc_edge.export import tensorrt as export_trt

    fake = fakes.make_fake_tensorrt("11.4.1")
    target = trtx.Target("11.4.1", "Orin", "8.7")
    compiled = []
    monkeypatch.setattr(export_trt, "build_engine_via_torch_tensorrt", lambda module, spec, prec, br: (compiled.append((module, prec, br)), b"tt-engine")[1])
    cache = trtx.EngineCache(tmp_path)
    (row,) = export_trt.build_bundle_engines(bundle, ["fp16"], cache, via="torch-tensorrt", torch_module="MODULE", trt_module=fake, target=target)
    assert compiled == [("MODULE", "fp16", (1, 8, 32))] and "parse" not in fake.rec.names()
    assert row["build_path"] == "torch-tensorrt"
    assert json.loads(cache.sidecar_path(row["key"]).read_text())["build_path"] == "torch-tensorrt"
    # the runtime's lookup (ONNX build path) does not get the torch-tensorrt engine: it builds its own
    engine, key = trtx.engine_from_bundle(bundle, "fp16", cache, trt_module=fake, target=target)
    assert key != row["key"] and engine != b"tt-engine" and fake.rec.names().count("parse") == 1
    # and the torch-tensorrt engine is found again under its own key, without a rebuild
    export_trt.build_bundle_engines(bundle, ["fp16"], cache, via="torch-tensorrt", torch_module="MODULE", trt_module=fake, target=target)
    assert len(compiled) == 1


def test_engine_options_on_the_command_line_are_checked_before_any_work(tmp_path, capsys):
    from wbc_edge.cli import export as export_cli

    run = tmp_path / "no-run"
    for argv, needle in ((["--engine-batch", "1,8,32"], "give --engine too"),
                         (["--engine", "fp16", "--engine-batch", "32,8,1"], "batch_range"),
                         (["--engine", "int8-cpu"], "--engine 'int8-cpu'"),
                         (["--int8", "--int8-variant", "arm"], "--int8-variant 'arm'")):
        assert export_cli.main(["--run", str(run), "--out", str(tmp_path / "m.wbc"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "m.wbc").exists()


def test_a_dla_or_optimisation_level_build_is_another_engine():
    plain = trtx.engine_cache_key(**KEY_PARTS)
    assert trtx.engine_cache_key(**KEY_PARTS, options={"dla_core": None, "optimization_level": None}) == plain
    dla = trtx.engine_cache_key(**KEY_PARTS, options={"dla_core": 0})
    level = trtx.engine_cache_key(**KEY_PARTS, options={"optimization_level": 5})
    assert len({plain, dla, level}) == 3
