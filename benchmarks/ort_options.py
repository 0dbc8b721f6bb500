"""What was tried: ONNX Runtime session options for each graph in a bundle, timed interleaved at one batch size.

The runtime's runner uses ORT_ENABLE_ALL and ONNX Runtime's default thread count; this sweeps the
knobs around that (threads, optimisation level, memory arena, spinning) so a change to the runtime's
backend can be argued from numbers. Usage:
    python benchmarks/ort_options.py --model model.wbc --batch 8 --rounds 30 --out ort_options.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from wbc_edge.bench.cpu import cpu_description, load_average
from wbc_edge.bench.timing import Config, run_interleaved
from wbc_edge.bundle import Bundle, atomic_write_text

LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def variants(cores: int) -> list[dict]:
    out = [{"name": "runtime default (all, default threads)"}]
    for t in sorted({1, cores}):
        out.append({"name": f"threads={t}", "threads": t})
    out += [{"name": "level=basic", "level": "basic"}, {"name": "level=extended", "level": "extended"},
            {"name": "no mem arena", "arena": False}, {"name": "no spinning", "spin": False},
            {"name": f"threads={cores}, no spinning", "threads": cores, "spin": False}]
    return out


def session(model: bytes, v: dict) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = LEVELS[v.get("level", "all")]
    if v.get("threads"):
        opts.intra_op_num_threads = v["threads"]
    if v.get("arena") is False:
        opts.enable_cpu_mem_arena = False
    if v.get("spin") is False:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("ort_options.json"))
    a = p.parse_args(argv)
    bundle = Bundle.open(a.model)
    spec = bundle.spec
    cores = cpu_description()["physical_cores"]
    x = np.random.default_rng(0).integers(0, 256, spec.input_shape(a.batch), dtype=np.uint8)
    configs = []
    for precision in [q for q in bundle.precisions if q != "fp16"]:
        for v in variants(cores):
            sess = session(bundle.model_bytes(precision), v)
            configs.append(Config(key=f"{precision} | {v['name']}", backend="onnxruntime", precision=precision, batch=a.batch,
                                  call=lambda s=sess: s.run(None, {spec.input_name: x})))
    run_interleaved(configs, a.rounds, a.warmup)
    rows = [c.summary() for c in configs]
    report = {"bundle": str(a.model), "batch": a.batch, "rounds": a.rounds, "machine": cpu_description(),
              "load_average": load_average(), "onnxruntime": ort.__version__, "rows": rows}
    atomic_write_text(a.out, json.dumps(report, indent=2) + "\n")
    print(f"| graph and session options (batch {a.batch}) | images/s | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['key']} | {r['images_per_s']:.1f} | {r['latency_p50_ms']:.2f} | {r['latency_p99_ms']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
