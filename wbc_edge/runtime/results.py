"""Per-cell results, the JSON-lines file that is the run's source of truth, and the differential count.

The results file holds one `{"record": "run", ...}` header line and then one `{"record": "cell", ...}`
line per classified cell, each appended and flushed as it comes, so a killed run leaves every finished
line intact. `summarize(path)` rebuilds the differential from the cell lines alone.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from wbc_edge.errors import DataError, WbcError

log = logging.getLogger(__name__)

Z_95 = 1.959963984540054  # two-sided 95% normal quantile

# Flags a cell can carry (also set-level flags from the assembler are copied through).
FLAG_HEADS_DISAGREE = "heads_disagree"
FLAG_MISSING_PREFIX = "missing:"  # e.g. "missing:color2": classified with the heads of the present lights
FLAG_TOUCHING = "touching_cells"  # two or more whole nuclei in one box: likely touching white cells, counted once
FLAG_BEYOND_LIMIT = "beyond_max_cells"  # classified in flight after the max-cells differential was full: kept, not counted


class OutputError(WbcError):
    """The results file cannot be written (disk full, read-only, removed)."""


@dataclass
class CellResult:
    """One classified cell: where and when it was seen, what it is, how sure each head was."""

    set_index: int
    cell_index: int
    time: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels
    label: str
    probability: float
    probs: dict[str, float]  # combined probabilities per class
    head_probs: dict[str, list[float]]  # head name -> probabilities in class order (present heads only)
    flags: list[str] = field(default_factory=list)
    frame_indices: dict[str, int] = field(default_factory=dict)  # light -> source frame index
    size_um: tuple[float, float] | None = None  # box width, height in micrometres at the run's scale

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["box"] = [int(v) for v in self.box]
        d["class"] = d.pop("label")
        if self.size_um is None:
            d.pop("size_um")
        else:
            d["size_um"] = [round(float(v), 2) for v in self.size_um]
        return {"record": "cell", **d}

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> "CellResult":
        return cls(
            set_index=int(d["set_index"]),
            cell_index=int(d.get("cell_index", 0)),
            time=float(d.get("time", 0.0)),
            box=tuple(int(v) for v in d.get("box", (0, 0, 0, 0))),  # type: ignore[arg-type]
            label=str(d["class"]),
            probability=float(d["probability"]),
            probs={str(k): float(v) for k, v in d.get("probs", {}).items()},
            head_probs={str(k): [float(x) for x in v] for k, v in d.get("head_probs", {}).items()},
            flags=[str(f) for f in d.get("flags", [])],
            frame_indices={str(k): int(v) for k, v in (d.get("frame_indices") or {}).items()},
            size_um=tuple(float(v) for v in d["size_um"]) if d.get("size_um") else None,  # type: ignore[arg-type]
        )


Result = CellResult  # the name docs/design.md uses


def wilson_interval(count: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion count/total (0..1); (0, 0) when total is 0."""
    if total <= 0:
        return (0.0, 0.0)
    p = count / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    low = 0.0 if count == 0 else max(0.0, centre - half)  # exact ends: no 1e-18 rounding residue
    high = 1.0 if count == total else min(1.0, centre + half)
    return (low, high)


@dataclass
class DifferentialRow:
    label: str
    count: int
    percent: float
    ci_low: float  # percent
    ci_high: float  # percent


class Differential:
    """Running counts per class with percentages and 95% Wilson intervals."""

    def __init__(self, classes: Sequence[str]):
        self.classes = list(classes)
        self.counts: dict[str, int] = {c: 0 for c in self.classes}

    def add(self, label: str) -> None:
        if label not in self.counts:  # a class the header did not list: keep it, never drop a cell
            self.classes.append(label)
            self.counts[label] = 0
        self.counts[label] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def rows(self) -> list[DifferentialRow]:
        n = self.total
        out = []
        for c in self.classes:
            k = self.counts[c]
            lo, hi = wilson_interval(k, n)
            out.append(DifferentialRow(c, k, 100.0 * k / n if n else 0.0, 100.0 * lo, 100.0 * hi))
        return out

    def status_line(self) -> str:
        n = self.total
        parts = [f"{_abbrev(r.label)} {r.count} ({r.percent:.0f}%)" for r in self.rows()]
        return f"{n} cells: " + "  ".join(parts)


def _abbrev(label: str) -> str:
    from wbc_edge.spec import CLASS_ABBREV

    return CLASS_ABBREV.get(label, label)


@dataclass
class RunSummary:
    """What a run counted and how it went; rebuilt from the results file by `summarize`."""

    classes: list[str]
    counts: dict[str, int]
    rows: list[DifferentialRow]
    total_cells: int
    flag_counts: dict[str, int] = field(default_factory=dict)
    # Each counter is the number of events its own log line names, counted where that line is logged:
    sets: int = 0  # light sets the assembler completed
    sets_skipped: int = 0  # "set N skipped: why" (not classified), by why in sets_skipped_by
    frames: int = 0  # frames read from the source (undecodable ones included)
    frames_dropped: int = 0  # live frames overwritten before they were read (never seen)
    frames_rejected: int = 0  # "frame N rejected (why)", by why in frames_rejected_by
    frames_duplicate: int = 0  # frames identical to the one before, dropped by the assembler
    frames_unassembled: int = 0  # read before the assembler locked onto the light cycle, never in a set
    sets_skipped_by: dict[str, int] = field(default_factory=dict)
    frames_rejected_by: dict[str, int] = field(default_factory=dict)
    light_order: list[str] = field(default_factory=list)  # the camera's light cycle the run assembled by
    cells_discarded: int = 0  # classified in flight after the max-cells stop: written flagged, not counted
    duration_s: float = 0.0
    stop_reason: str = ""
    source: str = ""
    model: str = ""
    backend: str = ""
    precision: str = ""
    results_path: str | None = None
    bad_lines: int = 0
    runs_in_file: int = 1  # summarize: runs appended to one results file (the last is summarised)
    stats: dict[str, Any] = field(default_factory=dict)
    sample: dict[str, Any] | None = None  # wbc_edge.lis.SampleIdentity.to_dict(); None: counted, never sent
    instrument: dict[str, Any] | None = None  # software version, model bundle hash, device serial
    # the sample's differential estimated at its own mix (quantify.ShareEstimate.to_dict()), None without
    # the bundle's quantification.json; estimate_note says which numbers are estimates, or why there is none
    estimate: dict[str, Any] | None = None
    estimate_note: str = ""
    # reference.assess: H/L flags against the adult reference intervals and the sample's review reasons
    assessment: dict[str, Any] | None = None
    scale: str = ""  # the camera scale the run used and where it came from
    started: str = ""  # UTC start of the run, ISO 8601 (the results header's "started")

    @classmethod
    def from_differential(cls, diff: Differential, **kw: Any) -> "RunSummary":
        return cls(classes=list(diff.classes), counts=dict(diff.counts), rows=diff.rows(), total_cells=diff.total, **kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def counts_line(self) -> str:
        """'12 sets (2 skipped: light missing: color2 2), 48 frames (0 dropped, 1 rejected: truncated 1, ...)'."""
        def why(by: Mapping[str, int]) -> str:
            return (": " + ", ".join(f"{k} {v}" for k, v in sorted(by.items()))) if by else ""

        frames = [f"{self.frames_dropped} dropped", f"{self.frames_rejected} rejected{why(self.frames_rejected_by)}"]
        if self.frames_duplicate:
            frames.append(f"{self.frames_duplicate} duplicate")
        if self.frames_unassembled:
            frames.append(f"{self.frames_unassembled} before the light cycle was locked")
        return (f"{self.sets} sets ({self.sets_skipped} skipped{why(self.sets_skipped_by)}), {self.frames} frames "
                f"({', '.join(frames)}) in {self.duration_s:.1f} s; stopped: {self.stop_reason}")

    def format_table(self) -> str:
        """The end-of-run table: the estimated differential with its 95% interval beside the argmax counts."""
        est = self.estimate
        width = 40 + (30 if est else 0)
        head = f"{'class':<12} {'count':>6} {'%':>7}   95% CI"
        assessment = self.assessment or {}
        ref, flags = assessment.get("intervals", {}), assessment.get("flags", {})
        if est:
            width += 16
            head = (f"{'class':<12} {'estimate':>9}   95% interval  {'ref %':>9} flag | argmax {'count':>6} {'%':>7}   95% CI")
        lines = [head, "-" * width]
        for r in self.rows:
            raw = f"{r.count:>6} {r.percent:>6.1f}%   {r.ci_low:5.1f} - {r.ci_high:5.1f}%"
            if est and r.label in est["shares"]:
                share, lo, hi = (100 * est[k][r.label] for k in ("shares", "low", "high"))
                rng = f"{ref[r.label][0]:g}-{ref[r.label][1]:g}" if r.label in ref else "-"
                lines.append(f"{r.label:<12} {share:>8.1f}%   {lo:5.1f} - {hi:5.1f}%  {rng:>9} {flags.get(r.label, ''):>4} |        {raw}")
            else:
                lines.append(f"{r.label:<12} {raw}")
        lines.append("-" * width)
        lines.append(f"{'total':<12} {self.total_cells:>6}" if not est else f"{'total':<12} {self.total_cells:>9} cells")
        if self.estimate_note:
            lines.append(self.estimate_note)
        if est and assessment:
            lines.append(f"reference intervals: {assessment.get('source', '')}; H/L: estimate above/below")
            review = assessment.get("review") or []
            lines.append("REVIEW: " + "; ".join(review) if review else "review: not needed by the rules (docs/runtime.md)")
        if self.flag_counts:
            lines.append("flags: " + ", ".join(f"{k} {v}" for k, v in sorted(self.flag_counts.items())))
        return "\n".join(lines)


class ResultWriter:
    """Appends one JSON line per cell and flushes it; fsync on close.

    A failing write (disk full, unwritable) raises `OutputError` naming the file; the partial line it
    may have left is cut off again so every line already in the file still parses.
    """

    def __init__(self, path: str | os.PathLike, header: Mapping[str, Any] | None = None,
                 opener: Callable[[str, str], Any] | None = None):
        self.path = Path(path)
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # unbuffered: a failed write leaves no bytes behind in a buffer to land later, after the cut
            self._file = (opener or _open_unbuffered)(str(self.path), "ab")
        except OSError as e:
            raise OutputError(f"{self.path}: cannot open for writing ({e.strerror or e})") from None
        self._good_size = self._tell()
        self.lines_written = 0
        if header is not None:
            self.write_record({"record": "run", **header})

    def _tell(self) -> int | None:
        try:
            return self._file.tell()
        except (OSError, AttributeError, ValueError):
            return None

    def write_record(self, record: Mapping[str, Any]) -> None:
        try:
            data = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
        except ValueError:  # NaN/inf probabilities: a broken model, not something to count
            where = f"set {record.get('set_index')} cell {record.get('cell_index')}"
            raise DataError(f"{self.path}: {where}: model output is not finite (NaN or inf); not written") from None
        try:
            view = memoryview(data)
            while view:  # a raw file may take part of the line per call
                n = self._file.write(view)
                view = view[n if n is not None else len(view):]
            self._file.flush()
        except (OSError, ValueError) as e:
            self._cut_partial_line()
            reason = getattr(e, "strerror", None) or str(e)
            raise OutputError(f"{self.path}: cannot write results ({reason}); "
                              f"{self.lines_written} lines written so far are intact") from None
        self.lines_written += 1
        if self._good_size is not None:
            self._good_size += len(data)

    def write(self, result: CellResult) -> None:
        self.write_record(result.to_json_dict())

    def _cut_partial_line(self) -> None:
        if self._good_size is None:
            return
        try:
            self._file.truncate(self._good_size)
        except (OSError, ValueError, AttributeError):
            log.debug("could not truncate %s after a failed write", self.path)

    def close(self) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.flush()
            os.fsync(f.fileno())
        except (OSError, ValueError, AttributeError):
            log.debug("fsync of %s failed or unsupported", self.path)
        finally:
            try:
                f.close()
            except OSError as e:
                raise OutputError(f"{self.path}: cannot close results file ({e.strerror or e})") from None

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _open_unbuffered(path: str, mode: str) -> Any:
    return open(path, mode, buffering=0)


def read_runs(path: str | os.PathLike) -> tuple[list[tuple[dict[str, Any], list[CellResult]]], int]:
    """([(header, cells) per run, in file order], bad_lines) from a results file.

    Runs that reused the same --out file are appended one after another, each after its own header;
    unparsable lines (a write cut by a kill) are skipped and counted.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"{path}: cannot read results ({e.strerror or e})") from None
    runs: list[tuple[dict[str, Any], list[CellResult]]] = []
    bad = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            kind = rec.get("record", "cell")
            if kind == "run":
                runs.append((rec, []))
            elif kind == "cell":
                cell = CellResult.from_json_dict(rec)
                if not runs:
                    runs.append(({}, []))
                runs[-1][1].append(cell)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            bad += 1
            log.warning("%s line %d: not a result record, skipped", path, lineno)
    if not runs:
        raise DataError(f"{path}: no result records (not a wbc-run results file?)")
    return runs, bad


def read_results(path: str | os.PathLike) -> tuple[dict[str, Any], list[CellResult], int]:
    """(header, cells, bad_lines) of the last run in a results file."""
    runs, bad = read_runs(path)
    header, cells = runs[-1]
    return header, cells, bad


def differential_estimate(quant_header: Mapping[str, Any] | None, probs: Sequence[Sequence[float]] | Sequence[Mapping[str, float]],
                          where: str) -> tuple[dict[str, Any] | None, str]:
    """(estimate, note) for the counted cells' calibrated probabilities, from the run header's
    "quantification" entry; the live run and `summarize` both call this, on the same numbers."""
    if not quant_header:
        return None, "no estimate: the bundle has no quantification.json, so these are argmax counts, not corrected for the sample's mix"
    from wbc_edge.runtime.quantify import DEFAULT_METHOD, QuantParams, estimate_shares

    params = QuantParams.from_header(quant_header, f"{where}: run header")
    method = str(quant_header.get("estimator", DEFAULT_METHOD))
    if not probs:
        return None, "no estimate: no cells counted"
    rows = [[row.get(c, math.nan) for c in params.classes] if isinstance(row, Mapping) else list(row) for row in probs]
    est = estimate_shares(rows, params, method, where=where)
    names = {"em": "EM prior adaptation", "acc": "adjusted count", "pacc": "probabilistic adjusted count", "cc": "argmax count"}
    note = (f"estimate: {names.get(method, method)} on calibrated probabilities at the sample's own mix, 95% interval by "
            f"bootstrap over cells and {'the classifier confusion counts' if method in ('acc', 'pacc') else 'the calibration bias'}; "
            "argmax counts are per-cell labels, not corrected")
    if est.notes:
        note += "; " + "; ".join(est.notes)
    return est.to_dict(), note


def summarize(results_jsonl: str | os.PathLike) -> RunSummary:
    """Rebuild the run's differential from its per-cell results file (the source of truth)."""
    runs, bad = read_runs(results_jsonl)
    header, cells = runs[-1]  # the file may hold earlier runs that wrote to the same path
    diff = Differential(header.get("classes") or [])
    flags: dict[str, int] = {}
    sets: set[int] = set()
    discarded = 0
    for c in cells:
        if FLAG_BEYOND_LIMIT in c.flags:
            discarded += 1
            continue
        diff.add(c.label)
        sets.add(c.set_index)
        for f in c.flags:
            flags[f] = flags.get(f, 0) + 1
    listed = list(header.get("classes") or [])
    strangers = sorted({c.label for c in cells} - set(listed)) if listed else []
    if strangers:  # the header and its cell lines disagree: say so, and keep every cell (counted under its name)
        log.warning("%s: cell lines of class %s, which the run header's classes (%s) do not list; counted under "
                    "their own names", results_jsonl, ", ".join(strangers), ", ".join(listed))
    times = [c.time for c in cells if FLAG_BEYOND_LIMIT not in c.flags]
    counted = [c.probs for c in cells if FLAG_BEYOND_LIMIT not in c.flags]
    estimate, note = differential_estimate(header.get("quantification"), counted, f"results {results_jsonl}")
    from wbc_edge.runtime.reference import assess

    assessment = assess(estimate, counted, flags.get(FLAG_HEADS_DISAGREE, 0))
    return RunSummary.from_differential(
        diff, flag_counts=flags, sets=len(sets), duration_s=(max(times) - min(times)) if times else 0.0,
        source=str(header.get("source", "")), model=str(header.get("model", "")),
        backend=str(header.get("backend", "")), precision=str(header.get("precision", "")),
        results_path=str(results_jsonl), bad_lines=bad, runs_in_file=len(runs), cells_discarded=discarded,
        stop_reason="rebuilt from results file", sample=header.get("sample"), instrument=header.get("instrument"),
        estimate=estimate, estimate_note=note, assessment=assessment, scale=scale_text(header),
        started=str(header.get("started", "")))


def scale_text(header: Mapping[str, Any]) -> str:
    """'0.4348 um/px (origin)' from a results header; '' for files written before the scale was recorded."""
    um = header.get("um_per_px")
    return f"{float(um):.4f} um/px ({header.get('scale_origin') or 'origin not recorded'})" if um else ""
