"""Image file I/O at the boundary: RGB uint8 in memory, whatever OpenCV does on disk."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from wbc_edge.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 HxWx3; DataError naming the file and the problem otherwise."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: not a decodable image (truncated or not an image)")
    return to_rgb_uint8(img, str(path))


def to_rgb_uint8(img: np.ndarray, where: str) -> np.ndarray:
    """Bring a decoded OpenCV image (BGR/BGRA/gray, 8 or 16 bit) to RGB uint8 HxWx3."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DataError(f"{where}: unsupported bit depth ({img.dtype}); expected 8 or 16 bit")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise DataError(f"{where}: unsupported channel count (shape {img.shape}); expected 1, 3 or 4 channels")
    if img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def encode_image(rgb: np.ndarray, suffix: str = ".png") -> bytes:
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError(f"cannot encode an image of shape {rgb.shape} as {suffix}")
    return buf.tobytes()


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image atomically (format from the suffix)."""
    from wbc_edge.bundle import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, encode_image(rgb, path.suffix.lower() or ".png"))
