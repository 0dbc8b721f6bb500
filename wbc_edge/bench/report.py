"""bench.json and bench.md: the numbers and the table a person reads."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from wbc_edge.bundle import atomic_write_text


def _f(value: Any, fmt: str = ".1f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, fmt)


def format_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    s = report["spec"]
    st = report["settings"]
    lines = [f"# wbc-bench: {Path(report['bundle']).name}", "",
             f"Model: {s['method']} {s['backbone']}, {s['in_channels']} x {s['input_size']} x {s['input_size']} uint8 input, "
             f"{s['heads']} heads, {s['classes']} classes. Bundle precisions: {', '.join(report['bundle_precisions'])}.",
             f"Machine: {m['model']}, {m['physical_cores']} physical cores ({m['logical_cpus']} logical), "
             f"{_f(m['clock_ghz'], '.2f')} GHz, {m['vector']}; {m['platform']}.",
             f"Run: {report['started']} to {report.get('finished', '?')}, {st['warmup']} warm-up calls and {st['rounds']} "
             f"rounds per configuration ({st['order']}); load average at start "
             f"{_f((report.get('load_average_start') or [None])[0], '.2f')}, at end {_f((report.get('load_average_end') or [None])[0], '.2f')}.",
             ""]
    floor = report.get("floor", {})
    if floor.get("floor_images_per_s"):
        lines.append(f"FLOP floor: {floor['macs_per_image'] / 1e6:.1f} M MACs per image ({floor['macs_source']}) over an estimated "
                     f"peak of {floor['peak_fp32_macs_per_s'] / 1e9:.1f} G FP32 MAC/s = at most "
                     f"{floor['floor_images_per_s']:.0f} images/s ({m['peak_note']}).")
    else:
        lines.append(f"FLOP floor: not computed ({floor.get('macs_source', 'no MAC count')}).")
    acc = report.get("accuracy", {}).get("precisions", {})
    lines += ["", "| backend | precision | batch | images/s | p50 ms | p99 ms | of floor | weighted F1 | F1 drop |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if not r.get("available"):
            lines.append(f"| {r['backend']} | {r['precision']} | all | not available here: {r['reason']} | | | | | |")
            continue
        a = acc.get(r["precision"], {}) if r["backend"] != "torch" else report.get("accuracy", {}).get("torch_eager_fp32", {})
        lines.append(f"| {r['backend']} | {r['precision']} | {r['batch']} | {_f(r['images_per_s'])} | {_f(r['latency_p50_ms'], '.2f')} "
                     f"| {_f(r['latency_p99_ms'], '.2f')} | {_f(100 * r['fraction_of_floor'] if 'fraction_of_floor' in r else None, '.1f')}% "
                     f"| {_f(a.get('weighted_f1'), '.2f')} | {_f(a.get('weighted_f1_drop'), '.2f')} |")
    if report.get("accuracy"):
        lines.append(f"\nAccuracy on {report['accuracy']['n_cells']} cells of {report['accuracy']['data']} "
                     "(the export gate's evaluation, ONNX Runtime CPU; torch eager row from the same cells).")
    pipe = report.get("pipeline")
    if pipe:
        lines += ["", f"## Pipeline ({pipe['runner']}, batch {pipe['batch']}, {pipe['sets']} sets, {pipe['cells']} cells, "
                  f"median of {pipe['repeats']})", "",
                  "| stage | alone ms/set | inside the pipeline ms/set |", "|---|---:|---:|"]
        for stage, ms in pipe["stage_alone_ms_per_set"].items():
            lines.append(f"| {stage} | {ms:.2f} | {pipe['in_pipeline_stage_ms_per_set'].get(stage, 0.0):.2f} |")
        lines.append(f"| **sum of stages alone** | {pipe['stages_sum_ms_per_set']:.2f} | |")
        lines.append(f"| **end to end (wall)** | {pipe['e2e_ms_per_set']:.2f} | {pipe['sets_per_s']:.1f} sets/s |")
    cold, rss = report.get("cold_start"), report.get("peak_rss")
    if cold:
        lines.append(f"\nCold start (fresh interpreter, median of {len(cold['runs'])}): import {cold['import_s']:.3f} s, "
                     f"load {cold['load_s']:.3f} s, first result {_f(cold['first_result_s'], '.3f')} s after the import began "
                     f"({_f(cold.get('first_result_cpu_s'), '.3f')} s of CPU time in the process, all threads) "
                     f"(whole process incl. interpreter start {cold['process_wall_s']:.3f} s); torch imported: {cold['torch_imported']}.")
    if rss:
        lines.append(f"Peak RSS of the runtime running the pipeline over {rss['sets']} sets (a subprocess, ru_maxrss): "
                     f"{rss['peak_rss_mb']:.0f} MB (VmHWM {_f(rss.get('vmhwm_mb'), '.0f')} MB).")
    if report.get("gpu_memory_mb") is not None:
        lines.append(f"GPU memory held by the benchmark process: {report['gpu_memory_mb']:.0f} MB.")
    lines += ["", "## Targets (from this run)", "", "| check | value | target | met | what |", "|---|---:|---:|---|---|"]
    fmt = {"best_cpu_over_torch_b8": (".2f", "x", ">= "), "e2e_over_stages_sum": (".2f", "", "<= "),
           "cold_start_s": (".3f", " s", "< "), "peak_rss_mb": (".0f", " MB", "< ")}
    for name, c in report.get("ratios", {}).items():
        f, unit, op = fmt[name]
        met = {True: "yes", False: "**no**", None: "not run"}[c["met"]]
        lines.append(f"| {name} | {_f(c['value'], f)}{unit if c['value'] is not None else ''} | {op}{c['target']:g}{unit} | {met} | {c['detail']} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    json_path, md_path = out / "bench.json", out / "bench.md"
    atomic_write_text(json_path, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    atomic_write_text(md_path, format_markdown(report))
    return json_path, md_path
