"""A sample's result as the laboratory system receives it, and where each number comes from.

`SampleResult` is a plain record (per-class share in %, optional 95 % interval, raw counts, cells
counted, review flag) that both the HL7 v2 message and the FHIR resources are built from. The one
place that knows the run summary's layout is `from_summary`; everything downstream reads only this
record. Standard library only.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from wbc_edge.errors import WbcError
from wbc_edge.lis.identity import SampleIdentity

# A sample is held for review (result still preliminary) when any of these holds.
MIN_CELLS_FOR_RELEASE = 100  # CLSI H20 counts 200 cells by hand; under 100 the shares are too coarse
MAX_DISAGREE_FRACTION = 0.10  # cells on which the light heads disagree


class ResultError(WbcError):
    """A run that cannot become a laboratory result (no sample id, no cells, a bad reference table)."""


@dataclass(frozen=True)
class ReferenceInterval:
    low: float
    high: float

    def flag(self, percent: float) -> str:
        """HL7 table 0078 abnormal flag: L below, H above, N inside (the runtime's rule)."""
        from wbc_edge.runtime.reference import flag

        return flag(percent, self.low, self.high) or "N"


def load_reference_table(path: str | Path | None = None) -> tuple[dict[str, ReferenceInterval], str]:
    """({class: interval in %}, source text): the runtime's reference table (`wbc_edge.runtime.reference`,
    the packaged one by default), so the report, the summary and the message flag against the same numbers."""
    from wbc_edge.errors import DataError
    from wbc_edge.runtime.reference import DEFAULT_TABLE, load_reference_intervals

    try:
        ref = load_reference_intervals(path if path is not None else DEFAULT_TABLE)
    except DataError as e:
        raise ResultError(f"reference table {e}") from None
    return {c: ReferenceInterval(lo, hi) for c, (lo, hi) in ref.intervals.items()}, ref.source


@dataclass
class ClassShare:
    """One class of the differential: its share in percent, its raw count, its interval if known."""

    label: str
    percent: float
    count: int
    ci_low: float | None = None  # percent, 95 %
    ci_high: float | None = None
    reference: ReferenceInterval | None = None

    @property
    def flag(self) -> str:
        return self.reference.flag(self.percent) if self.reference else ""

    @property
    def has_interval(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None


@dataclass
class SampleResult:
    """What goes to the LIS for one sample."""

    sample: SampleIdentity
    shares: list[ClassShare]
    n_cells: int
    review: bool
    review_reasons: list[str] = field(default_factory=list)
    reviewed: bool = False  # a technologist released it: result status F (final), else P (preliminary)
    observed_at: str = ""  # UTC, ISO 8601 (the run's start)
    instrument: dict[str, Any] = field(default_factory=dict)  # identity.device_identity(): software, model, serial
    estimate: str = "count"  # how the shares were obtained: "count" (per-cell argmax) or an estimator's name
    reference_source: str = ""

    @property
    def status(self) -> str:
        return "F" if self.reviewed else "P"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sample"] = self.sample.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SampleResult":
        sample = SampleIdentity.from_dict(d.get("sample"))
        if sample is None:
            raise ResultError("stored result has no sample id")
        shares = []
        for s in d["shares"]:
            ref = s.get("reference")
            shares.append(ClassShare(label=s["label"], percent=float(s["percent"]), count=int(s["count"]),
                                     ci_low=s.get("ci_low"), ci_high=s.get("ci_high"),
                                     reference=ReferenceInterval(ref["low"], ref["high"]) if ref else None))
        return cls(sample=sample, shares=shares, n_cells=int(d["n_cells"]), review=bool(d["review"]),
                   review_reasons=list(d.get("review_reasons", [])), reviewed=bool(d.get("reviewed", False)),
                   observed_at=str(d.get("observed_at", "")), instrument=dict(d.get("instrument") or {}),
                   estimate=str(d.get("estimate", "count")), reference_source=str(d.get("reference_source", "")))


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)


def _rows(summary: Any) -> tuple[list[Any], str]:
    """The differential rows to report and what they are. The estimated differential (the sample's
    own mix, with its 95 % interval; `RunSummary.estimate`) wins over the argmax count when the run
    has one; raw counts always come from `counts`."""
    estimate = _get(summary, "estimate")
    if estimate:
        shares, low, high = estimate["shares"], estimate["low"], estimate["high"]
        rows = [{"label": c, "percent": 100.0 * shares[c], "ci_low": 100.0 * low[c], "ci_high": 100.0 * high[c]} for c in shares]
        return rows, str(estimate.get("method", "estimate"))
    return list(_get(summary, "rows", []) or []), "count"


def from_summary(summary: Any, header: Mapping[str, Any] | None = None, reviewed: bool = False,
                 reference_table: str | Path | None = None) -> SampleResult:
    """The SampleResult of a run summary (a `RunSummary` or its dict) and its results header."""
    header = dict(header or {})
    sample = SampleIdentity.from_dict(_get(summary, "sample") or header.get("sample"))
    if sample is None:
        raise ResultError("run has no sample id (wbc-run --sample-id): counted, never sent to the LIS")
    rows, estimate = _rows(summary)
    counts = {str(k): int(v) for k, v in (_get(summary, "counts") or {}).items()}
    n_cells = int(_get(summary, "total_cells", 0) or sum(counts.values()))
    if n_cells <= 0:
        raise ResultError(f"sample {sample.sample_id}: no cells counted; nothing to report")
    table, source = load_reference_table(reference_table)
    shares = []
    for r in rows:
        label = str(_get(r, "label"))
        lo, hi = _get(r, "ci_low"), _get(r, "ci_high")
        shares.append(ClassShare(label=label, percent=float(_get(r, "percent")), count=counts.get(label, int(_get(r, "count", 0) or 0)),
                                 ci_low=None if lo is None else float(lo), ci_high=None if hi is None else float(hi),
                                 reference=table.get(label)))
    assessment = _get(summary, "assessment") or {}
    reasons = review_reasons(shares, n_cells, _get(summary, "flag_counts") or {}, assessment.get("review"))
    observed = str(_get(summary, "started") or header.get("started") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return SampleResult(sample=sample, shares=shares, n_cells=n_cells, review=bool(reasons), review_reasons=reasons,
                        reviewed=reviewed, observed_at=observed, instrument=dict(_get(summary, "instrument") or header.get("instrument") or {}),
                        estimate=estimate, reference_source=source)


def review_reasons(shares: Sequence[ClassShare], n_cells: int, flag_counts: Mapping[str, int],
                   given: Sequence[str] | None = None) -> list[str]:
    """Why a technologist should look at the sample before it is released (empty: nothing found).

    `given`: the run's own review reasons (`wbc_edge.runtime.reference.assess`: low-confidence and
    disagreeing cells, intervals crossing a limit). Interval crossings are judged again here against
    the table this message carries (a laboratory's own `--reference-table` may differ from the run's);
    without `given` (results written before the assessment existed) the disagreement rule is applied
    here. Added for the laboratory: too few cells, and any share outside its reference interval."""
    from wbc_edge.runtime.reference import CROSSES, crosses_limit

    reasons = [str(g) for g in given or [] if CROSSES not in str(g)]
    if n_cells < MIN_CELLS_FOR_RELEASE:
        reasons.append(f"only {n_cells} cells counted (< {MIN_CELLS_FOR_RELEASE})")
    if given is None:
        disagree = int(flag_counts.get("heads_disagree", 0))
        if n_cells and disagree / n_cells > MAX_DISAGREE_FRACTION:
            reasons.append(f"light heads disagree on {disagree} of {n_cells} cells")
    for s in shares:
        if s.flag in ("H", "L"):
            reasons.append(f"{s.label} {s.percent:.1f} % outside {s.reference.low:g}-{s.reference.high:g} %")
        elif s.has_interval and s.reference and crosses_limit(s.reference.low, s.reference.high, s.ci_low, s.ci_high):
            reasons.append(f"{s.label} interval {s.ci_low:.1f}-{s.ci_high:.1f}% {CROSSES} ({s.reference.low:g}-{s.reference.high:g}%)")
    return reasons
