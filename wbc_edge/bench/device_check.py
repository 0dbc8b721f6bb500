"""One device check: build every engine, parity, the engine gate and a short benchmark, in one report.

    wbc-bench device-check --model model.wbc [--data cells/] --out device_check

Run it on the Jetson or CUDA desktop and send back OUT/device_check.json and .md. Every step is a
row with status 'ok', 'failed' (with the one-line error) or 'not run' (with why: no TensorRT, no GPU,
no --data, an earlier step failed), so the report is complete on any machine, this CPU one included.
ONNX Runtime rows (the FP32 reference and each graph's parity) run everywhere.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from wbc_edge.bundle import Bundle, atomic_write_text
from wbc_edge.errors import WbcError

log = logging.getLogger(__name__)

PARITY_CELLS = 64


@dataclass
class DeviceCheckOptions:
    model: Path
    out: Path
    data: Path | None = None
    engines: Sequence[str] = ("fp32", "fp16", "int8")
    batch_range: Sequence[int] = (1, 8, 32)
    workspace_mb: int = 1024
    cache: Path | None = None
    rounds: int = 20
    max_drop: float = 1.0
    lint: bool = True  # polygraphy check lint on every ONNX member
    trt_module: Any = field(default=None, repr=False)  # tests: a stand-in tensorrt
    memory: Any = field(default="auto", repr=False)  # tests: a CudaMemory factory
    target: Any = field(default=None, repr=False)


def _row(section: str, name: str, status: str, **fields: Any) -> dict[str, Any]:
    return {"section": section, "name": name, "status": status, **fields}


def _why(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def run_device_check(opts: DeviceCheckOptions, progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    from wbc_edge.export.gate import check_gate, dataset_inputs, evaluate_precisions, run_onnx
    from wbc_edge.runtime.backends import tensorrt_available
    from wbc_edge.runtime.backends import tensorrt_build as tb
    from wbc_edge.runtime.backends.tensorrt import TensorRTRunner

    bundle = Bundle.open(opts.model)
    spec = bundle.spec
    rows: list[dict[str, Any]] = []
    env = {"host": platform.node(), "machine": platform.machine(), "python": platform.python_version(), "bundle": str(opts.model)}
    if opts.trt_module is not None:
        ok, why = True, "stand-in tensorrt (tests)"
    else:
        ok, why = tensorrt_available()
    env["tensorrt"] = why
    version = tb.parse_version(opts.trt_module.__version__) if opts.trt_module is not None else tb.trt_version()
    env["tensorrt_version"] = tb.version_text(version) if version else None
    try:
        target = opts.target or (tb.current_target(opts.trt_module) if ok else None)
    except WbcError as e:
        ok, why, target = False, _why(e), None
    env["target"] = None if target is None else {"tensorrt": target.tensorrt_version, "gpu": target.gpu_name, "sm": target.compute_capability}
    rows.append(_row("environment", "tensorrt", "ok" if ok else "not run", detail=why))

    # Inputs: the held-out cells when given (parity and gate on them), else seeded random pixels (parity only).
    labels = None
    if opts.data is not None:
        inputs, labels = dataset_inputs(opts.data, spec)
    else:
        inputs = np.random.default_rng(0).integers(0, 256, spec.input_shape(PARITY_CELLS), dtype=np.uint8)
    reference = run_onnx(bundle.model_bytes("fp32"), spec, inputs)
    t0 = time.perf_counter()
    run_onnx(bundle.model_bytes("fp32"), spec, inputs[: tb.validate_batch_range(opts.batch_range)[1]])
    rows.append(_row("reference", "onnxruntime-cpu fp32", "ok", cells=int(len(inputs)), ms_one_opt_batch=round((time.perf_counter() - t0) * 1000, 3)))
    for precision in bundle.precisions:
        if precision == "fp32":
            continue
        try:
            out = run_onnx(bundle.model_bytes(precision), spec, inputs)
            rows.append(_row("onnx parity", f"onnxruntime-cpu {precision}", "ok", **_parity(out, reference, spec)))
        except Exception as e:  # a graph ONNX Runtime's CPU provider cannot run (fp16 kernels): said, not fatal
            rows.append(_row("onnx parity", f"onnxruntime-cpu {precision}", "failed", detail=_why(e)))

    cache = tb.EngineCache(opts.cache)
    runners: dict[str, Any] = {}
    opt = tb.validate_batch_range(opts.batch_range)[1]
    for engine in opts.engines:
        name = f"tensorrt {engine}"
        if not ok:
            for section in ("build", "engine parity", "benchmark"):
                rows.append(_row(section, name, "not run", detail=why))
            continue
        try:
            progress(f"device check: building {name}")
            started = time.perf_counter()
            (built,) = tb.build_bundle_engines(bundle, [engine], cache, batch_range=opts.batch_range, workspace_mb=opts.workspace_mb,
                                              trt_module=opts.trt_module, target=target)
            rows.append(_row("build", name, "ok", path=built["path"], bytes=built["bytes"], seconds=round(time.perf_counter() - started, 2)))
        except WbcError as e:
            rows.append(_row("build", name, "failed", detail=_why(e)))
            rows += [_row(s, name, "not run", detail="the build failed") for s in ("engine parity", "benchmark")]
            continue
        try:
            runner = TensorRTRunner.from_bundle(bundle, engine, cache=cache, batch_range=opts.batch_range, trt_module=opts.trt_module,
                                                memory=opts.memory, target=target).activate()
            runners[engine] = runner
            out = _run(runner, spec, inputs, opt)
            rows.append(_row("engine parity", name, "ok", vs="onnxruntime-cpu fp32", **_parity(out, reference, spec)))
            from wbc_edge.export.engine_gate import time_runner

            rows.append(_row("benchmark", name, "ok", batch=opt, median_ms_per_batch=round(time_runner(runner, spec, opt, rounds=opts.rounds), 4)))
        except WbcError as e:
            rows.append(_row("engine parity", name, "failed", detail=_why(e)))
            rows.append(_row("benchmark", name, "not run", detail="the engine did not run"))

    # The engine gate: the export gate's metrics on each engine's outputs.
    if labels is None:
        rows.append(_row("engine gate", "tensorrt", "not run", detail="no --data (labelled held-out cells) given"))
    elif not runners:
        rows.append(_row("engine gate", "tensorrt", "not run", detail=why if not ok else "no engine ran"))
    else:
        models: dict[str, Any] = {"fp32": bundle.model_bytes("fp32")}
        models.update({f"trt-{e}": (lambda r: lambda x: _run(r, spec, x, opt))(r) for e, r in runners.items()})
        report = evaluate_precisions(models, spec, inputs, labels)
        check_gate(report, opts.max_drop)
        for key, r in report["precisions"].items():
            if key.startswith("trt-"):
                rows.append(_row("engine gate", key, "ok" if r["passed"] else "failed", weighted_f1=r["weighted_f1"],
                                 weighted_f1_drop=r["weighted_f1_drop"], agreement_with_fp32=r["agreement_with_fp32"]))
        # auto on TensorRT: the fastest engine that passed, by this run's timings; recorded for wbc-run.
        from wbc_edge.export.engine_gate import choose_precision

        timings = {r["name"].split()[-1]: r["median_ms_per_batch"] for r in rows if r["section"] == "benchmark" and r["status"] == "ok"}
        report["engines"] = {e: {"passed": report["precisions"][f"trt-{e}"]["passed"], "median_ms_per_batch": timings.get(e), "batch": opt}
                             for e in runners if e != "fp32"}
        precision, reason = choose_precision(report)
        recorded = tb.record_choice(cache, bundle, precision, reason, report, target)
        rows.append(_row("auto precision", "tensorrt", "ok", precision=precision, why=reason, recorded=str(recorded)))
    for runner in runners.values():
        runner.deactivate()

    if opts.lint:
        rows += _polygraphy_lint(bundle)
    shape = f"--input-shapes {spec.input_name}:[{','.join(str(d) for d in spec.input_shape(opt))}]"
    rows.append(_row("cross-check", "polygraphy", "not run", detail="run by hand on the device, members extracted from the bundle (docs/tensorrt.md)",
                     commands=["polygraphy check lint model.int8-trt.onnx",
                               f"polygraphy run model.int8-trt.onnx --trt --int8 --onnxrt {shape} --atol 1e-2 --rtol 1e-2",
                               f"polygraphy run model.fp32.onnx --trt --fp16 --onnxrt {shape}"]))
    return {"environment": env, "options": {"engines": list(opts.engines), "batch_range": list(opts.batch_range),
                                            "workspace_mb": opts.workspace_mb, "data": str(opts.data) if opts.data else None},
            "rows": rows, "created_unix": int(time.time())}


def _polygraphy_lint(bundle: Bundle) -> list[dict[str, Any]]:
    """`polygraphy check lint` on every ONNX member (needs no TensorRT, so it runs here too), if installed."""
    import shutil
    import subprocess
    import sys
    import tempfile

    exe = shutil.which("polygraphy", path=str(Path(sys.executable).parent)) or shutil.which("polygraphy")
    if exe is None:
        return [_row("cross-check", "polygraphy check lint", "not run", detail="polygraphy is not installed (pip install polygraphy onnx-graphsurgeon)")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in bundle.precisions:
            member = Path(tmp) / f"model.{precision}.onnx"
            member.write_bytes(bundle.model_bytes(precision))
            try:
                done = subprocess.run([exe, "check", "lint", str(member)], capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as e:
                rows.append(_row("cross-check", f"polygraphy check lint {member.name}", "failed", detail=_why(e)))
                continue
            last = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
            rows.append(_row("cross-check", f"polygraphy check lint {member.name}", "ok" if done.returncode == 0 else "failed", detail=last[0][:200]))
    return rows


def _run(runner: Any, spec: Any, inputs: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    parts = [runner.infer({spec.input_name: inputs[i:i + batch]}) for i in range(0, len(inputs), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _parity(out: dict[str, np.ndarray], ref: dict[str, np.ndarray], spec: Any) -> dict[str, float]:
    p, r = out[spec.probs_name], ref[spec.probs_name]
    return {"max_prob_diff": float(np.max(np.abs(p - r))), "agreement_pct": 100.0 * float(np.mean(p.argmax(1) == r.argmax(1)))}


def format_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = ["# wbc-edge device check", "", f"- bundle: {env['bundle']}", f"- host: {env['host']} ({env['machine']}, Python {env['python']})",
             f"- TensorRT: {env['tensorrt']}", "", "| section | name | status | result |", "|---|---|---|---|"]
    for r in report["rows"]:
        extra = {k: v for k, v in r.items() if k not in ("section", "name", "status")}
        result = "; ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
        lines.append(f"| {r['section']} | {r['name']} | {r['status']} | {result.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_device_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "device_check.json", out / "device_check.md"
    atomic_write_text(json_path, json.dumps(report, indent=2, sort_keys=True))
    atomic_write_text(md_path, format_markdown(report))
    return json_path, md_path
