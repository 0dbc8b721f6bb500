"""Pinned host buffers, device buffers, streams and async copies, over pycuda or cuda-python.

Two implementations of one small interface, because both are in use: Jetson tutorials (and the
design card) use pycuda; TensorRT's own Python samples use cuda-python. `open_cuda_memory()` tries
pycuda first, then cuda-python, each imported only then; neither working is a `BackendUnavailable`
that says what failed for each. `cuda_device_count()` (the backend chooser's probe) and
`device_properties()` try the bindings in the same order with the same fallbacks, so a binding that
imports but cannot reach the driver (cuda-bindings 13.x on JetPack 6's CUDA 12 driver) never hides one
that works. Every allocation and stream is owned by the `CudaMemory` that made it and is released by its
`close()`: streams first (after a synchronize), then device memory, then host memory, then the context.

On an integrated GPU (Jetson: device attribute INTEGRATED and CAN_MAP_HOST_MEMORY) host and device
share DRAM, so `zero_copy` is True and `mapped_empty()` gives pinned host memory mapped into the
device's address space (cudaHostAlloc with cudaHostAllocMapped, pycuda's DEVICEMAP): TensorRT reads and
writes it directly and the per-batch copies are skipped, as jetson-utils does.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from wbc_edge.errors import BackendUnavailable, WbcError

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("pycuda", "cuda-python")


class CudaError(WbcError):
    """A CUDA call failed after the backend was up (out of memory, a lost device, ...)."""


@dataclass
class DeviceBuffer:
    ptr: int
    nbytes: int
    owner: Any = field(default=None, repr=False)  # keeps the implementation's allocation object alive


@dataclass
class Stream:
    handle: int  # what TensorRT's execute_async_v3 takes
    owner: Any = field(default=None, repr=False)


class CudaMemory:
    """The interface: allocate once, then copy asynchronously on a stream and synchronize."""

    name = "abstract"
    zero_copy = False  # True where mapped host memory is the device memory (integrated GPUs)

    def current(self) -> contextlib.AbstractContextManager:
        """Make this device's context current on the calling thread for the block.

        The runtime activates a runner on one thread and infers on another, and CUDA contexts are
        per thread, so every group of calls runs inside `with memory.current():`.
        """
        return contextlib.nullcontext()

    def pinned_empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        raise NotImplementedError

    def device_alloc(self, nbytes: int) -> DeviceBuffer:
        raise NotImplementedError

    def mapped_empty(self, shape: Sequence[int], dtype: Any) -> tuple[np.ndarray, DeviceBuffer]:
        """Pinned host memory mapped into the device (zero-copy): the host array and its device pointer."""
        raise CudaError(f"{self.name}: mapped (zero-copy) host memory is for integrated GPUs only")

    def create_stream(self) -> Stream:
        raise NotImplementedError

    def copy_htod_async(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
        """Copy all of `src` (a C-contiguous view of pinned memory) to the start of `dst`."""
        raise NotImplementedError

    def copy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
        """Fill all of `dst` (a C-contiguous view of pinned memory) from the start of `src`."""
        raise NotImplementedError

    def synchronize(self, stream: Stream) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "CudaMemory":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_fits(nbytes: int, buf: DeviceBuffer, what: str) -> None:
    if nbytes > buf.nbytes:
        raise CudaError(f"{what}: {nbytes} bytes do not fit the {buf.nbytes}-byte device buffer")


# ---- pycuda ----------------------------------------------------------------------------------
class PycudaMemory(CudaMemory):
    """pycuda: `pagelocked_empty`, `mem_alloc`, `Stream`, `memcpy_htod_async` / `memcpy_dtoh_async`.

    Works in the device's primary context, the one TensorRT (CUDA runtime API) uses; the context is
    pushed for each block of work (`current()`) rather than left on one thread's stack.
    """

    name = "pycuda"

    def __init__(self, device: int = 0, driver: Any | None = None) -> None:
        if driver is None:
            try:
                import pycuda.driver as driver  # noqa: PLC0415
            except Exception as e:  # ImportError, or a missing libcuda raised at import
                raise BackendUnavailable(f"pycuda: not importable ({e})") from None
        self._cuda = driver
        try:
            driver.init()
            dev = driver.Device(device)
            self._context = dev.retain_primary_context()
        except Exception as e:
            raise BackendUnavailable(f"pycuda: no usable CUDA device {device} ({e})") from None
        attr = driver.device_attribute
        self.zero_copy = bool(dev.get_attribute(attr.INTEGRATED)) and bool(dev.get_attribute(attr.CAN_MAP_HOST_MEMORY))
        self._device_buffers: list[Any] = []
        self._pinned: list[np.ndarray] = []
        self._streams: list[Any] = []

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self._context.push()
        try:
            yield
        finally:
            self._context.pop()

    def pinned_empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        arr = self._cuda.pagelocked_empty(tuple(shape), np.dtype(dtype))
        self._pinned.append(arr)
        return arr

    def mapped_empty(self, shape: Sequence[int], dtype: Any) -> tuple[np.ndarray, DeviceBuffer]:
        if not self.zero_copy:
            return super().mapped_empty(shape, dtype)
        arr = self._cuda.pagelocked_empty(tuple(shape), np.dtype(dtype), mem_flags=self._cuda.host_alloc_flags.DEVICEMAP)
        self._pinned.append(arr)
        return arr, DeviceBuffer(int(arr.base.get_device_pointer()), int(arr.nbytes), arr)

    def device_alloc(self, nbytes: int) -> DeviceBuffer:
        alloc = self._cuda.mem_alloc(max(int(nbytes), 1))
        self._device_buffers.append(alloc)
        return DeviceBuffer(int(alloc), int(nbytes), alloc)

    def create_stream(self) -> Stream:
        s = self._cuda.Stream()
        self._streams.append(s)
        return Stream(int(s.handle), s)

    def copy_htod_async(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
        _check_fits(src.nbytes, dst, "host->device copy")
        self._cuda.memcpy_htod_async(dst.ptr, src, stream.owner)

    def copy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
        _check_fits(dst.nbytes, src, "device->host copy")
        self._cuda.memcpy_dtoh_async(dst, src.ptr, stream.owner)

    def synchronize(self, stream: Stream) -> None:
        stream.owner.synchronize()

    def close(self) -> None:
        if self._context is None:
            return
        with self.current():
            # Streams go first, after their work is done, so none outlives the memory it reads.
            while self._streams:  # pop, so no name keeps a stream alive past the detach below
                self._streams.pop().synchronize()
            for alloc in self._device_buffers:
                alloc.free()
            self._device_buffers.clear()
            self._pinned.clear()  # pagelocked arrays free their memory when collected
        # Release our reference to the retained primary context (pycuda never does it by itself).
        self._context.detach()
        self._context = None


# ---- cuda-python -----------------------------------------------------------------------------
def stream_handle(stream: Any, cudart: Any) -> int:
    """The raw cudaStream_t address TensorRT's execute_async_v3 takes, from cuda-python's handle object.

    cuda-bindings deprecates `int()` on its handle objects in favour of
    `cuda.bindings.utils.get_cuda_native_handle` (12.9.1+ and 13.x); older 12.x bindings (and the
    pre-12.6 `cuda.cudart` module) only have `int()`. Not `getPtr()`: that is the address where the
    Python object keeps the handle, not the handle.
    """
    getter = None
    if getattr(cudart, "__name__", "").startswith("cuda.bindings"):
        try:
            from cuda.bindings.utils import get_cuda_native_handle as getter  # noqa: PLC0415
        except ImportError:
            getter = None
    return int(getter(stream)) if getter is not None else int(stream)


def import_cudart() -> Any:
    """cuda-python's runtime module: `cuda.bindings.runtime` (12.6+/13) or the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime  # noqa: PLC0415

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # noqa: PLC0415

        return cudart
    except ImportError as e:
        raise BackendUnavailable(f"cuda-python: not importable ({e})") from None


class CudaPythonMemory(CudaMemory):
    """cuda-python: cudaMallocHost / cudaMalloc / cudaStreamCreate / cudaMemcpyAsync, as TensorRT's samples do."""

    name = "cuda-python"

    def __init__(self, device: int = 0, cudart: Any | None = None) -> None:
        self._rt = cudart if cudart is not None else import_cudart()
        self._device = device
        self._bound = threading.local()
        try:
            self._bind_thread()
        except CudaError as e:
            raise BackendUnavailable(f"cuda-python: no usable CUDA device {device} ({e})") from None
        self._host_ptrs: list[int] = []
        self._device_ptrs: list[int] = []
        self._streams: list[Any] = []
        attr = self._rt.cudaDeviceAttr
        self.zero_copy = bool(self._call("cudaDeviceGetAttribute", attr.cudaDevAttrIntegrated, device)) and bool(
            self._call("cudaDeviceGetAttribute", attr.cudaDevAttrCanMapHostMemory, device))

    def _call(self, name: str, *args: Any) -> Any:
        result = getattr(self._rt, name)(*args)
        err, rest = result[0], result[1:]
        if err != self._rt.cudaError_t.cudaSuccess:
            raise CudaError(f"cuda-python: {name} failed ({err})")
        return rest[0] if len(rest) == 1 else (rest or None)

    def _bind_thread(self) -> None:
        # The runtime API keeps the current device per thread: set it once on each thread that works.
        if not getattr(self._bound, "done", False):
            self._call("cudaSetDevice", self._device)
            self._bound.done = True

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self._bind_thread()
        yield

    def pinned_empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(int(math.prod(shape)) * dtype.itemsize, 1)
        ptr = int(self._call("cudaMallocHost", nbytes))
        self._host_ptrs.append(ptr)
        raw = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint8)), (nbytes,))
        return raw[: int(math.prod(shape)) * dtype.itemsize].view(dtype).reshape(tuple(shape))

    def mapped_empty(self, shape: Sequence[int], dtype: Any) -> tuple[np.ndarray, DeviceBuffer]:
        if not self.zero_copy:
            return super().mapped_empty(shape, dtype)
        dtype = np.dtype(dtype)
        used = int(math.prod(shape)) * dtype.itemsize
        ptr = int(self._call("cudaHostAlloc", max(used, 1), self._rt.cudaHostAllocMapped))
        self._host_ptrs.append(ptr)  # freed by cudaFreeHost like cudaMallocHost memory
        device_ptr = int(self._call("cudaHostGetDevicePointer", ptr, 0))
        raw = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint8)), (max(used, 1),))
        return raw[:used].view(dtype).reshape(tuple(shape)), DeviceBuffer(device_ptr, used)

    def device_alloc(self, nbytes: int) -> DeviceBuffer:
        ptr = int(self._call("cudaMalloc", max(int(nbytes), 1)))
        self._device_ptrs.append(ptr)
        return DeviceBuffer(ptr, int(nbytes))

    def create_stream(self) -> Stream:
        s = self._call("cudaStreamCreate")
        self._streams.append(s)
        return Stream(stream_handle(s, self._rt), s)

    def copy_htod_async(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
        _check_fits(src.nbytes, dst, "host->device copy")
        if not src.flags.c_contiguous:
            raise CudaError("host->device copy: the host view is not contiguous")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", dst.ptr, src.ctypes.data, src.nbytes, kind, stream.owner)

    def copy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
        _check_fits(dst.nbytes, src, "device->host copy")
        if not dst.flags.c_contiguous:
            raise CudaError("device->host copy: the host view is not contiguous")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", dst.ctypes.data, src.ptr, dst.nbytes, kind, stream.owner)

    def synchronize(self, stream: Stream) -> None:
        self._call("cudaStreamSynchronize", stream.owner)

    def close(self) -> None:
        # Free everything even if one call fails; report the first failure afterwards.
        failures = []
        for s in self._streams:  # nothing may still run on the memory about to be freed
            try:
                self._call("cudaStreamSynchronize", s)
            except CudaError as e:
                failures.append(str(e))
        for name, items in (("cudaStreamDestroy", self._streams), ("cudaFree", self._device_ptrs), ("cudaFreeHost", self._host_ptrs)):
            for item in items:
                try:
                    self._call(name, item)
                except CudaError as e:
                    failures.append(str(e))
            items.clear()
        if failures:
            log.warning("CUDA memory release: %s", failures[0])


# ---- choosing one ----------------------------------------------------------------------------
def open_cuda_memory(prefer: str = "auto", device: int = 0) -> CudaMemory:
    """pycuda if it works, else cuda-python; `prefer` names one to use (or 'auto')."""
    if prefer != "auto" and prefer not in IMPLEMENTATIONS:
        raise BackendUnavailable(f"CUDA memory '{prefer}': not one of {['auto', *IMPLEMENTATIONS]}")
    order = IMPLEMENTATIONS if prefer == "auto" else (prefer,)
    problems = []
    for name in order:
        try:
            memory = PycudaMemory(device) if name == "pycuda" else CudaPythonMemory(device)
        except BackendUnavailable as e:
            problems.append(str(e))
            continue
        log.info("CUDA memory through %s", name)
        return memory
    raise BackendUnavailable(
        "CUDA memory: " + "; ".join(problems) + " (install pycuda or cuda-python on a CUDA host, see docs/tensorrt.md)"
    )


def _pycuda_device_count() -> int:
    import pycuda.driver as cuda  # noqa: PLC0415

    cuda.init()
    return int(cuda.Device.count())


def _cudart_device_count() -> int:
    rt = import_cudart()
    err, n = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess:
        raise CudaError(f"cudaGetDeviceCount failed ({err})")
    return int(n)


def cuda_device_count() -> tuple[int | None, str]:
    """(devices, why) asking the bindings in the memory layer's order (pycuda, then cuda-python).

    The first binding that sees a device answers; one that imports but fails (no driver, a driver too
    old for cuda-bindings 13) falls through to the next. None: neither binding is importable.
    """
    problems, importable = [], False
    for name, probe in (("pycuda", _pycuda_device_count), ("cuda-python", _cudart_device_count)):
        try:
            n = probe()
        except (ImportError, BackendUnavailable) as e:
            problems.append(f"{name}: not importable ({e})")
            continue
        except Exception as e:  # a broken driver install reports through many exception types
            importable = True
            problems.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        importable = True
        if n > 0:
            return n, f"{n} CUDA device(s) via {name}"
        problems.append(f"{name}: 0 devices")
    return (0 if importable else None), "; ".join(problems)


def device_properties(device: int = 0) -> tuple[str, tuple[int, int]]:
    """(name, (major, minor)) of a CUDA device, via pycuda or cuda-python."""
    problems = []
    try:
        import pycuda.driver as cuda  # noqa: PLC0415

        cuda.init()
        d = cuda.Device(device)
        major, minor = d.compute_capability()
        return str(d.name()), (int(major), int(minor))
    except Exception as e:  # ImportError or a driver error: try the other library
        problems.append(f"pycuda: {e}")
    try:
        rt = import_cudart()
        err, props = rt.cudaGetDeviceProperties(device)
        if err != rt.cudaError_t.cudaSuccess:
            raise CudaError(f"cudaGetDeviceProperties failed ({err})")
        name = props.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
        return str(name), (int(props.major), int(props.minor))
    except (BackendUnavailable, CudaError) as e:
        problems.append(str(e))
    raise BackendUnavailable("CUDA device: " + "; ".join(problems))
