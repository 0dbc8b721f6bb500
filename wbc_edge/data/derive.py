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
from typing import Callable

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
) -> Path:
    """Derive a four-light folder + manifest.csv from a single-light dataset; returns the manifest path.

    `source` is a single-light folder `<root>/<class>/<image>` (or an opened one-light dataset).
    Under on_error="raise" an unreadable image raises DataError naming the file; under "skip" it is
    left out and listed (with the reason) in `derivation.json`.
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
        "crop": "centre square, then area resize", "cells": len(records),
        "skipped": [{"item": item, "reason": reason} for item, reason in skipped],
    }, indent=2, sort_keys=True) + "\n")
    return write_manifest(out / MANIFEST_NAME, records, MODALITIES)

