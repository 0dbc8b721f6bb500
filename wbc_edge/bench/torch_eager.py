"""PyTorch eager FP32 as a runner with the runtime's `infer(feed)` shape: the baseline the bundle is measured against.

torch is imported here only, when this runner is built; the rest of `wbc_edge.bench` stays torch-free.
The module is the training network wrapped exactly as export wraps it (uint8 in, normalisation and
softmax inside), so its outputs match the ONNX FP32 graph's.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from wbc_edge.bundle import WEIGHTS_MEMBER, Bundle
from wbc_edge.errors import BackendUnavailable, SpecError

log = logging.getLogger(__name__)


def torch_available() -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed"
    return True, "torch installed"


def weights_source(bundle: Bundle, checkpoint: str | Path | None) -> tuple[str | None, str]:
    """(where the eager weights come from, why) or (None, why not)."""
    if checkpoint is not None:
        return str(checkpoint), f"checkpoint {checkpoint}"
    if bundle.has(WEIGHTS_MEMBER):
        return WEIGHTS_MEMBER, f"bundle member {WEIGHTS_MEMBER}"
    return None, f"bundle has no {WEIGHTS_MEMBER} and no --checkpoint was given"


class TorchEagerRunner:
    """uint8 [B, 3M, S, S] -> {probs, head_probs} with the PyTorch module in eval mode, no grad."""

    backend = "torch"
    device = "cpu"

    def __init__(self, bundle: Bundle, checkpoint: str | Path | None = None, threads: int | None = None):
        self.bundle = bundle
        self.spec = bundle.spec
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.precision = "fp32"
        self.threads = threads
        self.name = "torch-eager-fp32-cpu"
        self._module: Any = None
        self._torch: Any = None
        self._threads_before: int | None = None
        self.is_active = False

    def activate(self) -> "TorchEagerRunner":
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailable(f"torch eager: torch is not importable ({e})") from None
        from wbc_edge.export.onnx_export import InferenceModel
        from wbc_edge.train.models import create_model

        if self.threads:
            # process-wide in torch: remembered and restored on deactivate, so callers are left as they were
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(int(self.threads))
        if self.checkpoint is not None:
            from wbc_edge.train.checkpoint import load_model

            model, spec, _ = load_model(self.checkpoint)
            if spec.fingerprint() != self.spec.fingerprint():
                raise SpecError(f"{self.checkpoint}: its spec differs from the bundle's ({self.bundle.path})")
        else:
            if not self.bundle.has(WEIGHTS_MEMBER):
                raise BackendUnavailable(f"torch eager: bundle {self.bundle.path} has no {WEIGHTS_MEMBER} (pass --checkpoint)")
            with np.load(io.BytesIO(self.bundle.read(WEIGHTS_MEMBER)), allow_pickle=False) as npz:
                state = {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
            model = create_model(self.spec)
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise SpecError(f"bundle {self.bundle.path}: {WEIGHTS_MEMBER} does not fit the spec's network "
                                f"({str(e).splitlines()[0]})") from None
        self._module = InferenceModel(model.eval(), self.spec).eval()
        self._torch = torch
        self.threads = torch.get_num_threads()
        self.is_active = True
        return self

    def deactivate(self) -> None:
        if self._threads_before is not None and self._torch is not None:
            self._torch.set_num_threads(self._threads_before)
            self._threads_before = None
        self._module = None
        self.is_active = False

    def __enter__(self) -> "TorchEagerRunner":
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            probs, head_probs = self._module(torch.from_numpy(feed[self.spec.input_name]))
        return {self.spec.probs_name: probs.numpy(), self.spec.head_probs_name: head_probs.numpy()}


def model_macs(spec: Any) -> tuple[int | None, str]:
    """MACs of one image at the spec's input size: the spec's provenance if recorded, else fvcore via torch."""
    for key in ("macs", "MACs"):
        value = spec.provenance.get(key) if isinstance(spec.provenance, dict) else None
        if isinstance(value, (int, float)) and value > 0:
            return int(value), "spec provenance"
    ok, why = torch_available()
    if not ok:
        return None, f"not recorded in the spec and {why}"
    try:
        from wbc_edge.train.complexity import complexity

        return int(complexity(spec)["macs"]), "fvcore count (wbc_edge.train.complexity)"
    except Exception as e:  # noqa: BLE001 - the floor is a side note; a counting failure must not end the run
        log.warning("MAC count failed: %s", e)
        return None, f"MAC count failed ({type(e).__name__})"
