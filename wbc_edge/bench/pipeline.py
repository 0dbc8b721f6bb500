"""The runtime pipeline end to end beside each of its stages measured alone, cold start and peak RSS.

Synthetic frames are written once (`wbc_edge.synth.write_frames`) and read back through the runtime's
own `open_source`, so every figure is the product's code on the same sets.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from wbc_edge.bundle import Bundle
from wbc_edge.errors import WbcError
from wbc_edge.spec import LOCATOR_LIGHT

log = logging.getLogger(__name__)

STAGES = ("read", "assemble", "locate", "crop", "infer", "write")


def write_synthetic_sets(folder: str | os.PathLike, sets: int, seed: int = 0, width: int = 640, height: int = 480) -> Path:
    """Synthetic four-light frames as PNGs under `folder/frames` (no video: the PNGs are what is read)."""
    from wbc_edge.synth import write_frames

    write_frames(folder, sets=sets, seed=seed, width=width, height=height, video=False)
    return Path(folder) / "frames"


def _read_all(frames_dir: Path, analyzer: Any) -> tuple[list[Any], tuple[str, ...]]:
    from wbc_edge.runtime import open_source

    frames = []
    with open_source(str(frames_dir), light_order=analyzer.given_light_order) as source:
        light_order = analyzer.light_order_for(source)  # the frames' meta.json, as a run reads them
        while True:
            frame = source.read(0.1)
            if frame is None:
                if not source.is_streaming:
                    break
                continue
            frames.append(frame)
    return frames, light_order


def stages_alone(analyzer: Any, frames_dir: Path, results_path: Path) -> dict[str, Any]:
    """Each stage run by itself over every set, seconds in total; the same calls the Analyzer makes."""
    from wbc_edge.runtime.assembler import LightCycleAssembler
    from wbc_edge.runtime.locator import crop_cells, locate_cells
    from wbc_edge.runtime.results import ResultWriter

    spec = analyzer.spec
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    frames, light_order = _read_all(frames_dir, analyzer)
    seconds["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    assembler = LightCycleAssembler(light_order)
    sets = []
    for frame in frames:
        sets += assembler.push(frame)
    sets += assembler.flush()
    seconds["assemble"] = time.perf_counter() - t0
    # the Analyzer's default policy: a set with a light missing is skipped, not classified
    complete = [s for s in sets if all(s.images.get(m) is not None for m in spec.modalities)
                and s.images.get(LOCATOR_LIGHT) is not None]

    t0 = time.perf_counter()
    boxes = [locate_cells(s.images[LOCATOR_LIGHT]) for s in complete]
    seconds["locate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    crops = [crop_cells(s, b, analyzer.crop_px, spec)[0] for s, b in zip(complete, boxes) if b]
    seconds["crop"] = time.perf_counter() - t0

    inputs = np.concatenate(crops) if crops else np.empty((0,) + spec.input_shape(1)[1:], np.uint8)
    t0 = time.perf_counter()
    for start in range(0, len(inputs), analyzer.batch_size):
        analyzer.runner.infer({spec.input_name: np.ascontiguousarray(inputs[start : start + analyzer.batch_size])})
    seconds["infer"] = time.perf_counter() - t0

    results = [r for s in complete for r in analyzer.classify_set(s)]  # untimed: only the write is
    results_path.unlink(missing_ok=True)
    writer = ResultWriter(results_path)
    t0 = time.perf_counter()
    for res in results:
        writer.write(res)
    seconds["write"] = time.perf_counter() - t0
    writer.close()
    return {"sets": len(sets), "sets_classified": len(complete), "cells": int(len(inputs)), "seconds": seconds}


def end_to_end(analyzer: Any, frames_dir: Path, results_path: Path) -> dict[str, Any]:
    """One `Analyzer.analyze` over the folder: wall time from the call to its return."""
    results_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    summary = analyzer.analyze(str(frames_dir), sink=str(results_path))
    wall = time.perf_counter() - t0
    stats = summary.stats or {}
    return {"wall_s": wall, "sets": int(summary.sets), "cells": int(summary.total_cells),
            "in_pipeline_stage_totals_s": {k: v["total_s"] for k, v in (stats.get("stages") or {}).items()}}


def measure_pipeline(bundle: Bundle, frames_dir: Path, precision: str, batch_size: int, repeats: int,
                     runner: Any = None) -> dict[str, Any]:
    """e2e and stages alone, alternated `repeats` times; medians per set and their ratio.

    runner: an inactive runner to use instead of the runtime's choice (experiments)."""
    from wbc_edge.runtime import Analyzer

    e2e_runs, alone_runs = [], []
    with tempfile.TemporaryDirectory(prefix="wbc-bench-") as tmp, \
            Analyzer(bundle, backend="onnxruntime", precision=precision, batch_size=batch_size, runner=runner) as analyzer:
        for _ in range(max(1, repeats)):
            e2e_runs.append(end_to_end(analyzer, frames_dir, Path(tmp) / "e2e.jsonl"))
            alone_runs.append(stages_alone(analyzer, frames_dir, Path(tmp) / "alone.jsonl"))
        description = analyzer.description
    sets = alone_runs[0]["sets"]
    if sets == 0 or any(r["sets"] != sets for r in e2e_runs):
        raise WbcError(f"pipeline benchmark: {frames_dir}: the end-to-end run assembled {e2e_runs[0]['sets']} sets, "
                       f"the stages alone {sets}")
    e2e_ms = 1000.0 * float(np.median([r["wall_s"] for r in e2e_runs])) / sets
    stage_ms = {s: 1000.0 * float(np.median([r["seconds"][s] for r in alone_runs])) / sets for s in STAGES}
    stages_sum = sum(stage_ms.values())
    in_pipe = {s: 1000.0 * float(np.median([r["in_pipeline_stage_totals_s"].get(s, 0.0) for r in e2e_runs])) / sets
               for s in STAGES}
    return {"runner": description, "precision": precision, "batch": batch_size, "repeats": len(e2e_runs),
            "sets": sets, "cells": alone_runs[0]["cells"], "e2e_ms_per_set": e2e_ms,
            "stage_alone_ms_per_set": stage_ms, "stages_sum_ms_per_set": stages_sum,
            "in_pipeline_stage_ms_per_set": in_pipe,
            "e2e_over_stages_sum": e2e_ms / stages_sum if stages_sum > 0 else float("nan"),
            "sets_per_s": 1000.0 / e2e_ms if e2e_ms > 0 else float("nan")}


# ---- subprocess measurements ---------------------------------------------------------------------
_COLD_START = r"""
import json, sys, time
t0 = time.perf_counter()
import wbc_edge.runtime as runtime
t_import = time.perf_counter()
analyzer = runtime.Analyzer(sys.argv[1], backend="onnxruntime", precision=sys.argv[3], batch_size=1, max_wait_ms=0)
analyzer.open()
t_load = time.perf_counter()
first, cpu = [], []
def on_result(res):
    if not first:
        first.append(time.perf_counter())
        cpu.append(time.process_time())
        analyzer.stop("first result")
analyzer.analyze(sys.argv[2], max_cells=1, on_result=on_result)
print(json.dumps({"import_s": t_import - t0, "load_s": t_load - t_import,
                  "first_result_s": (first[0] - t0) if first else None,
                  "first_result_cpu_s": cpu[0] if cpu else None, "torch_imported": "torch" in sys.modules}))
"""

_PEAK_RSS = r"""
import json, resource, sys
from wbc_edge.runtime import Analyzer
with Analyzer(sys.argv[1], backend="onnxruntime", precision=sys.argv[3], batch_size=int(sys.argv[4])) as analyzer:
    summary = analyzer.analyze(sys.argv[2])
hwm = None
try:
    hwm = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")))
except (OSError, StopIteration):
    pass
print(json.dumps({"sets": summary.sets, "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "vmhwm_kb": hwm, "torch_imported": "torch" in sys.modules}))
"""


def _child_env() -> dict[str, str]:
    import wbc_edge

    env = dict(os.environ)
    root = str(Path(wbc_edge.__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run_child(script: str, args: list[str], timeout: float) -> tuple[dict[str, Any], float]:
    # Linux carries the exec'ing process's RSS high-water mark into the new program's ru_maxrss, so a
    # child spawned straight from this (torch-sized) process would report our peak, not its own. A
    # small shell in between forks the child (the trailing `exit` stops it from exec'ing in place).
    command = [sys.executable, "-c", script, *args]
    if Path("/bin/sh").exists():
        command = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *command]
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_child_env())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise WbcError(f"benchmark subprocess failed (exit {proc.returncode}): {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def cold_start(bundle_path: Path, frames_dir: Path, precision: str, repeats: int = 3, timeout: float = 120.0) -> dict[str, Any]:
    """A fresh interpreter: import wbc_edge.runtime, load the bundle, first classified cell (median of runs)."""
    runs = []
    for _ in range(max(1, repeats)):
        out, wall = _run_child(_COLD_START, [str(bundle_path), str(frames_dir), precision], timeout)
        out["process_wall_s"] = wall
        runs.append(out)
    firsts = [r["first_result_s"] for r in runs if r["first_result_s"] is not None]
    return {"runs": runs, "precision": precision,
            "first_result_s": float(np.median(firsts)) if firsts else None,
            "process_wall_s": float(np.median([r["process_wall_s"] for r in runs])),
            "import_s": float(np.median([r["import_s"] for r in runs])),
            "load_s": float(np.median([r["load_s"] for r in runs])),
            "first_result_cpu_s": float(np.median([r["first_result_cpu_s"] for r in runs if r["first_result_cpu_s"] is not None] or [np.nan])),
            "torch_imported": any(r["torch_imported"] for r in runs)}


def peak_rss(bundle_path: Path, frames_dir: Path, precision: str, batch_size: int, timeout: float = 600.0) -> dict[str, Any]:
    """A subprocess runs the pipeline over every set; its peak RSS (ru_maxrss, with VmHWM beside it)."""
    out, wall = _run_child(_PEAK_RSS, [str(bundle_path), str(frames_dir), precision, str(batch_size)], timeout)
    return {"peak_rss_mb": out["self_maxrss_kb"] / 1024.0,
            "vmhwm_mb": out["vmhwm_kb"] / 1024.0 if out.get("vmhwm_kb") else None, "sets": out["sets"],
            "wall_s": wall, "precision": precision, "batch": batch_size, "torch_imported": out["torch_imported"]}


def gpu_memory_mb() -> float | None:
    """GPU memory this process holds (nvidia-smi), None where there is no NVIDIA GPU."""
    import shutil

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = [float(mb) for pid, _, mb in (line.partition(",") for line in out.splitlines())
            if pid.strip() == str(os.getpid()) and mb.strip().replace(".", "", 1).isdigit()]
    return sum(used) if used else 0.0
