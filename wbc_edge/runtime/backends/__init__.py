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

__all__ = ["BACKENDS", "PRECISIONS", "Runner", "open_backend", "gate_verdict", "tensorrt_available"]


def tensorrt_available() -> tuple[bool, str]:
    """(usable, why): TensorRT importable and a CUDA device present."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "tensorrt is not installed"
    n = _cuda_device_count()
    if n is None:
        return False, "tensorrt is installed but no CUDA runtime binding (cuda-python or pycuda) answers"
    if n == 0:
        return False, "tensorrt is installed but no CUDA device is present"
    return True, f"tensorrt with {n} CUDA device(s)"


def _cuda_device_count() -> int | None:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            cudart = None
    if cudart is not None:
        try:
            err, n = cudart.cudaGetDeviceCount()
            return int(n) if int(err) == 0 else 0
        except Exception:  # a broken driver install reports through many exception types
            return 0
    try:
        import pycuda.driver as drv

        drv.init()
        return drv.Device.count()
    except ImportError:
        return None
    except Exception:
        return 0


def gate_verdict(bundle: Bundle, precision: str) -> tuple[bool | None, str]:
    """Did the export accuracy gate accept `precision`? (True/False, or None when not recorded)."""
    return gate_report.read_verdict(bundle, precision)


def _pick_precision(bundle: Bundle, target: str, precision: str) -> tuple[str, str]:
    have = list(bundle.precisions)
    if target == "tensorrt" and "fp16" not in have and "fp32" in have:
        have.append("fp16")  # TensorRT builds FP16 from the FP32 graph (builder flag / conversion)
    precision = precisions.resolve(precision, target.split("-")[0])
    if precision != "auto":
        if precision not in have:
            raise BundleError(f"bundle {bundle.path}: has no {precision} model (has {have})")
        return precision, f"{precision} as asked"
    notes = []
    for cand in precisions.AUTO_ORDER[target]:
        if cand not in have:
            notes.append(f"no {cand} in bundle")
            continue
        ok, why = gate_verdict(bundle, cand)
        # INT8 needs the gate's explicit pass; FP16 only needs not to have failed it
        if ok or (ok is None and not precisions.get(cand).quantized):
            return cand, why if ok else f"{cand} present"
        notes.append(why)
    return "fp32", "; ".join(notes) or "default"


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
