"""`run_bench`: every backend x precision x batch interleaved in one run, the pipeline, cold start,
peak RSS, accuracy per precision and the FLOP floor, with the issue's ratios computed from this run."""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from wbc_edge.bench.cpu import cpu_description, load_average
from wbc_edge.bench.timing import Config, feed_call, run_interleaved
from wbc_edge import precisions
from wbc_edge.bundle import Bundle
from wbc_edge.errors import BundleError, SpecError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = precisions.NAMES
# which precisions each backend runs (the bench's onnxruntime is the CPU one)
BACKEND_PRECISIONS = {"torch": precisions.run_on("torch"), "onnxruntime": precisions.run_on("onnxruntime-cpu"),
                      "tensorrt": precisions.run_on("tensorrt")}
TARGETS = {"best_cpu_over_torch_b8": 2.5, "e2e_over_stages_sum": 1.15, "cold_start_s": 1.0, "peak_rss_mb": 300.0}


@dataclass
class BenchOptions:
    model: Path
    backends: tuple[str, ...] = BACKENDS
    precisions: tuple[str, ...] = PRECISIONS
    batches: tuple[int, ...] = (1, 8, 32)
    img_size: int | None = None
    rounds: int = 30
    warmup: int = 3
    data: Path | None = None
    sets: int = 8
    checkpoint: Path | None = None
    out: Path = Path("bench_out")
    threads: int | None = None
    pipeline: bool = True
    subprocesses: bool = True
    pipeline_repeats: int = 3
    cold_start_repeats: int = 3
    seed: int = 0


def _row_unavailable(backend: str, precision: str, batch: int | None, reason: str) -> dict[str, Any]:
    return {"backend": backend, "precision": precision, "batch": batch, "available": False, "reason": reason}


def _open_runners(bundle: Bundle, opts: BenchOptions) -> tuple[list[tuple[str, str, Any]], list[dict[str, Any]]]:
    """(backend, precision, active runner) for everything that runs here; rows saying why the rest does not."""
    from wbc_edge.errors import BackendUnavailable
    from wbc_edge.runtime.backends import open_backend, tensorrt_available

    runners, missing = [], []
    have = set(bundle.precisions)
    trt_ok, trt_why = tensorrt_available() if "tensorrt" in opts.backends else (False, "")
    for backend in opts.backends:
        for precision in opts.precisions:
            if precision not in BACKEND_PRECISIONS[backend]:
                continue
            if backend == "tensorrt" and not trt_ok:
                missing.append(_row_unavailable(backend, precision, None, trt_why))
                continue
            if precision not in have:
                missing.append(_row_unavailable(backend, precision, None, f"bundle has no {precision} model"))
                continue
            try:
                if backend == "torch":
                    from wbc_edge.bench.torch_eager import TorchEagerRunner, torch_available, weights_source

                    ok, why = torch_available()
                    src, src_why = weights_source(bundle, opts.checkpoint)
                    if not ok or src is None:
                        missing.append(_row_unavailable(backend, precision, None, why if not ok else src_why))
                        continue
                    runner = TorchEagerRunner(bundle, opts.checkpoint, threads=opts.threads).activate()
                    runner.choice_reason = f"weights from {src_why}, {runner.threads} threads"
                elif backend == "tensorrt":
                    runner = open_backend(bundle, backend="tensorrt", precision=precision).activate()
                else:
                    runner = open_backend(bundle, backend="onnxruntime", precision=precision,
                                          intra_op_threads=opts.threads).activate()
            except BackendUnavailable as e:
                missing.append(_row_unavailable(backend, precision, None, str(e)))
                continue
            runners.append((backend, precision, runner))
    return runners, missing


def _bench_input(spec: Any, batch: int, seed: int) -> np.ndarray:
    # Random pixels: convolution cost does not depend on the values; a fixed seed keeps runs comparable.
    return np.random.default_rng(seed).integers(0, 256, spec.input_shape(batch), dtype=np.uint8)


def _accuracy(bundle: Bundle, runners: Sequence[tuple[str, str, Any]], data: Path) -> dict[str, Any]:
    """The export gate's evaluation on `data` for every ONNX precision, plus torch eager where it runs."""
    from wbc_edge.export.gate import check_gate, classification_metrics, evaluate_bundle

    spec = bundle.spec
    report, inputs, labels = evaluate_bundle(bundle, data)
    check_gate(report)
    for backend, _precision, runner in runners:
        if backend == "torch":
            probs = np.concatenate([runner.infer({spec.input_name: inputs[i : i + 64]})[spec.probs_name]
                                    for i in range(0, len(inputs), 64)])
            report["torch_eager_fp32"] = classification_metrics(labels, probs.argmax(1), spec.classes)
    return report


def run_bench(opts: BenchOptions, progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    bundle = Bundle.open(opts.model)
    spec = bundle.spec
    if opts.img_size is not None and opts.img_size != spec.input_size:
        # The graphs take the spec's size; measuring another size would time a different network.
        raise SpecError(f"--img-size {opts.img_size}: bundle {opts.model} takes {spec.input_size} px inputs (its spec)")
    cpu = cpu_description()
    report: dict[str, Any] = {"bundle": str(opts.model), "bundle_precisions": bundle.precisions, "spec": {
        "method": spec.method, "backbone": spec.backbone, "input_size": spec.input_size, "in_channels": spec.in_channels,
        "heads": spec.num_heads, "classes": spec.num_classes}, "machine": cpu,
        "settings": {"rounds": opts.rounds, "warmup": opts.warmup, "batches": list(opts.batches),
                     "backends": list(opts.backends), "precisions": list(opts.precisions), "threads": opts.threads,
                     "sets": opts.sets, "order": "interleaved: one call per configuration per round, order rotated each round"},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_average_start": load_average()}

    progress("opening runners")
    runners, missing = _open_runners(bundle, opts)
    if not runners:
        raise BundleError(f"bundle {opts.model}: nothing to measure here ({'; '.join(r['reason'] for r in missing)})")
    for backend, precision, runner in runners:
        report.setdefault("runners", []).append({"backend": backend, "precision": precision,
                                                  "name": getattr(runner, "name", backend),
                                                  "why": getattr(runner, "choice_reason", "")})
    configs = []
    for backend, precision, runner in runners:
        for batch in opts.batches:
            feed = {spec.input_name: _bench_input(spec, batch, opts.seed + batch)}
            configs.append(Config(key=f"{backend}/{precision}/b{batch}", backend=backend, precision=precision,
                                  batch=batch, call=feed_call(runner, feed)))
    progress(f"timing {len(configs)} configurations: {opts.warmup} warm-up calls each, {opts.rounds} interleaved rounds")
    gpu_before = None
    if any(b == "tensorrt" for b, _, _ in runners):
        from wbc_edge.bench.pipeline import gpu_memory_mb

        gpu_before = gpu_memory_mb()
    run_interleaved(configs, opts.rounds, opts.warmup,
                    progress=lambda r, n: progress(f"round {r}/{n}") if r % max(1, n // 5) == 0 else None)
    rows = [dict(c.summary(), available=True) for c in configs]
    rows += missing
    report["rows"] = rows
    if gpu_before is not None:
        from wbc_edge.bench.pipeline import gpu_memory_mb

        report["gpu_memory_mb"] = gpu_memory_mb()

    # the FLOP floor
    from wbc_edge.bench.torch_eager import model_macs

    macs, macs_source = model_macs(spec)
    peak = cpu["peak_fp32_macs_per_s"]
    floor = {"macs_per_image": macs, "macs_source": macs_source, "peak_fp32_macs_per_s": peak,
             "floor_images_per_s": (peak / macs) if macs and peak else None}
    report["floor"] = floor
    for row in rows:
        if row.get("available") and floor["floor_images_per_s"] and row.get("backend") != "tensorrt":
            row["fraction_of_floor"] = row["images_per_s"] / floor["floor_images_per_s"]

    if opts.data is not None:
        progress(f"accuracy on {opts.data}")
        report["accuracy"] = _accuracy(bundle, runners, opts.data)
    for _b, _p, runner in runners:
        runner.deactivate()

    best = _best_cpu(rows, batch=8)
    report["best_cpu_b8"] = best
    if opts.pipeline:
        precision = best["precision"] if best and best["backend"] == "onnxruntime" else "fp32"
        pipe_batch = 8 if 8 in opts.batches else opts.batches[0]
        with tempfile.TemporaryDirectory(prefix="wbc-bench-frames-") as tmp:
            progress(f"writing {opts.sets} synthetic four-light sets")
            from wbc_edge.bench.pipeline import cold_start, measure_pipeline, peak_rss, write_synthetic_sets

            frames_dir = write_synthetic_sets(tmp, opts.sets, seed=opts.seed)
            progress(f"pipeline end to end vs stages alone ({precision}, batch {pipe_batch})")
            report["pipeline"] = measure_pipeline(bundle, frames_dir, precision, pipe_batch, repeats=opts.pipeline_repeats)
            if opts.subprocesses:
                progress("cold start and peak RSS (subprocesses)")
                report["cold_start"] = cold_start(Path(opts.model), frames_dir, precision, repeats=opts.cold_start_repeats)
                report["peak_rss"] = peak_rss(Path(opts.model), frames_dir, precision, pipe_batch)
    report["ratios"] = ratios(report)
    report["load_average_end"] = load_average()
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return report


def _best_cpu(rows: Sequence[dict[str, Any]], batch: int) -> dict[str, Any] | None:
    cands = [r for r in rows if r.get("available") and r["batch"] == batch and r["backend"] == "onnxruntime"]
    return max(cands, key=lambda r: r["images_per_s"]) if cands else None


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's four checks, each from this run's own numbers (None where a part did not run)."""
    rows = report.get("rows", [])
    torch_b8 = next((r for r in rows if r.get("available") and r["backend"] == "torch" and r["batch"] == 8), None)
    best = report.get("best_cpu_b8")
    out: dict[str, Any] = {}

    def check(name: str, value: float | None, ok: Callable[[float], bool], detail: str) -> None:
        out[name] = {"value": value, "target": TARGETS[name], "met": (bool(ok(value)) if value is not None else None),
                     "detail": detail}

    speedup = best["images_per_s"] / torch_b8["images_per_s"] if best and torch_b8 else None
    check("best_cpu_over_torch_b8", speedup, lambda v: v >= TARGETS["best_cpu_over_torch_b8"],
          f"{best['key']} over torch/fp32/b8" if best and torch_b8 else
          "torch eager or a CPU row at batch 8 did not run")
    pipe = report.get("pipeline")
    check("e2e_over_stages_sum", pipe["e2e_over_stages_sum"] if pipe else None,
          lambda v: v <= TARGETS["e2e_over_stages_sum"], "e2e ms per set / sum of stages alone" if pipe else "pipeline not run")
    cold = report.get("cold_start")
    check("cold_start_s", cold["first_result_s"] if cold else None, lambda v: v < TARGETS["cold_start_s"],
          "import + load bundle + first result, in a fresh interpreter" if cold else "not run")
    rss = report.get("peak_rss")
    check("peak_rss_mb", rss["peak_rss_mb"] if rss else None, lambda v: v < TARGETS["peak_rss_mb"],
          "runtime pipeline subprocess, ru_maxrss" if rss else "not run")
    return out
