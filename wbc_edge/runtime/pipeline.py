"""The analyzer: camera frames -> four-light sets -> cell crops -> batched inference -> counted results.

Four stages overlap in threads joined by bounded queues:

    capture (source.read)  ->  prepare (assemble, locate, crop)  ->  infer (batches by size and wait)
        ->  output (write, count, callbacks; runs in the caller's thread)

A live source drops the oldest waiting frame instead of falling behind (counted); a file source
blocks instead, so it loses nothing. `stop()` (safe to call from a signal handler) ends capture and
lets everything already read drain through to the results file, so nothing computed is lost.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from wbc_edge.bundle import Bundle
from wbc_edge.errors import DataError, SpecError, WbcError
from wbc_edge.runtime.results import (FLAG_BEYOND_LIMIT, FLAG_HEADS_DISAGREE, FLAG_MISSING_PREFIX, FLAG_TOUCHING, CellResult,
                                      Differential, ResultWriter, RunSummary)
from wbc_edge.runtime.stats import RunStats
from wbc_edge.spec import LOCATOR_LIGHT, MODALITIES

log = logging.getLogger(__name__)
NO_CELLS_WARN_SETS = 5  # this many analysed sets without a single white cell is worth a warning

MISSING_LIGHT_POLICIES = ("skip", "heads")
_END = object()  # end-of-stream marker passed down the queues
_POLL_S = 0.05
SCALE_TOLERANCE = 0.06  # an estimate this close to the training scale keeps it (the estimator's accuracy, measured)


@dataclass
class _SetWork:
    """One four-light set on its way through the pipeline."""

    index: int
    time: float
    light_set: Any
    boxes: list[tuple[int, int, int, int]]
    inputs: np.ndarray  # uint8 [n, 3M, S, S]
    present_heads: list[int]
    missing: list[str]
    flags: list[str]
    skipped: str | None = None  # why the set was not classified
    probs: np.ndarray | None = None
    head_probs: np.ndarray | None = None
    done_rows: int = 0
    cell_flags: list[list[str]] = field(default_factory=list)  # per box, from the locator

    @property
    def n(self) -> int:
        return 0 if self.skipped else len(self.boxes)


@dataclass
class _RunState:
    stop_reason: str = ""
    error: BaseException | None = None
    frames_dropped: int = 0
    frames_rejected: int = 0  # each one named in a "frame N rejected" warning
    frames_rejected_by: dict[str, int] = field(default_factory=dict)
    source_validates: bool = True  # a FrameSource already converted and flagged its frames
    sets_skipped: int = 0  # each one named in a "set N skipped" line
    sets_skipped_by: dict[str, int] = field(default_factory=dict)
    assembler: Any = None
    cells_discarded: int = 0
    source_error: str = ""
    flag_counts: dict[str, int] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)


def _count(state: _RunState, counter: str, reason: str, n: int = 1) -> None:
    """One event of the summary's `counter` (frames_rejected, sets_skipped), with its reason."""
    setattr(state, counter, getattr(state, counter) + n)
    by = getattr(state, counter + "_by")
    by[reason] = by.get(reason, 0) + n


def _validates_frames(source: Any) -> bool:
    from wbc_edge.runtime.sources import FrameSource

    return isinstance(source, FrameSource)


def _frame_validator() -> Any:
    from wbc_edge.runtime.sources import FrameValidator

    return FrameValidator()


def _checked_frame(frame: Any, validator: Any) -> Any:
    """Frames from a caller's own source (embedding API) get the checks a FrameSource does: converted
    to RGB uint8 (NaN/inf zeroed) and flagged black/saturated/non_finite/...; DataError if unusable.
    Frames from a FrameSource are converted only if they somehow are not RGB uint8 HxWx3."""
    image = getattr(frame, "image", None)
    is_rgb8 = isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    if validator is None and is_rgb8:
        return frame
    where = f"frame {getattr(frame, 'index', '?')}"
    rgb, flags = (validator or _frame_validator()).check(image, where, rgb_order=True)
    if "size_mismatch" in flags:  # cannot share a set (or a crop window) with the other lights' frames
        raise DataError(f"{where}: size {rgb.shape[1]}x{rgb.shape[0]} differs from the stream's first frame")
    checked = copy.copy(frame)
    checked.image = rgb
    checked.flags = frozenset(getattr(frame, "flags", None) or ()) | flags
    return checked


def _box_tuple(box: Any) -> tuple[int, int, int, int]:
    if all(hasattr(box, a) for a in ("x0", "y0", "x1", "y1")):
        return (int(box.x0), int(box.y0), int(box.x1), int(box.y1))
    if hasattr(box, "box"):
        return _box_tuple(box.box)
    x0, y0, x1, y1 = (int(v) for v in list(box)[:4])
    return (x0, y0, x1, y1)


def _default_crop_px(bundle: Bundle, um_per_px: float | None = None) -> int:
    """The crop window in frame pixels: the model's field of view (spec.crop_um) at the camera's scale
    (default: the spec's training scale); a legacy bundle's meta crop_px when no scale is given."""
    meta = bundle.manifest.get("meta", {}) or {}
    if um_per_px is None and isinstance(meta.get("crop_px"), (int, float)) and meta["crop_px"] > 0:
        return int(meta["crop_px"])
    from wbc_edge.runtime.optics import crop_px_for

    return crop_px_for(bundle.spec, um_per_px or bundle.spec.train_um_per_px or bundle.spec.input_um_per_px)


class _Prefetched:
    """A source whose first frames were read ahead (to measure the scale): they come out first."""

    def __init__(self, source: Any, frames: list):
        self._source, self._frames = source, deque(frames)

    def read(self, timeout: float = 1.0) -> Any:
        return self._frames.popleft() if self._frames else self._source.read(timeout)

    @property
    def is_streaming(self) -> bool:
        return bool(self._frames) or getattr(self._source, "is_streaming", True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


class Analyzer:
    """Classify the white blood cells a source shows and count the differential.

    bundle_or_path: a `Bundle` or a `.wbc` path. backend/precision: see `open_backend`.
    batch_size/max_wait_ms: a batch runs when it is full or its oldest cell waited this long.
    missing_light: "skip" drops a set with a light missing; "heads" fills the light per the spec and
    combines only the heads of the present lights. Both flag it. profile: the camera's scale, a
    `DeviceProfile`, a profile JSON path, a number (um per px), "auto" (the source's own scale if it
    knows it, else measured from its first bright-field frames at the start of `analyze`, logged) or
    None (the scale the model was trained at). crop_px: the crop window in frame pixels (default: the
    model's field of view, spec.crop_um, at that scale). runner/locator/cropper/assembler_factory
    replace the defaults (tests, custom hardware).
    """

    def __init__(self, bundle_or_path: Bundle | str | os.PathLike, backend: str = "auto", precision: str = "auto",
                 batch_size: int = 8, max_wait_ms: float = 20.0, missing_light: str = "skip",
                 crop_px: int | None = None, align: bool = False, light_order: Sequence[str] | None = None,
                 intra_op_threads: int | None = None, engine_cache: str | None = None,
                 gallery_per_class: int = 0, runner: Any = None,
                 locator: Callable[[np.ndarray], list] | None = None, cropper: Callable[..., Any] | None = None,
                 assembler_factory: Callable[[Sequence[str]], Any] | None = None, estimator: str | None = None,
                 profile: Any = None):
        self.bundle = bundle_or_path if isinstance(bundle_or_path, Bundle) else Bundle.open(bundle_or_path)
        self.spec = self.bundle.spec
        self._fixed_crop_px = int(crop_px) if crop_px else None
        self.profile = None
        self._auto_scale = isinstance(profile, str) and profile == "auto"
        self.set_profile(None if self._auto_scale else profile)
        if missing_light not in MISSING_LIGHT_POLICIES:
            raise SpecError(f"missing_light '{missing_light}' is not one of {list(MISSING_LIGHT_POLICIES)}")
        if batch_size < 1:
            raise SpecError(f"batch_size {batch_size} must be >= 1")
        self.batch_size = int(batch_size)
        self.max_wait_s = max(0.0, float(max_wait_ms) / 1000.0)
        self.missing_light = missing_light
        self.align = bool(align)
        # The camera's cycle: the user's order, else what the source says (meta.json), else the model's;
        # settled per run by sources.run_light_order, which compares them.
        self._given_light_order = tuple(light_order) if light_order else None
        if LOCATOR_LIGHT in self.spec.modalities:
            self._model_light_order = tuple(self.spec.modalities)
        else:  # a model reading fewer lights still sees the camera's full cycle, fluorescence included
            self._model_light_order = (LOCATOR_LIGHT,) + tuple(m for m in MODALITIES if m != LOCATOR_LIGHT)
        self.light_order = self._given_light_order or self._model_light_order
        if runner is None:
            from wbc_edge.runtime.backends import open_backend

            runner = open_backend(self.bundle, backend=backend, precision=precision, intra_op_threads=intra_op_threads,
                                  engine_cache=engine_cache)
        self.runner = runner
        # calibrated probabilities and the differential estimate (runtime.quantify); None: an older bundle
        from wbc_edge.runtime.quantify import DEFAULT_METHOD, METHODS, params_for_bundle

        if (estimator or DEFAULT_METHOD) not in METHODS:
            raise SpecError(f"estimator '{estimator}' is not one of {list(METHODS)}")
        self.estimator = estimator or DEFAULT_METHOD
        self.quant = params_for_bundle(self.bundle, str(getattr(self.runner, "precision", "fp32")))
        self._counted_probs: list[dict[str, float]] = []
        self._locate = locator
        self._crop = cropper
        self._assembler_factory = assembler_factory
        self.gallery_per_class = int(gallery_per_class)
        self.gallery: dict[str, list[np.ndarray]] = {}
        self._gallery_light = next((i for i, m in enumerate(self.spec.modalities) if m != LOCATOR_LIGHT), 0)
        self.stats = RunStats()
        self._started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.differential = Differential(self.spec.classes)
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._stop_reason = ""

    # ---- physical scale --------------------------------------------------------------------
    def set_profile(self, profile: Any) -> None:
        """Use a camera scale from now on (see the class docstring for what `profile` may be)."""
        from wbc_edge.runtime.optics import DeviceProfile

        if isinstance(profile, (str, os.PathLike)):
            profile = DeviceProfile.load(profile)
        elif isinstance(profile, (int, float)):
            profile = DeviceProfile(float(profile))
        self.profile = profile
        self.um_per_px = float(profile.um_per_px) if profile is not None else (
            self.spec.train_um_per_px or self.spec.input_um_per_px)
        self.scale_origin = profile.origin if profile is not None else "the model's training scale (no device profile)"
        self.crop_px = self._fixed_crop_px or _default_crop_px(self.bundle, self.um_per_px if profile is not None else None)

    def _settle_scale(self, source: Any) -> Any:
        """With profile "auto": the source's own scale, else one measured from its first frames. With a
        given profile: warn when the frames contradict it (another frame size, red cells of another
        size). The frames read ahead are replayed, none lost. Returns the source to read from."""
        from wbc_edge.runtime.optics import ScaleError, estimate_scale, profile_warnings

        if not self._auto_scale and self.profile is None:
            return source
        if self._locate is not None and self._crop is not None:
            return source  # custom locator and cropper (tests, custom hardware) take no scale
        if self._auto_scale:  # each run measures afresh, against the training scale (not the last sample's)
            self.set_profile(None)
        own = getattr(source, "um_per_px", None)
        if self._auto_scale and isinstance(own, (int, float)) and own > 0:
            from wbc_edge.runtime.optics import DeviceProfile

            where = getattr(source, "um_per_px_origin", None)
            self.set_profile(DeviceProfile(float(own), origin=f"the source's own scale ({where})" if where else "the source's own scale"))
            log.info("scale: %.4f um/px (%s)", self.um_per_px, self.scale_origin)
            return source
        if (not self._auto_scale and isinstance(own, (int, float)) and own > 0
                and abs(math.log(float(own) / self.um_per_px)) >= math.log(1 + SCALE_TOLERANCE)):
            where = getattr(source, "um_per_px_origin", None) or "the source"
            log.warning("scale: the device profile (%s) says %.4f um/px but %s says %.4f um/px; using the profile",
                        self.scale_origin, self.um_per_px, where, float(own))
        frames: list = []
        deadline = time.monotonic() + 10.0
        while len(frames) < 3 * len(self.light_order) and time.monotonic() < deadline and not self._stop.is_set():
            try:
                frame = source.read(_POLL_S * 2)
            except WbcError:
                break  # the capture stage meets it again and reports it
            if frame is None:
                if not getattr(source, "is_streaming", True):
                    break
                continue
            frames.append(frame)
        images = [f.image for f in frames if isinstance(getattr(f, "image", None), np.ndarray) and f.image.ndim == 3]
        bright = [im for im in images if float(np.median(im[::4, ::4])) > 70]  # the fluorescence frames are dark
        est = None
        try:
            est = estimate_scale(bright, where=f"the first {len(frames)} frames")
        except ScaleError as e:
            refusal = str(e)
        if self._auto_scale:
            if est is not None and abs(math.log(est.um_per_px / self.um_per_px)) < math.log(1 + SCALE_TOLERANCE):
                # within the estimator's own accuracy of the training scale: no evidence of other optics
                self.scale_origin = (f"the model's training scale (estimated {est.um_per_px:.4f} um/px from the first "
                                     f"{len(bright)} bright-field frames, within {100 * SCALE_TOLERANCE:.0f} %)")
                log.info("scale: %s", self.scale_origin)
            elif est is not None:
                h, w = bright[0].shape[:2]
                self.set_profile(est.profile(w, h, origin=f"estimated from the first {len(bright)} bright-field frames"))
                log.warning("scale: %s", est.describe())
            else:
                log.warning("scale: %s; using the model's training scale %.4f um/px", refusal, self.um_per_px)
                self.scale_origin = "the model's training scale (estimate refused)"
        elif images:
            h, w = images[0].shape[:2]
            for line in profile_warnings(self.profile, w, h, est):
                log.warning("%s", line)
        from wbc_edge.runtime.optics import white_cell_check

        dark = [im for im in images if float(np.median(im[::4, ::4])) <= 70]  # the fluorescence frames
        line = white_cell_check(dark, self.um_per_px) if self._locate is None else None
        if line:
            log.warning("scale: %s", line)
        return _Prefetched(source, frames)

    # ---- lifecycle -------------------------------------------------------------------------
    def open(self) -> "Analyzer":
        if not self.runner.is_active:
            self.runner.activate()
        return self

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> "Analyzer":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, reason: str = "stopped") -> None:
        """Ask a running `analyze` to stop reading and drain; safe from a signal handler."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    @property
    def description(self) -> str:
        return f"{self.bundle.path.name} on {self.runner.backend} {self.runner.precision} ({self.runner.device})"

    # ---- the frontend stages (lazy so a custom locator needs no OpenCV contours) -----------
    def _locate_fn(self) -> Callable[[np.ndarray], list]:
        if self._locate is None:
            from wbc_edge.runtime.locator import locate_cells

            return lambda image: locate_cells(image, um_per_px=self.um_per_px)
        return self._locate

    def _crop_fn(self) -> Callable[..., Any]:
        if self._crop is None:
            from wbc_edge.runtime.locator import crop_cells

            self._crop = crop_cells
        return self._crop

    @property
    def given_light_order(self) -> tuple[str, ...] | None:
        """The user's light cycle (light_order=, --order), None when not given."""
        return self._given_light_order

    def light_order_for(self, source: Any) -> tuple[str, ...]:
        """The light cycle a run on `source` assembles by (sources.run_light_order: given, stated, model's)."""
        from wbc_edge.runtime.sources import run_light_order

        return run_light_order(source, self.spec.modalities, self._given_light_order,
                               missing_ok=self.missing_light == "heads", default=self._model_light_order)

    def _new_assembler(self) -> Any:
        if self._assembler_factory is None:
            from wbc_edge.runtime.assembler import LightCycleAssembler

            self._assembler_factory = LightCycleAssembler
        return self._assembler_factory(self.light_order)

    # ---- one set, synchronously ------------------------------------------------------------
    def _prepare(self, light_set: Any) -> _SetWork:
        spec = self.spec
        images = dict(getattr(light_set, "images", {}) or {})
        missing = [m for m in spec.modalities if images.get(m) is None]
        if images.get(LOCATOR_LIGHT) is None and LOCATOR_LIGHT not in missing:
            missing.append(LOCATOR_LIGHT)
        # set-level flags (assembler) first, then ours; sorted and unique so files compare across runs
        flags = sorted({str(f) for f in (getattr(light_set, "flags", None) or ())}
                       | {FLAG_MISSING_PREFIX + m for m in missing})
        present_heads = [h for h in range(spec.num_heads)
                         if spec.head_modality_index(h) is None or spec.modalities[spec.head_modality_index(h)] not in missing]
        set_time = getattr(light_set, "time", None)
        work = _SetWork(index=int(getattr(light_set, "index", 0)), time=float(set_time) if set_time is not None else time.time(), light_set=light_set, boxes=[],
                        inputs=np.empty((0,) + spec.input_shape(1)[1:], np.uint8), present_heads=present_heads,
                        missing=missing, flags=flags)
        if images.get(LOCATOR_LIGHT) is None:
            work.skipped = f"no {LOCATOR_LIGHT} frame to locate cells in"
        elif missing and self.missing_light == "skip":
            work.skipped = "light missing: " + ", ".join(missing)
        elif not present_heads:
            work.skipped = "no head reads a present light"
        if work.skipped:
            return work
        with self.stats.time("locate"):
            boxes = self._locate_fn()(images[LOCATOR_LIGHT])
        if boxes:
            if self.align:
                from wbc_edge.runtime.locator import align_lights

                with self.stats.time("align"):
                    light_set, _shifts = align_lights(light_set)
            with self.stats.time("crop"):
                batch, boxes = self._crop_fn()(light_set, boxes, self.crop_px, spec)
            work.inputs = np.ascontiguousarray(batch, dtype=np.uint8)
            work.boxes = [_box_tuple(b) for b in boxes]
            work.cell_flags = [[FLAG_TOUCHING] if getattr(b, "whole_nuclei", 0) >= 2 else [] for b in boxes]
            if len(work.boxes) != len(work.inputs):
                raise DataError(f"set {work.index}: cropper returned {len(work.inputs)} crops for {len(work.boxes)} boxes")
        n = len(work.boxes)
        work.probs = np.empty((n, spec.num_classes), np.float32)
        work.head_probs = np.empty((n, spec.num_heads, spec.num_classes), np.float32)
        return work

    def _infer_rows(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.stats.time("infer"):
            out = self.runner.infer({self.spec.input_name: batch})
        return np.asarray(out[self.spec.probs_name]), np.asarray(out[self.spec.head_probs_name])

    def _results(self, work: _SetWork) -> list[CellResult]:
        if work.skipped or not work.boxes:
            return []
        spec = self.spec
        present = work.present_heads
        head_names = [spec.heads[h] for h in present]
        frame_indices = getattr(work.light_set, "frame_indices", None) or {}
        if not isinstance(frame_indices, dict):
            frame_indices = dict(zip(self.light_order, frame_indices))
        frame_indices = {str(k): int(v) for k, v in frame_indices.items() if v is not None}
        # With a light missing, the combined output averaged a head that saw only the fill value:
        # recombine from the present heads (head_combine "mean").
        combined = work.head_probs[:, present].mean(axis=1) if work.missing else work.probs
        heads = work.head_probs
        labels = np.argmax(combined, axis=1)  # the model's own answer: what the accuracy gate measured
        if self.quant is not None:  # the calibrated row the estimate reads, pooled from the present heads
            from wbc_edge.runtime.quantify import apply_temperature

            combined = self.quant.calibrated_probs(work.head_probs[:, present])
            heads = np.stack([apply_temperature(heads[:, h], self.quant.head_temperatures.get(spec.heads[h], 1.0))
                              for h in range(spec.num_heads)], axis=1)
        out = []
        for i, box in enumerate(work.boxes):
            hp = heads[i]
            p = combined[i]
            k = int(labels[i])
            flags = list(work.flags) + (work.cell_flags[i] if i < len(work.cell_flags) else [])
            if len(present) > 1 and len({int(np.argmax(hp[h])) for h in present}) > 1:
                flags.append(FLAG_HEADS_DISAGREE)
            out.append(CellResult(
                set_index=work.index, cell_index=i, time=work.time, box=box, label=spec.classes[k],
                probability=float(p[k]), probs={c: float(v) for c, v in zip(spec.classes, p)},
                head_probs={name: [float(v) for v in hp[h]] for name, h in zip(head_names, present)},
                flags=flags, frame_indices=frame_indices,
                size_um=((box[2] - box[0]) * self.um_per_px, (box[3] - box[1]) * self.um_per_px)))
        return out

    def classify_set(self, light_set: Any) -> list[CellResult]:
        """Locate, crop and classify the cells of one four-light set (no threads, nothing written)."""
        self.open()
        work = self._prepare(light_set)
        for start in range(0, work.n, self.batch_size):
            probs, head_probs = self._infer_rows(work.inputs[start : start + self.batch_size])
            work.probs[start : start + len(probs)] = probs
            work.head_probs[start : start + len(probs)] = head_probs
        return self._results(work)

    # ---- the threaded run ------------------------------------------------------------------
    def analyze(self, source: Any, sink: Any = None, max_cells: int | None = None, duration: float | None = None,
                on_result: Callable[[CellResult], None] | None = None,
                on_set: Callable[[Any, list[CellResult]], None] | None = None,
                sample: Any = None) -> RunSummary:
        """Run until the source ends, `max_cells` cells are counted, `duration` seconds pass or `stop()`.

        source: a FrameSource or a URI for `open_source`. sink: a results path (JSON lines, appended and
        flushed per cell), an object with `write(CellResult)`, or None. on_result is called per counted
        cell, on_set per finished set with its results (display, video), both in the caller's thread.
        sample: the `wbc_edge.lis.SampleIdentity` counted (recorded in the header and the summary); a
        run without one is counted but never sent to a laboratory system.
        """
        own_source = isinstance(source, (str, os.PathLike))
        source_name = str(source)
        if own_source:
            from wbc_edge.runtime.sources import open_source

            source = open_source(str(source), light_order=self._given_light_order, default_light_order=self._model_light_order)
        else:
            source_name = str(getattr(source, "uri", None) or type(source).__name__)
        try:
            self.light_order = self.light_order_for(source)
        except BaseException:
            if own_source:
                source.close()
            raise
        writer, own_writer = sink, False
        self.open()
        self._stop.clear()
        self._abort.clear()
        self._stop_reason = ""
        self.stats = RunStats()
        self._started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.differential = Differential(self.spec.classes)
        self._counted_probs = []
        self._status_text = ""
        self.gallery = {}
        state = _RunState()
        state.source_validates = _validates_frames(source)
        try:  # inside: a bad sample id or a failed scale read-ahead still closes a source opened here
            self._identity = self._run_identity(sample)
            source = self._settle_scale(source)
            if isinstance(sink, (str, os.PathLike)):
                writer, own_writer = ResultWriter(sink, header={**self._identity, **self._header(source_name)}), True
            frames_q: queue.Queue = queue.Queue(maxsize=2 * len(self.light_order))
            work_q: queue.Queue = queue.Queue(maxsize=4)
            done_q: queue.Queue = queue.Queue(maxsize=4)
            for target, args in ((self._capture_stage, (source, frames_q, state)),
                                 (self._prepare_stage, (frames_q, work_q, state)),
                                 (self._infer_stage, (work_q, done_q, state))):
                t = threading.Thread(target=self._guard, args=(target, args, state), daemon=True,
                                     name=f"wbc-{target.__name__.strip('_')}")
                t.start()
                state.threads.append(t)
            self._output_stage(done_q, writer, state, max_cells, duration, on_result, on_set)
        except BaseException:
            self._abort.set()
            self._stop.set()
            raise
        finally:
            self._stop.set()
            for t in state.threads:
                t.join(timeout=5.0)
            self.stats.stop()
            if own_writer and writer is not None:
                writer.close()
            if own_source:
                source.close()
        if state.error is not None:
            raise state.error
        summary = self._summary(source, source_name, state, writer)
        analysed = summary.sets - summary.sets_skipped
        if analysed >= NO_CELLS_WARN_SETS and summary.total_cells == 0:
            log.warning("%s: no white cell found in %d analysed sets at %.4g um/px (%s); check the focus, the fluorescence "
                        "exposure and the scale", source_name, analysed, self.um_per_px, self.scale_origin)
        summary.sample, summary.instrument = self._identity["sample"], self._identity["instrument"]
        summary.started = self._started
        return summary

    def _guard(self, target: Callable[..., None], args: tuple, state: _RunState) -> None:
        try:
            target(*args)
        except BaseException as e:  # a stage failure ends the run; analyze re-raises it
            log.debug("stage %s failed", target.__name__, exc_info=True)
            if state.error is None:
                state.error = e
            self._abort.set()
            self._stop.set()

    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self._abort.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _capture_stage(self, source: Any, frames_q: queue.Queue, state: _RunState) -> None:
        live = bool(getattr(source, "is_live", False))
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    frame = source.read(_POLL_S * 2)
                except WbcError as e:  # a source that fails for good: keep what was read, say why
                    state.source_error = str(e)
                    self.stop(f"source error: {e}")
                    log.error("%s", e)
                    break
                if frame is None:
                    if not getattr(source, "is_streaming", True):
                        self.stop("end of source")
                        break
                    continue
                self.stats.record("read", time.perf_counter() - t0)
                self.stats.count("frames")
                if live:
                    while True:  # newest frame wins: drop the oldest waiting one
                        try:
                            frames_q.put_nowait(frame)
                            break
                        except queue.Full:
                            try:
                                frames_q.get_nowait()
                                state.frames_dropped += 1
                            except queue.Empty:
                                pass
                elif not self._put(frames_q, frame):
                    return
        finally:
            self._put(frames_q, _END)

    def _prepare_stage(self, frames_q: queue.Queue, work_q: queue.Queue, state: _RunState) -> None:
        assembler = state.assembler = self._new_assembler()
        validator = None if state.source_validates else _frame_validator()
        while not self._abort.is_set():
            try:
                frame = frames_q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            ended = frame is _END
            try:
                if not ended:
                    frame = _checked_frame(frame, validator)
                with self.stats.time("assemble"):
                    sets = assembler.flush() if ended else assembler.push(frame)
            except WbcError as e:  # a corrupt frame is reported and skipped; the run goes on
                _count(state, "frames_rejected", "unusable")
                log.warning("frame %s rejected: %s", getattr(frame, "index", "?"), e)
                sets = []
            for light_set in sets or []:
                self.stats.count("sets")
                try:
                    work = self._prepare(light_set)
                except DataError as e:
                    log.warning("set %s skipped: %s", getattr(light_set, "index", "?"), e)
                    _count(state, "sets_skipped", "could not be prepared")
                    continue
                if not self._put(work_q, work):
                    return
            if ended:
                self._put(work_q, _END)
                return

    def _infer_stage(self, work_q: queue.Queue, done_q: queue.Queue, state: _RunState) -> None:
        in_order: deque[_SetWork] = deque()
        rows: deque[tuple[_SetWork, int, float]] = deque()  # (set, row, arrival time)
        ended = False
        while not self._abort.is_set():
            if not ended:
                wait = _POLL_S if not rows else min(_POLL_S, max(0.0, rows[0][2] + self.max_wait_s - time.perf_counter()))
                try:
                    item = work_q.get(timeout=wait) if wait > 0 else work_q.get_nowait()
                except queue.Empty:
                    item = None
                if item is _END:
                    ended = True
                elif item is not None:
                    in_order.append(item)
                    now = time.perf_counter()
                    rows.extend((item, r, now) for r in range(item.n))
            while rows and (len(rows) >= self.batch_size or ended
                            or time.perf_counter() >= rows[0][2] + self.max_wait_s):
                take = [rows.popleft() for _ in range(min(self.batch_size, len(rows)))]
                batch = np.stack([w.inputs[r] for w, r, _ in take])
                probs, head_probs = self._infer_rows(batch)
                for j, (w, r, _) in enumerate(take):
                    w.probs[r] = probs[j]
                    w.head_probs[r] = head_probs[j]
                    w.done_rows += 1
            while in_order and in_order[0].done_rows >= in_order[0].n:
                if not self._put(done_q, in_order.popleft()):
                    return
            if ended and not rows and not in_order:
                self._put(done_q, _END)
                return

    def _output_stage(self, done_q: queue.Queue, writer: Any, state: _RunState, max_cells: int | None,
                      duration: float | None, on_result: Callable | None, on_set: Callable | None) -> None:
        started = time.perf_counter()
        while True:
            if duration is not None and time.perf_counter() - started >= duration:
                self.stop("duration")
            if self._abort.is_set():
                # another stage failed: still write what was already classified, then stop
                while True:
                    try:
                        work = done_q.get_nowait()
                    except queue.Empty:
                        return
                    if work is not _END:
                        self._output_set(work, writer, state, max_cells, on_result, on_set)
            try:
                work = done_q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if work is _END:
                return
            self._output_set(work, writer, state, max_cells, on_result, on_set)

    def _output_set(self, work: _SetWork, writer: Any, state: _RunState, max_cells: int | None,
                    on_result: Callable | None, on_set: Callable | None) -> None:
        if work.skipped:
            _count(state, "sets_skipped", work.skipped)
            log.info("set %d skipped: %s", work.index, work.skipped)
        results = self._results(work)
        counted = []
        for res in results:
            if max_cells is not None and self.differential.total >= max_cells:
                # classified in flight after the differential was full: kept on disk, flagged, not counted
                state.cells_discarded += 1
                if writer is not None:
                    res.flags = res.flags + [FLAG_BEYOND_LIMIT]
                    with self.stats.time("write"):
                        writer.write(res)
                continue
            if writer is not None:
                with self.stats.time("write"):
                    writer.write(res)
            self.differential.add(res.label)
            self._counted_probs.append(res.probs)
            self.stats.count("cells")
            self._keep_for_gallery(work, res)
            counted.append(res)
            for f in res.flags:
                state.flag_counts[f] = state.flag_counts.get(f, 0) + 1
            if on_result is not None:
                on_result(res)
            if max_cells is not None and self.differential.total >= max_cells:
                self.stop("max_cells")
        if on_set is not None:
            on_set(work.light_set, counted)

    def _keep_for_gallery(self, work: _SetWork, res: CellResult) -> None:
        if self.gallery_per_class <= 0:
            return
        kept = self.gallery.setdefault(res.label, [])
        if len(kept) < self.gallery_per_class:
            g = self._gallery_light
            kept.append(np.ascontiguousarray(work.inputs[res.cell_index, 3 * g : 3 * g + 3].transpose(1, 2, 0)))

    def _run_identity(self, sample: Any) -> dict[str, Any]:
        from wbc_edge.lis.identity import SampleIdentity, device_identity, profile_serial

        if isinstance(sample, str):  # a bare accession id from firmware: checked like --sample-id
            sample = SampleIdentity(sample)
        serial = getattr(self, "device_serial", None) or profile_serial(getattr(self, "profile", None))
        return {"sample": sample.to_dict() if sample is not None else None,
                "instrument": device_identity(self.bundle, serial)}

    def _header(self, source_name: str) -> dict[str, Any]:
        from wbc_edge import __version__

        return {"classes": list(self.spec.classes), "heads": list(self.spec.heads), "source": source_name,
                "model": str(self.bundle.path), "backend": self.runner.backend, "precision": self.runner.precision,
                "device": self.runner.device, "missing_light": self.missing_light, "batch_size": self.batch_size,
                "light_order": list(self.light_order),
                "crop_px": self.crop_px, "um_per_px": round(self.um_per_px, 6), "scale_origin": self.scale_origin,
                "started": self._started,
                "wbc_edge_version": __version__, "quantification": self._quant_header()}

    def estimate_status(self, every: int = 25) -> str:
        """'  | est NEU 61% ...' for the live status line: the point estimate (no interval), refreshed
        every `every` counted cells so it costs nothing per cell; '' without quantification.json."""
        n = len(self._counted_probs)
        if self.quant is None or n == 0:
            return ""
        if n // every != getattr(self, "_status_at", -1) or not getattr(self, "_status_text", ""):
            from wbc_edge.runtime.quantify import estimate_shares
            from wbc_edge.spec import CLASS_ABBREV

            rows = [[p[c] for c in self.quant.classes] for p in self._counted_probs]
            est = estimate_shares(rows, self.quant, self.estimator, n_boot=0, where="live status")
            self._status_at = n // every
            self._status_text = "  | est " + " ".join(f"{CLASS_ABBREV.get(c, c)} {100 * v:.0f}%" for c, v in zip(est.classes, est.shares))
        return self._status_text

    def _quant_header(self) -> dict[str, Any] | None:
        """What `summarize` needs to rebuild the estimate from the results file alone."""
        return None if self.quant is None else {**self.quant.to_header(), "estimator": self.estimator}

    def _summary(self, source: Any, source_name: str, state: _RunState, writer: Any) -> RunSummary:
        snap = self.stats.snapshot()
        source_counters = getattr(source, "counters", None)
        if callable(source_counters):
            source_counters = source_counters()
        dropped_at_source = undecodable = 0
        if isinstance(source_counters, dict):
            snap["source"] = dict(source_counters)
            dropped_at_source = int(source_counters.get("dropped", 0) or 0)  # e.g. a camera's one-frame buffer
            undecodable = int(source_counters.get("corrupt", 0) or 0)  # read, warned rejected, never delivered
        if undecodable:
            _count(state, "frames_rejected", "undecodable", undecodable)
        assembler_stats = dict(getattr(state.assembler, "stats", None) or {})
        for reason, n in (getattr(state.assembler, "rejected_by", None) or {}).items():
            _count(state, "frames_rejected", reason, n)  # warned "frame N rejected (flags)" by the assembler
        if assembler_stats.get("unrecognised_skipped"):
            _count(state, "frames_rejected", "matches no learnt light", int(assembler_stats["unrecognised_skipped"]))
        from wbc_edge.runtime.results import differential_estimate

        where = f"run {getattr(writer, 'path', None) or source_name}"
        estimate, note = differential_estimate(self._quant_header(), self._counted_probs, where)
        from wbc_edge.runtime.reference import assess

        assessment = assess(estimate, self._counted_probs, state.flag_counts.get(FLAG_HEADS_DISAGREE, 0))
        return RunSummary.from_differential(
            self.differential, estimate=estimate, estimate_note=note, assessment=assessment, flag_counts=dict(state.flag_counts), sets=snap["counters"].get("sets", 0),
            sets_skipped=state.sets_skipped, sets_skipped_by=dict(state.sets_skipped_by),
            frames=snap["counters"].get("frames", 0) + undecodable,
            frames_dropped=state.frames_dropped + dropped_at_source, frames_rejected=state.frames_rejected,
            frames_rejected_by=dict(state.frames_rejected_by),
            frames_duplicate=int(assembler_stats.get("duplicates", 0)),
            frames_unassembled=int(assembler_stats.get("unlocked_dropped", 0)), light_order=list(self.light_order),
            cells_discarded=state.cells_discarded, duration_s=snap["elapsed_s"],
            stop_reason=getattr(self, "_stop_reason", "") or "end of source", source=source_name,
            model=str(self.bundle.path), backend=self.runner.backend, precision=self.runner.precision,
            results_path=str(getattr(writer, "path", "")) or None, stats=snap,
            scale=f"{self.um_per_px:.4f} um/px ({self.scale_origin})")
