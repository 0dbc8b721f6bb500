"""The export's report: one self-contained HTML page per bundle, rebuilt from the bundle's own members.

What the gate measured (`accuracy.json`) and what the differential estimate was calibrated on
(`quantification.json`): the gate table, the temperatures and class bias, expected calibration error
before and after, a reliability diagram of each (inline SVG, no plotting library), the training prior
and the held-out confusion per precision. `wbc-export --report`, `wbc-export quantify --report` and
`wbc-export report --bundle B --out R` write it.
"""
from __future__ import annotations

import html
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from wbc_edge import gate_report
from wbc_edge.bundle import Bundle, atomic_write_text
from wbc_edge.outputs import REPORT_MARKER
from wbc_edge.runtime.quantify import QUANT_MEMBER, member_pooling
from wbc_edge.runtime.report import CSS
from wbc_edge.spec import CLASS_ABBREV

_POOLING_TEXT = {"log-mean": "the heads' geometric mean", "mean": "the heads' arithmetic mean (the graph's combined output)"}


def reliability_svg(bins: Sequence[Mapping[str, Any]], title: str, size: int = 260) -> str:
    """A reliability diagram: per confidence bin, the accuracy as a bar over [low, high), the diagonal
    (perfect calibration) and the bin's cell count; bins without cells are absent."""
    pad = 34
    plot = size - 2 * pad
    x = lambda v: pad + plot * float(v)  # noqa: E731
    y = lambda v: size - pad - plot * float(v)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size + 18}" role="img" '
             f'aria-label="{html.escape(title)}"><text x="{size / 2}" y="14" font-size="12" text-anchor="middle">'
             f'{html.escape(title)}</text><g transform="translate(0,18)">']
    for tick in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{x(tick)}" y="{size - pad + 14}" font-size="10" text-anchor="middle" fill="#666">{tick:g}</text>'
                     f'<text x="{pad - 4}" y="{y(tick) + 3}" font-size="10" text-anchor="end" fill="#666">{tick:g}</text>')
    parts.append(f'<rect x="{pad}" y="{pad}" width="{plot}" height="{plot}" fill="none" stroke="#ccc"/>')
    for b in bins:
        w = x(b["high"]) - x(b["low"])
        parts.append(f'<rect x="{x(b["low"]):.1f}" y="{y(b["accuracy"]):.1f}" width="{max(w - 1, 1):.1f}" '
                     f'height="{plot * float(b["accuracy"]):.1f}" fill="#2a9d8f" fill-opacity="0.8">'
                     f'<title>confidence {b["low"]:.2f}-{b["high"]:.2f}: {b["n"]} cells, accuracy {100 * b["accuracy"]:.1f}%, '
                     f'mean confidence {100 * b["confidence"]:.1f}%</title></rect>'
                     f'<circle cx="{x(b["confidence"]):.1f}" cy="{y(b["accuracy"]):.1f}" r="2.5" fill="#e76f51"/>')
    parts.append(f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#222" stroke-dasharray="4 3"/>'
                 f'<text x="{size / 2}" y="{size - 4}" font-size="10" text-anchor="middle" fill="#666">top-class probability</text>'
                 '</g></svg>')
    return "".join(parts)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _gate_section(report: Mapping[str, Any], classes: Sequence[str]) -> str:
    abbrev = [CLASS_ABBREV.get(c, c) for c in classes]
    rows = []
    for precision, row in report.get("precisions", {}).items():
        recalls = row.get("per_class_recall", {})
        rows.append([precision, f"{row.get('weighted_f1', float('nan')):.2f}", f"{row.get('weighted_f1_drop', 0.0):+.2f}",
                     f"{row.get('agreement_with_fp32', float('nan')):.2f}",
                     *("-" if recalls.get(c) is None else f"{recalls[c]:.1f}" for c in classes),
                     {True: "pass", False: "FAIL"}.get(row.get("passed"), "")])
    where = f" of {report['data']}" if report.get("data") else ""
    return (f"<h2>Accuracy gate</h2><p class='note'>{report.get('n_cells', '?')} held-out cells{html.escape(where)}; a "
            f"precision more than {report.get('max_drop', '?')} weighted-F1 points below fp32 fails.</p>"
            + _table(["precision", "weighted F1 %", "drop", "agree with fp32 %", *(f"{a} recall %" for a in abbrev), "gate"], rows))


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "not recorded"


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "not recorded"


def _calibration_section(quant: Mapping[str, Any]) -> str:
    fit, temps = quant.get("fit") or {}, quant.get("temperature") or {}
    classes = list(quant.get("classes") or [])
    abbrev = [CLASS_ABBREV.get(c, c) for c in classes]
    pooling = member_pooling(quant)
    bias = ", ".join(f"{a} {v:+.2f}" for a, v in zip(abbrev, temps.get("class_bias") or []))
    heads = ", ".join(f"{h} {t:.2f}" for h, t in (temps.get("heads") or {}).items())
    counts = ", ".join(f"{a} {n}" for a, n in zip(abbrev, fit.get("class_counts") or []))
    facts = [("fitted on", f"{fit.get('n_cells', '?')} held-out cells ({counts or 'class counts not recorded'})"
              + (f" of {fit['data']}" if fit.get("data") else "")),
             ("a cell's row", _POOLING_TEXT.get(pooling, pooling)),
             ("temperature", f"{temps.get('combined', 1.0):.3f} (heads: {heads or 'none'})"), ("class bias b", bias or "none"),
             ("training prior", ", ".join(f"{a} {100 * v:.1f}%" for a, v in zip(abbrev, quant.get("train_prior") or []))),
             ("ECE (fp32)", f"{_pct(fit.get('ece_before'))} before, {_pct(fit.get('ece_after'))} after "
                            f"(the graph's combined output: {_pct(fit.get('ece_graph'))})"),
             ("NLL (fp32)", f"{_num(fit.get('nll_before'))} before, {_num(fit.get('nll_after'))} after")]
    out = ["<h2>Probability calibration (the differential estimate's input)</h2><table class='facts'>"]
    out += [f"<tr><td class='label'>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in facts]
    out.append("</table><p class='note'>Bias-corrected temperature scaling, softmax(z / T + b), of each cell's pooled "
               "row. Before: the pooled rows as they come from the heads; after: the calibrated posteriors EM prior "
               "adaptation reads. Bars: accuracy per confidence bin; dots: that accuracy at the bin's mean confidence "
               "(on the dashed diagonal when calibrated).</p>")
    before = reliability_svg(fit.get("reliability_before") or [], f"before: ECE {_pct(fit.get('ece_before'))}")
    after = reliability_svg(fit.get("reliability_after") or [], f"after: ECE {_pct(fit.get('ece_after'))}")
    out.append(f"<div>{before}{after}</div>")
    precisions = quant.get("precisions") or {}
    rows = [[p, r.get("n_cells", "?"), _pct(r.get("ece_before")), _pct(r.get("ece_after"))] for p, r in precisions.items()]
    out.append("<h3>Per precision</h3>" + _table(["precision", "held-out cells", "ECE before", "ECE after"], rows))
    for precision, r in precisions.items():
        confusion = [[abbrev[i] if i < len(abbrev) else i, *row] for i, row in enumerate(r.get("confusion") or [])]
        out.append(f"<h3>Held-out confusion, {html.escape(precision)} (rows: true class; columns: calibrated argmax)</h3>"
                   + _table(["true \\ called", *abbrev], confusion))
    return "".join(out)


def export_report_html(bundle: Bundle) -> str:
    spec = bundle.spec
    facts = [("bundle", str(bundle.path)), ("precisions", ", ".join(bundle.precisions)),
             ("classes", ", ".join(spec.classes)), ("lights", ", ".join(spec.modalities)),
             ("input", f"{spec.input_size} px, {spec.method}, {spec.num_heads} head(s)"),
             ("written", time.strftime("%Y-%m-%d %H:%M:%S"))]
    body = ["<table class='facts'>"] + [f"<tr><td class='label'>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                                        for k, v in facts] + ["</table>"]
    if bundle.has(gate_report.MEMBER):
        body.append(_gate_section(bundle.read_json(gate_report.MEMBER), spec.classes))
    else:
        body.append("<h2>Accuracy gate</h2><p>This bundle records no gate (exported without held-out cells).</p>")
    if bundle.has(QUANT_MEMBER):
        body.append(_calibration_section(bundle.read_json(QUANT_MEMBER)))
    else:
        body.append("<h2>Probability calibration</h2><p>No quantification.json: the runtime reports argmax counts only "
                    "(add it with <code>wbc-export quantify</code>).</p>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>{REPORT_MARKER}<title>wbc-edge export report</title>"
            f"<style>{CSS}</style></head><body><h1>Export report</h1>{''.join(body)}</body></html>")


def write_export_report(bundle_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The report of the bundle at `bundle_path`, written atomically to `out`."""
    atomic_write_text(out, export_report_html(Bundle.open(bundle_path)))
    return Path(out)


__all__ = ["export_report_html", "reliability_svg", "write_export_report"]
