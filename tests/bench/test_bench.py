"""wbc-bench harness on a tiny real bundle: report structure, ratios from the same run, files written."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from wbc_edge.bench.cpu import cpu_description
from wbc_edge.bench.run import ratios
from wbc_edge.bench.timing import Config, run_interleaved


def _row(report, backend, precision, batch):
    return next(r for r in report["rows"] if r["backend"] == backend and r["precision"] == precision
                and r.get("batch") == batch)


def test_every_configuration_measured_with_consistent_statistics(bench_run):
    report, _, _ = bench_run
    measured = {(r["backend"], r["precision"], r["batch"]) for r in report["rows"] if r.get("available")}
    assert measured == {(b, p, n) for b, p in [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8-cpu")]
                        for n in (1, 8)}
    for r in report["rows"]:
        if not r.get("available"):
            continue
        assert r["rounds"] == 4
        assert 0 < r["latency_min_ms"] <= r["latency_p50_ms"] <= r["latency_p99_ms"]
        assert r["images_per_s"] == pytest.approx(1000.0 * r["batch"] / r["latency_p50_ms"])
        floor = report["floor"]["floor_images_per_s"]
        assert r["fraction_of_floor"] == pytest.approx(r["images_per_s"] / floor)


def test_rows_that_cannot_run_say_why(bench_run):
    report, _, _ = bench_run
    missing = {(r["backend"], r["precision"]): r["reason"] for r in report["rows"] if not r.get("available")}
    assert "no int8-trt" in missing[("onnxruntime", "int8-trt")]
    assert ("tensorrt", "fp16") in missing and missing[("tensorrt", "fp16")]
    assert not any(math.isnan(r.get("images_per_s", 0.0)) for r in report["rows"] if r.get("available"))


def test_ratios_are_computed_from_this_runs_rows(bench_run):
    report, _, _ = bench_run
    best = max((r for r in report["rows"] if r.get("available") and r["backend"] == "onnxruntime" and r["batch"] == 8),
               key=lambda r: r["images_per_s"])
    torch8 = _row(report, "torch", "fp32", 8)
    r = report["ratios"]
    assert r["best_cpu_over_torch_b8"]["value"] == pytest.approx(best["images_per_s"] / torch8["images_per_s"])
    pipe = report["pipeline"]
    assert set(pipe["stage_alone_ms_per_set"]) == {"read", "assemble", "locate", "crop", "infer", "write"}
    assert pipe["stages_sum_ms_per_set"] == pytest.approx(sum(pipe["stage_alone_ms_per_set"].values()))
    assert r["e2e_over_stages_sum"]["value"] == pytest.approx(pipe["e2e_ms_per_set"] / pipe["stages_sum_ms_per_set"])
    assert pipe["sets"] == 2 and pipe["cells"] > 0
    assert r["cold_start_s"]["value"] == report["cold_start"]["first_result_s"] > 0
    assert r["peak_rss_mb"]["value"] == report["peak_rss"]["peak_rss_mb"] > 10
    for check in r.values():
        assert check["met"] in (True, False)
    # recomputing from the report gives the same verdicts
    assert ratios(report) == r


def test_runtime_subprocesses_stay_torch_free(bench_run):
    report, _, _ = bench_run
    assert report["cold_start"]["torch_imported"] is False
    assert report["peak_rss"]["torch_imported"] is False
    # the high-water mark is the child's own, not this torch-sized process's (exec carries it over)
    assert report["peak_rss"]["peak_rss_mb"] == pytest.approx(report["peak_rss"]["vmhwm_mb"], rel=0.25)


def test_accuracy_sits_beside_speed(bench_run):
    report, _, md_path = bench_run
    acc = report["accuracy"]
    assert acc["n_cells"] == 12 and set(acc["precisions"]) == {"fp32", "int8-cpu"}
    # torch eager rebuilt from weights.npz predicts what the ONNX FP32 graph predicts
    assert acc["torch_eager_fp32"]["accuracy"] == pytest.approx(acc["precisions"]["fp32"]["accuracy"])
    md = md_path.read_text()
    fp32_row = next(line for line in md.splitlines() if line.startswith("| onnxruntime | fp32 | 8 |"))
    assert f"{acc['precisions']['fp32']['weighted_f1']:.2f}" in fp32_row


def test_json_and_markdown_written(bench_run):
    report, json_path, md_path = bench_run
    assert json.loads(json_path.read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    md = md_path.read_text()
    for r in report["rows"]:
        if r.get("available"):
            assert f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['images_per_s']:.1f} |" in md
    assert "not available here: " in md
    assert "best_cpu_over_torch_b8" in md and "e2e_over_stages_sum" in md


def test_torch_eager_matches_onnx_fp32(tiny_bundle):
    from wbc_edge.bench.torch_eager import TorchEagerRunner
    from wbc_edge.bundle import Bundle
    from wbc_edge.runtime import open_backend

    bundle = Bundle.open(tiny_bundle)
    x = np.random.default_rng(1).integers(0, 256, bundle.spec.input_shape(3), dtype=np.uint8)
    feed = {bundle.spec.input_name: x}
    with TorchEagerRunner(bundle) as eager, open_backend(bundle, "onnxruntime", "fp32") as ort:
        a, b = eager.infer(feed), ort.infer(feed)
    for name in (bundle.spec.probs_name, bundle.spec.head_probs_name):
        np.testing.assert_allclose(a[name], b[name], atol=1e-4)


def test_interleaving_rotates_order_and_calls_each_once_per_round():
    calls = []
    configs = [Config(key=k, backend="x", precision="fp32", batch=1, call=lambda k=k: calls.append(k)) for k in "abc"]
    run_interleaved(configs, rounds=3, warmup=2)
    assert calls[:6] == list("aabbcc")
    rounds = [calls[6 + 3 * i : 9 + 3 * i] for i in range(3)]
    assert rounds == [list("abc"), list("bca"), list("cab")]
    assert all(len(c.samples) == 3 for c in configs)


@pytest.mark.parametrize("flags, lanes", [("fpu sse2 avx avx2 fma", 16), ("sse2 avx2 fma avx512f", 32), ("sse2 avx", 8)])
def test_peak_rate_from_cpuinfo(flags, lanes):
    info = "".join(f"processor\t: {i}\nmodel name\t: Test CPU\ncpu MHz\t\t: 2500.000\nphysical id\t: 0\n"
                   f"core id\t\t: {i // 2}\nflags\t\t: {flags}\n\n" for i in range(4))  # 2 cores, 2 threads each
    d = cpu_description(info)
    assert d["physical_cores"] == 2 and d["fma_macs_per_cycle_per_core"] == lanes
    assert d["peak_fp32_macs_per_s"] == pytest.approx(2 * 2.5e9 * lanes)


def test_cli_errors_are_one_line(tmp_path, capsys, tiny_bundle):
    from wbc_edge.cli.bench import main

    assert main(["--model", str(tmp_path / "missing.wbc"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.wbc" in err
    assert main(["--model", str(tiny_bundle), "--img-size", "64", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("wbc-bench: --img-size 64") and "32" in err[-1]


def test_harness_imports_without_torch():
    import subprocess
    import sys

    code = ("import sys, wbc_edge.bench, wbc_edge.bench.pipeline, wbc_edge.cli.bench\n"
            "wbc_edge.cli.bench.get_args_parser()\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
