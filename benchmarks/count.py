"""The differential count against its truth: argmax count and every estimator side by side.

Scores a pool of labelled held-out cells with a bundle once (ONNX Runtime, CPU), then draws many
samples of N cells at the named blood mixes (each cell's class from the mix, the cell itself drawn
from the pool's cells of that class) and reports, per estimator: mean absolute error per class in
points, interval coverage (the mix inside the 95% interval), and the share of (sample, class) pairs
within a 400-cell manual count's 95% sampling error (CLSI H20: half-width 1.96 * sqrt(p(1-p)/400)).
A perfect classifier scores about 95% on the last measure at N = 400 (its own cell sampling).

    wbc-synth cells --out /tmp/pool --n 1000 --seed 202 --class-mix balanced
    python benchmarks/count.py --model wbc_edge/demo/demo.wbc --data /tmp/pool --samples 200 --json count.json

The pool must be cells the bundle neither trained on nor had its quantification.json measured on.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from wbc_edge.bundle import Bundle, atomic_write_text
from wbc_edge.export.gate import dataset_inputs, run_onnx
from wbc_edge.runtime.quantify import METHODS, estimate_shares, params_for_bundle
from wbc_edge.synth.cells import BLOOD_MIXES

Z_95 = 1.959963984540054
MIXES = ("normal", "eosinophilia", "neutrophilia", "lymphocytosis", "monocytosis")


def draw_sample(rng: np.random.Generator, labels: np.ndarray, mix: np.ndarray, n: int) -> np.ndarray:
    """Indices into the pool: each cell's class from `mix`, then a pool cell of that class (with replacement)."""
    by_class = [np.flatnonzero(labels == k) for k in range(len(mix))]
    classes = rng.choice(len(mix), size=n, p=mix)
    return np.array([by_class[k][rng.integers(len(by_class[k]))] for k in classes])


def run(model: str, data: str, samples: int, n_cells: int, precision: str | None, seed: int, n_boot: int) -> dict:
    bundle = Bundle.open(model)
    spec = bundle.spec
    precision = precision or ("int8-cpu" if "int8-cpu" in bundle.precisions else "fp32")
    params = params_for_bundle(bundle, precision)
    if params is None:
        raise SystemExit(f"{model}: no quantification.json (run wbc-export quantify first)")
    inputs, labels = dataset_inputs(data, spec)
    probs = params.calibrated_probs(run_onnx(bundle.model_bytes(precision), spec, inputs)[spec.head_probs_name])
    rng = np.random.default_rng(seed)
    rows: dict[str, dict] = {}
    started = time.perf_counter()
    for mix_name in MIXES:
        mix = np.array([BLOOD_MIXES[mix_name][c] for c in spec.classes])
        mix = mix / mix.sum()
        tolerance = Z_95 * np.sqrt(mix * (1 - mix) / 400)
        per = {m: {"err": [], "covered": [], "within_manual": []} for m in METHODS}
        for s in range(samples):
            idx = draw_sample(rng, labels, mix, n_cells)
            for m in METHODS:
                est = estimate_shares(probs[idx], params, m, n_boot=n_boot, seed=s)
                per[m]["err"].append(est.shares - mix)  # estimate - truth; the table takes its absolute value
                per[m]["covered"].append((est.low <= mix) & (mix <= est.high))
                per[m]["within_manual"].append(np.abs(est.shares - mix) <= tolerance)
        rows[mix_name] = {m: {key: np.asarray(v).tolist() for key, v in d.items()} for m, d in per.items()}
    return {"model": model, "data": data, "precision": precision, "samples_per_mix": samples, "cells_per_sample": n_cells,
            "n_boot": n_boot, "seed": seed, "pool_cells": int(len(labels)), "classes": list(spec.classes),
            "temperature": params.temperature, "pooling": params.pooling, "seconds": time.perf_counter() - started, "mixes": rows}


def _signed_error(rows: dict) -> np.ndarray:
    """(samples, classes) estimate - truth; a report written before the signed error was kept has |err|."""
    return np.asarray(rows["err"] if "err" in rows else rows["abs_err"])


def table(report: dict) -> str:
    from wbc_edge.spec import CLASS_ABBREV

    classes = report["classes"]
    ab = [CLASS_ABBREV.get(c, c) for c in classes]
    out = [f"{report['samples_per_mix']} samples of {report['cells_per_sample']} cells per mix, pool {report['pool_cells']} cells, "
           f"{report['precision']}, T = {report['temperature']:.2f}, heads pooled by {report.get('pooling', 'mean')}", "",
           "| estimator | MAE pts " + " ".join(f"{a}" for a in ab) + " | coverage % " + " ".join(ab) +
           " | within 400-cell manual error % " + " ".join(ab) + " | all |",
           "|---|---|---|---|---|"]
    for m in METHODS:
        err = np.abs(np.concatenate([_signed_error(report["mixes"][x][m]) for x in report["mixes"]]))
        cov = np.concatenate([np.asarray(report["mixes"][x][m]["covered"]) for x in report["mixes"]])
        man = np.concatenate([np.asarray(report["mixes"][x][m]["within_manual"]) for x in report["mixes"]])
        out.append(f"| {m} | " + " ".join(f"{100 * v:.2f}" for v in err.mean(0)) + f" | {100 * cov.mean():.1f}: "
                   + " ".join(f"{100 * v:.0f}" for v in cov.mean(0)) + " | " + " ".join(f"{100 * v:.0f}" for v in man.mean(0))
                   + f" | **{100 * man.mean():.1f}** |")
    if all("err" in report["mixes"][x][m] for x in report["mixes"] for m in METHODS):  # reports before 2 Dec held |err| only
        out += ["", "Mean signed error (estimate - truth), points, over all mixes:", "",
                "| estimator | " + " | ".join(ab) + " |", "|---|" + "---|" * len(ab)]
        for m in METHODS:
            err = np.concatenate([_signed_error(report["mixes"][x][m]) for x in report["mixes"]])
            out.append(f"| {m} | " + " | ".join(f"{100 * v:+.2f}" for v in err.mean(0)) + " |")
    out += ["", "Per mix, share of (sample, class) pairs within the manual count's error (%):", "",
            "| estimator | " + " | ".join(report["mixes"]) + " |", "|---|" + "---|" * len(report["mixes"])]
    for m in METHODS:
        out.append(f"| {m} | " + " | ".join(f"{100 * np.mean(report['mixes'][x][m]['within_manual']):.1f}" for x in report["mixes"]) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="wbc_edge/demo/demo.wbc")
    p.add_argument("--data", required=True, help="labelled held-out cells (the pool)")
    p.add_argument("--samples", type=int, default=200, help="samples per mix")
    p.add_argument("--cells", type=int, default=400, help="cells per sample")
    p.add_argument("--precision", help="default: int8-cpu when the bundle has it (what wbc-run picks on a CPU), else fp32")
    p.add_argument("--boot", type=int, default=200, help="bootstrap replicates per interval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the raw per-sample results here")
    a = p.parse_args(argv)
    report = run(a.model, a.data, a.samples, a.cells, a.precision, a.seed, a.boot)
    if a.json:
        atomic_write_text(a.json, json.dumps(report))
    print(table(report))
    print(f"\n{report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
