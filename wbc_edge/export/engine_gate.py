"""The accuracy gate on real TensorRT engines, and `auto` precision on TensorRT chosen by it and by timing.

The export gate proves the ONNX graphs with ONNX Runtime; it cannot see what TensorRT fused or which
kernels it picked. Here each engine (built on this device from the bundle) runs the held-out cells
beside ONNX Runtime FP32, through the export gate's own `evaluate_precisions` / `check_gate`. Then
`choose_precision` picks, among the engines that passed, the fastest by a short measured timing
(INT8 slower than FP16 is a known TensorRT outcome), and records the choice in the engine cache,
where `open_backend(..., backend="tensorrt", precision="auto")` reads it.
"""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from wbc_edge import precisions
from wbc_edge.export.gate import DEFAULT_MAX_DROP, check_gate, dataset_inputs, evaluate_precisions
from wbc_edge.runtime.backends import tensorrt_build as tb

log = logging.getLogger(__name__)

ENGINE_ROW = "trt-{}"  # report rows for engines: trt-fp16, trt-int8 (beside ONNX Runtime's fp32)


def _engine_call(runner: Any, spec: Any, batch: int) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    def run(inputs: np.ndarray) -> dict[str, np.ndarray]:
        parts = [runner.infer({spec.input_name: inputs[i:i + batch]}) for i in range(0, len(inputs), batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return run


def time_runner(runner: Any, spec: Any, batch: int, rounds: int = 20, warmup: int = 3) -> float:
    """Median milliseconds per batch of `batch` cells (a short timing, enough to rank engines)."""
    x = np.zeros(spec.input_shape(batch), dtype=np.uint8)
    for _ in range(warmup):
        runner.infer({spec.input_name: x})
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        runner.infer({spec.input_name: x})
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def gate_engines(bundle: Any, inputs: np.ndarray, labels: np.ndarray, engines: Sequence[str] = ("fp16", "int8"),
                 cache: Any = None, max_drop: float = DEFAULT_MAX_DROP, min_agreement: float | None = None,
                 batch_range: Sequence[int] = tb.DEFAULT_BATCH_RANGE, timing_rounds: int = 20,
                 open_runner: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The gate report with one row per engine ('trt-fp16', ...) beside ONNX Runtime 'fp32', and per engine
    its median ms per batch at the profile's opt batch. `open_runner(bundle, precision)` is for tests."""
    from wbc_edge.runtime.backends.tensorrt import TensorRTRunner  # noqa: PLC0415

    opener = open_runner or (lambda b, p: TensorRTRunner.from_bundle(b, p, cache=cache, batch_range=batch_range))
    opt = tb.validate_batch_range(batch_range)[1]
    runners, models, timing_ms = {}, {"fp32": bundle.model_bytes("fp32")}, {}
    try:
        for engine in engines:
            runner = opener(bundle, engine).activate()
            runners[engine] = runner
            models[ENGINE_ROW.format(engine)] = _engine_call(runner, bundle.spec, opt)
        report = evaluate_precisions(models, bundle.spec, inputs, labels)
        failed = check_gate(report, max_drop, min_agreement=min_agreement)
        for engine, runner in runners.items():
            timing_ms[engine] = time_runner(runner, bundle.spec, opt, rounds=timing_rounds)
    finally:
        for runner in runners.values():
            runner.deactivate()
    report["reference"] = "onnxruntime fp32"
    report["engines"] = {e: {"row": ENGINE_ROW.format(e), "passed": report["precisions"][ENGINE_ROW.format(e)]["passed"],
                             "median_ms_per_batch": timing_ms.get(e), "batch": opt} for e in engines}
    report["failed"] = failed
    return report


def choose_precision(report: dict[str, Any]) -> tuple[str, str]:
    """(bundle precision, why): the fastest engine that passed the gate, else fp32."""
    passed = {e: r for e, r in report["engines"].items() if r["passed"] and r["median_ms_per_batch"] is not None}
    if not passed:
        return "fp32", "no TensorRT engine passed the engine gate (" + (", ".join(report["engines"]) or "none gated") + ")"
    best = min(passed, key=lambda e: passed[e]["median_ms_per_batch"])
    times = ", ".join(f"{e} {r['median_ms_per_batch']:.3f} ms" for e, r in passed.items())
    failed = [e for e, r in report["engines"].items() if not r["passed"]]
    why = f"fastest engine that passed the engine gate ({times} per batch of {passed[best]['batch']})" + (
        f"; failed the gate: {', '.join(failed)}" if failed else "")
    return precisions.ENGINE_SOURCE[best], why


def compare_engines(bundle_path: Path, data: Path, engines: Sequence[str] = ("fp16", "int8"), cache: Any = None,
                    max_drop: float = DEFAULT_MAX_DROP, min_agreement: float | None = None, record: bool = True,
                    target: Any = None, **kwargs: Any) -> dict[str, Any]:
    """`wbc-export compare --backend tensorrt`: the engine gate on a dataset, the auto choice, recorded."""
    from wbc_edge.bundle import Bundle  # noqa: PLC0415

    bundle = Bundle.open(bundle_path)
    inputs, labels = dataset_inputs(data, bundle.spec)
    report = gate_engines(bundle, inputs, labels, engines, cache, max_drop, min_agreement, **kwargs)
    report["bundle"], report["data"] = str(bundle_path), str(data)
    precision, why = choose_precision(report)
    report["auto_precision"] = {"precision": precision, "why": why}
    if record:
        engine_cache = cache if isinstance(cache, tb.EngineCache) else tb.EngineCache(cache)
        report["auto_precision"]["recorded"] = str(tb.record_choice(engine_cache, bundle, precision, why, report, target))
    return report
