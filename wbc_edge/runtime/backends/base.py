"""The one small interface every inference backend implements (after Polygraphy's BaseRunner).

Construction is cheap; `activate()` does the expensive work (session, engine, buffers). The feed is
checked against the model spec on the first `infer` only, so the per-batch path stays lean.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import numpy as np

from wbc_edge.errors import BackendUnavailable, SpecError
from wbc_edge.spec import ModelSpec

log = logging.getLogger(__name__)


class Runner:
    """Base class: subclasses implement `_activate_impl`, `_infer_impl`, `_deactivate_impl`.

    `backend` and `precision` name what runs ("onnxruntime"/"tensorrt"; "fp32", "int8-cpu", ...);
    `device` says where ("cpu", "cuda").
    """

    backend = "base"

    def __init__(self, spec: ModelSpec, precision: str = "fp32", device: str = "cpu", name: str | None = None):
        self.spec = spec
        self.precision = precision
        self.device = device
        self.name = name or f"{self.backend}-{precision}-{device}"
        self.is_active = False
        self.last_inference_time: float | None = None
        self.choice_reason = ""  # filled by open_backend: why this backend and precision
        self._feed_checked = False

    # ---- lifecycle -----------------------------------------------------------------------
    def activate(self) -> "Runner":
        if self.is_active:
            log.warning("%s: already active", self.name)
            return self
        self._activate_impl()
        self.is_active = True
        self._feed_checked = False
        return self

    def deactivate(self) -> None:
        if not self.is_active:
            return
        try:
            self._deactivate_impl()
        finally:
            self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    # ---- metadata and inference ----------------------------------------------------------
    def input_metadata(self) -> dict[str, tuple[np.dtype, tuple[Any, ...]]]:
        """{input name: (dtype, shape)}; the batch dimension is None (dynamic)."""
        _, c, h, w = self.spec.input_shape(1)
        return {self.spec.input_name: (np.dtype(np.uint8), (None, c, h, w))}

    def output_names(self) -> tuple[str, str]:
        return (self.spec.probs_name, self.spec.head_probs_name)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise BackendUnavailable(f"{self.name}: infer() called before activate()")
        if not self._feed_checked:
            self._check_feed(feed)
            self._feed_checked = True
        t0 = time.perf_counter()
        out = self._infer_impl(feed)
        self.last_inference_time = time.perf_counter() - t0
        return out

    def _check_feed(self, feed: Mapping[str, np.ndarray]) -> None:
        meta = self.input_metadata()
        if set(feed) != set(meta):
            raise SpecError(f"{self.name}: feed inputs {sorted(feed)} do not match the model's {sorted(meta)}")
        for name, (dtype, shape) in meta.items():
            arr = feed[name]
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype:
                got = getattr(arr, "dtype", type(arr).__name__)
                raise SpecError(f"{self.name}: input '{name}' must be {dtype}, got {got}")
            if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
                raise SpecError(f"{self.name}: input '{name}' has shape {tuple(arr.shape)}, expected {shape}")

    # ---- to implement ----------------------------------------------------------------------
    def _activate_impl(self) -> None:
        raise NotImplementedError

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _deactivate_impl(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} active={self.is_active}>"
