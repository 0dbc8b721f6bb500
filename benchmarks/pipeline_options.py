"""What was tried for the pipeline glue: the same Analyzer run with ONNX Runtime's intra-op threads
spinning (the runtime's default) and not spinning, and with one intra-op thread, measured the way
wbc-bench measures the pipeline (end to end vs each stage alone, same synthetic sets).

    python benchmarks/pipeline_options.py --model model.wbc --sets 16 --out pipeline_options.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from wbc_edge.bench.cpu import load_average
from wbc_edge.bench.pipeline import measure_pipeline, write_synthetic_sets
from wbc_edge.bundle import Bundle, atomic_write_text
from wbc_edge.runtime.backends.onnxruntime import OnnxRuntimeRunner


class NoSpinRunner(OnnxRuntimeRunner):
    """The runtime's ORT runner with intra-op spinning off (an experiment, not a product change)."""

    def _activate_impl(self) -> None:
        import onnxruntime as ort

        original = ort.SessionOptions

        def options():
            opts = original()
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return opts

        ort.SessionOptions = options
        try:
            super()._activate_impl()
        finally:
            ort.SessionOptions = original


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--precision", default="int8-cpu")
    p.add_argument("--sets", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("pipeline_options.json"))
    a = p.parse_args(argv)
    bundle = Bundle.open(a.model)
    variants = {"runtime default (spinning, default threads)": None,
                "no spinning": lambda: NoSpinRunner.from_bundle(bundle, a.precision),
                "1 intra-op thread": lambda: OnnxRuntimeRunner.from_bundle(bundle, a.precision, intra_op_threads=1)}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="wbc-pipeopts-") as tmp:
        frames = write_synthetic_sets(tmp, a.sets)
        for name, make in variants.items():
            rows[name] = measure_pipeline(bundle, frames, a.precision, 8, a.repeats, runner=make() if make else None)
    atomic_write_text(a.out, json.dumps({"load_average": load_average(), "rows": rows}, indent=2) + "\n")
    print("| ORT runner in the pipeline | e2e ms/set | sum of stages alone ms/set | ratio |\n|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['e2e_ms_per_set']:.1f} | {r['stages_sum_ms_per_set']:.1f} | {r['e2e_over_stages_sum']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
