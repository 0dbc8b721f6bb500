"""Real bright-field smear frames made into four-light sequences, for developing the runtime on real optics.

A colour smear photograph (one RGB frame per field, white-cell boxes in a CSV) becomes the four
single-light frames the runtime expects, written like `wbc-synth frames` does (frames/000000.png ...
in capture order, truth.jsonl, meta.json) plus boxes.csv:

    color1, color2, color3   the photograph's red, green and blue channels, each as a grey RGB frame
                             (three bright-field lights of one field, perfectly registered)
    fluorescent              a stand-in for the Acridine Orange light: the haematoxylin density from
                             colour deconvolution (skimage.color.rgb2hed, channel 0) after dividing the
                             frame by its own background (the deconvolution's I0, here neither white nor
                             even), minus its median, in the green channel of a dark field. Nuclei are
                             bright, red cells and plasma dark; there is no cytoplasm glow (red channel 0).
                             A proxy for development, not a model of the real optics.

The scale is not written: the runtime is to measure it from the frames (`wbc-calib optics`).
Needs scikit-image (the `dev` or `realdata` extra).
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from wbc_edge.errors import DataError

log = logging.getLogger(__name__)

LIGHT_ORDER = ("fluorescent", "color1", "color2", "color3")
FLUO_BACKGROUND = 8  # dark-field grey level of the stand-in fluorescence frame
FLUO_PEAK = 230  # where the frame's strongest haematoxylin (99.9th percentile) lands


@dataclass(frozen=True)
class SmearBox:
    filename: str
    label: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels


def read_boxes(path: str | os.PathLike) -> list[SmearBox]:
    """`filename,label,xmin,ymin,xmax,ymax` rows (a header line first)."""
    out = []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            need = {"filename", "label", "xmin", "ymin", "xmax", "ymax"}
            if not need <= set(reader.fieldnames or ()):
                raise DataError(f"{path}: columns {sorted(need - set(reader.fieldnames or ()))} missing (need {sorted(need)})")
            for i, row in enumerate(reader, start=2):
                try:
                    box = tuple(int(float(row[k])) for k in ("xmin", "ymin", "xmax", "ymax"))
                except (TypeError, ValueError):
                    raise DataError(f"{path} line {i}: box {[row.get(k) for k in ('xmin', 'ymin', 'xmax', 'ymax')]} is not numbers") from None
                if box[2] <= box[0] or box[3] <= box[1]:
                    raise DataError(f"{path} line {i}: empty box {list(box)}")
                out.append(SmearBox(row["filename"], row["label"], box))  # type: ignore[arg-type]
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return out


def background_light(rgb: np.ndarray) -> np.ndarray:
    """The light reaching the camera where there is no cell, per pixel and channel (float32): the
    brightest level in each 1/16-frame neighbourhood, smoothed (plasma gaps between the cells)."""
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb.astype(np.float32), (max(4, w // 16), max(4, h // 16)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(cv2.dilate(small, np.ones((7, 7), np.uint8)), (0, 0), 4)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def fluorescence_stand_in(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin density as a dark-field green glow (RGB uint8), see the module docstring."""
    from skimage.color import rgb2hed

    transmitted = np.clip(rgb.astype(np.float32) / np.maximum(background_light(rgb), 1.0), 1e-3, 1.0)
    h = rgb2hed(transmitted)[..., 0]
    h = h - np.median(h)
    peak = float(np.percentile(h, 99.9))
    glow = np.clip(FLUO_BACKGROUND + (FLUO_PEAK - FLUO_BACKGROUND) * h / max(peak, 1e-6), 0, 255).astype(np.uint8)
    out = np.zeros(rgb.shape, np.uint8)
    out[..., 1] = glow
    return out


def four_lights(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """One colour smear frame as the four lights {light: RGB uint8}."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DataError(f"four_lights: expected an RGB uint8 HxWx3 frame, got {rgb.dtype} {rgb.shape}")
    lights = {"fluorescent": fluorescence_stand_in(rgb)}
    for i, light in enumerate(("color1", "color2", "color3")):
        lights[light] = np.repeat(rgb[:, :, i : i + 1], 3, axis=2)
    return lights


def convert_smear_frames(images_dir: str | os.PathLike, boxes_csv: str | os.PathLike, out: str | os.PathLike,
                         filenames: Iterable[str] | None = None) -> Path:
    """Write every frame of `images_dir` that `boxes_csv` names (or `filenames`) as a four-light set.

    Layout as `wbc-synth frames` (without the video): out/frames/%06d.png in capture order
    (fluorescent, color1, color2, color3 per set), out/truth.jsonl (one line per set: its frames,
    source file and white cells), out/boxes.csv (set_index, filename, label, x0, y0, x1, y1) and
    out/meta.json. Boxes are the source's: the labels need not be exhaustive.
    """
    from wbc_edge.bundle import atomic_write_text
    from wbc_edge.data.images import read_image, write_image

    boxes = read_boxes(boxes_csv)
    names = list(dict.fromkeys(filenames if filenames is not None else sorted({b.filename for b in boxes})))
    if not names:
        raise DataError(f"{boxes_csv}: no frames to convert")
    out = Path(out)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    truth_lines, box_rows, size = [], ["set_index,filename,label,x0,y0,x1,y1"], None
    for s, name in enumerate(names):
        rgb = read_image(Path(images_dir) / name)
        if size is not None and rgb.shape != size:
            raise DataError(f"{Path(images_dir) / name}: size {rgb.shape[1]}x{rgb.shape[0]} differs from the first frame's "
                            f"{size[1]}x{size[0]}")
        size = rgb.shape
        lights = four_lights(rgb)
        frames = []
        for j, light in enumerate(LIGHT_ORDER):
            index = s * len(LIGHT_ORDER) + j
            write_image(out / "frames" / f"{index:06d}.png", lights[light])
            frames.append(index)
        cells = [b for b in boxes if b.filename == name]
        h, w = rgb.shape[:2]
        truth_lines.append(json.dumps({"set_index": s, "frames": frames, "lights": list(LIGHT_ORDER), "source_file": name,
                                       "cells": [{"box": list(b.box), "label": b.label, "center": [(b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2],
                                                  "cut_by_border": b.box[0] <= 0 or b.box[1] <= 0 or b.box[2] >= w or b.box[3] >= h}
                                                 for b in cells]}, sort_keys=True))
        box_rows += [f"{s},{name},{b.label},{b.box[0]},{b.box[1]},{b.box[2]},{b.box[3]}" for b in cells]
    atomic_write_text(out / "truth.jsonl", "\n".join(truth_lines) + "\n")
    atomic_write_text(out / "boxes.csv", "\n".join(box_rows) + "\n")
    meta = {"sets": len(names), "n_frames": len(names) * len(LIGHT_ORDER), "light_order": list(LIGHT_ORDER),
            "width": int(size[1]), "height": int(size[0]), "frames": "frames/%06d.png", "video": None,
            "truth_reference_light": "fluorescent", "generator": "wbc_edge.data.smear_frames",
            "source": str(images_dir), "labels_exhaustive": False,
            "fluorescent": "stand-in: haematoxylin density (skimage rgb2hed channel 0), background-normalised"}
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    log.info("wrote %d four-light sets to %s", len(names), out)
    return out
