"""Interleaved timing: every configuration runs once per round, in a rotated order, so machine drift
(other processes, clock changes, thermal state) hits all of them alike; medians over rounds."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np


@dataclass
class Config:
    """One thing to time: a runner at a batch size, with its feed prepared once."""

    key: str
    backend: str
    precision: str
    batch: int
    call: Callable[[], Any]
    samples: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        s = np.asarray(self.samples, dtype=np.float64)
        p50, p99 = (np.percentile(s, [50, 99]) if s.size else (float("nan"), float("nan")))
        return {"key": self.key, "backend": self.backend, "precision": self.precision, "batch": self.batch,
                "rounds": int(s.size), "latency_p50_ms": 1000.0 * float(p50), "latency_p99_ms": 1000.0 * float(p99),
                "latency_min_ms": 1000.0 * float(s.min()) if s.size else float("nan"),
                "images_per_s": self.batch / float(p50) if s.size else float("nan")}


def run_interleaved(configs: Sequence[Config], rounds: int, warmup: int,
                    progress: Callable[[int, int], None] | None = None) -> list[Config]:
    """Warm every configuration up, then `rounds` rounds of one timed call each, order rotated per round."""
    for cfg in configs:
        for _ in range(max(0, warmup)):
            cfg.call()
    n = len(configs)
    for r in range(rounds):
        for j in range(n):
            cfg = configs[(r + j) % n]
            t0 = time.perf_counter()
            cfg.call()
            cfg.samples.append(time.perf_counter() - t0)
        if progress is not None:
            progress(r + 1, rounds)
    return list(configs)


def feed_call(runner: Any, feed: Mapping[str, np.ndarray]) -> Callable[[], Any]:
    return lambda: runner.infer(feed)
