"""A self-contained HTML report a lab user can read: differential with CIs, a chart, run facts, cells.

No network and no plotting library: the chart is inline SVG, the cell crops are inline base64 PNGs.
"""
from __future__ import annotations

import base64
import html
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from wbc_edge.bundle import atomic_write_text
from wbc_edge.outputs import REPORT_MARKER
from wbc_edge.data.images import encode_image
from wbc_edge.runtime.results import RunSummary
from wbc_edge.spec import CLASS_ABBREV

GALLERY_PX = 96  # crops are shown at this size (pixelated enough to see, small enough to scan)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222;max-width:960px}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd} h3{font-size:1em;margin-top:1.2em}
table{border-collapse:collapse} td,th{padding:.25em .8em;text-align:right;border-bottom:1px solid #eee}
td:first-child,th:first-child{text-align:left} .note{color:#666;font-size:.9em}
.facts td{text-align:left} .gallery img{margin:2px;border:1px solid #ccc;image-rendering:pixelated}
.row{margin:.4em 0} .label{display:inline-block;width:8em;vertical-align:top;font-weight:600}
"""


def _svg_chart(summary: RunSummary) -> str:
    """Horizontal bars: percent per class with its 95% interval as a whisker."""
    rows = summary.rows
    bar_h, gap, left, width = 22, 10, 110, 480
    height = len(rows) * (bar_h + gap) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
             f'role="img" aria-label="differential count chart">']
    for tick in range(0, 101, 20):
        x = left + width * tick / 100
        parts.append(f'<line x1="{x}" y1="0" x2="{x}" y2="{height - 20}" stroke="#eee"/>'
                     f'<text x="{x}" y="{height - 5}" font-size="11" text-anchor="middle" fill="#666">{tick}%</text>')
    for i, r in enumerate(rows):
        y = i * (bar_h + gap) + 5
        w = width * r.percent / 100
        lo, hi = left + width * r.ci_low / 100, left + width * r.ci_high / 100
        mid = y + bar_h / 2
        parts.append(
            f'<text x="{left - 8}" y="{mid + 4}" font-size="13" text-anchor="end">{html.escape(r.label)}</text>'
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#2a9d8f"/>'
            f'<line x1="{lo:.1f}" y1="{mid}" x2="{hi:.1f}" y2="{mid}" stroke="#222" stroke-width="1.5"/>'
            f'<line x1="{lo:.1f}" y1="{mid - 5}" x2="{lo:.1f}" y2="{mid + 5}" stroke="#222"/>'
            f'<line x1="{hi:.1f}" y1="{mid - 5}" x2="{hi:.1f}" y2="{mid + 5}" stroke="#222"/>'
            f'<text x="{max(w, hi - left) + left + 6:.1f}" y="{mid + 4}" font-size="12">{r.percent:.1f}% (n={r.count})</text>')
    parts.append("</svg>")
    return "".join(parts)


def _img_tag(rgb: np.ndarray, alt: str) -> str:
    if rgb.shape[0] != GALLERY_PX:
        rgb = cv2.resize(rgb, (GALLERY_PX, GALLERY_PX), interpolation=cv2.INTER_NEAREST)
    data = base64.b64encode(encode_image(rgb, ".png")).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" width="{GALLERY_PX}" height="{GALLERY_PX}" alt="{html.escape(alt)}">'


def render_report(summary: RunSummary, gallery: Mapping[str, Sequence[np.ndarray]] | None = None,
                  title: str = "White blood cell differential", extra_facts: Mapping[str, str] | None = None) -> str:
    esc = html.escape
    est = summary.estimate
    assessment = summary.assessment or {}
    ref, flags = assessment.get("intervals", {}), assessment.get("flags", {})
    est_head = "<th>estimate %</th><th>95% interval</th><th>reference %</th><th>flag</th>" if est else ""
    table = [f"<table><tr><th>class</th>{est_head}<th>argmax count</th><th>argmax %</th><th>95% CI</th></tr>"]
    for r in summary.rows:
        abbrev = CLASS_ABBREV.get(r.label, "")
        est_cells = ""
        if est and r.label in est["shares"]:
            rng = f"{ref[r.label][0]:g} &ndash; {ref[r.label][1]:g}" if r.label in ref else "-"
            est_cells = (f"<td><b>{100 * est['shares'][r.label]:.1f}</b></td><td>{100 * est['low'][r.label]:.1f} &ndash; "
                         f"{100 * est['high'][r.label]:.1f}</td><td>{rng}</td><td><b>{esc(flags.get(r.label, ''))}</b></td>")
        table.append(f"<tr><td>{esc(r.label)} {('(' + abbrev + ')') if abbrev else ''}</td>{est_cells}<td>{r.count}</td>"
                     f"<td>{r.percent:.1f}</td><td>{r.ci_low:.1f} &ndash; {r.ci_high:.1f}</td></tr>")
    pad = "<th></th>" * 4 if est else ""
    table.append(f"<tr><th>total</th>{pad}<th>{summary.total_cells}</th><th>100</th><th></th></tr></table>")
    notes = [summary.estimate_note] if summary.estimate_note else []
    if est and assessment:
        notes.append(f"Reference intervals: {assessment.get('source', '')}. H/L: the estimate is above/below the interval.")
        review = assessment.get("review") or []
        notes.append(("REVIEW this sample: " + "; ".join(review)) if review else "No review flag raised by the rules.")
    table.append("".join(f'<p class="note">{esc(n)}</p>' for n in notes))
    facts = {
        "source": summary.source, "model": summary.model,
        "backend / precision": f"{summary.backend} / {summary.precision}",
        "cells counted": str(summary.total_cells), "four-light sets": f"{summary.sets} ({summary.sets_skipped} skipped)",
        "frames": f"{summary.frames} read, {summary.frames_dropped} dropped, {summary.frames_rejected} rejected",
        "scale": getattr(summary, "scale", "") or "not recorded",
        "duration": f"{summary.duration_s:.1f} s", "stopped because": summary.stop_reason,
        "flags": ", ".join(f"{k}: {v}" for k, v in sorted(summary.flag_counts.items())) or "none",
        "results file": summary.results_path or "(not written)",
        "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    facts.update(extra_facts or {})
    fact_rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in facts.items())
    gallery_html = []
    for label in summary.classes:
        crops = list((gallery or {}).get(label, []))
        imgs = "".join(_img_tag(c, f"{label} {i + 1}") for i, c in enumerate(crops)) or '<span class="note">none seen</span>'
        gallery_html.append(f'<div class="row"><span class="label">{esc(label)}</span><span class="gallery">{imgs}</span></div>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{REPORT_MARKER}<title>{esc(title)}</title><style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="note">{summary.total_cells} cells classified by the four-light MM-MIMO classifier. The estimate is the
sample's differential estimated from all cells' calibrated probabilities, with its 95% interval; the
argmax count is each cell's most likely class counted, with the Wilson score interval of its share.
This is a research tool, not a diagnostic device.</p>
<h2>Differential count</h2>
{''.join(table)}
<h2>Chart</h2>
{_svg_chart(summary)}
<h2>Run</h2>
<table class="facts">{fact_rows}</table>
<h2>Cells per class</h2>
<p class="note">A few crops per class as the classifier saw them (colour light).</p>
{''.join(gallery_html)}
</body></html>
"""


def write_report(path: str | os.PathLike, summary: RunSummary,
                 gallery: Mapping[str, Sequence[np.ndarray]] | None = None, **kw: object) -> Path:
    """Write the report atomically and return its path."""
    path = Path(path)
    atomic_write_text(path, render_report(summary, gallery, **kw))  # type: ignore[arg-type]
    return path
