"""Parameters and multiply-accumulates (MACs) of every Table 1 model, counted like the paper.

The paper's "FLOPs" are multiply-adds as fvcore's `FlopCountAnalysis` counts them (one per
multiply-accumulate of convolutions and linear layers, plus fvcore's batch-norm and pooling rules),
traced in eval mode on a batch of one at the spec's input size.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

from wbc_edge.spec import MODALITIES, ModelSpec, spec_for

log = logging.getLogger(__name__)

# Table 1 rows without training: the KD variants share their student's architecture.
COMPLEXITY_METHODS = ("single", "early", "early-kd", "late", "mimo", "mimo-kd")

# The paper's Table 1 complexity columns at 224 x 224 (MACs in millions, params in millions,
# printed to 2 and 3 decimals). The late-fusion row is the paper's four single networks.
PAPER_COMPLEXITY_224 = {
    "shufflenet_v2_x1_0": {
        "single": (147.79, 1.259), "early": (172.17, 1.261), "late": (591.16, 5.036), "mimo": (172.19, 1.276),
    },
    "resnet34": {
        "single": (3670.75, 21.287), "early": (4024.79, 21.315), "late": (14683.02, 85.148), "mimo": (4024.80, 21.323),
    },
}


def architecture_of(method: str) -> str:
    """The spec method ('single', 'early', 'late', 'mimo') a Table 1 method name trains.

    'single:<light>' -> single, 'early-kd' -> early, 'mimo-kd' -> mimo.
    """
    base = method.split(":", 1)[0]
    if base.endswith("-kd"):
        base = base[: -len("-kd")]
    return base


def spec_for_method(method: str, backbone: str, input_size: int = 224,
                    modalities: tuple[str, ...] = MODALITIES, **kw: Any) -> ModelSpec:
    """A spec for a Table 1 method name ('single:<light>', 'early', 'late', 'mimo', '*-kd')."""
    arch = architecture_of(method)
    if arch == "single":
        light = method.split(":", 1)[1] if ":" in method else modalities[0]
        return spec_for("single", (light,), backbone=backbone, input_size=input_size, **kw)
    return spec_for(arch, tuple(modalities), backbone=backbone, input_size=input_size, **kw)


def count_model(model: torch.nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """fvcore MACs and parameter count of `model` on a zero input of `input_shape` (eval mode)."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings say nothing about the count
            analysis = FlopCountAnalysis(model, torch.zeros(input_shape))
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            macs = int(analysis.total())
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return {"macs": macs, "params": int(params)}


def complexity(spec: ModelSpec) -> dict[str, int]:
    """MACs and parameters of the network `create_model(spec)` builds, at the spec's input size."""
    # Light and class names do not change the network: one count per shape (tracing takes seconds).
    from wbc_edge.train.models import create_model

    key = (spec.backbone, spec.method, spec.in_channels, spec.num_heads, spec.num_classes, spec.input_size)
    if key not in _COUNTS:
        _COUNTS[key] = count_model(create_model(spec), spec.input_shape(1))
    return dict(_COUNTS[key])


_COUNTS: dict[tuple, dict[str, int]] = {}


def complexity_rows(backbone: str, input_size: int = 224, modalities: tuple[str, ...] = MODALITIES,
                    methods: tuple[str, ...] = COMPLEXITY_METHODS) -> list[dict[str, Any]]:
    """One row per Table 1 method: {"method", "macs", "params", "macs_m", "params_m"}.

    Each architecture is counted once and reused for its KD twin and the other lights.
    """
    rows = []
    for method in methods:
        c = complexity(spec_for_method(method, backbone, input_size, modalities))
        rows.append({"method": method, "macs": c["macs"], "params": c["params"],
                     "macs_m": c["macs"] / 1e6, "params_m": c["params"] / 1e6})
    return rows


def format_complexity_table(rows: list[dict[str, Any]], backbone: str, input_size: int) -> str:
    """A markdown table of complexity rows, MACs to 2 and params to 3 decimals (the paper's precision)."""
    lines = [f"Complexity of {backbone} at {input_size} x {input_size} (fvcore MACs)", "",
             "| method | MACs (M) | params (M) |", "|---|---:|---:|"]
    lines += [f"| {r['method']} | {r['macs_m']:.2f} | {r['params_m']:.3f} |" for r in rows]
    return "\n".join(lines) + "\n"
