"""Finding white cells in the fluorescence frame and cutting the same window from every light.

Acridine Orange makes the nuclei of white cells glow green on a dark field; red cells have no
nucleus and stay dark. So: the green channel, minus its slowly varying background (white top-hat,
which removes uneven illumination), blurred a little, brought up to a working level when the whole
frame is dim (an under-exposed frame: a weaker lamp, a faint stain, another camera's gain), and
thresholded by Otsu with a floor (an empty field must not turn its noise into cells). Lobes of one
nucleus (a neutrophil has two to five) are merged by dilating the mask by half the merge distance; components that are too small or too
dim (debris, platelets) or too large (clumps), and cells whose box reaches the frame border, are
rejected. The box is the nucleus' bounding box grown by `cell_margin` to the cell's likely extent.

Every size is physical (`LocatorGeometry`, micrometres) and turned into pixels with the camera's
scale (`um_per_px`); a frame finer than `work_um_per_px` is first resampled down to it (the model's
own resolution is enough to find cells, and it is much cheaper), and the boxes are mapped back.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from wbc_edge.errors import DataError
from wbc_edge.preprocess import cell_to_input
from wbc_edge.spec import LOCATOR_LIGHT, SIM_UM_PER_PX, ModelSpec

log = logging.getLogger(__name__)

_U = SIM_UM_PER_PX  # the defaults below were tuned as simulator pixels; kept exact at its scale


@dataclass(frozen=True)
class LocatorGeometry:
    """The locator's sizes in micrometres (areas in square micrometres), for any camera."""

    min_nucleus_um2: float = 90 * _U * _U  # 17 um2: smaller is debris or a platelet
    max_nucleus_um2: float = 3000 * _U * _U  # 567 um2: larger is a clump
    min_body_um2: float = 270 * _U * _U  # a small nucleus counts with this much cytoplasm glow
    merge_um: float = 9 * _U  # 3.9 um: lobes closer than this are one nucleus
    border_um: float = 2 * _U
    cell_margin_um: float = 6 * _U
    max_cell_margin_um: float = 16 * _U
    background_um: float = 61 * _U  # 26.5 um: larger than any nucleus
    blur_um: float = 1.0 * _U
    whole_nucleus_um2: float = 30.0  # a lobe this large is a whole nucleus (a lymphocyte's is ~40; a neutrophil lobe ~5-20)
    min_lobe_um: float = 2.5  # thinner bright structures (red-cell rims, fibres) are not nuclei (0: no opening)
    context_um: float = 4.0  # the ring around a cell whose glow its nucleus must outshine (`min_local_contrast`)
    work_um_per_px: float = _U  # frames finer than this are located at this resolution (the sizes above fit it)

    def in_pixels(self, um_per_px: float) -> dict[str, Any]:
        """locate_cells' pixel arguments at a scale (rounded so the simulator's scale gives the old integers)."""
        if not um_per_px or not np.isfinite(um_per_px) or um_per_px <= 0:
            raise DataError(f"locator scale {um_per_px!r} um/px: must be a positive number")
        a, l = 1.0 / (um_per_px * um_per_px), 1.0 / um_per_px
        return {"min_area": max(1, int(round(self.min_nucleus_um2 * a))), "max_area": max(2, int(round(self.max_nucleus_um2 * a))),
                "min_body_area": int(round(self.min_body_um2 * a)), "merge_distance": round(self.merge_um * l, 6),
                "border_margin": max(1, int(round(self.border_um * l))), "cell_margin": max(1, int(round(self.cell_margin_um * l))),
                "max_cell_margin": max(1, int(round(self.max_cell_margin_um * l))),
                "background_px": max(3, int(round(self.background_um * l))), "blur_sigma": round(self.blur_um * l, 6),
                "open_px": int(round(self.min_lobe_um * l)), "nucleus_px": int(round(self.whole_nucleus_um2 * a)),
                "context_px": max(1, int(round(self.context_um * l)))}


GEOMETRY = LocatorGeometry()


@dataclass(frozen=True)
class CellBox:
    """One located white cell: box (x1, y1 exclusive) and centre in frame pixels, nuclear area in px,
    number of separate nuclear lobes, and mean nuclear brightness above background (0..255, as the
    frame recorded it, before any exposure gain)."""

    x0: int
    y0: int
    x1: int
    y1: int
    cx: float
    cy: float
    area: int
    n_lobes: int
    intensity: float = 0.0
    body_area: int = 0  # px of the cell's cytoplasm glow (0 when not measured)
    whole_nuclei: int = 0  # lobes each as large as a whole round nucleus: 2 or more, likely touching cells

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)

    def as_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "cx": round(self.cx, 2), "cy": round(self.cy, 2), "area": self.area,
                "n_lobes": self.n_lobes, "intensity": round(self.intensity, 1)}


def nuclear_signal(fluorescent: np.ndarray, *, channel: str = "green", background_px: int = 61, blur_sigma: float = 1.0) -> np.ndarray:
    """The nuclei's glow above the local background, float32 (uneven illumination removed)."""
    if fluorescent.ndim == 3:
        if channel in ("red", "green", "blue"):
            grey = fluorescent[:, :, ("red", "green", "blue").index(channel)]
        elif channel == "luma":
            grey = cv2.cvtColor(fluorescent, cv2.COLOR_RGB2GRAY)
        else:
            raise DataError(f"locator channel '{channel}': expected 'green', 'red', 'blue' or 'luma'")
    else:
        grey = fluorescent
    grey = grey.astype(np.float32)
    if blur_sigma > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), blur_sigma)
    # Background = grey opening at a scale larger than any nucleus, taken at a quarter of the
    # resolution (it varies slowly) so a large kernel stays cheap.
    h, w = grey.shape
    k = max(3, background_px // 4) | 1
    small = cv2.resize(grey, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    background = cv2.morphologyEx(small, cv2.MORPH_OPEN, kernel)
    background = cv2.GaussianBlur(background, (0, 0), k / 4)
    background = cv2.resize(background, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.maximum(grey - background, 0.0)


def opened_signal(fluorescent: np.ndarray, *, channel: str = "green", background_px: int = 61, blur_sigma: float = 1.0,
                  open_px: int = 0) -> np.ndarray:
    """`nuclear_signal` after a grey opening with an `open_px` disc: bright structures thinner than a
    nuclear lobe (red-cell rims) sink to their surroundings. What the locator thresholds."""
    signal = nuclear_signal(fluorescent, channel=channel, background_px=background_px, blur_sigma=blur_sigma)
    if open_px >= 2:
        signal = cv2.morphologyEx(signal, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (open_px, open_px)))
    return signal


def locate_cells(
    fluorescent: np.ndarray,
    *,
    um_per_px: float | None = None,
    work_um_per_px: float | None = None,
    geometry: LocatorGeometry = GEOMETRY,
    min_area: int | None = None,
    max_area: int | None = None,
    min_body_area: int | None = None,
    merge_distance: float | None = None,
    border_margin: int | None = None,
    cell_margin: int | None = None,
    max_cell_margin: int | None = None,
    body_contrast: float = 10.0,
    min_contrast: float = 30.0,
    min_intensity: float = 45.0,
    channel: str = "green",
    background_px: int | None = None,
    blur_sigma: float | None = None,
    open_px: int | None = None,
    nucleus_px: int | None = None,
    context_px: int | None = None,
    peak_fraction: float = 0.4,
    min_local_contrast: float = 2.0,
    min_peak: float = 100.0,
    max_gain: float = 8.0,
    min_peak_snr: float = 3.0,
) -> list[CellBox]:
    """White cells in a fluorescence frame (RGB uint8 HxWx3, or a single-channel image).

    um_per_px: the camera's scale (default: the simulator's); `geometry` (micrometres) gives every
        size argument left as None. work_um_per_px: a frame finer than this is located on a copy
        resampled to it; boxes come back in frame pixels. Size arguments given in pixels are pixels
        of the frame as located (after any resampling).

    min_area / max_area: nuclear area (px, lobes summed) of a cell; below is debris, above a clump.
    min_body_area: a smaller nucleus (down to min_area / 3: a small two-lobed cell) is still a cell
        when the cytoplasm glow around it covers at least this many px (debris has no cytoplasm).
    merge_distance: lobes closer than this (px) belong to one cell.
    border_margin: a cell whose box comes within this many px of the frame edge is cut by the
        border and rejected.
    Cell box: the cytoplasm's faint red glow (RNA, Acridine Orange) around the nucleus, where it rises
        `body_contrast` above background, at most `max_cell_margin` px beyond the nucleus; for a
        single-channel frame (no glow to see) the nucleus box grown by `cell_margin`.
    min_contrast: floor under the Otsu threshold (0..255 above background).
    min_intensity: a cell's mean nuclear brightness above background must reach this.
    min_local_contrast: ... and this many times the glow around it (95th percentile within `context_px`
        of its box, every candidate cell's nucleus left out, so a touching neighbour is not glow): a
        nucleus stands out from its surroundings, a knot in a network of red-cell rims or stain debris
        does not. A ratio, so it holds at any exposure (0: off).
    min_peak: a frame whose brightest structure (after the opening: nothing thinner than a nuclear
        lobe) glows less than this above background is under-exposed (the floors above were set on
        frames whose brightest nuclei lie at 110-220, simulated and real); its signal, and the
        cytoplasm glow, are multiplied up to this level, by at most `max_gain` (0: off; `exposure_gain`).
        Only when a nucleus-sized area of it stands `min_peak_snr` times above the frame's 75th
        percentile (+1 grey level): over a nucleus' area sensor noise stays under 2.4 (measured up to a
        5 MP frame's working size and a standard deviation of 40 grey levels), so a field of noise is
        not amplified. Decided per frame: a dim nucleus beside a bright one is not brought up.
    """
    if not isinstance(fluorescent, np.ndarray) or fluorescent.ndim not in (2, 3) or fluorescent.size == 0:
        raise DataError(f"locate_cells: expected an HxW or HxWx3 image, got {getattr(fluorescent, 'shape', type(fluorescent))}")
    scale = float(um_per_px) if um_per_px is not None else SIM_UM_PER_PX
    factor = 1.0
    work_um_per_px = geometry.work_um_per_px if work_um_per_px is None else work_um_per_px
    if work_um_per_px and work_um_per_px > scale * 1.25:  # a quarter finer is not worth a resample
        factor = float(work_um_per_px) / scale
        h0, w0 = fluorescent.shape[:2]
        size = (max(3, int(round(w0 / factor))), max(3, int(round(h0 / factor))))
        fluorescent = cv2.resize(fluorescent, size, interpolation=cv2.INTER_AREA)
        scale = float(work_um_per_px)
    px = geometry.in_pixels(scale)
    given = {"min_area": min_area, "max_area": max_area, "min_body_area": min_body_area, "merge_distance": merge_distance,
             "border_margin": border_margin, "cell_margin": cell_margin, "max_cell_margin": max_cell_margin,
             "background_px": background_px, "blur_sigma": blur_sigma, "open_px": open_px,
             "nucleus_px": nucleus_px, "context_px": context_px}
    px.update({k: v for k, v in given.items() if v is not None})
    boxes = _locate(fluorescent, body_contrast=body_contrast, min_contrast=min_contrast, min_intensity=min_intensity,
                    channel=channel, peak_fraction=peak_fraction, min_local_contrast=min_local_contrast,
                    min_peak=min_peak, max_gain=max_gain, min_peak_snr=min_peak_snr, **px)
    if factor != 1.0:
        boxes = [_scaled_box(b, factor, w0, h0) for b in boxes]
    return boxes


def _scaled_box(b: CellBox, f: float, w: int, h: int) -> CellBox:
    """A box found on a frame resampled by 1/f, in the original frame's pixels."""
    return CellBox(max(0, int(math.floor(b.x0 * f))), max(0, int(math.floor(b.y0 * f))), min(w, int(math.ceil(b.x1 * f))),
                   min(h, int(math.ceil(b.y1 * f))), (b.cx + 0.5) * f - 0.5, (b.cy + 0.5) * f - 0.5,
                   int(round(b.area * f * f)), b.n_lobes, b.intensity, int(round(b.body_area * f * f)), b.whole_nuclei)


def _locate(fluorescent: np.ndarray, *, min_area: int, max_area: int, min_body_area: int, merge_distance: float,
            border_margin: int, cell_margin: int, max_cell_margin: int, body_contrast: float, min_contrast: float,
            min_intensity: float, channel: str, background_px: int, blur_sigma: float, open_px: int = 0,
            peak_fraction: float = 0.0, nucleus_px: int = 0, context_px: int = 1,
            min_local_contrast: float = 0.0, min_peak: float = 0.0, max_gain: float = 1.0,
            min_peak_snr: float = 3.0) -> list[CellBox]:
    h, w = fluorescent.shape[:2]
    if h < 3 or w < 3:
        return []
    signal = opened_signal(fluorescent, channel=channel, background_px=background_px, blur_sigma=blur_sigma, open_px=open_px)
    gain = exposure_gain(signal, min_peak=min_peak, max_gain=max_gain, min_snr=min_peak_snr,
                         nucleus_side=max(1, int(round(math.sqrt(min_area)))))
    if gain != 1.0:
        signal *= gain
    signal8 = np.clip(signal, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(signal8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(float(otsu), float(min_contrast))
    mask = (signal8 > threshold).astype(np.uint8)
    if not mask.any():
        return []

    _, lobe_labels = cv2.connectedComponents(mask, connectivity=8)
    body = None
    if fluorescent.ndim == 3 and body_contrast > 0:
        glow = nuclear_signal(fluorescent, channel="red", background_px=background_px, blur_sigma=round(1.5 * blur_sigma, 6))
        if gain != 1.0:
            glow *= gain  # the cytoplasm's glow is as under-exposed as the nucleus'
        body = ((glow > body_contrast) | (mask > 0)).astype(np.uint8)
    grow = max(1, int(round(merge_distance / 2)))
    merged = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    n_cells, cell_labels = cv2.connectedComponents(merged, connectivity=8)

    # Map every lobe to the merged cell it falls in; accumulate per cell.
    ys, xs = np.nonzero(mask)
    cell_of_pixel = cell_labels[ys, xs]
    values = signal[ys, xs]
    order = np.argsort(cell_of_pixel, kind="stable")
    cell_sorted = cell_of_pixel[order]
    bounds = np.searchsorted(cell_sorted, np.arange(1, n_cells + 1))
    candidates: list[tuple[CellBox, np.ndarray]] = []  # (box, its nuclear pixels)
    for cell in range(1, n_cells):
        sel = order[bounds[cell - 1] : bounds[cell]]
        if peak_fraction > 0 and sel.size:  # the nucleus is what glows near its own peak; dimmer neighbours are not it
            sel = sel[values[sel] >= peak_fraction * float(values[sel].max())]
        if sel.size > max_area:
            continue  # a clump (or a network of red-cell rims): not split into cells
        whole = 0
        parts = [sel]
        if nucleus_px and sel.size:
            parts, whole = _split_whole_nuclei(sel, lobe_labels[ys[sel], xs[sel]], xs[sel], ys[sel], nucleus_px)
        for part in parts:
            box = _measure_cell(part, xs, ys, values, lobe_labels, body, w, h, min_area=min_area, max_area=max_area,
                                min_body_area=min_body_area, min_intensity=min_intensity, border_margin=border_margin,
                                cell_margin=cell_margin, max_cell_margin=max_cell_margin, whole_nuclei=whole)
            if box is not None:
                candidates.append((box, part))
    boxes = [box for box, _ in candidates]
    if min_local_contrast > 0 and candidates:
        glow = _SurroundingGlow(signal, [part for _, part in candidates], xs, ys, context_px)
        boxes = [box for i, box in enumerate(boxes) if box.intensity >= min_local_contrast * glow(i, box)]
    # a small fragment centred inside a bigger cell's box is a lobe that strayed past merge_distance
    boxes = [b for b in boxes if b.area >= min_area or not any(
        o is not b and o.area > b.area and o.x0 <= b.cx < o.x1 and o.y0 <= b.cy < o.y1 for o in boxes)]
    if gain != 1.0:  # brightness as the camera recorded it, comparable between frames
        boxes = [replace(b, intensity=b.intensity / gain) for b in boxes]
    boxes.sort(key=lambda b: (b.y0, b.x0))
    return boxes


def exposure_gain(signal: np.ndarray, *, min_peak: float, max_gain: float, min_snr: float, nucleus_side: int = 1) -> float:
    """The factor that brings a dim frame's brightest structure (`signal` is already opened: nothing
    thinner than a nuclear lobe is left) up to `min_peak` (see locate_cells), or 1. A frame with any
    pixel at `min_peak` is left as it is (one `max`: the common, well-exposed case). The guard against
    amplifying noise compares the highest mean over a `nucleus_side` square (the smallest nucleus'
    area: noise averages out there, a nucleus does not) with the frame's 75th percentile + 1."""
    if not min_peak > 0 or not max_gain > 1 or signal.size == 0:
        return 1.0
    peak = float(signal.max())
    if not np.isfinite(peak) or peak >= min_peak or peak <= 0:
        return 1.0
    nucleus_mean = float((cv2.blur(signal, (nucleus_side, nucleus_side)) if nucleus_side > 1 else signal).max())
    typical = float(np.percentile(signal[::4, ::4], 75)) + 1.0  # a sample is enough for a percentile
    if nucleus_mean < min_snr * typical:
        return 1.0
    gain = min(min_peak / peak, max_gain)
    log.debug("under-exposed fluorescence frame: brightest structure %.1f grey levels above background, gain %.2f", peak, gain)
    return gain


class _SurroundingGlow:
    """The 95th percentile of the signal in a ring `ring_px` wide around a candidate cell's box; at
    least 1 (a dark field). Left out of the ring: the nuclei of the other candidate cells beside it (a
    touching neighbour is not glow), but not a candidate whose nuclear pixels surround this cell's
    centre (stain debris or a rim network around a knot is exactly the glow to outshine). Built once
    per frame: which candidate's nucleus each pixel is, and each nucleus' bounding box."""

    def __init__(self, signal: np.ndarray, parts: Sequence[np.ndarray], xs: np.ndarray, ys: np.ndarray, ring_px: int):
        self.signal, self.ring_px = signal, ring_px
        self.owner = np.full(signal.shape, -1, np.int32)
        self.nucleus_box = np.empty((len(parts), 4))  # x0, y0, x1, y1 of the nuclear pixels (inclusive)
        for i, part in enumerate(parts):
            px, py = xs[part], ys[part]
            self.owner[py, px] = i
            self.nucleus_box[i] = (px.min(), py.min(), px.max(), py.max())

    def __call__(self, index: int, box: CellBox) -> float:
        h, w = self.signal.shape
        x0, y0 = max(box.x0 - self.ring_px, 0), max(box.y0 - self.ring_px, 0)
        x1, y1 = min(box.x1 + self.ring_px, w), min(box.y1 + self.ring_px, h)
        nb = self.nucleus_box
        surrounding = np.flatnonzero((nb[:, 0] <= box.cx) & (box.cx <= nb[:, 2]) & (nb[:, 1] <= box.cy) & (box.cy <= nb[:, 3]))
        owner = self.owner[y0:y1, x0:x1]
        ring = (owner < 0) | np.isin(owner, surrounding[surrounding != index])
        ring[box.y0 - y0 : box.y1 - y0, box.x0 - x0 : box.x1 - x0] = False
        values = self.signal[y0:y1, x0:x1][ring]
        return max(float(np.percentile(values, 95)), 1.0) if values.size else 1.0


def _split_whole_nuclei(sel: np.ndarray, lobe_of: np.ndarray, px: np.ndarray, py: np.ndarray,
                        nucleus_px: int) -> tuple[list[np.ndarray], int]:
    """A merged component holding two or more lobes each as large as a whole round nucleus is touching
    cells: one part per whole nucleus, every smaller lobe joining the whole nucleus nearest to its
    centroid. `sel` indexes the mask pixels; lobe_of, px, py are the lobe label and position of each.
    Returns (parts, number of whole nuclei)."""
    ids, inverse, counts = np.unique(lobe_of, return_inverse=True, return_counts=True)
    whole = np.flatnonzero(counts >= nucleus_px)
    if len(whole) < 2:
        return [sel], int(len(whole))
    cx = np.bincount(inverse, weights=px, minlength=len(ids)) / counts
    cy = np.bincount(inverse, weights=py, minlength=len(ids)) / counts
    nearest = whole[np.argmin((cx[:, None] - cx[whole]) ** 2 + (cy[:, None] - cy[whole]) ** 2, axis=1)]
    owner = nearest[inverse]
    return [sel[owner == k] for k in whole], int(len(whole))


def _measure_cell(sel: np.ndarray, xs: np.ndarray, ys: np.ndarray, values: np.ndarray, lobe_labels: np.ndarray,
                  body: np.ndarray | None, w: int, h: int, *, min_area: int, max_area: int, min_body_area: int,
                  min_intensity: float, border_margin: int, cell_margin: int, max_cell_margin: int,
                  whole_nuclei: int = 0) -> CellBox | None:
    """One cell's box from its nuclear pixels (indices into the mask pixels), or None when it is debris,
    a clump, too dim or cut by the frame border."""
    area = int(sel.size)
    if area < min_area / 3 or area > max_area:
        return None
    v = values[sel]
    intensity = float(v.mean())
    if intensity < min_intensity:
        return None
    px, py = xs[sel], ys[sel]
    weight = v.astype(np.float64)
    cx = float((px * weight).sum() / weight.sum())
    cy = float((py * weight).sum() / weight.sum())
    nx0, ny0, nx1, ny1 = int(px.min()), int(py.min()), int(px.max()) + 1, int(py.max()) + 1
    body_area = 0
    if body is not None:
        # the glow connected to this nucleus, looked for only around it (cheap, and a neighbour's
        # glow cannot stretch the box beyond max_cell_margin)
        wx0, wy0 = max(nx0 - max_cell_margin - 1, 0), max(ny0 - max_cell_margin - 1, 0)
        wx1, wy1 = min(nx1 + max_cell_margin + 1, w), min(ny1 + max_cell_margin + 1, h)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(body[wy0:wy1, wx0:wx1], connectivity=8)
        st = stats[np.unique(labels[py - wy0, px - wx0])]
        body_area = int(st[:, cv2.CC_STAT_AREA].sum())
        x0 = max(wx0 + int(st[:, 0].min()) - 1, nx0 - max_cell_margin)
        y0 = max(wy0 + int(st[:, 1].min()) - 1, ny0 - max_cell_margin)
        x1 = min(wx0 + int((st[:, 0] + st[:, 2]).max()) + 1, nx1 + max_cell_margin)
        y1 = min(wy0 + int((st[:, 1] + st[:, 3]).max()) + 1, ny1 + max_cell_margin)
    else:
        x0, y0, x1, y1 = nx0 - cell_margin, ny0 - cell_margin, nx1 + cell_margin, ny1 + cell_margin
    if area < min_area and body_area < min_body_area:
        return None  # small and without cytoplasm: debris
    if x0 < border_margin or y0 < border_margin or x1 > w - border_margin or y1 > h - border_margin:
        return None  # cut by the frame border: its crop would be incomplete
    n_lobes = len(np.unique(lobe_labels[py, px]))
    return CellBox(x0, y0, x1, y1, cx, cy, area, n_lobes, intensity, body_area, whole_nuclei)


def crop_window(image: np.ndarray, cx: float, cy: float, side: int) -> np.ndarray:
    """A side x side window centred on (cx, cy); parts outside the frame are mirrored in."""
    h, w = image.shape[:2]
    x0 = int(round(cx - side / 2))
    y0 = int(round(cy - side / 2))
    x1, y1 = x0 + side, y0 + side
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return image[y0:y1, x0:x1]
    inner = image[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)]
    if inner.size == 0:
        return np.zeros((side, side) + image.shape[2:], image.dtype)
    pad = [(max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w))] + [(0, 0)] * (image.ndim - 2)
    return np.pad(inner, pad, mode="symmetric")


def crop_cells(
    light_set: Any,
    boxes: Sequence[CellBox],
    crop_px: int,
    spec: ModelSpec,
    *,
    edge: str = "pad",
) -> tuple[np.ndarray, list[CellBox]]:
    """Cut the same crop_px window, centred on each cell, from every light and lay it out as model input.

    `light_set` is a LightSet (or a mapping light -> image | None). Returns (uint8 [N, 3M, S, S],
    kept boxes). edge="pad" mirrors windows that reach past the frame; edge="drop" drops those cells.
    """
    if edge not in ("pad", "drop"):
        raise DataError(f"crop_cells edge '{edge}': expected 'pad' or 'drop'")
    if crop_px < 2:
        raise DataError(f"crop_cells crop_px {crop_px}: must be at least 2")
    images: Mapping[str, np.ndarray | None] = getattr(light_set, "images", light_set)
    present = {light: img for light, img in images.items() if img is not None and light in spec.modalities}
    kept: list[CellBox] = []
    for box in boxes:
        if edge == "drop":
            ok = True
            for img in present.values():
                h, w = img.shape[:2]
                x0, y0 = int(round(box.cx - crop_px / 2)), int(round(box.cy - crop_px / 2))
                ok &= x0 >= 0 and y0 >= 0 and x0 + crop_px <= w and y0 + crop_px <= h
            if not ok:
                continue
        kept.append(box)
    batch = np.empty((len(kept), spec.in_channels, spec.input_size, spec.input_size), dtype=np.uint8)
    for i, box in enumerate(kept):
        windows = {light: crop_window(img, box.cx, box.cy, crop_px) for light, img in present.items()}
        cell_to_input(windows, spec, out=batch[i])
    return batch, kept


def align_lights(
    light_set: Any,
    *,
    reference: str | None = None,
    lights: Sequence[str] | None = None,
    fluorescent: str = LOCATOR_LIGHT,
    to_fluorescent: bool = True,
    max_shift: float = 8.0,
    min_response: float = 0.05,
) -> tuple[Any, dict[str, tuple[float, float]]]:
    """Correct small shifts between lights. Returns (a LightSet-like copy with shifted images, the
    shift (dx, dy) in px taken out of each light).

    Bright-field lights are registered to one reference bright light by phase correlation of their
    red-cell outlines (strong, shared structure). With `to_fluorescent`, the reference is also
    registered to the fluorescence frame, where cells are located, through the only structure both
    show: the white cells' outlines; the bright lights then follow it (shift composed). The
    fluorescence frame never moves. A shift above `max_shift` or a weak correlation peak
    (`min_response`) is not applied (for the fluorescence step: the bright lights stay as registered
    among themselves). Measured in docs/runtime-frontend.md.
    """
    import dataclasses

    images: dict[str, np.ndarray | None] = dict(getattr(light_set, "images", light_set))
    bright = [k for k, v in images.items() if v is not None and k != fluorescent and (lights is None or k in lights)
              and v.ndim == 3 and _median_grey(v) > 70]
    if reference is None:
        reference = bright[0] if bright else None
    shifts: dict[str, tuple[float, float]] = {}
    if reference is None or images.get(reference) is None:
        return light_set, shifts
    ref = _edge_map(images[reference])
    window = cv2.createHanningWindow(ref.shape[::-1], cv2.CV_32F)

    def register(moving: np.ndarray) -> tuple[float, float] | None:
        (dx, dy), response = cv2.phaseCorrelate(ref, _edge_map(moving), window)
        if response < min_response or abs(dx) > max_shift or abs(dy) > max_shift:
            return None
        return float(dx), float(dy)

    base = (0.0, 0.0)  # the reference's shift against the fluorescence frame
    f_img = images.get(fluorescent)
    if to_fluorescent and f_img is not None and f_img.shape == images[reference].shape:
        (dx, dy), response = cv2.phaseCorrelate(_edge_map(f_img), ref, window)
        if response >= min_response and abs(dx) <= max_shift and abs(dy) <= max_shift:
            base = (float(dx), float(dy))
        else:
            log.debug("align %s to %s: peak %.3f at (%.1f, %.1f) not used", reference, fluorescent, response, dx, dy)
    for light in bright:
        if images[light].shape != images[reference].shape:
            continue
        own = (0.0, 0.0) if light == reference else register(images[light])
        if own is None:
            log.debug("align %s to %s: no clear peak; left as is", light, reference)
            own = (0.0, 0.0)
        total = (own[0] + base[0], own[1] + base[1])
        if total == (0.0, 0.0):
            continue
        h, w = images[light].shape[:2]
        m = np.float32([[1, 0, -total[0]], [0, 1, -total[1]]])
        images[light] = cv2.warpAffine(images[light], m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        shifts[light] = total
    if dataclasses.is_dataclass(light_set):
        return dataclasses.replace(light_set, images=images), shifts
    return images, shifts


def _median_grey(img: np.ndarray) -> float:
    return float(np.median(cv2.cvtColor(img[::4, ::4], cv2.COLOR_RGB2GRAY)))


def _edge_map(img: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32) if img.ndim == 3 else img.astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    return cv2.GaussianBlur(cv2.magnitude(gx, gy), (0, 0), 1.0)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _as_box(item: Any) -> tuple[float, float, float, float]:
    if isinstance(item, CellBox):
        return item.box
    if isinstance(item, Mapping):
        item = item.get("box", item.get("bbox"))
    return tuple(float(v) for v in item)  # type: ignore[return-value]


def greedy_match(pred_boxes: Sequence[Any], truth: Sequence[Any], iou: float = 0.3) -> list[tuple[int, int]]:
    """(pred index, truth index) pairs, one-to-one, best IoU first, none below `iou`."""
    preds = [_as_box(p) for p in pred_boxes]
    truths = [_as_box(t) for t in truth]
    pairs = sorted(((box_iou(p, t), i, j) for i, p in enumerate(preds) for j, t in enumerate(truths)), reverse=True)
    used_p: set[int] = set()
    used_t: set[int] = set()
    matches = []
    for score, i, j in pairs:
        if score < iou:
            break
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        matches.append((i, j))
    return matches


def detection_scores(pred_boxes: Sequence[Any], truth: Sequence[Any], iou: float = 0.3) -> dict[str, float]:
    """Recall and precision of located cells against ground-truth boxes (greedy one-to-one matching by
    IoU). Boxes are CellBoxes, (x0, y0, x1, y1) tuples or dicts with a "box" key."""
    tp = len(greedy_match(pred_boxes, truth, iou))
    n_pred, n_true = len(pred_boxes), len(truth)
    return {
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_true - tp,
        "recall": tp / n_true if n_true else 1.0,
        "precision": tp / n_pred if n_pred else 1.0,
    }
