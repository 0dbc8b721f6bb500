"""Adult reference intervals for the differential, H/L flags and the sample's review flag.

The default table is the adult differential (percent of white cells) as Dacie and Lewis, Practical
Haematology (12th ed., Elsevier 2017), tabulates its adult reference ranges: neutrophils 40-80 %,
lymphocytes 20-40 %, monocytes 2-10 %, eosinophils 1-6 %, basophils < 1-2 %. Reference intervals
depend on the population and the method; a laboratory sets its own: `load_reference_intervals(path)` reads a JSON
`{"source": "...", "intervals": {"neutrophil": [40, 80], ...}}` in percent.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from wbc_edge.errors import DataError

from pathlib import Path

# The packaged, editable table: the one home of the default intervals (the report, the summary and
# the LIS messages read it; a laboratory passes its own file instead).
DEFAULT_TABLE = Path(__file__).with_name("reference_intervals.json")
LOW_CONFIDENCE = 0.6  # a cell whose top calibrated probability is below this is "low confidence"
REVIEW_SHARE = 0.10  # review the sample when more than this share of cells is low confidence or heads disagree


@dataclass
class ReferenceIntervals:
    intervals: dict[str, tuple[float, float]]
    source: str


def default_reference_intervals() -> ReferenceIntervals:
    return load_reference_intervals(DEFAULT_TABLE)


def load_reference_intervals(path: str | os.PathLike) -> ReferenceIntervals:
    try:
        d = json.loads(open(path, encoding="utf-8").read())
        intervals = {str(c): (float(v[0]), float(v[1])) for c, v in d["intervals"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise DataError(f"{path}: not a reference-interval table ({e}); expected "
                        '{"source": ..., "intervals": {"neutrophil": [40, 80], ...}} in percent') from None
    for c, (lo, hi) in intervals.items():
        if not 0 <= lo <= hi <= 100:
            raise DataError(f"{path}: interval for '{c}' is [{lo}, {hi}]; need 0 <= low <= high <= 100 (percent)")
    return ReferenceIntervals(intervals, str(d.get("source", path)))


CROSSES = "crosses a reference limit"


def flag(percent: float, low: float, high: float) -> str:
    """'H' above the reference interval, 'L' below, '' inside (percent)."""
    return "H" if percent > high else "L" if percent < low else ""


def crosses_limit(low: float, high: float, ci_low: float, ci_high: float) -> bool:
    """Does a 95% interval (percent) straddle a reference limit? (a 0 % lower limit cannot be crossed)"""
    return (ci_low < low < ci_high and low > 0) or (ci_low < high < ci_high)


def assess(estimate: Mapping[str, Any] | None, probs: Sequence[Mapping[str, float]], heads_disagree: int,
           reference: ReferenceIntervals | None = None) -> dict[str, Any]:
    """{"flags": {class: "H"|"L"|""}, "review": [reasons], "source": ...} for a run's estimate.

    H/L: the estimated share above/below the reference interval. Review: an estimate's 95% interval
    crosses a reference limit, or more than REVIEW_SHARE of the cells are low confidence or have
    disagreeing heads (the estimate is then less sure than its interval says)."""
    ref = reference or default_reference_intervals()
    flags: dict[str, str] = {}
    review: list[str] = []
    if estimate:
        for c, share in estimate["shares"].items():
            if c not in ref.intervals:
                continue
            lo, hi = ref.intervals[c]
            pct, p_lo, p_hi = 100 * share, 100 * estimate["low"][c], 100 * estimate["high"][c]
            flags[c] = flag(pct, lo, hi)
            if crosses_limit(lo, hi, p_lo, p_hi):
                review.append(f"{c} interval {p_lo:.1f}-{p_hi:.1f}% {CROSSES} ({lo:g}-{hi:g}%)")
    n = len(probs)
    if n:
        low_conf = sum(1 for p in probs if max(p.values(), default=0.0) < LOW_CONFIDENCE)
        if low_conf > REVIEW_SHARE * n:
            review.append(f"{low_conf} of {n} cells low confidence (top probability < {LOW_CONFIDENCE:g})")
        if heads_disagree > REVIEW_SHARE * n:
            review.append(f"{heads_disagree} of {n} cells with disagreeing heads")
    return {"flags": flags, "review": review, "source": ref.source,
            "intervals": {c: list(v) for c, v in ref.intervals.items()}}
