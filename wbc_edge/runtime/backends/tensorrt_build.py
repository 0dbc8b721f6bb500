"""TensorRT engines without torch: plan, build, engine cache, engine files, logger, target (GPU) identity.

The one home of the torch-free TensorRT code. The runtime's runner reads engines through it; export
and `wbc-engine build` only ask it to build for a bundle (the torch-tensorrt path, which needs
torch, stays in `wbc_edge.export.tensorrt`).

Engines are specific to a GPU and a TensorRT version, so the portable artefact is the ONNX in the
bundle; an engine is built on the target and cached under a key made of the ONNX hash, TensorRT
version, GPU name, compute capability, precision and batch range.

What TensorRT does with each precision differs between major versions (see `plan_build`):
- 10.x (JetPack 6): FP16 = the FP32 ONNX plus `BuilderFlag.FP16` (or, on request, the FP16 graph in a
  strongly typed network); INT8 = the Q/DQ ONNX in a strongly typed network (no INT8 flag): the
  explicit-quantization guidance is that Q/DQ fixes where INT8 runs and the rest keeps the graph's
  types, whereas a weakly typed Q/DQ network lets layers between Q/DQ pairs fall to FP32 and weak
  typing is deprecated from 10.12.
- 11.x: the precision flags are gone and every network is strongly typed, so FP16 = the FP16 ONNX
  graph (`model.fp16.onnx`, FP32 I/O kept) and INT8 = the Q/DQ ONNX (`model.int8-trt.onnx`).

`tensorrt` is imported lazily: the pure logic here (planning, keys, cache files, option checks) runs and
is tested without it. Never imports torch, train or export.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from wbc_edge import precisions
from wbc_edge.bundle import atomic_write_bytes, atomic_write_text, sha256_bytes
from wbc_edge.errors import BackendUnavailable, UsageError, WbcError
from wbc_edge.spec import ModelSpec

log = logging.getLogger(__name__)

PRECISIONS = precisions.ENGINE_PRECISIONS
FP16_SOURCES = ("auto", "flag", "graph")
DEFAULT_BATCH_RANGE = (1, 8, 32)
DEFAULT_WORKSPACE_MB = 1024
MAX_BATCH = 4096
MAX_OPTIMIZATION_LEVEL = 5
BUILD_PATHS = ("onnx", "torch-tensorrt")
CACHE_ENV = "WBC_EDGE_ENGINE_CACHE"
SIDECAR_SCHEMA = 1
SUPPORTED_MAJORS = (10, 11)

# The bundle member each engine precision builds from, by how TensorRT is told the precision.
_MEMBER = {p: precisions.engine_member(p) for p in PRECISIONS}


class TensorRTError(WbcError):
    """An engine cannot be built or loaded: bad options, an ONNX TensorRT rejects, a failed build."""


class TensorRTOptionError(TensorRTError, UsageError):
    """A build option out of its range or not one of its values: a usage mistake, found before any build."""


# ---- versions and options -------------------------------------------------------------------
def parse_version(text: str | Sequence[int]) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); a tuple passes through. Non-numeric suffixes are dropped."""
    if isinstance(text, (tuple, list)):
        return tuple(int(p) for p in text)
    parts = []
    for piece in str(text).split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    if not parts:
        raise TensorRTError(f"TensorRT version '{text}': not a version number")
    return tuple(parts)


def version_text(version: str | Sequence[int]) -> str:
    return ".".join(str(p) for p in parse_version(version))


def import_tensorrt() -> Any:
    """The `tensorrt` module, or BackendUnavailable with what to install."""
    try:
        import tensorrt  # noqa: PLC0415  (lazy: absent on development machines)
    except ImportError as e:
        raise BackendUnavailable(
            f"tensorrt: not importable ({e}); install TensorRT 10.x or 11.x on a CUDA host (docs/tensorrt.md)"
        ) from None
    return tensorrt


def trt_version() -> tuple[int, ...] | None:
    """The installed TensorRT version as a tuple, or None when TensorRT is not importable."""
    try:
        return parse_version(import_tensorrt().__version__)
    except (BackendUnavailable, AttributeError, TensorRTError):
        return None


def validate_batch_range(batch_range: Sequence[int]) -> tuple[int, int, int]:
    """(min, opt, max) with 1 <= min <= opt <= max; the one error names the field and the values."""
    try:
        values = tuple(int(b) for b in batch_range)
    except (TypeError, ValueError):
        raise TensorRTOptionError(f"batch_range {batch_range!r}: expected three integers min,opt,max") from None
    if len(values) != 3 or any(b != v for b, v in zip(batch_range, values)):
        raise TensorRTOptionError(f"batch_range {tuple(batch_range)!r}: expected three integers min,opt,max")
    lo, opt, hi = values
    if not 1 <= lo <= opt <= hi <= MAX_BATCH:
        raise TensorRTOptionError(f"batch_range {values}: need 1 <= min <= opt <= max <= {MAX_BATCH}")
    return values


def parse_batch_range(text: str) -> tuple[int, int, int]:
    """'1,8,32' (a CLI value) -> (1, 8, 32), checked."""
    try:
        values = [int(p) for p in str(text).split(",")]
    except ValueError:
        raise TensorRTOptionError(f"batch_range '{text}': expected three integers min,opt,max such as 1,8,32") from None
    return validate_batch_range(values)


def validate_options(precision: str, batch_range: Sequence[int], workspace_mb: int, fp16_source: str = "auto") -> tuple[str, tuple[int, int, int], int, str]:
    """Check every build option up front, so a bad one fails before any minutes-long build starts."""
    if precision not in PRECISIONS:
        raise TensorRTOptionError(f"precision '{precision}': not one of {list(PRECISIONS)}")
    if fp16_source not in FP16_SOURCES:
        raise TensorRTOptionError(f"fp16_source '{fp16_source}': not one of {list(FP16_SOURCES)}")
    if not isinstance(workspace_mb, int) or isinstance(workspace_mb, bool) or workspace_mb < 16:
        raise TensorRTOptionError(f"workspace_mb {workspace_mb!r}: need an integer >= 16 (MiB)")
    return precision, validate_batch_range(batch_range), workspace_mb, fp16_source


def profile_shapes(spec: ModelSpec, batch_range: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The optimisation profile's (min, opt, max) input shapes: only the batch axis is dynamic."""
    lo, opt, hi = validate_batch_range(batch_range)
    return spec.input_shape(lo), spec.input_shape(opt), spec.input_shape(hi)


# ---- what to build from and which flags to set, per TensorRT version -----------------------
@dataclass(frozen=True)
class BuildPlan:
    """Everything version-dependent about a build, decided without TensorRT."""

    tensorrt_version: tuple[int, ...]
    precision: str
    onnx_member: str  # the bundle member to parse
    strongly_typed: bool
    network_flags: tuple[str, ...]  # names in trt.NetworkDefinitionCreationFlag
    builder_flags: tuple[str, ...]  # names in trt.BuilderFlag
    needs_qdq: bool
    needs_fp16_graph: bool


def plan_build(tensorrt_version: str | Sequence[int], precision: str, fp16_source: str = "auto") -> BuildPlan:
    """Which ONNX to parse and which creation/builder flags to set for this TensorRT and precision.

    fp16_source: 'flag' = FP32 ONNX + BuilderFlag.FP16 (10.x only), 'graph' = the FP16 ONNX in a strongly
    typed network, 'auto' = 'flag' on 10.x and 'graph' on 11.x.
    """
    version = parse_version(tensorrt_version)
    major = version[0]
    if precision not in PRECISIONS:
        raise TensorRTOptionError(f"precision '{precision}': not one of {list(PRECISIONS)}")
    if fp16_source not in FP16_SOURCES:
        raise TensorRTOptionError(f"fp16_source '{fp16_source}': not one of {list(FP16_SOURCES)}")
    if major < SUPPORTED_MAJORS[0]:
        raise TensorRTError(f"TensorRT {version_text(version)}: wbc-edge builds with TensorRT 10.x or 11.x")
    if major > SUPPORTED_MAJORS[-1]:
        log.warning("TensorRT %s is newer than the versions wbc-edge knows (10.x, 11.x): building as for 11.x", version_text(version))

    if major == 10:
        if precision == "fp16" and fp16_source == "graph":
            return BuildPlan(version, precision, _MEMBER["fp16"], True, ("STRONGLY_TYPED",), (), False, True)
        if precision == "fp16":
            return BuildPlan(version, precision, _MEMBER["fp32"], False, (), ("FP16",), False, False)
        if precision == "int8":
            # Strongly typed Q/DQ network, as on 11.x: TensorRT refuses precision flags with STRONGLY_TYPED.
            return BuildPlan(version, precision, _MEMBER["int8"], True, ("STRONGLY_TYPED",), (), True, False)
        return BuildPlan(version, precision, _MEMBER["fp32"], False, (), (), False, False)

    # 11.x and later: always strongly typed (the creation flag is deprecated and ignored, so not set),
    # no precision flags exist; the precision lives in the graph.
    if precision == "fp16" and fp16_source == "flag":
        raise TensorRTError(
            f"TensorRT {version_text(version)}: BuilderFlag.FP16 no longer exists; build FP16 from the FP16 graph ({_MEMBER['fp16']})"
        )
    if precision == "fp16":
        return BuildPlan(version, precision, _MEMBER["fp16"], True, (), (), False, True)
    if precision == "int8":
        return BuildPlan(version, precision, _MEMBER["int8"], True, (), (), True, False)
    return BuildPlan(version, precision, _MEMBER["fp32"], True, (), (), False, False)


def check_onnx_for_plan(onnx_bytes: bytes, spec: ModelSpec, plan: BuildPlan, where: str = "onnx") -> None:
    """Catch the wrong graph before TensorRT spends minutes on it: input name, Q/DQ, FP16 content.

    Needs the `onnx` package; where it is absent (a bare device), TensorRT's parser is the only check.
    """
    try:
        import onnx  # noqa: PLC0415
    except ImportError:
        log.debug("onnx not installed: skipping the pre-build graph check of %s", where)
        return
    try:
        model = onnx.load_model_from_string(onnx_bytes)
    except Exception as e:  # onnx raises DecodeError and others: report on one line
        raise TensorRTError(f"{where}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    graph = model.graph
    initializer_names = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializer_names]
    if spec.input_name not in inputs:
        raise TensorRTError(f"{where}: has inputs {inputs}, not the spec's input '{spec.input_name}'")
    outputs = {o.name for o in graph.output}
    for name in (spec.probs_name, spec.head_probs_name):
        if name not in outputs:
            raise TensorRTError(f"{where}: has no output '{name}' (outputs {sorted(outputs)})")
    ops = {n.op_type for n in graph.node}
    if plan.needs_qdq and not {"QuantizeLinear", "DequantizeLinear"} <= ops:
        raise TensorRTError(f"{where}: INT8 needs a Q/DQ graph ({_MEMBER['int8']}); this one has no QuantizeLinear/DequantizeLinear")
    if plan.needs_fp16_graph:
        fp16 = onnx.TensorProto.FLOAT16
        has_fp16 = any(i.data_type == fp16 for i in graph.initializer) or any(
            n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute) for n in graph.node
        )
        if not has_fp16:
            raise TensorRTError(f"{where}: a strongly typed FP16 build needs the FP16 graph ({_MEMBER['fp16']}); this one has no float16 tensors")


# ---- the build ------------------------------------------------------------------------------
def _read_onnx(onnx: str | os.PathLike | bytes) -> tuple[bytes, str]:
    if isinstance(onnx, (bytes, bytearray, memoryview)):
        return bytes(onnx), "onnx (in memory)"
    path = Path(onnx)
    if not path.is_file():
        raise TensorRTError(f"onnx {path}: no such file")
    return path.read_bytes(), f"onnx {path}"


def make_progress_monitor(trt: Any) -> Any | None:
    """An IProgressMonitor that logs build phases, or None where this TensorRT has none."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class PhaseLogger(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._started: dict[str, float] = {}
            self._depth: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self._depth[phase_name] = depth
            self._started[phase_name] = time.perf_counter()
            log.info("%s%s (%d steps)", "  " * depth, phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel the build

        def phase_finish(self, phase_name: str) -> None:
            took = time.perf_counter() - self._started.pop(phase_name, time.perf_counter())
            log.info("%s%s done in %.1f s", "  " * self._depth.pop(phase_name, 0), phase_name, took)

    return PhaseLogger()


_TRT_LOGGERS: dict[int, Any] = {}


def trt_logger(trt: Any) -> Any:
    """One TensorRT logger per process: TensorRT warns when builders/runtimes get different ones."""
    if id(trt) not in _TRT_LOGGERS:
        _TRT_LOGGERS[id(trt)] = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGERS[id(trt)]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `<path>.lock` for the block (POSIX `flock`; Jetson and CUDA Linux hosts).

    Several builds (two `wbc-run` processes, a device check) share one timing-cache file; without the lock
    the last writer silently drops the others' timings.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # noqa: PLC0415  (POSIX only)
    except ImportError:
        log.warning("timing cache %s: no file locking on this OS; concurrent builds may lose timings", path)
        yield
        return
    with open(f"{path}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _load_timing_cache(config: Any, path: Path | None) -> Any | None:
    if path is None:
        return None
    data = b""
    if path.is_file():
        with file_lock(path):
            data = path.read_bytes()
        log.info("timing cache %s: loaded %d bytes", path, len(data))
    try:
        cache = config.create_timing_cache(data)
    except Exception as e:  # TensorRT raises its own types for a corrupt cache
        log.warning("timing cache %s: unreadable by this TensorRT (%s)", path, _first_line(e))
        cache = None
    if cache is None and data:
        log.warning("timing cache %s: starting an empty one", path)
        cache = config.create_timing_cache(b"")
    # ignore_mismatch=False: never use another GPU's or TensorRT's timings. Returns False on a mismatch.
    if cache is not None and not config.set_timing_cache(cache, False):
        raise TensorRTError(f"timing cache {path}: TensorRT refused it (made by another GPU or TensorRT?); delete it or pass another --timing-cache")
    return cache


def save_timing_cache(config: Any, path: Path) -> None:
    """Merge this build's timings into the file under its lock, as Polygraphy does, then write it atomically."""
    cache = config.get_timing_cache()
    if cache is None:
        return
    with file_lock(path):
        if path.is_file():
            try:
                on_disk = config.create_timing_cache(path.read_bytes())
                # combine(input_cache, ignore_mismatch) -> bool; False: the file is another GPU's (kept out).
                if on_disk is not None and not cache.combine(on_disk, False):
                    log.warning("timing cache %s: not merged (another GPU or TensorRT wrote it); replacing it with this build's", path)
            except Exception as e:  # a corrupt file must not lose this build's timings
                log.warning("timing cache %s: cannot merge the file (%s); replacing it", path, _first_line(e))
        atomic_write_bytes(path, bytes(cache.serialize()))


@dataclass(frozen=True)
class BuildOptions:
    """trtexec-style build options beyond precision and batch range, checked before any build."""

    workspace_mb: int = DEFAULT_WORKSPACE_MB
    optimization_level: int | None = None  # IBuilderConfig.builder_optimization_level, 0..5 (TensorRT's default 3)
    dla_core: int | None = None  # run on this DLA core, layers DLA cannot run fall back to the GPU
    timing_cache: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.workspace_mb, int) or isinstance(self.workspace_mb, bool) or self.workspace_mb < 16:
            raise TensorRTOptionError(f"workspace_mb {self.workspace_mb!r}: need an integer >= 16 (MiB)")
        if self.optimization_level is not None and (not isinstance(self.optimization_level, int) or not 0 <= self.optimization_level <= MAX_OPTIMIZATION_LEVEL):
            raise TensorRTOptionError(f"optimization_level {self.optimization_level!r}: need an integer 0..{MAX_OPTIMIZATION_LEVEL}")
        if self.dla_core is not None and (not isinstance(self.dla_core, int) or isinstance(self.dla_core, bool) or self.dla_core < 0):
            raise TensorRTOptionError(f"dla_core {self.dla_core!r}: need an integer >= 0")


def _configure_dla(trt: Any, builder: Any, config: Any, plan: BuildPlan, dla_core: int) -> None:
    if plan.tensorrt_version[0] >= 11:
        raise TensorRTError(f"--dla-core: TensorRT {version_text(plan.tensorrt_version)} has no DLA support (10.x on JetPack 6 has)")
    if plan.precision == "fp32":
        raise TensorRTOptionError("--dla-core: DLA runs FP16 or INT8 only; choose --precision fp16 or int8")
    count = int(getattr(builder, "num_DLA_cores", 0))
    if dla_core >= count:
        raise TensorRTError(f"--dla-core {dla_core}: this device has {count} DLA core(s)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = dla_core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU


def build_engine(
    onnx: str | os.PathLike | bytes,
    spec: ModelSpec,
    precision: str,
    batch_range: Sequence[int] = DEFAULT_BATCH_RANGE,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: str | os.PathLike | None = None,
    progress: bool = True,
    fp16_source: str = "auto",
    trt_module: Any | None = None,
    optimization_level: int | None = None,
    dla_core: int | None = None,
) -> bytes:
    """Build a serialized engine from an ONNX file or bytes; return the engine bytes.

    `onnx` must be the graph `plan_build` names for this TensorRT and precision (`plan_build(...).onnx_member`
    tells which bundle member). `trt_module` is for tests (a fake); normally `tensorrt` is imported.
    """
    precision, batch_range, workspace_mb, fp16_source = validate_options(precision, batch_range, workspace_mb, fp16_source)
    BuildOptions(workspace_mb, optimization_level, dla_core, timing_cache)
    trt = trt_module if trt_module is not None else import_tensorrt()
    plan = plan_build(trt.__version__, precision, fp16_source)
    onnx_bytes, where = _read_onnx(onnx)
    check_onnx_for_plan(onnx_bytes, spec, plan, where)

    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network_flags = 0
    for name in plan.network_flags:
        network_flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)).replace("\n", " ") for i in range(parser.num_errors)]
        for line in errors:
            log.error("%s: TensorRT parser: %s", where, line)
        first = errors[0] if errors else "no error reported"
        raise TensorRTError(f"{where}: TensorRT {version_text(plan.tensorrt_version)} cannot parse it ({len(errors)} error(s); first: {first})")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if optimization_level is not None:
        config.builder_optimization_level = optimization_level
    if dla_core is not None:
        _configure_dla(trt, builder, config, plan, dla_core)
    profile = builder.create_optimization_profile()
    lo, opt, hi = profile_shapes(spec, batch_range)
    # set_shape returns nothing in the Python API (it raises on a bad shape); the profile's index says it was taken.
    profile.set_shape(spec.input_name, lo, opt, hi)
    if config.add_optimization_profile(profile) < 0:
        raise TensorRTError(f"{where}: TensorRT rejected the optimisation profile {lo}..{hi} for '{spec.input_name}'")

    cache_path = Path(timing_cache) if timing_cache is not None else None
    _load_timing_cache(config, cache_path)

    what = f"TensorRT {version_text(plan.tensorrt_version)} {precision} engine from {plan.onnx_member}, batch {lo[0]}..{hi[0]} (opt {opt[0]})"
    monitor = make_progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
        log.info("building %s", what)
    else:
        log.info("building %s: this can take minutes", what)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"{where}: building the {what} failed (TensorRT's log above says why)")
    engine = bytes(serialized)
    log.info("built %s in %.1f s (%d bytes)", what, time.perf_counter() - started, len(engine))

    if cache_path is not None:
        save_timing_cache(config, cache_path)
    return engine


# ---- the engine cache ------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What an engine is specific to, besides its ONNX and options."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def normalise_compute_capability(cc: str | Sequence[int]) -> str:
    if isinstance(cc, (tuple, list)):
        return ".".join(str(int(c)) for c in cc)
    return str(cc)


def query_gpu() -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of device 0, via the CUDA layer or nvidia-smi."""
    try:
        from wbc_edge.runtime.backends.cuda_memory import device_properties  # noqa: PLC0415

        name, cc = device_properties()
        return name, normalise_compute_capability(cc)
    except BackendUnavailable as e:
        cuda_problem = str(e)
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True).stdout
            name, cc = (p.strip() for p in out.splitlines()[0].rsplit(",", 1))
            return name, cc
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
    raise BackendUnavailable(f"GPU: cannot tell which GPU this is ({cuda_problem}; no usable nvidia-smi)")


def current_target(trt_module: Any | None = None, gpu: tuple[str, str] | None = None) -> Target:
    trt = trt_module if trt_module is not None else import_tensorrt()
    name, cc = gpu if gpu is not None else query_gpu()
    return Target(version_text(trt.__version__), name, normalise_compute_capability(cc))


# Build options that produce a different engine, so a cached one never answers for another.
KEYED_BUILD_OPTIONS = ("dla_core", "optimization_level")


def engine_cache_key(onnx_sha256: str, trt_version: str | Sequence[int], gpu_name: str, compute_capability: str | Sequence[int], precision: str, batch_range: Sequence[int],
                     build_path: str = "onnx", options: Mapping[str, Any] | None = None) -> str:
    """A file-name-safe key that changes when any part changes: '<precision>-b<min>_<opt>_<max>-<digest>'.

    options: build options that make another engine (a DLA core, an optimisation level); only the ones
    set are keyed, so a default build's key stays as it was.

    build_path: 'onnx' (TensorRT's parser) or 'torch-tensorrt'; the same model built another way is
    another engine (other tensor names, other fusions), so it never answers for the other.
    """
    if build_path not in BUILD_PATHS:
        raise TensorRTOptionError(f"build path '{build_path}': not one of {list(BUILD_PATHS)}")
    parts = {
        "onnx_sha256": str(onnx_sha256),
        "tensorrt_version": version_text(trt_version),
        "gpu_name": str(gpu_name),
        "compute_capability": normalise_compute_capability(compute_capability),
        "precision": str(precision),
        "batch_range": list(validate_batch_range(batch_range)),
    }
    if build_path != "onnx":  # keys of ONNX-built engines stay as they were
        parts["build_path"] = build_path
    parts.update({k: v for k, v in sorted((options or {}).items()) if v is not None})
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
    lo, opt, hi = parts["batch_range"]
    return f"{precision}-b{lo}_{opt}_{hi}-{digest}"


def default_cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "wbc-edge" / "engines"


class EngineCache:
    """Engines on disk, one `<key>.engine` plus a `<key>.json` sidecar each (key parts + the model spec).

    The sidecar is written last, so an engine without one (an interrupted write) is never used.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()

    def engine_path(self, key: str) -> Path:
        return self.root / f"{key}.engine"

    def sidecar_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def entries(self) -> list[dict[str, Any]]:
        """Every readable sidecar in the cache (unreadable ones are logged and skipped)."""
        out = []
        if not self.root.is_dir():
            return out
        for path in sorted(self.root.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
                log.warning("engine cache %s: unreadable sidecar (%s), ignored", path, e)
        return out

    def get(self, key: str, target: Target | None = None) -> bytes | None:
        """The engine for `key`, or None when absent, incomplete, corrupt or built for another target."""
        sidecar_path, engine_path = self.sidecar_path(key), self.engine_path(key)
        if not sidecar_path.is_file() or not engine_path.is_file():
            return None
        try:
            meta = json.loads(sidecar_path.read_text())
            engine = engine_path.read_bytes()
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            log.warning("engine cache %s: unreadable (%s): rebuilding", engine_path, e)
            return None
        if meta.get("engine_sha256") != sha256_bytes(engine):
            log.warning("engine cache %s: fails its SHA-256 check (truncated or corrupt): rebuilding", engine_path)
            return None
        if target is not None:
            mismatch = target_mismatch(meta, target)
            if mismatch:
                log.warning("engine cache %s: %s: rebuilding", engine_path, mismatch)
                return None
        return engine

    def put(self, key: str, engine: bytes, target: Target, onnx_sha256: str, precision: str, batch_range: Sequence[int], spec: ModelSpec,
            build_path: str = "onnx") -> Path:
        meta = engine_sidecar(key, engine, target, onnx_sha256, precision, batch_range, spec, build_path)
        write_engine_file(self.engine_path(key), engine, meta, self.sidecar_path(key))
        return self.engine_path(key)

    def invalidate(self, key: str) -> None:
        """Drop an entry (e.g. one TensorRT refused to deserialize)."""
        for path in (self.sidecar_path(key), self.engine_path(key)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def stale_for(self, onnx_sha256: str, precision: str, batch_range: Sequence[int], target: Target, build_path: str = "onnx") -> list[dict[str, Any]]:
        """Entries for the same model and options that were built for another TensorRT or GPU."""
        wanted = list(validate_batch_range(batch_range))
        return [
            m for m in self.entries()
            if m.get("onnx_sha256") == onnx_sha256 and m.get("precision") == precision and m.get("batch_range") == wanted
            and m.get("build_path", "onnx") == build_path and target_mismatch(m, target)
        ]

    def get_or_build(
        self,
        onnx_bytes: bytes,
        spec: ModelSpec,
        precision: str,
        batch_range: Sequence[int] = DEFAULT_BATCH_RANGE,
        target: Target | None = None,
        build: Callable[..., bytes] = build_engine,
        build_path: str = "onnx",
        **build_kwargs: Any,
    ) -> tuple[bytes, str]:
        """(engine bytes, key): the cached engine for this target, else a fresh build that is then cached.

        `onnx_bytes` must already be the graph the plan needs for this TensorRT and precision.
        """
        batch_range = validate_batch_range(batch_range)
        if precision not in PRECISIONS:
            raise TensorRTOptionError(f"precision '{precision}': not one of {list(PRECISIONS)}")
        target = target if target is not None else current_target(build_kwargs.get("trt_module"))
        onnx_sha = sha256_bytes(onnx_bytes)
        keyed = {k: build_kwargs.get(k) for k in KEYED_BUILD_OPTIONS}
        key = engine_cache_key(onnx_sha, target.tensorrt_version, target.gpu_name, target.compute_capability, precision, batch_range,
                               build_path, keyed)
        engine = self.get(key, target)
        if engine is not None:
            log.info("engine cache: using %s", self.engine_path(key))
            return engine, key
        for old in self.stale_for(onnx_sha, precision, batch_range, target, build_path):
            log.warning(
                "engine cache: %s was built for TensorRT %s on %s (sm %s); this is TensorRT %s on %s (sm %s): building a new one",
                old.get("key"), old.get("tensorrt_version"), old.get("gpu_name"), old.get("compute_capability"),
                target.tensorrt_version, target.gpu_name, target.compute_capability,
            )
        if not build_kwargs.get("timing_cache"):
            build_kwargs["timing_cache"] = self.root / f"timing-trt{target.tensorrt_version}-sm{target.compute_capability}.cache"
        engine = build(onnx_bytes, spec, precision, batch_range=batch_range, **build_kwargs)
        self.put(key, engine, target, onnx_sha, precision, batch_range, spec, build_path)
        log.info("engine cache: stored %s", self.engine_path(key))
        return engine, key


def engine_sidecar(key: str | None, engine: bytes, target: Target, onnx_sha256: str, precision: str, batch_range: Sequence[int], spec: ModelSpec,
                   build_path: str = "onnx", options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What an engine was built from and for: the cache's sidecar, also written beside an engine file."""
    return {
        "sidecar_schema": SIDECAR_SCHEMA,
        "key": key,
        "onnx_sha256": onnx_sha256,
        **asdict(target),
        "precision": precision,
        "batch_range": list(validate_batch_range(batch_range)),
        "build_path": build_path,
        "build_options": dict(options or {}),
        "engine_sha256": sha256_bytes(engine),
        "engine_bytes": len(engine),
        "created_unix": int(time.time()),
        "model.spec.json": spec.to_dict(),
    }


def sidecar_for(engine_path: str | os.PathLike) -> Path:
    """`model.engine` -> `model.engine.json`: the sidecar travels with an engine file."""
    return Path(f"{engine_path}.json")


def write_engine_file(path: str | os.PathLike, engine: bytes, meta: dict[str, Any], sidecar: str | os.PathLike | None = None) -> Path:
    """Engine first, sidecar last (atomic writes): an engine without a sidecar is never loaded."""
    path = Path(path)
    atomic_write_bytes(path, engine)
    atomic_write_text(Path(sidecar) if sidecar is not None else sidecar_for(path), json.dumps(meta, indent=2, sort_keys=True))
    return path


def read_engine_file(path: str | os.PathLike, spec: ModelSpec, target: Target | None = None) -> tuple[bytes, dict[str, Any]]:
    """`wbc-run --engine FILE`: the engine bytes and sidecar, checked against the bundle's spec and this TensorRT/GPU.

    Every refusal is one line naming the file and what does not match.
    """
    path = Path(path)
    if not path.is_file():
        raise TensorRTError(f"engine {path}: no such file")
    sidecar = sidecar_for(path)
    if not sidecar.is_file():
        raise TensorRTError(f"engine {path}: no sidecar {sidecar.name} (build it with `wbc-engine build --output FILE`, which writes one)")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TensorRTError(f"engine {path}: sidecar {sidecar.name} unreadable ({e})") from None
    engine = path.read_bytes()
    if meta.get("engine_sha256") != sha256_bytes(engine):
        raise TensorRTError(f"engine {path}: fails the SHA-256 in {sidecar.name} (truncated, or another engine)")
    built_spec = meta.get("model.spec.json")
    if built_spec != spec.to_dict():
        fields = sorted(k for k in set(built_spec or {}) | set(spec.to_dict()) if (built_spec or {}).get(k) != spec.to_dict().get(k))
        raise TensorRTError(f"engine {path}: built for another model spec (differs in {', '.join(fields) or 'everything'})")
    if target is not None:
        mismatch = target_mismatch(meta, target)
        if mismatch:
            raise TensorRTError(f"engine {path}: {mismatch}; rebuild it here with `wbc-engine build --output FILE`")
    return engine, meta


def target_mismatch(meta: dict[str, Any], target: Target) -> str | None:
    """Why a cached engine's sidecar does not fit this target, or None when it does."""
    built = (meta.get("tensorrt_version"), meta.get("gpu_name"), str(meta.get("compute_capability")))
    here = (target.tensorrt_version, target.gpu_name, target.compute_capability)
    if built == here:
        return None
    return f"built for TensorRT {built[0]} on {built[1]} (sm {built[2]}), this is TensorRT {here[0]} on {here[1]} (sm {here[2]})"


def engine_from_bundle(bundle: Any, precision: str, cache: EngineCache | None = None, batch_range: Sequence[int] = DEFAULT_BATCH_RANGE, fp16_source: str = "auto", trt_module: Any | None = None, target: Target | None = None, **build_kwargs: Any) -> tuple[bytes, str]:
    """The engine for a bundle on this target: from the cache, or built from the member the plan names.

    `build_kwargs` go to `EngineCache.get_or_build` (e.g. `build=` another builder, `workspace_mb=`).
    """
    cache = cache if cache is not None else EngineCache()
    trt = trt_module if trt_module is not None else import_tensorrt()
    plan = plan_build(trt.__version__, precision, fp16_source)
    if not bundle.has(plan.onnx_member):
        raise TensorRTError(
            f"bundle {bundle.path}: {precision} on TensorRT {version_text(plan.tensorrt_version)} builds from {plan.onnx_member}, which this bundle lacks (has {bundle.precisions})"
        )
    return cache.get_or_build(
        bundle.read(plan.onnx_member), bundle.spec, precision, batch_range, target=target if target is not None else current_target(trt),
        fp16_source=fp16_source, trt_module=trt_module, **build_kwargs,
    )


def _choice_path(cache: EngineCache, bundle: Any, target: Target) -> Path:
    # Keyed by every graph an engine is built from: a re-export with a new INT8 calibration (same FP32)
    # is gated again, never answered by a choice made on the old INT8 graph.
    members = {m: bundle.member_sha256(m) for m in sorted(set(_MEMBER.values())) if bundle.has(m)}
    key = hashlib.sha256(json.dumps([members, asdict(target)], sort_keys=True).encode()).hexdigest()[:24]
    return cache.root / "choices" / f"auto-{key}.json"


def record_choice(cache: EngineCache, bundle: Any, precision: str, why: str, report: dict[str, Any] | None = None,
                  target: Target | None = None) -> Path:
    """Keep the engine gate's `auto` choice for this bundle on this TensorRT and GPU (read by open_backend)."""
    target = target if target is not None else current_target()
    path = _choice_path(cache, bundle, target)
    body = {"precision": precision, "why": why, **asdict(target), "bundle": str(bundle.path), "created_unix": int(time.time()),
            "engines": (report or {}).get("engines")}
    atomic_write_text(path, json.dumps(body, indent=2, sort_keys=True))
    return path


def recorded_choice(cache: EngineCache, bundle: Any, target: Target) -> dict[str, Any] | None:
    """The recorded `auto` choice for this bundle and target, or None (none made here, or unreadable)."""
    path = _choice_path(cache, bundle, target)
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        log.warning("engine gate choice %s: unreadable (%s), ignored", path, e)
        return None
    body["path"] = str(path)
    return body


def parse_engine_list(text: str) -> list[str]:
    """'fp16,int8' -> ['fp16', 'int8'] (the `--engine` option); 'int8-trt' is accepted for 'int8'."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise TensorRTOptionError(f"--engine: name one or more of {', '.join(PRECISIONS)} (comma-separated)")
    engines = []
    for n in names:
        try:
            engines.append(precisions.engine_precision(n))
        except UsageError:
            raise TensorRTOptionError(f"--engine '{n}': not one of {list(PRECISIONS)}") from None
    return list(dict.fromkeys(engines))


def bundle_engine_precisions(bundle: Any, tensorrt_version: str | Sequence[int]) -> dict[str, str]:
    """{engine precision: how it is built} for the precisions this TensorRT can build from this bundle.

    TensorRT 11 is strongly typed only, so FP16 needs model.fp16.onnx; 10.x may build FP16 from the FP32
    graph with BuilderFlag.FP16 (said in the note, since it is not the graph the gate checked).
    """
    out = {}
    for precision in PRECISIONS:
        try:
            plan = plan_build(tensorrt_version, precision)
        except TensorRTError:
            continue
        if bundle.has(plan.onnx_member):
            flags = f" + BuilderFlag.{'/'.join(plan.builder_flags)}" if plan.builder_flags else ""
            typing = "strongly typed" if plan.strongly_typed else "weakly typed"
            out[precision] = f"{plan.onnx_member}{flags}, {typing}"
    return out


def build_bundle_engines(bundle: Any, precisions: Sequence[str], cache: EngineCache | str | os.PathLike | None = None,
                         batch_range: Sequence[int] = DEFAULT_BATCH_RANGE, workspace_mb: int = DEFAULT_WORKSPACE_MB,
                         fp16_source: str = "auto", trt_module: Any | None = None, target: Target | None = None,
                         optimization_level: int | None = None, dla_core: int | None = None,
                         timing_cache: str | os.PathLike | None = None, output: str | os.PathLike | None = None,
                         build: Callable[..., bytes] | None = None, build_path: str = "onnx") -> list[dict[str, Any]]:
    """Put this target's engines for a bundle in the cache (and, with `output`, copy them to engine files).

    Returns one row per precision: precision, key, engine path, bytes. The runtime later finds cached
    engines by the same key. `output`: one precision -> that file; several -> `<stem>.<precision><suffix>`.
    `build`/`build_path` let export's torch-tensorrt path reuse the cache under its own key.
    """
    batch_range = validate_batch_range(batch_range)
    validate_options(precisions[0] if precisions else "fp32", batch_range, workspace_mb, fp16_source)
    options = BuildOptions(workspace_mb, optimization_level, dla_core, timing_cache)
    engine_cache = cache if isinstance(cache, EngineCache) else EngineCache(cache)
    target = target if target is not None else current_target(trt_module)
    rows = []
    for precision in precisions:
        kwargs: dict[str, Any] = {"workspace_mb": workspace_mb, "optimization_level": optimization_level, "dla_core": dla_core, "build_path": build_path}
        if timing_cache is not None:
            kwargs["timing_cache"] = timing_cache
        if build is not None:
            kwargs["build"] = build
        engine, key = engine_from_bundle(bundle, precision, engine_cache, batch_range, fp16_source=fp16_source, trt_module=trt_module, target=target, **kwargs)
        path = engine_cache.engine_path(key)
        if output is not None:
            out = Path(output)
            if len(precisions) > 1:
                out = out.with_name(f"{out.stem}.{precision}{out.suffix or '.engine'}")
            meta = json.loads(engine_cache.sidecar_path(key).read_text())
            meta["build_options"] = {k: v for k, v in asdict(options).items() if v is not None and k != "timing_cache"}
            path = write_engine_file(out, engine, meta)
        rows.append({"precision": precision, "key": key, "path": str(path), "bytes": len(engine), "build_path": build_path})
    return rows
