"""Fixtures for the runtime back-end tests: a tiny torch-free bundle and small stand-in frontend stages.

The model is a real ONNX graph (uint8 pixels -> per-channel means -> fixed linear map -> softmax per
head; combined = mean of heads) whose outputs `reference_outputs` recomputes in NumPy, so per-cell
results can be checked exactly. The stand-ins (source, assembler, locator, cropper) are simple but do
real work: the locator finds bright squares with connected components, the cropper cuts windows and
builds the model input with `wbc_edge.preprocess.cell_to_input`.
"""
from __future__ import annotations

import json
import time
import types
from dataclasses import dataclass, field

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from wbc_edge.bundle import write_bundle
from wbc_edge.errors import DataError
from wbc_edge.preprocess import cell_to_input
from wbc_edge.spec import ModelSpec, spec_for

INPUT_SIZE = 16
FRAME_PX = 160
CROP_PX = 20


def tiny_weights(spec: ModelSpec, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, size=(spec.in_channels, spec.num_heads * spec.num_classes)).astype(np.float32)


def tiny_onnx(spec: ModelSpec, weights: np.ndarray) -> bytes:
    h, k = spec.num_heads, spec.num_classes
    nodes = [
        helper.make_node("Cast", [spec.input_name], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("Sub", ["m", "centre"], ["mc"]),
        helper.make_node("Div", ["mc", "scale"], ["ms"]),
        helper.make_node("MatMul", ["ms", "W"], ["logits"]),
        helper.make_node("Reshape", ["logits", "shape"], ["hl"]),
        helper.make_node("Softmax", ["hl"], [spec.head_probs_name], axis=-1),
        helper.make_node("ReduceMean", [spec.head_probs_name], [spec.probs_name], axes=[1], keepdims=0),
    ]
    inits = [numpy_helper.from_array(np.array(127.5, np.float32), "centre"),
             numpy_helper.from_array(np.array(16.0, np.float32), "scale"),
             numpy_helper.from_array(weights, "W"),
             numpy_helper.from_array(np.array([-1, h, k], np.int64), "shape")]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(spec.input_name, TensorProto.UINT8, ["batch", spec.in_channels, spec.input_size, spec.input_size])],
        [helper.make_tensor_value_info(spec.probs_name, TensorProto.FLOAT, ["batch", k]),
         helper.make_tensor_value_info(spec.head_probs_name, TensorProto.FLOAT, ["batch", h, k])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def reference_outputs(batch: np.ndarray, spec: ModelSpec, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    means = batch.astype(np.float64).mean(axis=(2, 3))
    logits = ((means - 127.5) / 16.0) @ weights.astype(np.float64)
    logits = logits.reshape(len(batch), spec.num_heads, spec.num_classes)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    head = e / e.sum(axis=-1, keepdims=True)
    return head.mean(axis=1), head


@dataclass
class FakeFrame:
    index: int
    time: float
    image: np.ndarray
    light_hint: str | None
    field_id: int = 0


@dataclass
class FakeLightSet:
    index: int
    images: dict
    frame_indices: list = field(default_factory=list)
    flags: list = field(default_factory=list)


class FakeSource:
    """Yields prepared frames; `live` sources go on producing at `period_s` whether read or not."""

    def __init__(self, frames, live: bool = False, period_s: float = 0.0):
        self.frames = list(frames)
        self.is_live = live
        self.period_s = period_s
        self._i = 0
        self.closed = False
        self.uri = "fake://"
        self.counters = {"read": 0}

    @property
    def is_streaming(self) -> bool:
        return self._i < len(self.frames)

    def read(self, timeout: float = 0.1):
        if self._i >= len(self.frames):
            return None
        if self.period_s:
            time.sleep(self.period_s)
        frame = self.frames[self._i]
        self._i += 1
        self.counters["read"] += 1
        return frame

    def close(self) -> None:
        self.closed = True


class FakeAssembler:
    """Groups consecutive frames of one field (field_id) into a set keyed by their light hint."""

    def __init__(self, light_order):
        self.light_order = tuple(light_order)
        self._field = None
        self._frames: list[FakeFrame] = []
        self._next_index = 0

    def _emit(self):
        if not self._frames:
            return []
        images = {light: None for light in self.light_order}
        for f in self._frames:
            images[f.light_hint] = f.image
        s = FakeLightSet(self._next_index, images, [f.index for f in self._frames])
        self._next_index += 1
        self._frames = []
        return [s]

    def push(self, frame):
        if frame.image.ndim != 3:
            raise DataError(f"frame {frame.index}: expected HxWx3, got shape {frame.image.shape}")
        out = []
        if self._field is not None and frame.field_id != self._field:
            out = self._emit()
        self._field = frame.field_id
        self._frames.append(frame)
        return out

    def flush(self):
        return self._emit()


def fake_locate(fluorescent: np.ndarray):
    gray = fluorescent[:, :, 1]
    n, _, stats, _ = cv2.connectedComponentsWithStats((gray > 128).astype(np.uint8))
    return [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _ in stats[1:]]


def fake_crop(light_set, boxes, crop_px, spec):
    rows = []
    for x0, y0, x1, y1 in boxes:
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        half = crop_px // 2
        window = {light: (None if img is None else img[cy - half : cy + half, cx - half : cx + half])
                  for light, img in light_set.images.items()}
        rows.append(cell_to_input(window, spec))
    return np.stack(rows) if rows else np.empty((0,) + spec.input_shape(1)[1:], np.uint8), list(boxes)


def make_fields(n_fields: int, spec: ModelSpec, seed: int = 1, cells_per_field: int = 3, drop=()):
    """Frames of n_fields four-light fields; each field has bright cells at random grid spots.

    drop: (field, light) pairs whose frame is left out (a light missing from that set).
    """
    rng = np.random.default_rng(seed)
    frames, index = [], 0
    spots = [(30, 30), (30, 130), (130, 30), (130, 130), (80, 80)]
    for f in range(n_fields):
        chosen = rng.choice(len(spots), size=cells_per_field, replace=False)
        for light in spec.modalities:
            if light == "fluorescent":
                img = np.full((FRAME_PX, FRAME_PX, 3), 10, np.uint8)  # dark field, green-stained nuclei
                for c in chosen:
                    cy, cx = spots[c]
                    cv2.circle(img, (cx, cy), 7, (60, 200, 60), -1)
                img = cv2.GaussianBlur(img, (5, 5), 1.5)
            else:
                img = rng.integers(0, 256, size=(FRAME_PX, FRAME_PX, 3), dtype=np.uint8)
            if (f, light) not in drop:
                frames.append(FakeFrame(index, time.time(), img, light, field_id=f))
            index += 1
    return frames


@pytest.fixture
def rt_spec() -> ModelSpec:
    return spec_for("mimo", input_size=INPUT_SIZE)


@pytest.fixture
def rt_bundle(tmp_path, rt_spec):
    """(bundle path, weights) for the tiny model; has an int8-cpu member the gate accepted."""
    weights = tiny_weights(rt_spec)
    model = tiny_onnx(rt_spec, weights)
    accuracy = {"precisions": {"fp32": {"passed": True}, "int8-cpu": {"passed": True}}}
    path = write_bundle(tmp_path / "tiny.wbc", rt_spec,
                        {"model.fp32.onnx": model, "model.int8-cpu.onnx": model,
                         "accuracy.json": json.dumps(accuracy).encode()},
                        meta={"crop_px": CROP_PX})
    return path, weights


@pytest.fixture
def rt_fakes():
    return types.SimpleNamespace(Frame=FakeFrame, LightSet=FakeLightSet, Source=FakeSource, Assembler=FakeAssembler,
                                 locate=fake_locate, crop=fake_crop, make_fields=make_fields,
                                 reference=reference_outputs, tiny_onnx=tiny_onnx, tiny_weights=tiny_weights,
                                 CROP_PX=CROP_PX)


@pytest.fixture
def rt_analyzer_kw(rt_fakes):
    """Keyword arguments that plug the stand-in frontend into an Analyzer."""
    return {"locator": rt_fakes.locate, "cropper": rt_fakes.crop, "assembler_factory": rt_fakes.Assembler,
            "backend": "onnxruntime", "intra_op_threads": 1}
