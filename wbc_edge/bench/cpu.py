"""The machine a benchmark ran on, and its estimated peak FP32 rate (the FLOP floor's denominator)."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

# FP32 multiply-accumulates per cycle per core: two FMA units times the vector lanes.
FMA_LANES = (("avx512f", 2 * 16, "AVX-512: 2 FMA units x 16 fp32 lanes"),
             ("avx2", 2 * 8, "AVX2/FMA: 2 FMA units x 8 fp32 lanes"),
             ("sse2", 2 * 4, "SSE: 2 units x 4 fp32 lanes (no FMA)"))


def _cpuinfo_text() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def physical_cores(cpuinfo: str | None = None) -> int:
    """Distinct (physical id, core id) pairs; the logical CPU count where /proc/cpuinfo does not say."""
    text = _cpuinfo_text() if cpuinfo is None else cpuinfo
    pairs, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            phys = value
        elif key == "core id":
            pairs.add((phys, value))
    return len(pairs) or os.cpu_count() or 1


def cpu_description(cpuinfo: str | None = None) -> dict[str, Any]:
    """Model, cores, clock, vector flags and the estimated peak FP32 MAC rate of this CPU."""
    text = _cpuinfo_text() if cpuinfo is None else cpuinfo
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)$", text, re.M)]
    flags_line = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    cores = physical_cores(text)
    clock_ghz = (max(mhz) / 1000.0) if mhz else None
    lanes, lanes_note = 0, "unknown vector unit"
    for flag, n, note in FMA_LANES:
        if flag in flags and (flag != "avx2" or "fma" in flags):
            lanes, lanes_note = n, note
            break
    peak = cores * clock_ghz * 1e9 * lanes if clock_ghz and lanes else None
    return {
        "model": model.group(1).strip() if model else platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": cores,
        "clock_ghz": clock_ghz,
        "vector": lanes_note,
        "fma_macs_per_cycle_per_core": lanes,
        "peak_fp32_macs_per_s": peak,
        "peak_note": "estimate: physical cores x reported clock x FMA lanes (no turbo, no memory limits)",
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None
