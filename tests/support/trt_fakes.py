"""Fakes for the TensorRT layer's tests: a recording `tensorrt` module (10.x or 11.x flavour), a
`cudart` (cuda-python) and a pycuda driver whose "device memory" is host memory, and tiny ONNX graphs.

They follow the real APIs' names and signatures (TensorRT 10/11 Python API, cuda-python runtime,
pycuda.driver) so the code under test makes the same calls it makes on a GPU host. The fake 11.x
module has no BuilderFlag.FP16/INT8, as TensorRT 11 removed them: touching them fails the test.
Imported as `from support import trt_fakes` (tests/conftest.py puts tests/ on sys.path). Holds no tests.
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import json
import threading
import types
import weakref

import numpy as np


# ---- the computation the fake engine runs ----------------------------------------------------
def fake_model_outputs(x: np.ndarray, n_heads: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stand-in for the network: per-channel means -> per-head softmax -> mean of heads."""
    n, c = x.shape[:2]
    feats = x.reshape(n, c, -1).astype(np.float32).mean(-1) / 255.0
    idx = (np.arange(n_heads)[:, None] * 3 + np.arange(n_classes)[None, :]) % c
    logits = feats[:, idx] * (1.0 + np.arange(n_classes, dtype=np.float32))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    head = (e / e.sum(-1, keepdims=True)).astype(np.float32)
    return head.mean(1).astype(np.float32), head


# ---- host memory posing as device memory -----------------------------------------------------
class HostHeap:
    """Allocations by address; every copy is a real memmove, so wrong sizes or offsets show."""

    def __init__(self) -> None:
        self.blocks: dict[int, ctypes.Array] = {}
        self.freed: list[int] = []

    def alloc(self, nbytes: int) -> int:
        buf = (ctypes.c_uint8 * nbytes)()
        addr = ctypes.addressof(buf)
        self.blocks[addr] = buf
        return addr

    def free(self, addr: int) -> None:
        if addr not in self.blocks:
            raise AssertionError(f"free of unknown address {addr:#x}")
        self.freed.append(addr)
        del self.blocks[addr]

    def size_of(self, addr: int) -> int:
        return len(self.blocks[addr])

    def array(self, addr: int, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape)) * dtype.itemsize
        raw = np.ctypeslib.as_array(ctypes.cast(addr, ctypes.POINTER(ctypes.c_uint8)), (count,))
        return raw.view(dtype).reshape(shape)


CUDA_ERROR_INSUFFICIENT_DRIVER = 35  # cudaErrorInsufficientDriver: cuda-bindings 13 on a CUDA 12 driver


def make_fake_cudart(heap: HostHeap | None = None, integrated: bool = False, driver_too_old: bool = False):
    """A cuda-python `runtime` module: every call returns (err, value...) as the real one does.

    integrated: report cudaDevAttrIntegrated/CanMapHostMemory = 1 (a Jetson). driver_too_old: every call
    returns cudaErrorInsufficientDriver, as cuda-bindings 13.x does on a CUDA 12 driver (JetPack 6).
    """
    heap = heap or HostHeap()
    rt = types.ModuleType("fake_cudart")
    ok = 0  # cudaError_t is an IntEnum in cuda-python; cudaSuccess == 0
    rt.cudaError_t = types.SimpleNamespace(cudaSuccess=ok)
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H")
    rt.heap = heap
    rt.calls = []
    rt.pinned = set()

    class FakeStreamT(int):
        pass

    def record(name, *args):
        rt.calls.append((name, *args))

    def malloc_host(n):
        addr = heap.alloc(n)
        rt.pinned.add(addr)
        record("cudaMallocHost", n)
        return ok, addr

    def malloc(n):
        record("cudaMalloc", n)
        return ok, heap.alloc(n)

    local = threading.local()

    def set_device(d):
        record("cudaSetDevice", d)
        local.device = d
        return (ok,)

    def memcpy_async(dst, src, n, kind, stream):
        if getattr(local, "device", None) is None:
            raise AssertionError("cudaMemcpyAsync on a thread that never called cudaSetDevice")
        record("cudaMemcpyAsync", kind, n)
        host = src if kind == "H2D" else dst
        if not any(a <= host < a + heap.size_of(a) for a in rt.pinned):
            raise AssertionError("async copy from/to memory that is not pinned")
        ctypes.memmove(dst, src, n)
        return (ok,)

    rt.cudaSetDevice = set_device
    rt.cudaMallocHost = malloc_host
    rt.cudaMalloc = malloc
    rt.cudaStreamCreate = lambda: (record("cudaStreamCreate"), (ok, FakeStreamT(77)))[1]
    rt.cudaMemcpyAsync = memcpy_async
    rt.cudaStreamSynchronize = lambda s: (record("cudaStreamSynchronize"), (ok,))[1]
    rt.cudaFree = lambda p: (record("cudaFree"), heap.free(p), (ok,))[2]
    rt.cudaFreeHost = lambda p: (record("cudaFreeHost"), rt.pinned.discard(p), heap.free(p), (ok,))[3]
    rt.cudaStreamDestroy = lambda s: (record("cudaStreamDestroy"), (ok,))[1]
    rt.cudaGetDeviceCount = lambda: (CUDA_ERROR_INSUFFICIENT_DRIVER, 0) if driver_too_old else (ok, 1)
    rt.cudaGetDeviceProperties = lambda d: (ok, types.SimpleNamespace(name=b"Fake Orin\0\0", major=8, minor=7))
    rt.cudaDeviceAttr = types.SimpleNamespace(cudaDevAttrIntegrated=18, cudaDevAttrCanMapHostMemory=19)
    rt.cudaDeviceGetAttribute = lambda attr, d: (record("cudaDeviceGetAttribute", attr), (ok, int(integrated)))[1]
    rt.cudaHostAllocMapped = 2
    rt.mapped = {}

    def host_alloc(n, flags):
        record("cudaHostAlloc", n, flags)
        if not integrated or flags != rt.cudaHostAllocMapped:
            raise AssertionError("cudaHostAlloc(mapped) on a device that cannot map host memory")
        addr = heap.alloc(n)
        rt.pinned.add(addr)
        rt.mapped[addr] = addr  # unified memory: the device pointer is the host address
        return ok, addr

    def host_get_device_pointer(ptr, flags):
        record("cudaHostGetDevicePointer", flags)
        if ptr not in rt.mapped or flags != 0:
            raise AssertionError("cudaHostGetDevicePointer on memory that is not mapped (or flags != 0)")
        return ok, rt.mapped[ptr]

    rt.cudaHostAlloc = host_alloc
    rt.cudaHostGetDevicePointer = host_get_device_pointer
    if driver_too_old:
        rt.cudaSetDevice = lambda d: (CUDA_ERROR_INSUFFICIENT_DRIVER,)
    return rt


def make_fake_pycuda_driver(heap: HostHeap | None = None, integrated: bool = False):
    """A `pycuda.driver` with the calls the runner makes (init, primary context retain/push/pop/detach,
    device attributes, pagelocked (optionally DEVICEMAP-mapped), mem_alloc, Stream, async copies)."""
    heap = heap or HostHeap()
    drv = types.ModuleType("fake_pycuda_driver")
    drv.heap = heap
    drv.calls = []
    drv.pushes = []  # every push, from any thread
    local = threading.local()  # CUDA context stacks are per thread

    def stack():
        if not hasattr(local, "stack"):
            local.stack = []
        return local.stack

    drv.context_stack = stack

    drv.retained = []  # primary-context references held (retain_primary_context adds, detach drops)
    drv.live_streams = weakref.WeakSet()  # streams not yet garbage: a detach with one alive is a bug

    class Context:
        def __init__(self):
            self.detached = False

        def push(self):
            if self.detached:
                raise AssertionError("push of a detached context")
            stack().append(self)
            drv.pushes.append(threading.get_ident())

        def pop(self):
            if not stack() or stack()[-1] is not self:
                raise AssertionError("pop of a context that is not current on this thread")
            stack().pop()

        def detach(self):
            if self in stack():
                raise AssertionError("detach of a context still on this thread's stack")
            if len(drv.live_streams):
                raise AssertionError("context detached while a stream still exists")
            self.detached = True
            drv.retained.remove(self)

    def need_context(what):
        if not stack():
            raise AssertionError(f"{what} without a current CUDA context on this thread")

    class Device:
        def __init__(self, i):
            self.i = i

        def retain_primary_context(self):
            ctx = Context()
            drv.retained.append(ctx)
            return ctx

        @staticmethod
        def count():
            return 1

        def get_attribute(self, attr):
            return int(integrated) if attr in ("INTEGRATED", "CAN_MAP_HOST_MEMORY") else 0

        def name(self):
            return "Fake RTX"

        def compute_capability(self):
            return (8, 9)

    class Allocation:
        def __init__(self, n):
            need_context("mem_alloc")
            self.addr = heap.alloc(n)

        def __int__(self):
            return self.addr

        def free(self):
            need_context("free")
            heap.free(self.addr)

    class Stream:
        def __init__(self):
            need_context("Stream")
            self.handle = 1234
            drv.live_streams.add(self)

        def synchronize(self):
            drv.calls.append(("synchronize",))

    class HostAllocation:  # what pagelocked_empty(..., mem_flags=DEVICEMAP) arrays have as .base
        def __init__(self, n):
            self.addr = heap.alloc(n)

        def get_device_pointer(self):
            return self.addr  # unified memory: the device sees the host address

        def __del__(self):  # pycuda frees page-locked memory when the last array using it is collected
            if self.addr in heap.blocks:
                heap.free(self.addr)

    def pagelocked_empty(shape, dtype, order="C", mem_flags=0):
        drv.calls.append(("pagelocked_empty", tuple(shape), mem_flags))
        if mem_flags == drv.host_alloc_flags.DEVICEMAP:
            if not integrated:
                raise AssertionError("DEVICEMAP host memory on a device that cannot map it")
            dtype = np.dtype(dtype)
            n = max(int(np.prod(shape)) * dtype.itemsize, 1)
            alloc = HostAllocation(n)
            raw = np.ctypeslib.as_array(ctypes.cast(alloc.addr, ctypes.POINTER(ctypes.c_uint8)), (n,))
            arr = raw[: int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape).view(_MappedArray)
            arr._alloc = alloc
            return arr
        return np.empty(shape, dtype)

    def copy(kind, dst_ptr, src_ptr, n, stream):
        if not isinstance(stream, Stream):
            raise AssertionError("async copy without a pycuda Stream")
        need_context(kind)
        drv.calls.append((kind, n))
        ctypes.memmove(dst_ptr, src_ptr, n)

    drv.init = lambda: drv.calls.append(("init",))
    drv.Device = Device
    drv.Stream = Stream
    drv.device_attribute = types.SimpleNamespace(INTEGRATED="INTEGRATED", CAN_MAP_HOST_MEMORY="CAN_MAP_HOST_MEMORY")
    drv.host_alloc_flags = types.SimpleNamespace(PORTABLE=1, DEVICEMAP=2, WRITECOMBINED=4)
    drv.pagelocked_empty = pagelocked_empty
    drv.mem_alloc = lambda n: (drv.calls.append(("mem_alloc", n)), Allocation(n))[1]
    drv.memcpy_htod_async = lambda dst, src, stream: copy("htod", int(dst), src.ctypes.data, src.nbytes, stream)
    drv.memcpy_dtoh_async = lambda dst, src, stream: copy("dtoh", dst.ctypes.data, int(src), dst.nbytes, stream)
    return drv


class _MappedArray(np.ndarray):
    """pycuda's pagelocked arrays have their HostAllocation as `.base`; this stand-in does the same."""

    def __array_finalize__(self, obj):
        # views keep the allocation (as numpy's base chain does); copies own new memory and do not
        shares = obj is not None and self.size and np.may_share_memory(self, obj)
        self._alloc = getattr(obj, "_alloc", None) if shares else None

    @property
    def base(self):
        return self._alloc


# ---- a recording tensorrt module ---------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, *call) -> None:
        self.calls.append(call)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def args(self, name: str) -> list[tuple]:
        return [c[1:] for c in self.calls if c[0] == name]


MAGIC = b"FAKETRT|"


def make_fake_tensorrt(version: str = "10.3.0", parse_errors: tuple[str, ...] = (), build_fails: bool = False,
                       progress_monitor: bool = True, heap: HostHeap | None = None, refuse: tuple[str, ...] = (),
                       output_names: tuple[str, str] = ("probs", "head_probs"), dla_cores: int = 0):
    """A `tensorrt` module of the given version. Engines it builds are JSON (profile, I/O names), tagged
    with the version: its Runtime refuses an engine tagged with another version, as TensorRT does.

    Failure returns as the real API gives them: `refuse` names calls that return False
    ('set_timing_cache', 'set_tensor_address', 'combine'); set_input_shape returns False outside the
    profile; build_serialized_network returns None on failure, and (as TensorRT does) when precision
    flags are set on a strongly typed network. output_names: ('output0', 'output1') is a Torch-TensorRT engine.
    """
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # so importlib.util.find_spec sees it
    trt.__version__ = version
    rec = trt.rec = Recorder()
    heap = heap or HostHeap()
    trt.heap = heap

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity):
            rec("Logger", severity)

    trt.Logger = Logger
    if major >= 11:
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)  # deprecated, ignored
        trt.BuilderFlag = types.SimpleNamespace(TF32=1, REFIT=2)  # FP16, INT8 (and DLA's GPU_FALLBACK use) gone in 11
    else:
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
        trt.BuilderFlag = types.SimpleNamespace(FP16=0, INT8=1, TF32=2, GPU_FALLBACK=3)
    trt.DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.DataType = types.SimpleNamespace(UINT8="UINT8", FLOAT="FLOAT", HALF="HALF")
    trt.nptype = lambda dt: {"UINT8": np.uint8, "FLOAT": np.float32, "HALF": np.float16}[dt]

    if progress_monitor:
        class IProgressMonitor:
            def __init__(self):
                rec("IProgressMonitor.__init__")

        trt.IProgressMonitor = IProgressMonitor

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.onnx = None

    class Parser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse(self, data):
            rec("parse", len(data))
            self.network.onnx = data
            self.num_errors = len(parse_errors)
            return not parse_errors

        def get_error(self, i):
            return parse_errors[i]

    trt.OnnxParser = Parser

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+timings"

        def combine(self, input_cache, ignore_mismatch):
            rec("combine", bytes(input_cache.data), ignore_mismatch)
            if "combine" in refuse:
                return False
            self.data = input_cache.data + b"|" + self.data
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            rec("set_shape", name, tuple(lo), tuple(opt), tuple(hi))
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class Config:
        def __init__(self):
            self.flags = set()
            self.profiles = []
            self.timing_cache = None
            self.progress_monitor = None
            self.builder_optimization_level = 3
            self.default_device_type = "GPU"
            self.DLA_core = -1

        def set_memory_pool_limit(self, pool, size):
            rec("set_memory_pool_limit", pool, size)

        def set_flag(self, flag):
            rec("set_flag", flag)
            self.flags.add(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data):
            rec("create_timing_cache", bytes(data))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            rec("set_timing_cache", ignore_mismatch)
            if "set_timing_cache" in refuse:
                return False
            self.timing_cache = cache
            return True

        def get_timing_cache(self):
            return self.timing_cache

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            rec("create_network", flags)
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            rec("build_serialized_network")
            mon = config.progress_monitor
            if mon is not None:
                mon.phase_start("Building engine", None, 2)
                mon.phase_start("Tactic selection", "Building engine", 3)
                assert mon.step_complete("Tactic selection", 0) is True
                mon.phase_finish("Tactic selection")
                mon.phase_finish("Building engine")
            if build_fails:
                return None
            strongly_typed = major >= 11 or bool(network.flags & (1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
            if strongly_typed and config.flags & {getattr(trt.BuilderFlag, f, None) for f in ("FP16", "INT8")}:
                return None  # TensorRT: precision flags are not allowed on a strongly typed network (logged as an error)
            (name, shapes), = config.profiles[0].shapes.items()
            body = {"input": name, "profile": shapes, "flags": sorted(config.flags), "network_flags": network.flags,
                    "onnx_bytes": len(network.onnx), "optimization_level": config.builder_optimization_level,
                    "device": config.default_device_type, "dla_core": config.DLA_core}
            return MAGIC + version.encode() + b"|" + json.dumps(body).encode()

    trt.Builder = Builder

    # -- runtime side --
    class Context:
        def __init__(self, engine):
            self.engine = engine
            self.addresses = {}
            self.input_shape = None

        def set_tensor_address(self, name, ptr):
            rec("set_tensor_address", name, ptr)
            if "set_tensor_address" in refuse or name not in self.engine.names:
                return False
            self.addresses[name] = ptr
            return True

        def set_input_shape(self, name, shape):
            rec("set_input_shape", name, tuple(shape))
            lo, _, hi = self.engine.body["profile"]
            if name != self.engine.body["input"] or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False  # TensorRT logs the error and returns False
            self.input_shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            n = self.input_shape[0]
            return self.input_shape if name == self.engine.body["input"] else (n,) + self.engine.out_shapes[name][1:]

        def execute_async_v3(self, stream_handle):
            rec("execute_async_v3", stream_handle)
            x = heap.array(self.addresses[self.engine.body["input"]], self.input_shape, np.uint8)
            probs, head = fake_model_outputs(x, self.engine.n_heads, self.engine.n_classes)
            n = self.input_shape[0]
            out_probs, out_head = output_names
            heap.array(self.addresses[out_probs], (n, self.engine.n_classes), np.float32)[...] = probs
            heap.array(self.addresses[out_head], (n, self.engine.n_heads, self.engine.n_classes), np.float32)[...] = head
            return True

    class Engine:
        def __init__(self, body, n_heads, n_classes):
            self.body = body
            self.n_heads, self.n_classes = n_heads, n_classes
            self.names = [body["input"], *output_names]
            self.out_shapes = {output_names[0]: (-1, n_classes), output_names[1]: (-1, n_heads, n_classes)}

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return "INPUT" if name == self.body["input"] else "OUTPUT"

        def get_tensor_dtype(self, name):
            return "UINT8" if name == self.body["input"] else "FLOAT"

        def get_tensor_shape(self, name):
            if name == self.body["input"]:
                return (-1,) + tuple(self.body["profile"][0][1:])
            return self.out_shapes[name]

        def get_tensor_profile_shape(self, name, profile_index):
            assert name == self.body["input"] and profile_index == 0
            return tuple(tuple(s) for s in self.body["profile"])

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            rec("deserialize_cuda_engine", len(data))
            prefix = MAGIC + version.encode() + b"|"
            if not bytes(data).startswith(prefix):
                return None  # another TensorRT version's engine (or garbage): TensorRT returns None
            body = json.loads(bytes(data)[len(prefix):])
            return Engine(body, trt.n_heads, trt.n_classes)

    trt.Runtime = Runtime
    trt.n_heads, trt.n_classes = 4, 5
    return trt


# ---- tiny ONNX graphs with the bundle's I/O contract -----------------------------------------
def tiny_onnx(spec, variant: str = "fp32") -> bytes:
    """uint8 pixels -> mean per channel -> (probs, head_probs); 'qdq' adds Q/DQ, 'fp16' a float16 path."""
    import onnx
    from onnx import TensorProto, helper

    c, h, k = spec.in_channels, spec.num_heads, spec.num_classes
    nodes = [helper.make_node("Cast", [spec.input_name], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["xf"], ["m"], axes=[2, 3], keepdims=0)]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [c, h * k], np.linspace(-1, 1, c * h * k).tolist()),
             helper.make_tensor("shape", TensorProto.INT64, [3], [-1, h, k])]
    src = "m"
    if variant == "qdq":
        inits += [helper.make_tensor("s", TensorProto.FLOAT, [], [0.05]), helper.make_tensor("z", TensorProto.INT8, [], [0])]
        nodes += [helper.make_node("QuantizeLinear", ["m", "s", "z"], ["mq"]), helper.make_node("DequantizeLinear", ["mq", "s", "z"], ["mdq"])]
        src = "mdq"
    if variant == "fp16":
        inits[0] = helper.make_tensor("w", TensorProto.FLOAT16, [c, h * k], np.linspace(-1, 1, c * h * k).astype(np.float16).view(np.uint16).tolist())
        nodes += [helper.make_node("Cast", ["m"], ["m16"], to=TensorProto.FLOAT16), helper.make_node("MatMul", ["m16", "w"], ["l16"]),
                  helper.make_node("Cast", ["l16"], ["l"], to=TensorProto.FLOAT)]
    else:
        nodes.append(helper.make_node("MatMul", [src, "w"], ["l"]))
    nodes += [helper.make_node("Reshape", ["l", "shape"], ["l3"]), helper.make_node("Softmax", ["l3"], [spec.head_probs_name], axis=-1),
              helper.make_node("ReduceMean", [spec.head_probs_name], [spec.probs_name], axes=[1], keepdims=0)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(spec.input_name, TensorProto.UINT8, ["batch", c, spec.input_size, spec.input_size])],
        [helper.make_tensor_value_info(spec.probs_name, TensorProto.FLOAT, ["batch", k]),
         helper.make_tensor_value_info(spec.head_probs_name, TensorProto.FLOAT, ["batch", h, k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def network_and_config(trt, spec, batch_range=(1, 8, 32)):
    """A parsed network and a builder config with one optimisation profile, as the builder code makes them."""
    builder = trt.Builder(None)
    network = builder.create_network(0)
    network.onnx = b"x"
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(spec.input_name, *(spec.input_shape(b) for b in batch_range))
    config.add_optimization_profile(profile)
    return network, config


def serialized_engine(trt, spec, batch_range=(1, 8, 32)) -> bytes:
    """Engine bytes as the fake builder serializes them (profile and tensor names)."""
    return trt.Builder(None).build_serialized_network(*network_and_config(trt, spec, batch_range))
