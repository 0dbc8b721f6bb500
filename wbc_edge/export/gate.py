"""The accuracy gate: every precision against FP32, with ONNX Runtime on the CPU, on held-out cells.

Torch-free on purpose: `wbc-export compare` and `wbc-bench` run it on a bundle without training code.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from wbc_edge.errors import AccuracyGateError
from wbc_edge.metrics import as_percent, label_metrics
from wbc_edge.spec import ModelSpec

LOGGER = logging.getLogger(__name__)
DEFAULT_MAX_DROP = 1.0  # weighted-F1 points; the product goal is 0.3


def ort_session(onnx_bytes: bytes, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def run_onnx(onnx_bytes: bytes | ort.InferenceSession, spec: ModelSpec, inputs: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Run a graph over uint8 inputs in batches; returns {probs_name, head_probs_name} arrays."""
    session = onnx_bytes if isinstance(onnx_bytes, ort.InferenceSession) else ort_session(onnx_bytes)
    names = [spec.probs_name, spec.head_probs_name]
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, len(inputs), batch_size):
        feed = {spec.input_name: np.ascontiguousarray(inputs[start : start + batch_size])}
        for name, value in zip(names, session.run(names, feed)):
            chunks[name].append(np.asarray(value, dtype=np.float32))
    return {n: np.concatenate(v) for n, v in chunks.items()}


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The gate's row: the shared metrics (`wbc_edge.metrics`) in percent."""
    m = as_percent(label_metrics(labels, predicted, classes))
    return {k: m[k] for k in ("weighted_f1", "macro_f1", "accuracy", "per_class_recall")}


def evaluate_precisions(
    models: Mapping[str, bytes],
    spec: ModelSpec,
    inputs: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 64,
    outputs: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Metrics for every precision plus agreement and max probability difference vs `fp32`.

    `outputs`: each precision's `run_onnx` result when the caller already has it. A model is ONNX bytes
    (run with ONNX Runtime) or a callable inputs -> outputs (a TensorRT engine's runner), so engines go
    through the same metrics as the graphs."""
    if "fp32" not in models:
        raise AccuracyGateError("accuracy gate: no fp32 model to compare against")
    labels = np.asarray(labels, dtype=np.int64)
    outputs = dict(outputs) if outputs is not None else {
        p: m(inputs) if callable(m) else run_onnx(m, spec, inputs, batch_size) for p, m in models.items()}
    ref = outputs["fp32"][spec.probs_name]
    ref_heads = outputs["fp32"][spec.head_probs_name]
    report: dict[str, Any] = {"n_cells": int(len(labels)), "class_counts": {c: int(n) for c, n in zip(spec.classes, np.bincount(labels, minlength=spec.num_classes))}, "precisions": {}}
    for precision, out in outputs.items():
        probs = out[spec.probs_name]
        row = classification_metrics(labels, probs.argmax(1), spec.classes)
        row["agreement_with_fp32"] = 100.0 * float(np.mean(probs.argmax(1) == ref.argmax(1)))
        row["max_prob_diff"] = float(np.max(np.abs(probs - ref)))
        row["max_head_prob_diff"] = float(np.max(np.abs(out[spec.head_probs_name] - ref_heads)))
        report["precisions"][precision] = row
    for row in report["precisions"].values():
        row["weighted_f1_drop"] = report["precisions"]["fp32"]["weighted_f1"] - row["weighted_f1"]
    return report


def check_gate(report: dict[str, Any], max_drop: float = DEFAULT_MAX_DROP, only: Sequence[str] | None = None,
               min_agreement: float | None = None) -> list[str]:
    """Precisions whose weighted-F1 drop exceeds `max_drop` points, or (when given) whose agreement
    with FP32 is below `min_agreement` percent; empty when all pass. A score alone can hide a model
    that predicts different cells equally well (or equally badly)."""
    report["max_drop"] = max_drop
    report["min_agreement"] = min_agreement
    failed = []
    for precision, row in report["precisions"].items():
        if precision == "fp32" or (only is not None and precision not in only):
            continue
        row["passed"] = bool(row["weighted_f1_drop"] <= max_drop
                             and (min_agreement is None or row["agreement_with_fp32"] >= min_agreement))
        if not row["passed"]:
            failed.append(precision)
    if "fp32" in report["precisions"]:
        report["precisions"]["fp32"]["passed"] = True
    return failed


def run_gate(models: Mapping[str, bytes], spec: ModelSpec, inputs: np.ndarray, labels: np.ndarray, max_drop: float = DEFAULT_MAX_DROP,
             min_agreement: float | None = None) -> dict[str, Any]:
    """Evaluate and raise AccuracyGateError naming the worst precision over the allowed drop."""
    report = evaluate_precisions(models, spec, inputs, labels)
    failed = check_gate(report, max_drop, min_agreement=min_agreement)
    if failed:
        raise gate_error(report, failed)
    return report


def gate_error(report: dict[str, Any], failed: Sequence[str]) -> AccuracyGateError:
    rows = report["precisions"]
    worst = max(failed, key=lambda p: rows[p]["weighted_f1_drop"])
    if rows[worst]["weighted_f1_drop"] <= report["max_drop"]:
        return AccuracyGateError(
            f"accuracy gate: {worst} agrees with fp32 on {rows[worst]['agreement_with_fp32']:.2f}% of cells, "
            f"less than --min-agreement {report['min_agreement']:g}")
    return AccuracyGateError(
        f"accuracy gate: {worst} weighted F1 {rows[worst]['weighted_f1']:.2f} is {rows[worst]['weighted_f1_drop']:.2f} points "
        f"below fp32 ({rows['fp32']['weighted_f1']:.2f}), more than --max-drop {report['max_drop']:g}"
        + (f" (also failed: {', '.join(p for p in failed if p != worst)})" if len(failed) > 1 else "")
    )


def format_table(report: dict[str, Any], classes: Sequence[str]) -> str:
    """A fixed-width table: one row per precision."""
    from wbc_edge.spec import CLASS_ABBREV

    abbrev = [CLASS_ABBREV.get(c, c[:4].upper()) for c in classes]
    head = f"{'precision':<10} {'wF1':>7} {'drop':>6} {'mF1':>7} {'agree%':>7} {'maxdP':>7} " + " ".join(f"{a:>6}" for a in abbrev) + "  gate"
    lines = [f"accuracy gate on {report['n_cells']} cells{(' of ' + report['data']) if report.get('data') else ''} (recall % per class)", head, "-" * len(head)]
    for precision, row in report["precisions"].items():
        recalls = " ".join("     -" if row["per_class_recall"][c] is None else f"{row['per_class_recall'][c]:6.1f}" for c in classes)
        verdict = {True: "pass", False: "FAIL", None: ""}[row.get("passed")]
        lines.append(
            f"{precision:<10} {row['weighted_f1']:7.2f} {row['weighted_f1_drop']:6.2f} {row['macro_f1']:7.2f} "
            f"{row['agreement_with_fp32']:7.2f} {row['max_prob_diff']:7.4f} {recalls}  {verdict}"
        )
    if report.get("calibration"):
        lines.append(format_calibration(report["calibration"]))
    return "\n".join(lines)


def calibration_summary(quant: Mapping[str, Any]) -> dict[str, Any]:
    """The gate report's view of quantification.json: temperatures and ECE before/after per precision."""
    return {"temperature": quant["temperature"], "n_cells": quant["fit"]["n_cells"],
            "ece_before": {p: r["ece_before"] for p, r in quant["precisions"].items()},
            "ece_after": {p: r["ece_after"] for p, r in quant["precisions"].items()}}


def format_calibration(cal: Mapping[str, Any]) -> str:
    t = cal["temperature"]
    heads = ", ".join(f"{h} {v:.2f}" for h, v in t["heads"].items())
    ece = ", ".join(f"{p} {100 * cal['ece_before'][p]:.1f} -> {100 * cal['ece_after'][p]:.1f}" for p in cal["ece_before"])
    bias = " ".join(f"{v:+.2f}" for v in t.get("class_bias") or [])
    return (f"calibration on {cal['n_cells']} held-out cells: T combined {t['combined']:.2f}, class bias [{bias}] (heads: {heads}); "
            f"ECE % before -> after (bias-corrected temperature scaling): {ece}")


def dataset_inputs(data: Any, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Every cell of a labelled dataset as model inputs and labels in the spec's class order."""
    from wbc_edge.calibration import inputs_from_dataset, labels_in_spec_order
    from wbc_edge.data import open_dataset
    from wbc_edge.errors import DataError

    ds = open_dataset(data, classes=spec.classes)
    idx = list(range(len(ds)))
    if not idx:
        raise DataError(f"{data}: no cells to evaluate on")
    return inputs_from_dataset(ds, idx, spec), labels_in_spec_order(ds, idx, spec)


def evaluate_bundle(bundle: Any, data: Any) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The gate's evaluation of every precision a bundle holds, on a labelled dataset.

    Returns (report, inputs, labels) so callers can score other runners on the same cells."""
    inputs, labels = dataset_inputs(data, bundle.spec)
    report = evaluate_precisions({p: bundle.model_bytes(p) for p in bundle.precisions}, bundle.spec, inputs, labels)
    report["data"] = str(data)
    return report, inputs, labels
