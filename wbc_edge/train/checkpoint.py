"""Checkpoints: `last.pt` (resume state) and `model.pt` (release), both `weights_only`-loadable.

Only tensors and primitive containers are stored, so `torch.load(weights_only=True)` reads them and
nothing is unpickled. Every write is atomic: a killed run leaves the previous file intact.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wbc_edge.bundle import atomic_write_bytes
from wbc_edge.errors import SpecError
from wbc_edge.spec import ModelSpec

log = logging.getLogger(__name__)


def save_payload(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_payload(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, foreign or pickled-object files
        raise SpecError(f"{path}: not a weights-only checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict):
        raise SpecError(f"{path}: checkpoint holds {type(payload).__name__}, expected a dict")
    return payload


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def save_release(path: str | os.PathLike, model: nn.Module, spec: ModelSpec, config: dict[str, Any],
                 metrics: dict[str, Any]) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    save_payload(path, {"state_dict": state, "spec": spec.to_dict(), "config": config, "metrics": metrics})


def load_model(path: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """A release `model.pt` -> (model in eval mode, its spec, the whole payload)."""
    from wbc_edge.train.models import create_model

    payload = load_payload(path)
    for key in ("state_dict", "spec"):
        if key not in payload:
            raise SpecError(f"{path}: checkpoint field '{key}' missing (is this a release model.pt?)")
    spec = ModelSpec.from_dict(payload["spec"])
    model = create_model(spec)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise SpecError(f"{path}: weights do not match the spec's network ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), spec, payload
