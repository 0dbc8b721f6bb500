"""A four-light development dataset derived from single-light RGB smear crops (derivation `rgb-hed`).

Real four-light data is scarce; real bright-field smear crops (such as PBC) are not. Each crop
becomes one four-light cell:

- `color1`, `color2`, `color3`: the crop's R, G and B channels, each as a grey image (three
  bright-field lights);
- `fluorescent`: the haematoxylin density from colour deconvolution (Ruifrok & Johnston, via
  `skimage.color.rgb2hed`, channel 0), mapped to uint8 with the fixed range `HAEMATOXYLIN_RANGE`
  (not per-image min/max, so a grey level means the same density in every cell); nuclei are bright,
  as under a nuclear fluorescent stain.

Deconvolution runs on the centre square of the crop at its own resolution; the four lights are then
resized together (area interpolation) to the chosen size. The output is a four-light folder plus
its `manifest.csv`, byte-for-byte the same for the same input and size.

Needs scikit-image (the `derive` extra); no torch.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
import numpy as np

from wbc_edge.data.dataset import CellDataset, CellRecord, show_path
from wbc_edge.data.folders import open_dataset
from wbc_edge.data.images import write_image
from wbc_edge.data.manifest import MANIFEST_NAME, write_manifest
from wbc_edge.errors import DataError
from wbc_edge.spec import MODALITIES

log = logging.getLogger(__name__)

DERIVATION = "rgb-hed"
# Haematoxylin optical density (rgb2hed channel 0) mapped to 0..255. Measured on 100 PBC crops:
# the per-image 99.9th percentile is 0.11-0.18 (median 0.17), the maximum 0.17-0.25, background 0.
HAEMATOXYLIN_RANGE = (0.0, 0.2)
# Which light each derived image becomes (the spec's light names, in spec order).
DERIVED_LIGHTS = {"fluorescent": "haematoxylin", "color1": "red", "color2": "green", "color3": "blue"}
DERIVATION_FILE = "derivation.json"
SCALE_SAMPLE = 120  # crops whose red cells measure the sources' scale
CROP_MIN_RED_CELLS = 2  # a crop around one white cell holds a few lone red cells: pooled over crops


def scale_sample(dataset: CellDataset, light: str, n: int = SCALE_SAMPLE):
    """Up to `n` RGB crops spread over the set: what the red-cell ruler (`runtime.optics.estimate_scale`,
    which measures each in the channel where its red cells stand out best) reads the sources' scale on."""
    step = max(1, len(dataset.cells) // n)
    for i in range(0, len(dataset.cells), step):
        try:
            yield dataset.load(i)[light]
        except DataError:
            continue


def read_scale(root: str | os.PathLike) -> tuple[float, float] | None:
    """(crop_um, source um_per_px) a derived dataset's derivation.json records, or None (unknown)."""
    path = Path(root) / DERIVATION_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        crop_um, um_per_px = d.get("crop_um"), (d.get("source_scale") or {}).get("um_per_px")
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    if crop_um is None or um_per_px is None:
        return None
    if not (isinstance(crop_um, (int, float)) and 1.0 <= crop_um <= 1000.0 and isinstance(um_per_px, (int, float)) and um_per_px > 0):
        raise DataError(f"{path} field 'crop_um': {crop_um!r} um over a {um_per_px!r} um/px source is not a physical scale")
    return float(crop_um), float(um_per_px)


def _rgb2hed():
    try:
        from skimage.color import rgb2hed
    except ImportError:
        raise DataError("deriving four lights needs scikit-image: pip install 'wbc-edge[realdata]'") from None
    return rgb2hed


def centre_square(rgb: np.ndarray) -> np.ndarray:
    """The largest centred square of an HxWx3 image (the PBC cell is centred)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return rgb[top:top + side, left:left + side]


def haematoxylin_uint8(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin density of an RGB uint8 image as uint8 HxW over the fixed HAEMATOXYLIN_RANGE."""
    density = _rgb2hed()(rgb)[..., 0]
    lo, hi = HAEMATOXYLIN_RANGE
    scaled = np.clip((density - lo) / (hi - lo), 0.0, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8)


def derive_lights(rgb: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """One RGB uint8 crop -> the four lights (spec names), each HxWx3 uint8 of side `size`."""
    square = centre_square(rgb)
    planes = {"fluorescent": haematoxylin_uint8(square), "color1": square[..., 0], "color2": square[..., 1],
              "color3": square[..., 2]}
    out = {}
    for light in MODALITIES:
        plane = np.ascontiguousarray(planes[light])
        if plane.shape[0] != size:
            interpolation = cv2.INTER_AREA if plane.shape[0] > size else cv2.INTER_LINEAR
            plane = cv2.resize(plane, (size, size), interpolation=interpolation)
        out[light] = np.repeat(plane[..., None], 3, axis=2)
    return out


def write_four_light(
    source: str | os.PathLike | CellDataset,
    out: str | os.PathLike,
    size: int = 64,
    on_error: str = "raise",
    progress: Callable[[int, int], None] | None = None,
    scale: Mapping[str, Any] | None = None,
) -> Path:
    """Derive a four-light folder + manifest.csv from a single-light dataset; returns the manifest path.

    `source` is a single-light folder `<root>/<class>/<image>` (or an opened one-light dataset).
    Under on_error="raise" an unreadable image raises DataError naming the file; under "skip" it is
    left out and listed (with the reason) in `derivation.json`. `scale` ({"um_per_px", "origin", ...}:
    given, or measured on `scale_sample` by the red-cell ruler, as `wbc-data four-light` does) and the
    cells' field of view (`crop_um`) go to `derivation.json`, where training reads them into the spec.
    """
    if not 8 <= int(size) <= 4096:
        raise DataError(f"size: {size} is not in 8..4096 pixels")
    dataset = source if isinstance(source, CellDataset) else open_dataset(source, on_error=on_error)
    if len(dataset.modalities) != 1:
        raise DataError(f"{show_path(dataset.source)}: has lights {list(dataset.modalities)}; "
                        f"expected a single-light (RGB) folder <root>/<class>/<image>")
    light_in = dataset.modalities[0]
    out = Path(out)
    if out.resolve() == Path(dataset.root).resolve() or Path(dataset.root).resolve() in out.resolve().parents:
        raise DataError(f"{show_path(out)}: output folder must not be the source folder or inside it")
    _rgb2hed()  # fail before writing anything when scikit-image is missing
    scale = dict(scale or {"um_per_px": None, "why": "not measured"})
    if scale.get("um_per_px") is None:
        log.warning("%s: the crops' scale is unknown (%s); models trained on them assume the simulator's field of view",
                    show_path(dataset.source), scale.get("why", "not given"))
    sides: list[int] = []
    records: list[CellRecord] = []
    skipped = list(dataset.skipped)
    for i, cell in enumerate(dataset.cells):
        try:
            rgb = dataset.load(i)[light_in]
        except DataError as e:
            if on_error == "raise":
                raise
            skipped.append((cell.cell_id, str(e)))
            log.warning("skipping %s", e)
            continue
        paths = {}
        sides.append(min(rgb.shape[:2]))
        for light, image in derive_lights(rgb, size).items():
            path = out / cell.label / cell.cell_id / f"{light}.png"
            write_image(path, image)
            paths[light] = path
        records.append(CellRecord(cell.cell_id, cell.label, cell.group, paths))
        if progress is not None:
            progress(i + 1, len(dataset.cells))
    if not records:
        raise DataError(f"{show_path(dataset.source)}: no readable images ({len(skipped)} skipped)")
    from wbc_edge.bundle import atomic_write_text

    atomic_write_text(out / DERIVATION_FILE, json.dumps({
        "derivation": DERIVATION, "source": str(dataset.source), "size": int(size),
        "lights": DERIVED_LIGHTS, "haematoxylin_range": list(HAEMATOXYLIN_RANGE),
        "crop": "centre square, then area resize", "cells": len(records), "source_scale": scale,
        # the field of view of a derived cell: the median centre square of the sources at their scale
        "crop_um": None if scale["um_per_px"] is None else round(float(np.median(sides)) * scale["um_per_px"], 3),
        "skipped": [{"item": item, "reason": reason} for item, reason in skipped],
    }, indent=2, sort_keys=True) + "\n")
    return write_manifest(out / MANIFEST_NAME, records, MODALITIES)

