"""The export pipeline behind `wbc-export`: checkpoint -> ONNX FP32 -> parity -> INT8 / FP16 -> gate -> bundle.

Nothing is written to `out` unless every requested precision passes the accuracy gate; the bundle
write itself is atomic, so a good bundle already at `out` survives a failed or killed export.
"""
from __future__ import annotations

import io
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from wbc_edge import gate_report
from wbc_edge.bundle import PRECISION_MEMBERS, WEIGHTS_MEMBER, Bundle, rewrite_bundle, write_bundle
from wbc_edge.calibration import CalibrationSet, inputs_from_dataset, labels_in_spec_order, select_calibration_set
from wbc_edge.calibration.sets import indices_for_ids
from wbc_edge.errors import AccuracyGateError, BackendUnavailable, CalibrationError, DataError, UsageError
from wbc_edge.export.gate import (DEFAULT_MAX_DROP, calibration_summary, check_gate, evaluate_precisions, format_table,
                                  gate_error, run_onnx)
from wbc_edge.run_layout import RunLayout, split_of_checkpoint
from wbc_edge.runtime.quantify import DEFAULT_POOLING, QUANT_MEMBER, measure_quantification
from wbc_edge.spec import ModelSpec

LOGGER = logging.getLogger(__name__)
INT8_VARIANTS = ("trt", "cpu")
PARITY_CELLS = 64
# Automatic fallback: after the first and last layers, this many of the most error-adding layers in turn.
FALLBACK_STEPS = (2, 4, 8)


@dataclass
class ExportOptions:
    out: Path
    int8: bool = False
    int8_variants: tuple[str, ...] = INT8_VARIANTS
    fp16: bool = False
    calib_dir: Path | None = None
    calib_size: int = 256
    calib_method: str = "minmax"
    calib_seed: int = 0
    max_drop: float = DEFAULT_MAX_DROP
    min_agreement: float | None = None
    gate_data: Path | None = None
    keep_float: tuple[str, ...] = ()
    auto_fallback: bool = True
    engines: tuple[str, ...] = ()
    engine_options: dict[str, Any] = field(default_factory=dict)  # batch_range, workspace_mb for build_bundle_engines
    via: str = "onnx"
    cache_dir: Path | None = None
    opset: int = 17


@dataclass
class ExportSource:
    """A trained model and the data around it (split.json of its fold, when known)."""

    model: Any
    spec: ModelSpec
    checkpoint: Path
    split: dict[str, Any] | None = None
    split_path: Path | None = None
    _dataset: Any = field(default=None, repr=False)

    def dataset(self) -> Any:
        if self._dataset is None:
            if self.split is None:
                raise DataError(f"{self.checkpoint}: no split.json beside it, so no training cells to calibrate on (give --calib DIR)")
            from wbc_edge.data import open_dataset

            self._dataset = open_dataset(self.split["dataset"], classes=self.spec.classes)
            expected = self.split.get("dataset_fingerprint")
            if expected and self._dataset.fingerprint() != expected:
                LOGGER.warning("%s: dataset %s changed since training (fingerprint differs); using the cell ids that remain",
                               self.split_path, self.split["dataset"])
        return self._dataset


def checkpoint_in_run(run: Path, method: str = "mimo-kd", fold: int = 0) -> Path:
    path = RunLayout(run).checkpoint(fold, method)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint (run {run}, fold {fold}, method {method})")
    return path


def load_source(checkpoint: Path) -> ExportSource:
    from wbc_edge.train.checkpoint import load_model

    checkpoint = Path(checkpoint)
    model, spec, _payload = load_model(checkpoint)
    split_path = split_of_checkpoint(checkpoint)
    split = None
    if split_path.is_file():
        try:
            split = json.loads(split_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{split_path}: unreadable split ({e})") from None
        for key in ("dataset", "train", "val"):
            if key not in split:
                raise DataError(f"{split_path}: field '{key}' missing")
    return ExportSource(model=model, spec=spec, checkpoint=checkpoint, split=split, split_path=split_path if split else None)


class StepLog:
    """Per-step progress and timing, in the manner of Ultralytics' try_export."""

    def __init__(self, emit: Callable[[str], None] = LOGGER.info):
        self.emit = emit
        self.rows: list[dict[str, Any]] = []

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        row: dict[str, Any] = {"step": name}
        self.emit(f"{name}: starting...")
        start = time.perf_counter()
        try:
            yield row
        except Exception as e:
            row["seconds"] = round(time.perf_counter() - start, 2)
            self.emit(f"{name}: FAILED after {row['seconds']:.1f}s: {e}")
            raise
        row["seconds"] = round(time.perf_counter() - start, 2)
        size = f", {row['bytes'] / 1e6:.2f} MB" if "bytes" in row else ""
        note = f", {row['note']}" if row.get("note") else ""
        self.emit(f"{name}: done in {row['seconds']:.1f}s{size}{note}")
        self.rows.append(row)


@dataclass
class ExportResult:
    bundle: Path
    accuracy: dict[str, Any]
    parity: dict[str, Any]
    calibration: dict[str, Any] | None
    steps: list[dict[str, Any]]
    engines: list[dict[str, Any]] = field(default_factory=list)


def gate_inputs(source: ExportSource, options: ExportOptions) -> tuple[np.ndarray, np.ndarray, str]:
    """Held-out cells: --gate-data, else the fold's validation split."""
    spec = source.spec
    if options.gate_data is not None:
        from wbc_edge.data import open_dataset

        ds = open_dataset(options.gate_data, classes=spec.classes)
        idx = list(range(len(ds)))
        where = str(options.gate_data)
    else:
        ds = source.dataset()
        idx = indices_for_ids(ds, source.split["val"], f"{source.split_path} 'val'")
        where = f"validation split of {source.split_path}"
    if not idx:
        raise DataError(f"{where}: no cells to run the accuracy gate on")
    return inputs_from_dataset(ds, idx, spec), labels_in_spec_order(ds, idx, spec), where


def train_prior(source: ExportSource) -> np.ndarray | None:
    """Class shares of the fold's training split (what the posteriors were trained at), None when unknown."""
    if source.split is None:
        return None
    ds = source.dataset()
    idx = indices_for_ids(ds, source.split["train"], f"{source.split_path} 'train'")
    counts = np.bincount(labels_in_spec_order(ds, idx, source.spec), minlength=source.spec.num_classes)
    return counts / counts.sum() if counts.sum() else None


def add_quantification(bundle_path: Path, data: Path, prior: Mapping[str, float] | Sequence[float], out: Path | None = None,
                       pooling: str = DEFAULT_POOLING) -> dict[str, Any]:
    """Measure temperatures and held-out rates of an existing bundle on labelled cells it never saw
    and write it again (atomically) with quantification.json; `prior`: its training split's class
    shares ({class: share}, or a sequence in the spec's class order)."""
    from wbc_edge.export.gate import dataset_inputs

    bundle = Bundle.open(bundle_path)
    spec = bundle.spec
    if isinstance(prior, Mapping):
        prior = [float(prior.get(c, 0.0)) for c in spec.classes]
    inputs, labels = dataset_inputs(data, spec)
    outputs = {p: run_onnx(bundle.model_bytes(p), spec, inputs) for p in bundle.precisions}
    quant = measure_quantification({p: o[spec.head_probs_name] for p, o in outputs.items()}, labels, spec.classes, spec.heads,
                                   prior, data=str(data), pooling=pooling)
    rewrite_bundle(bundle, {QUANT_MEMBER: json.dumps(quant, indent=2).encode()}, out)
    return quant


def calibration_set(source: ExportSource, options: ExportOptions) -> CalibrationSet:
    if options.calib_dir is not None:
        calib = CalibrationSet.load(options.calib_dir)
    else:
        calib = select_calibration_set(source.dataset(), source.split["train"], source.spec, options.calib_size, options.calib_seed)
    calib.check_spec(source.spec, f"calibration set {options.calib_dir or '(selected)'}")
    return calib


def quantize_with_fallback(quantizer: Any, variant: str, fp32_bytes: bytes, spec: ModelSpec, inputs: np.ndarray, labels: np.ndarray,
                           options: ExportOptions, emit: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """Quantize; while the gate fails, keep more of the most sensitive layers in float and retry."""
    from wbc_edge.export.quantize import first_and_last_compute_nodes, layer_sensitivity

    precision = f"int8-{variant}"
    kept = list(options.keep_float)
    attempts = []
    ranked: list[str] | None = None
    plan: list[list[str]] = []
    while True:
        result = quantizer.quantize(variant, kept)
        report = evaluate_precisions({"fp32": fp32_bytes, precision: result.onnx_bytes}, spec, inputs, labels)
        drop = report["precisions"][precision]["weighted_f1_drop"]
        agreement = report["precisions"][precision]["agreement_with_fp32"]
        attempts.append({"kept_float": list(kept), "weighted_f1_drop": drop, "agreement_with_fp32": agreement})
        if not check_gate(report, options.max_drop, min_agreement=options.min_agreement) or not options.auto_fallback:
            break
        if not plan and ranked is None:
            # First: the first conv and the classifier; then layers by the error they add.
            ranked = [n for n, _ in layer_sensitivity(fp32_bytes, result.onnx_bytes, inputs[:PARITY_CELLS], spec.input_name)]
            plan = [first_and_last_compute_nodes(quantizer.model)] + [ranked[:k] for k in FALLBACK_STEPS]
        nxt = None
        while plan and nxt is None:
            candidate = list(dict.fromkeys([*kept, *plan.pop(0)]))
            nxt = candidate if candidate != kept else None
        if nxt is None:
            break
        emit(f"INT8 {variant}: drop {drop:.2f} points, agreement {agreement:.1f}% fails the gate; retrying with {len(nxt)} layer(s) kept in float")
        kept = nxt
    return result, {"attempts": attempts, **result.record()}


def state_dict_npz(model: Any) -> bytes:
    """A state_dict as a NumPy .npz (no pickle), so a bundle can rebuild the PyTorch module."""
    buf = io.BytesIO()
    np.savez(buf, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
    return buf.getvalue()


def export_bundle(source: ExportSource, options: ExportOptions, emit: Callable[[str], None] = LOGGER.info) -> ExportResult:
    """Run every requested step; raise AccuracyGateError (writing nothing) when a precision fails."""
    from wbc_edge.export.onnx_export import export_onnx_bytes, parity

    spec = source.spec
    steps = StepLog(emit)
    for variant in options.int8_variants:
        if variant not in INT8_VARIANTS:
            raise UsageError(f"--int8-variant '{variant}': not one of {list(INT8_VARIANTS)}")
    if options.engines:
        # Fail before the long export, not after it, on a host without TensorRT.
        from wbc_edge.export import tensorrt as trt_layer

        trt_layer.import_tensorrt()
    needs_gate = options.int8 or options.fp16
    inputs = labels = None
    gate_where = None
    if needs_gate or source.split is not None or options.gate_data is not None:
        with steps.step("held-out cells") as row:
            inputs, labels, gate_where = gate_inputs(source, options)
            row["note"] = f"{len(labels)} cells from {gate_where}"

    models: dict[str, bytes] = {}
    with steps.step("ONNX FP32 export") as row:
        models["fp32"] = export_onnx_bytes(source.model, spec, opset=options.opset)
        row["bytes"] = len(models["fp32"])
    with steps.step("parity PyTorch vs ONNX Runtime") as row:
        if inputs is not None:
            parity_report = parity(source.model, spec, models["fp32"], inputs[:PARITY_CELLS])
            parity_report["inputs"] = gate_where
        else:
            LOGGER.warning("no held-out cells known: parity checked on random pixels only")
            rng = np.random.default_rng(0)
            parity_report = parity(source.model, spec, models["fp32"], rng.integers(0, 256, spec.input_shape(8), dtype=np.uint8))
            parity_report["inputs"] = "random uint8 (no data given)"
        row["note"] = f"max |dp| {parity_report['max_abs_diff_probs']:.2e}, argmax agreement {100 * parity_report['argmax_agreement']:.1f}%"

    calib_manifest = None
    int8_records: dict[str, Any] = {}
    if options.int8:
        from wbc_edge.export.quantize import Quantizer

        with steps.step("calibration set") as row:
            calib = calibration_set(source, options)
            calib_manifest = calib.manifest()
            row["note"] = f"{len(calib)} inputs, classes {calib.class_counts()}"
        cache_dir = options.cache_dir if options.cache_dir is not None else Path(options.out).parent / ".wbc-calib-cache"
        with Quantizer(models["fp32"], calib, options.calib_method, cache_dir) as quantizer:
            for variant in options.int8_variants:
                with steps.step(f"INT8 Q/DQ ({variant})") as row:
                    result, record = quantize_with_fallback(quantizer, variant, models["fp32"], spec, inputs, labels, options, emit)
                    if variant == "trt":
                        from wbc_edge.export.qdq_rules import check_tensorrt_qdq

                        record["tensorrt_qdq_violations"] = check_tensorrt_qdq(result.onnx_bytes)
                        if record["tensorrt_qdq_violations"]:
                            raise CalibrationError(f"INT8 trt graph breaks TensorRT's Q/DQ rules: {record['tensorrt_qdq_violations'][0]}")
                    models[f"int8-{variant}"] = result.onnx_bytes
                    int8_records[f"int8-{variant}"] = record
                    row["bytes"] = len(result.onnx_bytes)
                    row["note"] = ("activation ranges from the calibration cache" if record["ranges_reused"] else "activation ranges calibrated") + (
                        f", kept in float: {', '.join(record['kept_float'])}" if record["kept_float"] else "")
        calib_manifest["int8"] = int8_records

    if options.fp16:
        from wbc_edge.export.fp16 import convert_fp16

        with steps.step("FP16 graph (FP32 I/O)") as row:
            models["fp16"] = convert_fp16(models["fp32"])
            row["bytes"] = len(models["fp16"])

    accuracy: dict[str, Any] = {}
    quant: dict[str, Any] | None = None
    if inputs is not None:
        with steps.step("accuracy gate (ONNX Runtime CPU)") as row:
            outputs = {p: run_onnx(m, spec, inputs) for p, m in models.items()}
            accuracy = evaluate_precisions(models, spec, inputs, labels, outputs=outputs)
            accuracy["data"] = gate_where
            prior = train_prior(source)
            if prior is None:
                LOGGER.warning("no training split known: %s not written (the runtime then reports argmax counts only)", QUANT_MEMBER)
            else:
                quant = measure_quantification({p: o[spec.head_probs_name] for p, o in outputs.items()}, labels, spec.classes,
                                               spec.heads, prior, data=gate_where)
                accuracy["calibration"] = calibration_summary(quant)
            failed = check_gate(accuracy, options.max_drop, min_agreement=options.min_agreement)
            emit(format_table(accuracy, spec.classes))
            if failed:
                raise gate_error(accuracy, failed)
            row["note"] = f"all precisions within {options.max_drop:g} weighted-F1 points of fp32"

    with steps.step("bundle") as row:
        files = {PRECISION_MEMBERS[p]: data for p, data in models.items()}
        files["parity.json"] = json.dumps(parity_report, indent=2).encode()
        if accuracy:
            files[gate_report.MEMBER] = gate_report.encode(accuracy)
        if calib_manifest is not None:
            files["calibration.json"] = json.dumps(calib_manifest, indent=2).encode()
        if quant is not None:
            files[QUANT_MEMBER] = json.dumps(quant, indent=2).encode()
        files[WEIGHTS_MEMBER] = state_dict_npz(source.model)
        meta = {"source_checkpoint": str(source.checkpoint), "precisions": sorted(models),
                "kept_float": {p: r["kept_float"] for p, r in int8_records.items()}, "steps": steps.rows}
        path = write_bundle(options.out, spec, files, meta)
        Bundle.open(path)  # read back: checksums verified before anyone relies on it
        row["bytes"] = path.stat().st_size
        row["note"] = f"{path}"

    engines: list[dict[str, Any]] = []
    if options.engines:
        with steps.step(f"TensorRT engines ({', '.join(options.engines)})") as row:
            engines = build_engines(path, options, source)
            row["note"] = "; ".join(f"{e['precision']}: {e['path']}" for e in engines)
    return ExportResult(bundle=path, accuracy=accuracy, parity=parity_report, calibration=calib_manifest, steps=steps.rows, engines=engines)


def build_engines(bundle_path: Path, options: ExportOptions, source: ExportSource | None = None) -> list[dict[str, Any]]:
    """Engines for this target into the engine cache (the TensorRT helper's layer, imported lazily)."""
    try:
        from wbc_edge.export import tensorrt as trt_layer
    except ImportError as e:
        raise BackendUnavailable(f"--engine: the TensorRT layer cannot be imported ({e})") from None
    torch_module = None
    if options.via == "torch-tensorrt" and source is not None:
        from wbc_edge.export.onnx_export import InferenceModel

        torch_module = InferenceModel(source.model, source.spec).eval()
    return trt_layer.build_bundle_engines(Bundle.open(bundle_path), list(options.engines), via=options.via, torch_module=torch_module,
                                          **options.engine_options)


def compare_bundle(bundle_path: Path, data: Path, max_drop: float = DEFAULT_MAX_DROP, min_agreement: float | None = None) -> dict[str, Any]:
    """`wbc-export compare`: re-run the gate on an existing bundle's precisions over a dataset."""
    from wbc_edge.export.gate import evaluate_bundle

    report, _, _ = evaluate_bundle(Bundle.open(bundle_path), data)
    report["bundle"] = str(bundle_path)
    check_gate(report, max_drop, min_agreement=min_agreement)
    return report


def parse_list(text: str | None, allowed: Sequence[str] | None = None, what: str = "list") -> tuple[str, ...]:
    items = tuple(dict.fromkeys(t.strip() for t in (text or "").split(",") if t.strip()))
    if allowed is not None:
        for item in items:
            if item not in allowed:
                raise UsageError(f"{what} '{item}': not one of {list(allowed)}")
    return items


__all__ = ["AccuracyGateError", "add_quantification", "ExportOptions", "ExportResult", "ExportSource", "build_engines", "checkpoint_in_run",
           "compare_bundle", "export_bundle", "load_source", "parse_list"]
