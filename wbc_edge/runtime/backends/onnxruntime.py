"""ONNX Runtime backend: CPU everywhere, CUDA where the CUDA provider is installed and asked for."""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from wbc_edge.errors import BackendUnavailable, BundleError, SpecError
from wbc_edge.runtime.backends.base import Runner
from wbc_edge.spec import ONNX_METADATA_KEY, ModelSpec, first_difference

log = logging.getLogger(__name__)


def _ort():
    try:
        import onnxruntime
    except ImportError as e:  # the base install has it; a trimmed firmware image may not
        raise BackendUnavailable(f"onnxruntime is not installed ({e})") from None
    return onnxruntime


def cuda_provider_available() -> bool:
    try:
        return "CUDAExecutionProvider" in _ort().get_available_providers()
    except BackendUnavailable:
        return False


def _show(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple) else repr(value)


class OnnxRuntimeRunner(Runner):
    """Runs one ONNX graph (bytes) with ONNX Runtime.

    device: "cpu", "cuda" (CUDA provider, CPU fallback for unsupported nodes) or "auto" (CUDA when
    available). intra_op_threads: None lets ONNX Runtime pick (one per physical core).
    """

    backend = "onnxruntime"

    def __init__(self, model: bytes, spec: ModelSpec, precision: str = "fp32", device: str = "cpu",
                 intra_op_threads: int | None = None, name: str | None = None):
        if device == "auto":
            device = "cuda" if cuda_provider_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise BackendUnavailable(f"onnxruntime device '{device}' is not one of cpu, cuda, auto")
        super().__init__(spec, precision=precision, device=device, name=name)
        self._model = model
        self.intra_op_threads = intra_op_threads
        self._session: Any = None
        self._outputs = list(self.output_names())

    @classmethod
    def from_bundle(cls, bundle: Any, precision: str = "fp32", **kw: Any) -> "OnnxRuntimeRunner":
        return cls(bundle.model_bytes(precision), bundle.spec, precision=precision, **kw)

    def _activate_impl(self) -> None:
        ort = _ort()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads steal the cores the pipeline's other stages need between batches
        # (measured: end-to-end / stages-alone 1.37 -> 0.76..1.04 on 2 cores).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.intra_op_threads:
            opts.intra_op_num_threads = int(self.intra_op_threads)
        providers = ["CPUExecutionProvider"]
        if self.device == "cuda":
            if not cuda_provider_available():
                raise BackendUnavailable("onnxruntime: CUDAExecutionProvider is not available (install onnxruntime-gpu)")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        try:
            self._session = ort.InferenceSession(self._model, sess_options=opts, providers=providers)
        except Exception as e:  # ORT raises its own exception types for a bad graph
            raise BundleError(f"{self.name}: ONNX Runtime cannot load the model ({str(e).splitlines()[0]})") from None
        names = {o.name for o in self._session.get_outputs()}
        missing = [n for n in self._outputs if n not in names]
        if missing:
            raise BundleError(f"{self.name}: model has no output {missing[0]!r} (outputs: {sorted(names)})")
        self._check_model_matches_spec()
        log.debug("%s: session on %s", self.name, self._session.get_providers())

    def _check_model_matches_spec(self) -> None:
        """A graph whose input or class count differs from spec.json is refused here, not mid-run."""
        inputs = {i.name: i for i in self._session.get_inputs()}
        for name, (_dtype, shape) in self.input_metadata().items():
            if name not in inputs:
                raise BundleError(f"{self.name}: model input is {sorted(inputs)}, spec.json says {name!r}")
            dims = list(inputs[name].shape)
            if len(dims) != len(shape) or any(isinstance(d, int) and s is not None and d != s for d, s in zip(dims, shape)):
                raise BundleError(f"{self.name}: model input {name!r} has shape {dims}, spec.json says {list(shape)}")
        for out in self._session.get_outputs():
            last = out.shape[-1] if out.shape else None
            if out.name in self._outputs and isinstance(last, int) and last != self.spec.num_classes:
                raise BundleError(f"{self.name}: model output {out.name!r} has {last} classes, spec.json lists {self.spec.num_classes}")
        embedded = self._session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
        if embedded is not None:
            try:
                graph_spec = ModelSpec.from_json(embedded)
            except SpecError as e:
                raise BundleError(f"{self.name}: the spec embedded in the graph is unreadable ({e})") from None
            diff = first_difference(self.spec, graph_spec)
            if diff is not None:
                field, mine, theirs = diff
                raise BundleError(f"{self.name}: spec.json says {field} {_show(mine)} but the graph's embedded spec says "
                                  f"{_show(theirs)}; the bundle's parts disagree, re-export it")

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._outputs, dict(feed))
        return dict(zip(self._outputs, values))

    def _deactivate_impl(self) -> None:
        self._session = None
