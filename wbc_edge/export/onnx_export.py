"""Trained model -> ONNX with uint8 pixels in, normalisation and softmax inside the graph.

The device then copies uint8 pixels (four times fewer bytes than float) and cannot get the
normalisation wrong; the per-head probabilities stay available for missing-light handling.
"""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from wbc_edge.bundle import atomic_write_bytes
from wbc_edge.spec import ONNX_METADATA_KEY, ModelSpec

LOGGER = logging.getLogger(__name__)
SPEC_METADATA_KEY = ONNX_METADATA_KEY


class InferenceModel(nn.Module):
    """uint8 [B, 3M, S, S] -> (probs [B, K] averaged over heads, head_probs [B, H, K])."""

    def __init__(self, model: nn.Module, spec: ModelSpec):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.num_heads = spec.num_heads
        self.num_classes = spec.num_classes

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels.to(torch.float32) - self.mean) / self.std
        logits = self.model(x)
        # Batch size stays symbolic in the trace: reshape with -1, never a traced int.
        logits = logits.reshape(-1, self.num_heads, self.num_classes)
        head_probs = torch.softmax(logits, dim=-1)
        return head_probs.mean(dim=1), head_probs


def _producer_metadata(spec: ModelSpec) -> dict[str, str]:
    from wbc_edge import __version__

    return {
        SPEC_METADATA_KEY: spec.to_json(indent=None),
        "wbc_edge.version": __version__,
        "wbc_edge.torch_version": torch.__version__,
        "wbc_edge.onnx_version": onnx.__version__,
    }


def set_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Replace (not duplicate) metadata_props entries."""
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)


def read_spec_metadata(onnx_model: onnx.ModelProto | bytes) -> ModelSpec | None:
    model = onnx.load_from_string(onnx_model) if isinstance(onnx_model, bytes) else onnx_model
    for p in model.metadata_props:
        if p.key == SPEC_METADATA_KEY:
            return ModelSpec.from_json(p.value)
    return None


def export_onnx_bytes(model: nn.Module, spec: ModelSpec, opset: int = 17, simplify: bool = True) -> bytes:
    """The FP32 inference graph as serialised ONNX (checked, optionally simplified, spec in metadata)."""
    wrapper = InferenceModel(model, spec).eval()
    dummy = torch.zeros(spec.input_shape(2), dtype=torch.uint8)
    buf = io.BytesIO()
    with torch.inference_mode():
        torch.onnx.export(
            wrapper,
            (dummy,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[spec.input_name],
            output_names=[spec.probs_name, spec.head_probs_name],
            dynamic_axes={spec.input_name: {0: "batch"}, spec.probs_name: {0: "batch"}, spec.head_probs_name: {0: "batch"}},
            do_constant_folding=True,
        )
    graph = onnx.load_from_string(buf.getvalue())
    if simplify:
        import onnxsim

        nodes_before = len(graph.graph.node)
        simplified, ok = onnxsim.simplify(graph)
        if ok:
            LOGGER.debug("onnxsim: %d -> %d nodes", nodes_before, len(simplified.graph.node))
            graph = simplified
        else:
            LOGGER.warning("onnxsim could not validate the simplified graph; keeping the unsimplified one")
    onnx.checker.check_model(graph, full_check=True)
    set_metadata(graph, _producer_metadata(spec))
    graph.producer_name = "wbc-edge"
    return graph.SerializeToString()


def export_onnx(model: nn.Module, spec: ModelSpec, path: str | os.PathLike, opset: int = 17, simplify: bool = True) -> Path:
    """Export, check and atomically write the FP32 graph to `path`."""
    data = export_onnx_bytes(model, spec, opset=opset, simplify=simplify)
    atomic_write_bytes(path, data)
    return Path(path)


def torch_probs(model: nn.Module, spec: ModelSpec, batch_uint8: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch reference outputs of the same wrapper the ONNX graph was traced from."""
    wrapper = InferenceModel(model, spec).eval()
    probs, heads = [], []
    with torch.inference_mode():
        for start in range(0, len(batch_uint8), batch_size):
            p, h = wrapper(torch.from_numpy(np.ascontiguousarray(batch_uint8[start : start + batch_size])))
            probs.append(p.numpy())
            heads.append(h.numpy())
    return np.concatenate(probs), np.concatenate(heads)


def parity(model: nn.Module, spec: ModelSpec, onnx_bytes: bytes, batch_uint8: np.ndarray) -> dict[str, Any]:
    """PyTorch vs ONNX Runtime (CPU) on the same real uint8 inputs."""
    from wbc_edge.export.gate import run_onnx

    ref_probs, ref_heads = torch_probs(model, spec, batch_uint8)
    outputs = run_onnx(onnx_bytes, spec, batch_uint8)
    probs, heads = outputs[spec.probs_name], outputs[spec.head_probs_name]
    return {
        "n": int(len(batch_uint8)),
        "max_abs_diff_probs": float(np.max(np.abs(probs - ref_probs))),
        "max_abs_diff_head_probs": float(np.max(np.abs(heads - ref_heads))),
        "argmax_agreement": float(np.mean(probs.argmax(1) == ref_probs.argmax(1))),
    }


def spec_json(onnx_bytes: bytes) -> dict[str, Any] | None:
    spec = read_spec_metadata(onnx_bytes)
    return None if spec is None else json.loads(spec.to_json())
