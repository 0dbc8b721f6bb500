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
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)  # fvcore's import
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


def paper_agreement(ours_m: float, paper_m: float, decimals: int) -> str:
    """'exact' when `ours_m` prints as the paper's figure; 'last digit' when one unit of the paper's
    last printed digit apart (its rounding: docs/table1.md names each case); else 'DIFFERS'."""
    if f"{ours_m:.{decimals}f}" == f"{paper_m:.{decimals}f}":
        return "exact"
    return "last digit" if abs(ours_m - paper_m) <= 1.01 * 10.0 ** -decimals else "DIFFERS"


def format_complexity_table(rows: list[dict[str, Any]], backbone: str, input_size: int) -> str:
    """A markdown table of complexity rows, MACs to 2 and params to 3 decimals (the paper's precision).

    At 224 px for a backbone of the paper, the paper's printed figures stand beside each count."""
    paper = PAPER_COMPLEXITY_224.get(backbone) if input_size == 224 else None
    lines = [f"Complexity of {backbone} at {input_size} x {input_size} (fvcore MACs)", ""]
    if not paper:
        lines += ["| method | MACs (M) | params (M) |", "|---|---:|---:|"]
        lines += [f"| {r['method']} | {r['macs_m']:.2f} | {r['params_m']:.3f} |" for r in rows]
        return "\n".join(lines) + "\n"
    lines += ["| method | MACs (M) | paper MACs (M) | params (M) | paper params (M) | agreement |",
              "|---|---:|---:|---:|---:|---|"]
    single = next((r for r in rows if architecture_of(r["method"]) == "single"), None)
    for r in rows:
        arch = architecture_of(r["method"])
        p_macs, p_params = paper[arch]
        agree = {paper_agreement(r["macs_m"], p_macs, 2), paper_agreement(r["params_m"], p_params, 3)}
        if arch == "late" and single is not None and "DIFFERS" in agree:
            # The paper's late row is four times its own rounded single row: compare on that footing.
            from_single = {paper_agreement(4 * round(single["macs_m"], 2), p_macs, 2),
                           paper_agreement(4 * round(single["params_m"], 3), p_params, 3)}
            agree = {"last digit"} if "DIFFERS" not in from_single else agree
        verdict = "DIFFERS" if "DIFFERS" in agree else "last digit (paper's rounding)" if "last digit" in agree else "exact"
        lines.append(f"| {r['method']} | {r['macs_m']:.2f} | {p_macs:.2f} | {r['params_m']:.3f} | {p_params:.3f} | {verdict} |")
    lines += ["", "Exact integer counts: --json. Where the paper's last digit differs, its own rounding is the "
                  "cause (docs/table1.md)."]
    return "\n".join(lines) + "\n"
