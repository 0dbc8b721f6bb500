"""Static INT8 with explicit Q/DQ nodes (ONNX Runtime's quantize_static), in two variants.

- `trt`: symmetric int8 activations and weights, per-channel weights, float biases: what TensorRT
  10.x and 11.x (strongly typed) accept as explicit quantization.
- `cpu`: uint8 activations, int8 per-channel weights: what ONNX Runtime on x86 runs fastest.

Both quantize the FP32 graph after `quant_pre_process`, from the same activation ranges. Ranges are
cached under a key of model hash + calibration-set hash + tool versions + method, so a stale range
file is never reused (see `wbc_edge.calibration.cache`).
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from wbc_edge.bundle import sha256_bytes
from wbc_edge.calibration import CalibrationCache, CalibrationSet, calibration_key
from wbc_edge.errors import CalibrationError

LOGGER = logging.getLogger(__name__)

VARIANTS = ("trt", "cpu")
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
# Ops that carry the arithmetic; Q/DQ around the data-movement ops (reshape/transpose of the channel
# shuffle, concat, split) is left to the backends, which propagate scales through them.
OP_TYPES = ("Conv", "Gemm", "MatMul", "Add", "Mul", "GlobalAveragePool", "AveragePool", "MaxPool", "Relu")
# TensorRT: Q/DQ on the inputs of weighted layers only, outputs left float (NVIDIA's placement guidance;
# checked by qdq_rules.check_qdq_placement). Measured on the demo bundle over 200 PBC cells: max
# probability difference vs FP32 0.0013 against 0.016 with Q/DQ around every op.
TRT_OP_TYPES = ("Conv", "Gemm", "MatMul")
CALIB_BATCH = 16


def variant_settings(variant: str) -> dict[str, Any]:
    if variant == "trt":
        return {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8, "per_channel": True,
                "op_types_to_quantize": list(TRT_OP_TYPES),
                "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                  "OpTypesToExcludeOutputQuantization": list(TRT_OP_TYPES)}}
    if variant == "cpu":
        # reduce_range: 7-bit weights, so x86 without VNNI (VPMADDUBSW, u8 x s8 pairs summed in int16)
        # cannot saturate; ONNX Runtime's documented remedy for U8S8 accuracy drops.
        return {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, "per_channel": True,
                "reduce_range": True, "op_types_to_quantize": list(OP_TYPES), "extra_options": {"WeightSymmetric": True}}
    raise CalibrationError(f"INT8 variant '{variant}' is not one of {list(VARIANTS)}")


class CalibrationReader(CalibrationDataReader):
    """Feeds a CalibrationSet's batches to ONNX Runtime's calibrator."""

    def __init__(self, calib: CalibrationSet, batch_size: int = CALIB_BATCH):
        self.calib = calib
        self.batch_size = min(batch_size, len(calib))
        self._iter: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def rewind(self) -> None:
        self._iter = self.calib.batches(self.batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def __len__(self) -> int:
        return -(-len(self.calib) // self.batch_size)


def preprocessing_nodes(model: onnx.ModelProto) -> list[str]:
    """The uint8 cast and normalisation before the first Conv: quantizing them only loses precision."""
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            by_input.setdefault(name, []).append(node)
    found, frontier = [], [i.name for i in model.graph.input]
    while frontier:
        for node in by_input.get(frontier.pop(), []):
            if node.op_type in ("Conv", "Gemm", "MatMul") or node.name in found:
                continue
            found.append(node.name)
            frontier.extend(node.output)
    return found


def output_nodes(model: onnx.ModelProto) -> list[str]:
    """Softmax and head average after the last Gemm/MatMul: probabilities stay in float."""
    producers = {o: n for n in model.graph.node for o in n.output}
    found, frontier = [], [o.name for o in model.graph.output]
    while frontier:
        node = producers.get(frontier.pop())
        if node is None or node.op_type in ("Gemm", "MatMul", "Conv") or node.name in found:
            continue
        found.append(node.name)
        frontier.extend(node.input)
    return found


def first_and_last_compute_nodes(model: onnx.ModelProto) -> list[str]:
    compute = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    return [compute[0], compute[-1]] if len(compute) > 1 else compute


def compute_nodes(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


def pre_process(fp32_bytes: bytes) -> onnx.ModelProto:
    """ONNX Runtime's recommended pre-pass (shape inference and graph optimisation) on the FP32 graph."""
    with tempfile.TemporaryDirectory(prefix="wbc-quant-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
        src.write_bytes(fp32_bytes)
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return onnx.load(str(dst))


@dataclass
class QuantizeResult:
    onnx_bytes: bytes
    variant: str
    method: str
    kept_float: list[str]
    key: dict[str, Any]
    ranges_reused: bool
    excluded_always: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"variant": self.variant, "method": self.method, "kept_float": self.kept_float,
                "calibration_key": self.key["key"], "ranges_reused": self.ranges_reused,
                "sha256": sha256_bytes(self.onnx_bytes)}


class Quantizer:
    """Quantizes one FP32 graph with one calibration set; activation ranges computed once, reused."""

    def __init__(self, fp32_bytes: bytes, calib: CalibrationSet, method: str = "minmax", cache_dir: str | Path | None = None):
        if method not in METHODS:
            raise CalibrationError(f"calibration method '{method}' is not one of {list(METHODS)}")
        self.fp32_bytes = fp32_bytes
        self.calib = calib
        self.method = method
        self.model = pre_process(fp32_bytes)
        self.always_excluded = preprocessing_nodes(self.model) + output_nodes(self.model)
        self._tmp = tempfile.TemporaryDirectory(prefix="wbc-ranges-")
        self.cache = CalibrationCache(cache_dir) if cache_dir is not None else None
        # ONNX Runtime calibrates the tensors of the op types it quantizes, so each variant's op set has
        # its own ranges (and cache entry): the TensorRT variant's are a subset of the CPU variant's.
        self._ranges_paths: dict[tuple[str, ...], Path] = {}
        self.key = self._key_for(OP_TYPES)
        # quantize_static moves a ModelProto's weights to external data: hand it a file each time.
        self._model_path = Path(self._tmp.name) / "pre.onnx"
        onnx.save(self.model, str(self._model_path))
        self.ranges_reused = False
        self._from_cache: set[tuple[str, ...]] = set()
        if self.cache is not None:
            for variant in VARIANTS:
                ops = tuple(variant_settings(variant)["op_types_to_quantize"])
                cached = self.cache.get("ranges", self._key_for(ops))
                if cached is not None:
                    self._ranges_path(ops).write_bytes(cached)
                    self._from_cache.add(ops)
                    self.ranges_reused = True

    def _key_for(self, ops: Sequence[str]) -> str:
        return calibration_key(sha256_bytes(self.fp32_bytes), self.calib.content_hash,
                               {"method": self.method, "op_types": list(ops), "batch": CALIB_BATCH})

    def _ranges_path(self, ops: Sequence[str]) -> Path:
        ops = tuple(ops)
        if ops not in self._ranges_paths:
            self._ranges_paths[ops] = Path(self._tmp.name) / f"ranges-{len(self._ranges_paths)}.json"
        return self._ranges_paths[ops]

    def quantize(self, variant: str = "trt", nodes_to_exclude: Sequence[str] = ()) -> QuantizeResult:
        settings = variant_settings(variant)
        ops = tuple(settings["op_types_to_quantize"])
        ranges_path = self._ranges_path(ops)
        had_ranges = ranges_path.is_file()
        out = Path(self._tmp.name) / f"int8-{variant}.onnx"
        exclude = list(dict.fromkeys([*self.always_excluded, *nodes_to_exclude]))
        quantize_static(
            str(self._model_path),
            str(out),
            CalibrationReader(self.calib),
            quant_format=QuantFormat.QDQ,
            nodes_to_exclude=exclude,
            calibrate_method=METHODS[self.method],
            calibration_cache_path=str(ranges_path),
            **settings,
        )
        if not had_ranges and self.cache is not None and ranges_path.is_file():
            self.cache.put("ranges", self._key_for(ops), ranges_path.read_bytes())
        model = onnx.load(str(out))
        onnx.checker.check_model(model)
        from wbc_edge.export.onnx_export import set_metadata

        # Keep the FP32 graph's metadata (the spec) on every precision.
        set_metadata(model, {p.key: p.value for p in onnx.load_from_string(self.fp32_bytes).metadata_props})
        set_metadata(model, {"wbc_edge.precision": f"int8-{variant}", "wbc_edge.kept_float": ",".join(nodes_to_exclude)})
        return QuantizeResult(model.SerializeToString(), variant, self.method, list(nodes_to_exclude), self._key_for(ops),
                              ops in self._from_cache, self.always_excluded)

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> "Quantizer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def quantize_qdq(fp32_bytes: bytes, calib: CalibrationSet, variant: str = "trt", method: str = "minmax",
                 nodes_to_exclude: Sequence[str] = (), cache_dir: str | Path | None = None) -> QuantizeResult:
    """One-shot INT8 Q/DQ quantization of an FP32 graph."""
    with Quantizer(fp32_bytes, calib, method, cache_dir) as q:
        return q.quantize(variant, nodes_to_exclude)


def layer_sensitivity(fp32_bytes: bytes, int8_bytes: bytes, inputs: np.ndarray, input_name: str, candidates: Sequence[str] | None = None) -> list[tuple[str, float]]:
    """Rank compute nodes by how much error they ADD: relative error of a node's output in the INT8
    graph vs FP32, minus the worst relative error among its compute-node inputs. Largest first."""
    import onnxruntime as ort

    fp32 = onnx.load_from_string(fp32_bytes)
    int8 = onnx.load_from_string(int8_bytes)
    names = candidates if candidates is not None else compute_nodes(fp32)
    by_name = {n.name: n for n in fp32.graph.node}
    node_out = {n: by_name[n].output[0] for n in names if n in by_name}
    int8_tensors = {o for n in int8.graph.node for o in n.output}
    node_out = {n: t for n, t in node_out.items() if t in int8_tensors}

    def outputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        existing = {o.name for o in model.graph.output}
        for t in node_out.values():
            if t not in existing:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        wanted = list(node_out.values())
        return dict(zip(wanted, sess.run(wanted, {input_name: inputs})))

    ref, got = outputs(fp32), outputs(int8)
    rel = {n: float(np.linalg.norm(got[t] - ref[t]) / (np.linalg.norm(ref[t]) + 1e-12)) for n, t in node_out.items()}
    producers = {o: n.name for n in fp32.graph.node for o in n.output}

    def upstream_compute(node_name: str) -> list[str]:
        seen, frontier, found = set(), list(by_name[node_name].input), []
        while frontier:
            tensor = frontier.pop()
            p = producers.get(tensor)
            if p is None or p in seen:
                continue
            seen.add(p)
            if p in rel:
                found.append(p)
            else:
                frontier.extend(by_name[p].input)
        return found

    added = {n: rel[n] - max((rel[u] for u in upstream_compute(n)), default=0.0) for n in rel}
    return sorted(added.items(), key=lambda kv: -kv[1])
