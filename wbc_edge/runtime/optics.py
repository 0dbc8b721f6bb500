"""The camera's physical scale: the device profile, and measuring the scale from the frames themselves.

A device profile is a small JSON file, `{"um_per_px": 0.144, "width": 1440, "height": 900, "serial":
..., "origin": ..., "spread": ...}`: what a device maker's camera (magnification, sensor, pixel size)
makes of one micrometre. The runtime turns every locator size (micrometres) and the model's crop
field of view (`ModelSpec.crop_um`) into pixels with it.

Without a profile the scale is measured from the bright-field frames: red cells, about 7.5 um across
and hundreds per blood frame, are a ruler that every sample carries. They are darker than the
background in every bright-field light; the inscribed radius of each dark blob (the peak of its
distance transform, after filling the pale centre) is one red cell's radius even where cells touch;
the median over a frame's cells is robust to the few white cells, platelets and clumps among them.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np

from wbc_edge.errors import DataError
from wbc_edge.spec import SIM_UM_PER_PX, ModelSpec

log = logging.getLogger(__name__)

RBC_DIAMETER_UM = 7.5  # a normal red cell (normocyte) in a smear; the ruler
MIN_RULER_CELLS = 30  # fewer red cells than this: no estimate
MIN_FRAME_CELLS = 8  # a frame with fewer lone red cells adds nothing
MAX_RELATIVE_SPREAD = 0.3  # interquartile range / median of a frame's red-cell diameters above this: not a ruler
MIN_BRIGHT_FIELD = 40.0  # median grey of a bright-field channel; below, a dark (fluorescence) field
MIN_SHARE = 0.35  # the dominant size must hold this part of the blob area
SCALE_MISMATCH = 1.25  # a profile more than 25 % off the frames' evidence is warned about
LONE_DISC_RATIO = 1.5  # blob area over its inscribed disc's: below, one cell; above, touching cells
MEASURE_PIXELS = 1.0e6  # frames larger than this are measured averaged down first (speed)
MIN_RBC_PX, MAX_RBC_PX = 5.0, 400.0  # red-cell diameters the estimator can resolve (pixels)


class ScaleError(DataError):
    """The frames do not support a scale estimate, or a profile is unusable."""


@dataclass(frozen=True)
class DeviceProfile:
    """One camera's scale. width/height: the frame size it was measured at (None: any)."""

    um_per_px: float
    width: int | None = None
    height: int | None = None
    serial: str | None = None
    origin: str = "given"  # "given", "estimated from N frames of URI", "simulator", ...
    spread: float | None = None  # relative spread of the estimate (IQR / median), when estimated
    n_cells: int | None = None  # red cells the estimate rests on

    def __post_init__(self) -> None:
        if not isinstance(self.um_per_px, (int, float)) or not math.isfinite(self.um_per_px) or not 0.005 <= self.um_per_px <= 50:
            raise ScaleError(f"device profile field 'um_per_px': {self.um_per_px!r} is not micrometres per pixel in 0.005..50")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ScaleError(f"device profile field '{name}': {v!r} is not a positive integer")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def save(self, path: str | os.PathLike) -> Path:
        from wbc_edge.bundle import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return Path(path)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "device profile") -> "DeviceProfile":
        if not isinstance(d, Mapping):
            raise ScaleError(f"{where}: expected a JSON object, got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ScaleError(f"{where} field '{unknown[0]}': unknown field (known: {', '.join(sorted(known))})")
        if "um_per_px" not in d:
            raise ScaleError(f"{where} field 'um_per_px': missing")
        try:
            return cls(**dict(d))
        except ScaleError as e:
            raise ScaleError(f"{where}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DeviceProfile":
        try:
            d = json.loads(Path(path).read_text())
        except OSError as e:
            raise ScaleError(f"{path}: cannot read the device profile ({e.strerror or e})") from None
        except json.JSONDecodeError as e:
            raise ScaleError(f"{path}: the device profile is not valid JSON ({e})") from None
        return cls.from_dict(d, where=str(path))


SIMULATOR_PROFILE = DeviceProfile(SIM_UM_PER_PX, origin="simulator (the spec's default scale)")


WBC_DIAMETER_UM = (7.0, 22.0)  # located white-cell boxes, small lymphocyte to large monocyte


def white_cell_check(fluorescent: Iterable[np.ndarray], um_per_px: float, min_cells: int = 3) -> str | None:
    """The second ruler, as a check: white cells located in fluorescence frames at this scale should be
    7-22 um across. One line when their median says otherwise; None when they agree or are too few."""
    from wbc_edge.runtime.locator import locate_cells

    sides = [max(b.x1 - b.x0, b.y1 - b.y0) * um_per_px for img in fluorescent for b in locate_cells(img, um_per_px=um_per_px)]
    if len(sides) < min_cells:
        return None
    med = float(np.median(sides))
    if WBC_DIAMETER_UM[0] <= med <= WBC_DIAMETER_UM[1]:
        return None
    return (f"white cells measure {med:.1f} um across at {um_per_px:.4g} um/px (expected {WBC_DIAMETER_UM[0]:.0f}-"
            f"{WBC_DIAMETER_UM[1]:.0f} um, {len(sides)} cells): check the scale")


def crop_px_for(spec: ModelSpec, um_per_px: float) -> int:
    """The crop window, in frame pixels, that covers the model's physical field of view."""
    return max(2, int(round(float(spec.crop_um) / float(um_per_px))))


def profile_warnings(profile: DeviceProfile, width: int, height: int, estimate: "ScaleEstimate | None" = None) -> list[str]:
    """One line per reason to distrust `profile` on these frames (another camera's frame size, a scale
    far from what the frames' red cells say)."""
    out = []
    if profile.width is not None and profile.height is not None and (profile.width, profile.height) != (width, height):
        out.append(f"device profile for {profile.width}x{profile.height} frames used on {width}x{height} frames "
                   "(another camera or binning?): its scale may be wrong")
    if estimate is not None:
        ratio = profile.um_per_px / estimate.um_per_px
        if ratio > SCALE_MISMATCH or ratio < 1 / SCALE_MISMATCH:
            out.append(f"device profile says {profile.um_per_px:.4g} um/px but the frames' red cells say "
                       f"{estimate.um_per_px:.4g} um/px ({ratio:.2f}x): check the profile")
    return out


@dataclass(frozen=True)
class ScaleEstimate:
    """A scale measured from frames: micrometres per pixel, red-cell diameter in px and its spread."""

    um_per_px: float
    rbc_diameter_px: float
    spread: float  # interquartile range / median of the per-cell diameters
    n_cells: int
    n_frames: int
    per_frame: list[float] = field(default_factory=list)  # median red-cell diameter (px) of each usable frame

    def profile(self, width: int | None = None, height: int | None = None, serial: str | None = None,
                origin: str = "estimated") -> DeviceProfile:
        return DeviceProfile(round(self.um_per_px, 6), width, height, serial, origin, round(self.spread, 4), self.n_cells)

    def describe(self) -> str:
        return (f"{self.um_per_px:.4f} um/px (red cells {self.rbc_diameter_px:.1f} px across, spread {100 * self.spread:.0f} %, "
                f"{self.n_cells} cells in {self.n_frames} frame(s))")


def red_cell_diameters(bright: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(diameters in px, areas in px) of the red cells of one bright-field frame; see `_red_cell_diameters`.

    A frame above a megapixel is measured on a copy averaged down by whole pixels first (10x faster at
    5 MP) and again at full size if its red cells came out smaller than 12 px there."""
    img = np.asarray(bright)
    h, w = img.shape[:2]
    k = int(math.sqrt(h * w / MEASURE_PIXELS))
    if k >= 2:
        small = cv2.resize(img[: h // k * k, : w // k * k], (w // k, h // k), interpolation=cv2.INTER_AREA)
        d, a = _red_cell_diameters(small)
        if d.size >= MIN_FRAME_CELLS and float(np.median(d)) >= 12.0:
            return d * k, a * (k * k)
    return _red_cell_diameters(img)


def _red_cell_diameters(bright: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(diameters in px, areas in px) of the dark blobs (red cells) of one bright-field frame (RGB or
    grey uint8); empty when the frame shows none.

    The channel where the blobs stand out best, divided by its smooth illumination (a blur over a
    twentieth of the frame: no cell size assumed), thresholded by Otsu, holes filled (a red cell's
    pale centre). A blob whose area is that of the disc its distance transform inscribes is a lone cell;
    its diameter is that of the disc of its area. Touching cells (area well above the disc's) are left out.
    """
    img = np.asarray(bright)
    channels = [img[:, :, c] for c in range(3)] if img.ndim == 3 else [img]
    h, w = img.shape[:2]
    empty = (np.empty(0), np.empty(0))
    if h < 16 or w < 16:
        return empty
    best = None
    for grey in channels:
        grey = grey.astype(np.float32)
        if float(grey.std()) < 2.0 or float(np.median(grey[::4, ::4])) < MIN_BRIGHT_FIELD:
            continue  # flat, or a dark field (fluorescence): no red cells to see against a bright background
        sigma = max(h, w) / 20.0
        small = cv2.resize(grey, (max(8, w // 4), max(8, h // 4)), interpolation=cv2.INTER_AREA)
        illum = cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / 4.0), (w, h), interpolation=cv2.INTER_LINEAR)
        darkness = np.clip(400.0 * (1.0 - grey / np.maximum(illum, 1.0)) + 128.0, 0, 255)
        d8 = cv2.GaussianBlur(darkness, (0, 0), 1.0).astype(np.uint8)
        _, mask = cv2.threshold(d8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        fg, bg = d8[mask > 0], d8[mask == 0]
        if fg.size < 0.02 * d8.size or bg.size < 0.05 * d8.size:
            continue
        separation = (float(fg.mean()) - float(bg.mean())) / (float(d8.std()) + 1e-6)
        # blobs must stand out from the pixel noise (robust sigma from neighbour differences)
        noise = 1.4826 * float(np.median(np.abs(np.diff(grey[::2], axis=1)))) / np.sqrt(2.0)
        contrast = abs(float(grey[mask > 0].mean()) - float(grey[mask == 0].mean()))
        if contrast < 3.0 * noise + 2.0:
            continue
        if best is None or separation > best[0]:
            best = (separation, mask, float(fg.mean()) - float(bg.mean()))
    if best is None or best[2] < 6.0:
        return empty  # no dark blobs clearly apart from the background: no red cells to measure
    mask = cv2.morphologyEx(best[1], cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    # fill holes: background not reachable from the border is a cell's pale centre
    flood = np.pad(mask, 1)
    cv2.floodFill(flood, None, (0, 0), 255)
    mask = mask | (255 - flood[1:-1, 1:-1])
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return empty
    peaks = np.zeros(n, np.float32)
    np.maximum.at(peaks, labels.ravel(), dist.ravel())
    keep = np.arange(1, n)
    x, y, bw, bh, area = (stats[keep, i] for i in range(5))
    inside = (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h)  # a blob cut by the border shows less than its radius
    radius = np.maximum(peaks[keep].astype(np.float64), 0.5)
    # a lone cell is a disc: its area is pi r^2 of its inscribed radius (two touching cells: twice that)
    lone = (area / (np.pi * radius**2)) < LONE_DISC_RATIO
    diam = 2.0 * np.sqrt(area / np.pi)
    ok = inside & lone & (diam >= MIN_RBC_PX) & (diam <= MAX_RBC_PX)
    return diam[ok], area[ok].astype(np.float64)


def dominant_size(d: np.ndarray, a: np.ndarray) -> tuple[float, float, float]:
    """(median, relative spread, share) of the dominant size among blobs of diameters d and areas a.

    The peak of the area-weighted log-size histogram (red cells outnumber everything else; weighting
    by area silences specks of noise), then the weighted median and interquartile range / median of
    the blobs within 30 % of it; share: the part of all blob area they hold (low: no dominant size).
    """
    logd = np.log(d)
    bins = np.arange(logd.min() - 0.1, logd.max() + 0.15, 0.05)
    hist, edges = np.histogram(logd, bins=bins, weights=a)
    hist = np.convolve(hist, np.ones(5) / 5, mode="same")  # +-10 %: a peak, not one lucky bin
    mode = float(np.exp(0.5 * (edges[np.argmax(hist)] + edges[np.argmax(hist) + 1])))
    near = (d > mode / 1.3) & (d < mode * 1.3)
    q1, med, q3 = _weighted_quantiles(d[near], a[near], [0.25, 0.5, 0.75])
    return med, (q3 - q1) / med, float(a[near].sum() / a.sum())


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: Sequence[float]) -> list[float]:
    order = np.argsort(values)
    v, c = values[order], np.cumsum(weights[order])
    return [float(v[min(np.searchsorted(c, q * c[-1]), v.size - 1)]) for q in qs]


def scale_record(frames: Iterable[np.ndarray], where: str = "frames", min_frame_cells: int = MIN_FRAME_CELLS) -> dict[str, Any]:
    """`estimate_scale` as a JSON-safe record ({"um_per_px", "spread", "n_cells", "origin"}), or
    {"um_per_px": None, "why": the one-line reason} when the frames do not support one."""
    try:
        est = estimate_scale(frames, where=where, min_frame_cells=min_frame_cells)
    except ScaleError as e:
        return {"um_per_px": None, "why": str(e)}
    return {"um_per_px": round(float(est.um_per_px), 5), "spread": round(float(est.spread), 4), "n_cells": int(est.n_cells),
            "origin": f"red cells of {where} ({est.describe()})"}


def estimate_scale(frames: Iterable[np.ndarray], rbc_diameter_um: float = RBC_DIAMETER_UM, where: str = "frames",
                   min_frame_cells: int = MIN_FRAME_CELLS) -> ScaleEstimate:
    """The camera's micrometres per pixel from bright-field frames (red cells as the ruler).

    min_frame_cells: a frame with fewer lone red cells is skipped (a camera frame holds hundreds; a
    single-cell crop holds a few, and crops are pooled with a lower minimum).

    Raises ScaleError with one line when the frames do not support an estimate: too few red cells
    (a blank or fluorescence frame, an empty slide), or sizes too spread to be one kind of cell (out
    of focus, clumped, not blood).
    """
    per_frame, all_d, all_a = [], [], []
    n_frames = n_seen = 0
    for img in frames:
        n_frames += 1
        d, a = red_cell_diameters(np.asarray(img))
        n_seen += d.size
        if d.size < max(1, min_frame_cells):
            continue
        med, spread, share = dominant_size(d, a)
        if spread > MAX_RELATIVE_SPREAD or share < MIN_SHARE:
            continue  # this light shows the red cells too faintly or blurred to measure them
        per_frame.append(med)
        all_d.append(d)
        all_a.append(a)
    if n_frames == 0:
        raise ScaleError(f"{where}: no frames to estimate the scale from")
    d = np.concatenate(all_d) if all_d else np.empty(0)
    if d.size < MIN_RULER_CELLS:
        why = ("no clear red cells (blank, fluorescence-only or cell-free frames?)" if n_seen < MIN_RULER_CELLS else
               "red-cell sizes too spread to be a ruler (out of focus, clumped or not blood?)")
        raise ScaleError(f"{where}: cannot estimate the scale from {n_frames} frame(s): {why}; "
                         f"{d.size} measurable red cells, need {MIN_RULER_CELLS}")
    med, spread, share = dominant_size(d, np.concatenate(all_a))
    if share < MIN_SHARE:
        raise ScaleError(f"{where}: the frames agree on no red-cell size (the commonest holds {100 * share:.0f} % of the "
                         "blobs; frames of different cameras or magnifications?)")
    return ScaleEstimate(rbc_diameter_um / float(med), float(med), float(spread), int(d.size), n_frames, per_frame)


def read_frames(uri: str, n: int) -> list[np.ndarray]:
    """Up to n frames (RGB uint8) from a source URI, for a scale estimate; fluorescence frames are
    left in (the estimator skips dark fields itself)."""
    from wbc_edge.runtime.sources import open_source

    if n < 1:
        raise ScaleError(f"{uri}: frames must be >= 1, got {n}")
    images: list[np.ndarray] = []
    source = open_source(uri)
    try:
        misses = 0
        while len(images) < n and misses < 50:
            frame = source.read(0.2)
            if frame is None:
                if not source.is_streaming:
                    break
                misses += 1
                continue
            images.append(frame.image)
    finally:
        source.close()
    if not images:
        raise ScaleError(f"{uri}: no frames to estimate the scale from")
    return images
