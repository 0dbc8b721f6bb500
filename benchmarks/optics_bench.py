"""Physical scale benchmark: the locator at several magnifications and on real frames, and sets per second.

    nice -n 10 .venv/bin/python benchmarks/optics_bench.py [--real ../shared/data/chula_frames] [--fps-sets 12]

1. Simulator at 0.5x, 1x, 2x its magnification: the scale estimated from the first three sets' bright
   lights (no hand-set constant), then recall / precision of the located cells against the truth
   (20 fields, IoU >= 0.3; a cell the truth marks cut by the border is ignored: neither missed nor a
   false find when located, since its visible part may lie inside the frame).
   The same at 1x with the fluorescence frames at 1/2, 1/4 and 1/8 of their exposure (a dimmer lamp),
   with and without the locator's exposure gain.
2. Real frames (if --real): converted to four-light sets (`wbc_edge.data.smear_frames`), the scale
   estimated from the first three sets, recall / precision against boxes.csv scored like the
   simulator's frames: a labelled cell cut by the frame border is ignored, a label slip (a box under
   2 um) dropped, and benchmarks/data/chula_frames_review.csv adds the white cells the labels lack and
   marks ambiguous regions (a smudge), each looked at by eye. Reported for all frames and for the even
   and odd halves (choose on one half, read the other). The same frames with the stand-in
   fluorescence at half its exposure, with and without the exposure gain; then false finds in the
   frames' cell-free windows (each made into its own four-light set), with and without it.
3. Four-light sets per second with the frames already in memory (no file decoding): assemble, locate,
   crop and infer (the packaged demo bundle, ONNX Runtime CPU, best precision) at 640x480 and at
   2448x2048, locating at the model's resolution (the default) and at the sensor's (`work_um_per_px=0`);
   and the threaded Analyzer end to end on the same in-memory frames.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wbc_edge.runtime.locator import detection_scores, greedy_match, locate_cells
from wbc_edge.runtime.optics import estimate_scale
from wbc_edge.synth.frames import SyntheticCamera

BRIGHT = ("color1", "color2", "color3")


def dimmed(image: np.ndarray, exposure: float) -> np.ndarray:
    """A frame at `exposure` of its light (a dimmer lamp, a shorter exposure): every grey level scaled
    and rounded, as a sensor records it."""
    return image if exposure == 1.0 else np.clip(np.rint(image.astype(np.float32) * exposure), 0, 255).astype(np.uint8)


def simulator(scale: float, fields: int = 20, seed: int = 101, exposure: float = 1.0, **locator) -> dict:
    cam = SyntheticCamera(seed=seed, scale=scale)
    est = estimate_scale([cam.render_set(i)[0][light] for i in range(3) for light in BRIGHT])
    tp = fp = fn = 0
    for i in range(fields):
        images, truth = cam.render_set(i)
        boxes = locate_cells(dimmed(images["fluorescent"], exposure), um_per_px=est.um_per_px, **locator)
        # a cell the truth calls cut by the border is neither to be found nor a false find (an "ignore" cell)
        cut = [c.box for c in truth if c.cut_by_border]
        ignored = {i for i, _ in greedy_match(boxes, cut)}
        s = detection_scores([b for k, b in enumerate(boxes) if k not in ignored], [c.box for c in truth if not c.cut_by_border])
        tp, fp, fn = tp + s["tp"], fp + s["fp"], fn + s["fn"]
    return {"scale": scale, "true_um_per_px": round(cam.um_per_px, 4), "estimate": est.describe(),
            "estimate_error_pct": round(100 * (est.um_per_px / cam.um_per_px - 1), 1),
            "recall": round(tp / (tp + fn), 4), "precision": round(tp / max(tp + fp, 1), 4), "tp": tp, "fp": fp, "fn": fn,
            **({"exposure": exposure} if exposure != 1.0 else {}), **({"locator": locator} if locator else {})}


def exposures() -> list[dict]:
    """The simulator at 1x with its fluorescence frames at 1, 1/2, 1/4 and 1/8 of their exposure, with the
    locator's exposure gain (the default) and without it (`min_peak=0`)."""
    return [simulator(1.0, exposure=e, **kw) for e in (1.0, 0.5, 0.25, 0.125) for kw in ({}, {"min_peak": 0.0})]


REVIEW = Path(__file__).parent / "data" / "chula_frames_review.csv"
LABEL_EDGE_UM = 1.0  # a labelled box this close to the frame edge is a cell cut by the border (the locator's rule)
MIN_LABEL_UM = 2.0  # a labelled box narrower than this is not a white cell's box (a labelling slip)


def read_review(path: Path = REVIEW) -> dict[str, dict[str, list]]:
    """By-eye review of the real frames (the labels are not exhaustive): {file: {"cell": [...], "ignore": [...]}}."""
    import csv

    out: dict[str, dict[str, list]] = {}
    if not path.exists():
        return out
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            box = [int(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
            out.setdefault(row["filename"], {"cell": [], "ignore": []})[row["kind"]].append(box)
    return out


def score_frame(boxes: list, labelled: list, review: dict[str, list], um_per_px: float, width: int, height: int) -> dict:
    """Scores one real frame as the simulator's frames are scored: a labelled cell cut by the border, or a
    region the review marks ambiguous, is ignored (neither to be found nor a false find); a slip of a
    label is dropped; a white cell the review adds is to be found."""
    edge = LABEL_EDGE_UM / um_per_px
    slips = [b for b in labelled if min(b[2] - b[0], b[3] - b[1]) * um_per_px < MIN_LABEL_UM]
    cut = [b for b in labelled if b not in slips and (b[0] < edge or b[1] < edge or b[2] > width - edge or b[3] > height - edge)]
    truth = [b for b in labelled if b not in slips and b not in cut] + review.get("cell", [])
    ignore = cut + review.get("ignore", [])

    def ignored(b) -> bool:
        cx, cy = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2
        return any(x0 <= cx < x1 and y0 <= cy < y1 for x0, y0, x1, y1 in ignore) or bool(greedy_match([b], ignore))

    kept = [b for b in boxes if not ignored(b)]
    sc = detection_scores(kept, truth)
    matched = {i for i, _ in greedy_match(kept, truth)}
    return {"tp": sc["tp"], "fp": sc["fp"], "fn": sc["fn"], "cut": len(cut), "slips": len(slips),
            "added": len(review.get("cell", [])), "false": [list(b.box) for i, b in enumerate(kept) if i not in matched]}


def real(root: Path, review_path: Path = REVIEW) -> dict:
    from wbc_edge.data.images import read_image
    from wbc_edge.data.smear_frames import convert_smear_frames

    review = read_review(review_path)
    with tempfile.TemporaryDirectory(prefix="wbc-real-") as tmp:
        out = convert_smear_frames(root / "images", root / "boxes.csv", Path(tmp) / "sets")
        sets = [json.loads(x) for x in (out / "truth.jsonl").read_text().splitlines()]
        frame = lambda i: read_image(out / "frames" / f"{i:06d}.png")  # noqa: E731
        est = estimate_scale([frame(s["frames"][k]) for s in sets[:3] for k in (1, 2, 3)])
        fluorescent = [frame(s["frames"][0]) for s in sets]

        def scored(exposure: float = 1.0, **locator) -> dict:
            """Recall / precision over the frames (and per half) with the stand-in fluorescence at `exposure`."""
            totals = {half: dict.fromkeys(("tp", "fp", "fn", "cut", "slips", "added"), 0) for half in ("even", "odd")}
            false_finds, missed = [], []
            t_locate = 0.0
            for n, (s, img) in enumerate(zip(sets, fluorescent)):
                img = dimmed(img, exposure)
                t0 = time.perf_counter()
                boxes = locate_cells(img, um_per_px=est.um_per_px, **locator)
                t_locate += time.perf_counter() - t0
                sc = score_frame(boxes, [c["box"] for c in s["cells"]], review.get(s["source_file"], {}), est.um_per_px,
                                 img.shape[1], img.shape[0])
                half = totals["even" if n % 2 == 0 else "odd"]
                for k in half:
                    half[k] += sc[k]
                false_finds += [(s["source_file"], b) for b in sc["false"]]
                if sc["fn"]:
                    missed.append((s["source_file"], sc["fn"]))
            both = {k: totals["even"][k] + totals["odd"][k] for k in totals["even"]}
            return {**_rates(both), "halves": {h: _rates(t) for h, t in totals.items()},
                    "locate_ms_per_frame": round(1000 * t_locate / len(sets), 1), "false_finds": false_finds,
                    "frames_with_misses": missed}

        main_run = scored()
        at_half = {name: {k: v for k, v in scored(0.5, **kw).items() if k in ("tp", "fp", "fn", "recall", "precision")}
                   for name, kw in (("default", {}), ("no exposure gain", {"min_peak": 0.0}))}
    return {"frames": len(sets), "estimate": est.describe(), **main_run,
            "scoring": (f"labels within {LABEL_EDGE_UM:g} um of the edge: cut by the border, ignored; labels under "
                        f"{MIN_LABEL_UM:g} um: slips, dropped; {review_path.name}: cells the labels lack, and ambiguous regions"),
            "half_exposure": at_half,
            "cell_free_regions": {name: cell_free_regions(root, review, est.um_per_px, **kw)
                                  for name, kw in (("default", {}), ("no exposure gain", {"min_peak": 0.0}))}}


def _rates(t: dict) -> dict:
    return {**t, "recall": round(t["tp"] / max(t["tp"] + t["fn"], 1), 4), "precision": round(t["tp"] / max(t["tp"] + t["fp"], 1), 4)}


def cell_free_regions(root: Path, review: dict, um_per_px: float, side: int = 450, **locator) -> dict:
    """False finds where there is no white cell: every side x side window of the real frames (half
    overlapping) at least 20 px from every labelled box and every box of the review, made into its own
    four-light set (so the stand-in is normalised on red cells and plasma alone, harsher than a frame
    with a nucleus in it). Every find there is false; returns the windows, the finds and the windows
    with any."""
    from wbc_edge.data.images import read_image
    from wbc_edge.data.smear_frames import four_lights, read_boxes

    labelled = read_boxes(root / "boxes.csv")
    windows = finds = with_finds = 0
    for name in sorted({b.filename for b in labelled}):
        rgb = read_image(root / "images" / name)
        taken = [list(b.box) for b in labelled if b.filename == name]
        taken += [b for kind in review.get(name, {}).values() for b in kind]
        h, w = rgb.shape[:2]
        for y in range(0, h - side + 1, side // 2):
            for x in range(0, w - side + 1, side // 2):
                if any(x1 >= x - 20 and x0 <= x + side + 20 and y1 >= y - 20 and y0 <= y + side + 20 for x0, y0, x1, y1 in taken):
                    continue
                window = np.ascontiguousarray(rgb[y : y + side, x : x + side])
                n = len(locate_cells(four_lights(window)["fluorescent"], um_per_px=um_per_px, **locator))
                windows, finds, with_finds = windows + 1, finds + n, with_finds + (n > 0)
    return {"windows": windows, "false_finds": finds, "windows_with_false_finds": with_finds}


def sets_per_second(width: int, height: int, scale: float, n_sets: int, work: float | None) -> dict:
    from wbc_edge.cli.run import default_model
    from wbc_edge.runtime.assembler import LightCycleAssembler
    from wbc_edge.runtime.locator import crop_cells
    from wbc_edge.runtime.pipeline import Analyzer
    from wbc_edge.runtime.sources import Frame

    cam = SyntheticCamera(seed=7, width=width, height=height, scale=scale)
    distinct = [cam.render_set(i)[0] for i in range(min(n_sets, 3))]
    with Analyzer(default_model(), backend="onnxruntime", profile=cam.um_per_px, intra_op_threads=2) as an:
        an.runner.infer({an.spec.input_name: np.zeros(an.spec.input_shape(1), np.uint8)})  # warm
        assembler = LightCycleAssembler(an.light_order)
        seconds = dict.fromkeys(("assemble", "locate", "crop", "infer"), 0.0)
        cells = 0
        index = 0
        t_all = time.perf_counter()
        for k in range(n_sets):
            images = distinct[k % len(distinct)]
            t0 = time.perf_counter()
            sets = []
            for light in an.light_order:
                sets += assembler.push(Frame(index, index / 30.0, images[light], light))
                index += 1
            seconds["assemble"] += time.perf_counter() - t0
            for s in sets:
                t0 = time.perf_counter()
                boxes = locate_cells(s.images["fluorescent"], um_per_px=an.um_per_px, work_um_per_px=work)
                seconds["locate"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                batch, kept = crop_cells(s, boxes, an.crop_px, an.spec)
                seconds["crop"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                for start in range(0, len(batch), 32):
                    an.runner.infer({an.spec.input_name: batch[start : start + 32]})
                seconds["infer"] += time.perf_counter() - t0
                cells += len(kept)
        wall = time.perf_counter() - t_all
    return {"frame": f"{width}x{height}", "scale": scale, "um_per_px": round(cam.um_per_px, 4),
            "locate_at": "sensor" if work == 0 else "model resolution", "sets": n_sets, "cells": cells,
            "sets_per_s": round(n_sets / wall, 2), "ms_per_set": {k: round(1000 * v / n_sets, 1) for k, v in seconds.items()},
            "precision": an.runner.precision}


class _MemorySource:
    """Frames already in memory, as a camera driver hands them over (no decoding)."""

    def __init__(self, frames: list):
        self._frames, self._i, self.uri = frames, 0, "memory"

    def read(self, timeout: float = 1.0):
        if self._i >= len(self._frames):
            return None
        self._i += 1
        return self._frames[self._i - 1]

    @property
    def is_streaming(self) -> bool:
        return self._i < len(self._frames)

    def close(self) -> None:
        pass


def analyzer_sets_per_second(width: int, height: int, scale: float, n_sets: int) -> dict:
    """The threaded Analyzer end to end (capture, prepare, infer and output threads) on in-memory frames."""
    from wbc_edge.cli.run import default_model
    from wbc_edge.runtime.pipeline import Analyzer
    from wbc_edge.runtime.sources import Frame

    cam = SyntheticCamera(seed=7, width=width, height=height, scale=scale)
    distinct = [cam.render_set(i)[0] for i in range(min(n_sets, 3))]
    frames = [Frame(4 * k + j, (4 * k + j) / 30.0, distinct[k % len(distinct)][light], light)
              for k in range(n_sets) for j, light in enumerate(("fluorescent", "color1", "color2", "color3"))]
    with Analyzer(default_model(), backend="onnxruntime", profile=cam.um_per_px, intra_op_threads=2) as an:
        an.runner.infer({an.spec.input_name: np.zeros(an.spec.input_shape(1), np.uint8)})
        first: list[float] = []
        t0 = time.perf_counter()
        summary = an.analyze(_MemorySource(frames), on_set=lambda *_: first or first.append(time.perf_counter()))
        end = time.perf_counter()
    # the start reads three light cycles to check the profile against the red cells: a one-off cost
    return {"frame": f"{width}x{height}", "scale": scale, "sets": int(summary.sets), "cells": int(summary.total_cells),
            "start_to_first_set_s": round(first[0] - t0, 2),
            "analyzer_sets_per_s_after_first": round((summary.sets - 1) / (end - first[0]), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", type=Path, default=None, help="a folder with images/ and boxes.csv (chula_frames)")
    p.add_argument("--fps-sets", type=int, default=12)
    p.add_argument("--skip", default="", help="comma list of parts to skip: sim, exposure, real, fps")
    a = p.parse_args(argv)
    skip = set(a.skip.split(","))
    out: dict = {}
    if "sim" not in skip:
        out["simulator"] = [simulator(s) for s in (0.5, 1.0, 2.0)]
    if "exposure" not in skip:
        out["exposure"] = exposures()
    if a.real and "real" not in skip:
        out["real"] = real(a.real)
    if "fps" not in skip:
        out["fps"] = [sets_per_second(640, 480, 1.0, a.fps_sets, None),
                      sets_per_second(2448, 2048, 2.0, a.fps_sets, None),
                      sets_per_second(2448, 2048, 2.0, a.fps_sets, 0.0),
                      analyzer_sets_per_second(640, 480, 1.0, a.fps_sets),
                      analyzer_sets_per_second(2448, 2048, 2.0, a.fps_sets)]
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
