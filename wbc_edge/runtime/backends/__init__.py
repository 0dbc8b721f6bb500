"""Choosing and opening an inference backend for a bundle.

`open_backend(bundle, backend, precision)` returns an (inactive) `Runner`; `runner.choice_reason`
says why that backend and precision were picked. TensorRT is imported only when it is asked for or
probed, so this package imports without it.
"""
from __future__ import annotations

import importlib.util
import logging
from typing import Any

from wbc_edge import gate_report, precisions
from wbc_edge.bundle import Bundle
from wbc_edge.errors import BackendUnavailable, BundleError, UsageError
from wbc_edge.runtime.backends.base import Runner

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")
PRECISIONS = precisions.CHOICES

__all__ = ["BACKENDS", "PRECISIONS", "Runner", "open_backend", "open_engine", "gate_verdict", "tensorrt_available"]


def tensorrt_available() -> tuple[bool, str]:
    """(usable, why): TensorRT importable and a CUDA device present (probed as the memory layer opens it)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "tensorrt is not installed"
    n, why = _cuda_device_count()
    if n is None:
        return False, f"tensorrt is installed but no CUDA binding (pycuda or cuda-python) imports ({why})"
    if n == 0:
        return False, f"tensorrt is installed but no CUDA device answers ({why})"
    return True, f"tensorrt with {why}"


def _cuda_device_count() -> tuple[int | None, str]:
    from wbc_edge.runtime.backends.cuda_memory import cuda_device_count  # noqa: PLC0415  (one probe order)

    return cuda_device_count()


def gate_verdict(bundle: Bundle, precision: str) -> tuple[bool | None, str]:
    """Did the export accuracy gate accept `precision`? (True/False, or None when not recorded)."""
    return gate_report.read_verdict(bundle, precision)


def _tensorrt_buildable(bundle: Bundle, version: str | None = None) -> dict[str, str]:
    """{bundle precision: how this TensorRT builds it} for what the installed TensorRT can build from the bundle."""
    from wbc_edge.runtime.backends import tensorrt_build  # noqa: PLC0415

    version = version if version is not None else tensorrt_build.trt_version()
    if version is None:
        return {}
    built = tensorrt_build.bundle_engine_precisions(bundle, version)
    return {precisions.ENGINE_SOURCE[e]: how for e, how in built.items()}


def _pick_precision(bundle: Bundle, target: str, precision: str, tensorrt_version: str | None = None) -> tuple[str, str]:
    have = list(bundle.precisions)
    how: dict[str, str] = {}
    if target == "tensorrt":
        # What this TensorRT can build: 11.x needs model.fp16.onnx for FP16; 10.x may build it from FP32 + flag.
        how = _tensorrt_buildable(bundle, tensorrt_version)
        have = [p for p in precisions.run_on("tensorrt") if p in how]
    precision = precisions.resolve(precision, target.split("-")[0])
    if precision != "auto":
        if precision not in have:
            if target == "tensorrt":
                raise BundleError(f"bundle {bundle.path}: this TensorRT cannot build {precision} from it (builds {have}; TensorRT 11 builds fp16 only from model.fp16.onnx)")
            raise BundleError(f"bundle {bundle.path}: has no {precision} model (has {have})")
        return precision, f"{precision} as asked"
    notes = []
    for cand in precisions.AUTO_ORDER[target]:
        if cand not in have:
            notes.append(f"no {cand} in bundle" if target != "tensorrt" else f"TensorRT cannot build {cand} from this bundle")
            continue
        ok, why = gate_verdict(bundle, cand)
        built = f"; built from {how[cand]}" if cand in how else ""
        if cand in how and cand not in bundle.precisions:
            built += ", not the graph the gate checked"
        # INT8 needs the gate's explicit pass; FP16 only needs not to have failed it
        if ok or (ok is None and not precisions.get(cand).quantized):
            return cand, (why if ok else f"{cand} present") + built
        notes.append(why)
    return "fp32", "; ".join(notes) or "default"


def _engine_gate_choice(bundle: Bundle, engine_cache: str | None) -> tuple[str, str] | None:
    """The precision the engine gate chose on this device (`wbc-export compare --backend tensorrt`), if any."""
    from wbc_edge.runtime.backends import tensorrt_build as tb  # noqa: PLC0415

    try:
        choice = tb.recorded_choice(tb.EngineCache(engine_cache), bundle, tb.current_target())
    except BackendUnavailable:
        return None
    if choice is None:
        return None
    return choice["precision"], f"chosen on this device by the engine gate and timing ({choice['why']}; {choice['path']})"


def open_engine(bundle: Bundle | str, engine_path: str, trt_module: Any = None, **kw: Any) -> Runner:
    """`wbc-run --engine FILE`: an inactive runner on a prebuilt engine, checked against the bundle, TensorRT and GPU."""
    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle)
    ok, why = tensorrt_available() if trt_module is None else (True, "given")
    if not ok:
        raise BackendUnavailable(f"--engine {engine_path}: {why}")
    from wbc_edge.runtime.backends.tensorrt import TensorRTRunner  # noqa: PLC0415

    runner = TensorRTRunner.from_engine_file(engine_path, bundle, trt_module=trt_module, **kw)
    meta = runner.engine_meta
    runner.choice_reason = (f"backend tensorrt (prebuilt engine {engine_path}), precision {runner.precision} "
                            f"(built by TensorRT {meta.get('tensorrt_version')} on {meta.get('gpu_name')}, batch {meta.get('batch_range')})")
    return runner


def open_backend(bundle: Bundle | str, backend: str = "auto", precision: str = "auto",
                 intra_op_threads: int | None = None, engine_cache: str | None = None) -> Runner:
    """An inactive runner for the bundle; call `activate()` (or use it as a context manager).

    auto backend: TensorRT when it imports and a CUDA device exists, else ONNX Runtime on CUDA when
    its provider is installed, else ONNX Runtime on CPU. auto precision: the gate-accepted INT8 variant
    for that backend if the bundle has one (TensorRT: then FP16), else FP32.
    """
    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle)
    if backend not in BACKENDS:
        raise UsageError(f"backend '{backend}' is not one of {list(BACKENDS)}")
    if precision not in PRECISIONS:
        raise UsageError(f"precision '{precision}' is not one of {list(PRECISIONS)}")

    from wbc_edge.runtime.backends.onnxruntime import OnnxRuntimeRunner, cuda_provider_available

    why_backend = backend + " as asked"
    if backend in ("auto", "tensorrt"):
        ok, why = tensorrt_available()
        if ok:
            backend, why_backend = "tensorrt", why
        elif backend == "tensorrt":
            raise BackendUnavailable(f"backend tensorrt: {why}")
        else:
            backend, why_backend = "onnxruntime", why
    runner: Runner
    if backend == "tensorrt":
        choice = _engine_gate_choice(bundle, engine_cache) if precision == "auto" else None
        if choice is not None:
            prec, why_prec = choice
        else:
            prec, why_prec = _pick_precision(bundle, "tensorrt", precision)
        try:
            from wbc_edge.runtime.backends.tensorrt import TensorRTRunner
        except ImportError as e:
            raise BackendUnavailable(f"backend tensorrt: runner not importable ({e})") from None
        kw = {"cache": engine_cache} if engine_cache else {}
        runner = TensorRTRunner.from_bundle(bundle, prec, **kw)
    else:
        device = "cuda" if cuda_provider_available() else "cpu"
        prec, why_prec = _pick_precision(bundle, f"onnxruntime-{device}", precision)
        runner = OnnxRuntimeRunner.from_bundle(bundle, prec, device=device, intra_op_threads=intra_op_threads)
        why_backend += f"; onnxruntime on {device}"
    runner.choice_reason = f"backend {runner.backend} ({why_backend}), precision {prec} ({why_prec})"
    log.info("%s", runner.choice_reason)
    return runner
