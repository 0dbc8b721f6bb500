"""TensorRT backend: a serialized engine run with pinned host buffers, async copies and dynamic batch.

At activation (once): deserialize the engine, read its I/O tensors and the profile's batch range,
allocate one pinned host buffer and one device buffer per tensor for the profile's largest batch,
create the stream and the execution context and bind the device addresses. Per batch: copy the uint8
pixels into the pinned input, `set_input_shape`, copy H2D, `execute_async_v3`, copy D2H, synchronize.
Works the same on TensorRT 10.x and 11.x (the name-based tensor API exists in both).

`tensorrt` and the CUDA layer are imported at activation, never at module import.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from wbc_edge import precisions
from wbc_edge.errors import BackendUnavailable, BundleError, SpecError, UsageError
from wbc_edge.runtime.backends.base import Runner
from wbc_edge.runtime.backends.cuda_memory import CudaMemory, DeviceBuffer, Stream, open_cuda_memory
from wbc_edge.runtime.backends.tensorrt_build import trt_logger
from wbc_edge.spec import ModelSpec

log = logging.getLogger(__name__)

def _import_tensorrt() -> Any:
    from wbc_edge.runtime.backends.tensorrt_build import import_tensorrt  # noqa: PLC0415

    return import_tensorrt()


@dataclass
class TensorBinding:
    """One engine I/O tensor and its buffers, sized for the profile's largest batch."""

    name: str
    is_input: bool
    dtype: np.dtype
    max_shape: tuple[int, ...]
    host: np.ndarray  # pinned, max_shape
    device: DeviceBuffer
    engine_name: str = ""  # the engine's tensor name, where it differs from the spec's (torch-tensorrt's output0)
    zero_copy: bool = False  # host is mapped device memory: no copies

    def host_view(self, batch: int) -> np.ndarray:
        """The first `batch` rows of the pinned buffer: contiguous, so it can be copied as one block."""
        return self.host[:batch]


def binding_shapes(engine: Any, trt: Any, profile_index: int = 0) -> tuple[list[tuple[str, bool, np.dtype, tuple[int, ...]]], tuple[int, int]]:
    """Per I/O tensor (name, is_input, dtype, shape at the profile's max batch), and (min, max) batch.

    Output shapes come from the engine with the dynamic batch axis (-1) replaced by the max batch;
    any other dynamic axis is refused, since this model's outputs are [B, K] and [B, H, K].
    """
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    if len(inputs) != 1:
        raise BundleError(f"TensorRT engine: expected one input tensor, has {inputs}")
    lo_shape, _, hi_shape = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(inputs[0], profile_index))
    min_batch, max_batch = lo_shape[0], hi_shape[0]
    out = []
    for name in names:
        is_input = name == inputs[0]
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        if is_input:
            shape = hi_shape
        else:
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            if shape and shape[0] == -1:
                shape = (max_batch,) + shape[1:]
            if any(d < 0 for d in shape):
                raise BundleError(f"TensorRT engine: output '{name}' has dynamic axes {shape} besides the batch")
        out.append((name, is_input, dtype, shape))
    return out, (min_batch, max_batch)


class TensorRTRunner(Runner):
    """Runs a serialized TensorRT engine.

    engine: the serialized engine bytes, a path to an engine file, or a callable returning bytes (called at
    activation, so construction stays cheap). `memory`: 'auto' (pycuda, then cuda-python), a library
    name, or a factory returning a `CudaMemory` (tests pass a fake). `on_stale`: called once when TensorRT
    refuses to deserialize the engine (built by another TensorRT or for another GPU); it returns fresh bytes.
    """

    backend = "tensorrt"

    def __init__(self, engine: bytes | str | os.PathLike | Callable[[], bytes], spec: ModelSpec, precision: str = "fp16",
                 memory: str | Callable[[], CudaMemory] = "auto", trt_module: Any | None = None,
                 on_stale: Callable[[], bytes] | None = None, name: str | None = None):
        super().__init__(spec, precision=precision, device="cuda", name=name)
        self._engine_source = engine
        self._memory_choice = memory
        self._trt_module = trt_module
        self._on_stale = on_stale
        self._trt: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._memory: CudaMemory | None = None
        self._stream: Stream | None = None
        self._bindings: dict[str, TensorBinding] = {}
        self.batch_range: tuple[int, int] | None = None

    @classmethod
    def from_bundle(cls, bundle: Any, precision: str = "fp16", cache: Any = None, batch_range: Sequence[int] | None = None,
                    fp16_source: str = "auto", target: Any = None, **kw: Any) -> "TensorRTRunner":
        """A runner whose engine comes from the engine cache, built from the bundle's ONNX on first use.

        precision: 'fp32', 'fp16', 'int8' or 'int8-trt'; cache: an EngineCache, a cache folder, or None
        (the default folder). The build happens at activation, not here.
        """
        try:
            engine_precision = precisions.engine_precision(precision)
        except UsageError as e:
            raise BundleError(str(e)) from None
        from wbc_edge.runtime.backends.tensorrt_build import DEFAULT_BATCH_RANGE, EngineCache, engine_from_bundle  # noqa: PLC0415

        engine_cache = cache if isinstance(cache, EngineCache) else EngineCache(cache)
        batches = tuple(batch_range) if batch_range is not None else DEFAULT_BATCH_RANGE
        trt_module = kw.get("trt_module")
        state: dict[str, str] = {}

        def load() -> bytes:
            engine, key = engine_from_bundle(bundle, engine_precision, engine_cache, batches, fp16_source=fp16_source, trt_module=trt_module,
                                             target=target)
            state["key"] = key
            return engine

        def rebuild() -> bytes:
            engine_cache.invalidate(state["key"])
            return load()

        return cls(load, bundle.spec, precision=precision, on_stale=rebuild, **kw)

    @classmethod
    def from_engine_file(cls, path: str | os.PathLike, bundle: Any, trt_module: Any | None = None, target: Any = None, **kw: Any) -> "TensorRTRunner":
        """`wbc-run --engine FILE`: a prebuilt engine, checked (sidecar) against the bundle's spec and this TensorRT and GPU."""
        from wbc_edge.runtime.backends import tensorrt_build as tb  # noqa: PLC0415

        here = target if target is not None else tb.current_target(trt_module)
        engine, meta = tb.read_engine_file(path, bundle.spec, here)
        precision = precisions.ENGINE_SOURCE.get(meta.get("precision"), "fp32")
        runner = cls(engine, bundle.spec, precision=precision, trt_module=trt_module, name=f"tensorrt-{meta.get('precision')}[{Path(path).name}]", **kw)
        runner.engine_meta = meta
        return runner

    # ---- lifecycle ---------------------------------------------------------------------------
    def _load_engine_bytes(self) -> bytes:
        source = self._engine_source
        if callable(source):
            return bytes(source())
        if isinstance(source, (bytes, bytearray, memoryview)):
            return bytes(source)
        path = Path(source)
        if not path.is_file():
            raise BundleError(f"TensorRT engine {path}: no such file")
        return path.read_bytes()

    def _deserialize(self, runtime: Any, data: bytes) -> Any:
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None and self._on_stale is not None:
            log.warning("%s: TensorRT %s cannot load this engine (another TensorRT version or GPU?): rebuilding it", self.name, self._trt.__version__)
            engine = runtime.deserialize_cuda_engine(self._on_stale())
        if engine is None:
            raise BundleError(f"{self.name}: TensorRT {self._trt.__version__} cannot deserialize the engine (built by another TensorRT version or for another GPU; rebuild it)")
        return engine

    def _open_memory(self) -> CudaMemory:
        choice = self._memory_choice
        return choice() if callable(choice) else open_cuda_memory(choice)

    def _activate_impl(self) -> None:
        self._trt = trt = self._trt_module if self._trt_module is not None else _import_tensorrt()
        data = self._load_engine_bytes()
        # The CUDA context must exist before TensorRT touches the device (pycuda pushes it here).
        self._memory = self._open_memory()
        try:
            with self._memory.current():
                self._runtime = trt.Runtime(trt_logger(trt))
                self._engine = self._deserialize(self._runtime, data)
                specs, self.batch_range = binding_shapes(self._engine, trt)
                names = self._engine_io_names([(n, i, s) for n, i, _, s in specs])
                self._stream = self._memory.create_stream()
                wanted = [s for s in specs if s[0] in names]
                self._bindings = self._allocate(wanted, names, zero_copy=self._memory.zero_copy)
                self._context = self._engine.create_execution_context()
                if self._context is None:
                    raise BackendUnavailable(f"{self.name}: TensorRT could not create an execution context (out of GPU memory?)")
                for b in self._bindings.values():
                    if not self._context.set_tensor_address(b.engine_name, b.device.ptr):
                        raise BackendUnavailable(f"{self.name}: TensorRT refused the device address of tensor '{b.engine_name}'")
        except BaseException:
            self._release()
            raise
        log.info("%s: engine ready, batch %d..%d, CUDA memory via %s%s", self.name, *self.batch_range, self._memory.name,
                 " (zero-copy mapped host memory)" if self._memory.zero_copy else "")

    def _allocate(self, specs: list, names: dict[str, str], zero_copy: bool) -> dict[str, TensorBinding]:
        """One host and one device buffer per tensor; on an integrated GPU one mapped buffer (zero-copy).

        Mapped memory that the driver refuses (a context without host mapping) falls back to copies,
        with a warning, rather than failing: zero-copy is an optimisation, not a requirement.
        """
        bindings = {}
        try:
            for engine_name, is_input, dtype, shape in specs:
                if zero_copy:
                    host, device = self._memory.mapped_empty(shape, dtype)
                else:
                    host = self._memory.pinned_empty(shape, dtype)
                    device = self._memory.device_alloc(host.nbytes)
                bindings[names[engine_name]] = TensorBinding(names[engine_name], is_input, dtype, shape, host, device, engine_name, zero_copy)
        except Exception as e:  # pycuda raises its own driver errors; cuda-python ours (CudaError)
            if not zero_copy:
                raise
            log.warning("%s: mapped host memory refused (%s); using device buffers and copies", self.name, str(e).splitlines()[0] if str(e) else type(e).__name__)
            self._memory.zero_copy = False
            return self._allocate(specs, names, zero_copy=False)
        return bindings

    def _engine_io_names(self, io: list[tuple[str, bool, tuple[int, ...]]]) -> dict[str, str]:
        """{engine tensor name: spec name}. Engines from the ONNX carry the spec's names; a Torch-TensorRT
        engine names its outputs output0, output1 in the module's return order (probs, head_probs), so
        those are mapped by position, each checked by rank ([B, K] and [B, H, K])."""
        inputs = [n for n, is_in, _ in io if is_in]
        if len(inputs) != 1:
            raise SpecError(f"{self.name}: engine inputs {inputs}: expected one, the spec's '{self.spec.input_name}'")
        outputs = [(n, shape) for n, is_in, shape in io if not is_in]
        wanted = self.output_names()
        names = {n for n, _ in outputs}
        mapping = {inputs[0]: self.spec.input_name}
        positional = [n for n, _ in outputs]
        torch_style = positional[: len(wanted)] == [f"output{i}" for i in range(len(wanted))]
        if inputs[0] != self.spec.input_name and not torch_style:
            raise SpecError(f"{self.name}: engine input {inputs} is not the spec's input '{self.spec.input_name}'")
        if all(w in names for w in wanted):
            mapping.update({w: w for w in wanted})
            return mapping
        if torch_style:
            ranks = {self.spec.probs_name: 2, self.spec.head_probs_name: 3}
            for (engine_name, shape), spec_name in zip(outputs, wanted):
                if spec_name in ranks and len(shape) != ranks[spec_name]:
                    raise SpecError(f"{self.name}: engine output '{engine_name}' has shape {shape}, not the rank-{ranks[spec_name]} '{spec_name}'")
                mapping[engine_name] = spec_name
            log.info("%s: engine outputs %s mapped by position to %s", self.name, positional[: len(wanted)], wanted)
            return mapping
        missing = [w for w in wanted if w not in names]
        raise SpecError(f"{self.name}: engine has no output '{missing[0]}' (tensors {sorted(names | set(inputs))})")

    def _release(self) -> None:
        # TensorRT objects go first (context, engine, runtime), then the stream and the memory (CudaMemory.close
        # synchronizes and destroys its streams before it frees the buffers they used).
        self._context = None
        self._engine = None
        self._runtime = None
        self._bindings = {}
        self._stream = None
        if self._memory is not None:
            self._memory.close()
        self._memory = None

    def _deactivate_impl(self) -> None:
        self._release()

    # ---- metadata and inference --------------------------------------------------------------
    def _check_feed(self, feed: Mapping[str, np.ndarray]) -> None:
        super()._check_feed(feed)
        arr = feed[self.spec.input_name]
        binding = self._bindings[self.spec.input_name]
        if binding.dtype != arr.dtype:
            raise SpecError(f"{self.name}: engine input '{binding.name}' is {binding.dtype}, the feed is {arr.dtype}")

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feed[self.spec.input_name]
        max_batch = self.batch_range[1]
        with self._memory.current():  # inference may run on another thread than activation
            if len(x) <= max_batch:
                return self._infer_chunk(x)
            # Larger than the profile allows: run it in profile-sized chunks rather than refuse.
            parts = [self._infer_chunk(x[i : i + max_batch]) for i in range(0, len(x), max_batch)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _infer_chunk(self, x: np.ndarray) -> dict[str, np.ndarray]:
        n = len(x)
        min_batch = self.batch_range[0]
        run_batch = max(n, min_batch)  # a profile starting above 1 gets zero-padded rows
        memory, stream = self._memory, self._stream
        inp = self._bindings[self.spec.input_name]
        view = inp.host_view(run_batch)
        view[:n] = x
        if run_batch > n:
            view[n:] = 0
        if not self._context.set_input_shape(inp.engine_name, view.shape):
            raise SpecError(f"{self.name}: TensorRT refused input shape {view.shape} (engine profile batch {self.batch_range[0]}..{self.batch_range[1]})")
        if not inp.zero_copy:
            memory.copy_htod_async(inp.device, view, stream)
        if not self._context.execute_async_v3(stream.handle):
            raise BackendUnavailable(f"{self.name}: TensorRT execute_async_v3 failed (see TensorRT's log)")
        views = {}
        for b in self._bindings.values():
            if b.is_input:
                continue
            shape = tuple(int(d) for d in self._context.get_tensor_shape(b.engine_name))
            out_view = b.host_view(shape[0] if shape else run_batch)
            if not b.zero_copy:
                memory.copy_dtoh_async(out_view, b.device, stream)
            views[b.name] = out_view
        memory.synchronize(stream)
        # Copy out of the pinned buffers: the next batch overwrites them.
        return {name: v[:n].copy() for name, v in views.items() if name in self.output_names()}
