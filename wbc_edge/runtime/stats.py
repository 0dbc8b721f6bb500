"""Per-stage latency (p50/p95/p99) and throughput of a run, thread-safe, cheap to record."""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

STAGES = ("read", "assemble", "locate", "crop", "infer", "write")
WINDOW = 10_000  # samples kept per stage: recent enough for percentiles, bounded memory


class RunStats:
    """Collects seconds per stage and counts of frames, sets and cells."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[str, deque[float]] = {s: deque(maxlen=WINDOW) for s in STAGES}
        self._totals: dict[str, float] = {s: 0.0 for s in STAGES}
        self.counters: dict[str, int] = {"frames": 0, "sets": 0, "cells": 0}
        self.started = time.perf_counter()
        self.stopped: float | None = None

    def record(self, stage: str, seconds: float) -> None:
        with self._lock:
            if stage not in self._samples:
                self._samples[stage] = deque(maxlen=WINDOW)
                self._totals[stage] = 0.0
            self._samples[stage].append(seconds)
            self._totals[stage] += seconds

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.record(stage, time.perf_counter() - t0)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def stop(self) -> None:
        self.stopped = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return (self.stopped or time.perf_counter()) - self.started

    def snapshot(self) -> dict[str, Any]:
        """Percentiles in milliseconds per stage, rates per second, and the raw counters."""
        with self._lock:
            samples = {s: np.asarray(v, dtype=np.float64) for s, v in self._samples.items()}
            counters = dict(self.counters)
            totals = dict(self._totals)
        elapsed = max(self.elapsed, 1e-9)
        stages = {}
        for s, arr in samples.items():
            if arr.size == 0:
                continue
            p50, p95, p99 = np.percentile(arr, [50, 95, 99]) * 1000.0
            stages[s] = {"n": int(arr.size), "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
                         "total_s": float(totals[s])}
        rates = {f"{k}_per_s": counters.get(k, 0) / elapsed for k in ("frames", "sets", "cells")}
        sets = counters.get("sets", 0)
        # wall time per set against the sum of its stages' own times: < 1 means the stages overlap
        per_set = ({"wall_ms": 1000.0 * elapsed / sets, "stages_sum_ms": 1000.0 * sum(totals.values()) / sets}
                   if sets else {})
        return {"elapsed_s": elapsed, "counters": counters, "rates": rates, "stages": stages, "per_set": per_set}

    def format(self) -> str:
        snap = self.snapshot()
        r = snap["rates"]
        lines = [f"{snap['elapsed_s']:.1f} s: {r['frames_per_s']:.1f} frames/s, {r['sets_per_s']:.1f} sets/s, "
                 f"{r['cells_per_s']:.1f} cells/s",
                 f"{'stage':<9} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
        for s, v in snap["stages"].items():
            lines.append(f"{s:<9} {v['n']:>6} {v['p50_ms']:>8.2f} {v['p95_ms']:>8.2f} {v['p99_ms']:>8.2f}")
        if snap["per_set"]:
            ps = snap["per_set"]
            lines.append(f"per set: {ps['wall_ms']:.1f} ms wall, {ps['stages_sum_ms']:.1f} ms summed over stages "
                         f"(ratio {ps['wall_ms'] / max(ps['stages_sum_ms'], 1e-9):.2f})")
        return "\n".join(lines)
