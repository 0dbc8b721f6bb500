"""Score a wbc-run results file against ground truth: were the cells found, were they classified
right, and how far is the reported differential from the sample's true one.

Ground truth exists for the simulated camera (`synthetic://...`, re-rendered from its seed) and for a
`wbc-synth frames` folder or its video (`truth.jsonl` beside the frames). Cells are matched to true
cells per set, greedily by box IoU, as `locator.detection_scores` does.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from wbc_edge.errors import DataError
from wbc_edge.runtime.locator import greedy_match
from wbc_edge.runtime.results import FLAG_BEYOND_LIMIT, CellResult, differential_estimate, read_results

MATCH_IOU = 0.3


@dataclass
class Truth:
    """Ground truth of a stream: the set each source frame belongs to, and each set's true cells."""

    frame_to_set: dict[int, int]
    cells: dict[int, list[dict[str, Any]]]  # set -> [{"box": [...], "label": ..., "cut_by_border": ...}]

    def set_of(self, frame_index: int) -> int | None:
        return self.frame_to_set.get(frame_index)

    def cells_of(self, set_index: int) -> list[dict[str, Any]]:
        return self.cells.get(set_index, [])


@dataclass
class StreamScore:
    classes: list[str]
    source: str
    sets: int
    classified: int  # every classified cell of the run, beyond the max-cells limit included
    true_cells: int  # true cells of those sets, cells cut by the frame border not required
    matched: int  # classified cells matched to a true cell (cut by the border or not)
    found: int  # true cells not cut by the border that were matched
    correct: int
    confusion: list[list[int]]  # [true class][reported class] over matched cells
    true_counts: dict[str, int]
    reported_counts: dict[str, int]
    unmatched_sets: list[int] = field(default_factory=list)  # result sets whose frames the truth does not know
    estimate: dict[str, Any] | None = None  # the run's estimated differential (results.differential_estimate)
    estimate_note: str = ""

    def estimate_check(self) -> dict[str, dict[str, Any]]:
        """Per class: true share, estimated share, its interval and whether the truth lies inside (shares 0..1)."""
        if not self.estimate:
            return {}
        n_true = sum(self.true_counts.values()) or 1
        out = {}
        for c in self.classes:
            true = self.true_counts[c] / n_true
            lo, hi = self.estimate["low"][c], self.estimate["high"][c]
            out[c] = {"true": true, "estimate": self.estimate["shares"][c], "low": lo, "high": hi, "inside": bool(lo <= true <= hi)}
        return out

    @property
    def recall(self) -> float:
        return self.found / self.true_cells if self.true_cells else 1.0

    @property
    def precision(self) -> float:
        return self.matched / self.classified if self.classified else 1.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.matched if self.matched else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "classes": self.classes, "sets": self.sets, "classified": self.classified,
                "true_cells": self.true_cells, "found": self.found, "matched": self.matched, "correct": self.correct,
                "recall": self.recall, "precision": self.precision, "accuracy": self.accuracy,
                "confusion": self.confusion, "true_counts": self.true_counts, "reported_counts": self.reported_counts,
                "unmatched_sets": self.unmatched_sets, "estimate": self.estimate, "estimate_check": self.estimate_check(),
                "estimate_note": self.estimate_note}

    def table(self) -> str:
        """The differential beside the truth, per class, as a console table."""
        n_true = sum(self.true_counts.values()) or 1
        n_rep = sum(self.reported_counts.values()) or 1
        check = self.estimate_check()
        extra = f" {'est%':>6}  {'95% interval':>13} {'truth in':>8}" if check else ""
        lines = [f"{'class':<12} {'true':>6} {'true%':>7} {'argmax':>9} {'arg%':>7} {'recall':>7}{extra}", "-" * (52 + len(extra))]
        for i, name in enumerate(self.classes):
            row = self.confusion[i]
            recall = f"{100 * row[i] / sum(row):6.1f}%" if sum(row) else "     -"
            est = ""
            if check:
                e = check[name]
                est = (f" {100 * e['estimate']:>5.1f}%  {100 * e['low']:5.1f} - {100 * e['high']:5.1f}% "
                       f"{'yes' if e['inside'] else 'NO':>8}")
            lines.append(f"{name:<12} {self.true_counts[name]:>6} {100 * self.true_counts[name] / n_true:>6.1f}% "
                         f"{self.reported_counts[name]:>9} {100 * self.reported_counts[name] / n_rep:>6.1f}% {recall:>7}{est}")
        if check:
            lines.append(f"truth inside the 95% interval for {sum(e['inside'] for e in check.values())} of {len(check)} classes")
        if self.estimate_note:
            lines.append(self.estimate_note)
        return "\n".join(lines)

    def summary(self) -> str:
        return (f"found {self.found} of {self.true_cells} true cells in {self.sets} sets (recall {100 * self.recall:.1f}%); "
                f"{self.classified - self.matched} of {self.classified} classified cells matched no true cell "
                f"(precision {100 * self.precision:.1f}%)\n"
                f"classified right: {self.correct} of {self.matched} matched cells ({100 * self.accuracy:.1f}%)")


def load_truth(source: str) -> Truth:
    """Ground truth for a results file's source, or a DataError saying why there is none."""
    if source.startswith("synthetic://"):
        return _synthetic_truth(source)
    path = Path(unquote(urlsplit(source).path)) if source.startswith("file://") else Path(source)
    for candidate in (path / "truth.jsonl", path.parent / "truth.jsonl"):
        if candidate.is_file():
            return _truth_file(candidate)
    raise DataError(f"source '{source}' has no ground truth (scoring needs synthetic:// or a wbc-synth frames folder "
                    "or video with truth.jsonl beside it)")


def _synthetic_truth(uri: str) -> Truth:
    from wbc_edge.runtime.sources import SyntheticSource, open_source

    source = open_source(uri)
    assert isinstance(source, SyntheticSource)
    return _CameraTruth(source.camera)


class _CameraTruth(Truth):
    """Truth of the simulated camera, rendered on demand: iterating its frames maps delivered frame
    indices (which drops and duplicates shift) to sets."""

    def __init__(self, camera: Any) -> None:
        super().__init__({}, {})
        self._camera = camera
        self._frames = iter(camera)

    def set_of(self, frame_index: int) -> int | None:
        while frame_index not in self.frame_to_set:
            try:
                frame = next(self._frames)
            except StopIteration:
                return None
            self.frame_to_set[frame.index] = frame.set_index
        return self.frame_to_set[frame_index]

    def cells_of(self, set_index: int) -> list[dict[str, Any]]:
        if set_index not in self.cells:
            self.cells[set_index] = [c.to_dict() for c in self._camera.truth(set_index)]
        return self.cells[set_index]


def _truth_file(path: Path) -> Truth:
    truth = Truth({}, {})
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            s = int(rec["set_index"])
            truth.cells[s] = list(rec["cells"])
            for f in rec["frames"]:
                truth.frame_to_set[int(f)] = s
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path} line {lineno}: not a truth record ({e})") from None
    return truth


def score_results(results_path: str | os.PathLike, truth: Truth | None = None) -> StreamScore:
    """Match the last run of a results file to its source's ground truth (see the module docstring)."""
    header, cells, _ = read_results(results_path)
    classes = list(header.get("classes") or [])
    source = str(header.get("source", ""))
    if not classes:
        raise DataError(f"{results_path}: no run header with the class list (not a wbc-run results file?)")
    truth = truth if truth is not None else load_truth(source)
    index = {c: i for i, c in enumerate(classes)}

    by_set: dict[int, list[CellResult]] = {}
    unmatched_sets: set[int] = set()
    for cell in cells:
        frame = min(cell.frame_indices.values()) if cell.frame_indices else None
        s = truth.set_of(frame) if frame is not None else None
        if s is None:
            unmatched_sets.add(cell.set_index)
            continue
        by_set.setdefault(s, []).append(cell)

    confusion = [[0] * len(classes) for _ in classes]
    true_counts = dict.fromkeys(classes, 0)
    reported_counts = dict.fromkeys(classes, 0)
    true_cells = matched = found_required = 0
    for s, detected in sorted(by_set.items()):
        real = truth.cells_of(s)
        for t in real:
            if not t.get("cut_by_border") and t["label"] in true_counts:
                true_counts[t["label"]] += 1
                true_cells += 1
        for c in detected:
            reported_counts[c.label] = reported_counts.get(c.label, 0) + 1
        for i, j in greedy_match([c.box for c in detected], real, MATCH_IOU):
            t_label, c_label = real[j]["label"], detected[i].label
            if t_label in index and c_label in index:
                confusion[index[t_label]][index[c_label]] += 1
                matched += 1
            found_required += not real[j].get("cut_by_border")
    correct = sum(confusion[i][i] for i in range(len(classes)))
    counted = [c.probs for c in cells if FLAG_BEYOND_LIMIT not in c.flags]
    estimate, note = differential_estimate(header.get("quantification"), counted, f"results {results_path}")
    return StreamScore(estimate=estimate, estimate_note=note,classes=classes, source=source, sets=len(by_set), classified=len(cells), true_cells=true_cells,
                       matched=matched, found=found_required, correct=correct, confusion=confusion, true_counts=true_counts,
                       reported_counts=reported_counts, unmatched_sets=sorted(unmatched_sets))
