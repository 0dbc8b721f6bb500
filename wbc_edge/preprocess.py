"""Turning a cell's light images into the model's uint8 input, the same way in every stage.

Training, calibration, the accuracy gate and the runtime all call `cell_to_input`, so a crop seen at
run time is laid out exactly as the crops the model was trained and calibrated on. Images are RGB
uint8 HxWx3 arrays (OpenCV's BGR is converted at the file boundary, in `wbc_edge.data.images`).
"""
from __future__ import annotations

from typing import Mapping

import cv2
import numpy as np

from wbc_edge.errors import DataError
from wbc_edge.spec import ModelSpec


def fit_to_size(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize to size x size (area interpolation when shrinking)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interp)


def missing_fill_value(spec: ModelSpec, light: int) -> np.ndarray:
    """The uint8 RGB a missing light's slot holds: the normalisation mean, i.e. zero once normalised."""
    return np.clip(np.rint(np.asarray(spec.mean[light], dtype=np.float64)), 0, 255).astype(np.uint8)


def cell_to_input(images: Mapping[str, np.ndarray | None], spec: ModelSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Stack one cell's lights into a uint8 [3*M, S, S] array in the spec's modality-major layout.

    A light that is absent (missing key or None) is filled per `spec.missing_fill`.
    `out`, if given, is a preallocated [3*M, S, S] uint8 view to write into (e.g. one row of a batch).
    """
    size = spec.input_size
    if out is None:
        out = np.empty((spec.in_channels, size, size), dtype=np.uint8)
    for i, light in enumerate(spec.modalities):
        img = images.get(light)
        if img is None:
            out[3 * i : 3 * i + 3] = missing_fill_value(spec, i)[:, None, None]
            continue
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise DataError(f"light '{light}': expected an HxWx3 uint8 image, got {img.dtype} {img.shape}")
        out[3 * i : 3 * i + 3] = fit_to_size(img, size).transpose(2, 0, 1)
    return out


def normalise(batch_uint8: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Reference normalisation in NumPy ((x - mean) / std per light and channel), float32.

    The exported graph does the same inside; this is for tests and the PyTorch path.
    """
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return (batch_uint8.astype(np.float32) - mean) / std
