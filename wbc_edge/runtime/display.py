"""Boxes and labels on frames: an OpenCV window when a display exists, a video file, both optional.

Everything here is headless-safe: with no display (or an OpenCV build without GUI support) the
window is disabled once with a warning, and recording still works.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from wbc_edge.runtime.results import CellResult
from wbc_edge.spec import CLASS_ABBREV, LOCATOR_LIGHT

log = logging.getLogger(__name__)

# RGB colours per class position; distinct on bright-field backgrounds.
PALETTE = ((230, 57, 70), (29, 53, 87), (244, 162, 97), (42, 157, 143), (131, 56, 236), (255, 190, 11), (0, 0, 0))
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}
WINDOW = "wbc-run"


def display_available() -> tuple[bool, str]:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no DISPLAY or WAYLAND_DISPLAY set (headless)"
    return True, "display present"


def pick_view_image(images: dict[str, np.ndarray | None], fluorescent: str = LOCATOR_LIGHT) -> np.ndarray | None:
    """The first bright-field light present (what a person recognises), else the fluorescence frame."""
    for light, img in images.items():
        if light != fluorescent and img is not None:
            return img
    return images.get(fluorescent)


def annotate(image: np.ndarray, results: Sequence[CellResult], classes: Sequence[str],
             status: str | None = None) -> np.ndarray:
    """A copy of an RGB frame with each cell's box, class abbreviation and probability drawn."""
    out = np.ascontiguousarray(image).copy()
    scale = max(0.35, out.shape[1] / 1600.0)
    thick = max(1, int(round(scale * 2)))
    for r in results:
        colour = PALETTE[classes.index(r.label) % len(PALETTE)] if r.label in classes else PALETTE[-1]
        x0, y0, x1, y1 = (int(v) for v in r.box)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thick)
        text = f"{CLASS_ABBREV.get(r.label, r.label)} {r.probability:.2f}" + ("?" if r.flags else "")
        cv2.putText(out, text, (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)
    if status:
        cv2.putText(out, status, (8, out.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick + 1, cv2.LINE_AA)
        cv2.putText(out, status, (8, out.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return out


class Display:
    """An OpenCV window; `show` returns False when the user pressed q/Esc or closed the window."""

    def __init__(self) -> None:
        ok, why = display_available()
        self.enabled = ok
        if not ok:
            log.warning("--display: %s; showing nothing (use --save-video to record)", why)

    def show(self, image_rgb: np.ndarray) -> bool:
        if not self.enabled:
            return True
        try:
            cv2.imshow(WINDOW, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as e:  # headless OpenCV build: no highgui
            self.enabled = False
            log.warning("--display: OpenCV cannot open a window (%s); showing nothing", str(e).strip().splitlines()[-1])
            return True
        return key not in (ord("q"), 27)

    def close(self) -> None:
        if self.enabled:
            try:
                cv2.destroyWindow(WINDOW)
            except cv2.error:
                pass


class VideoRecorder:
    """Writes annotated RGB frames to .mp4/.avi/.mkv; opened on the first frame (its size is then known)."""

    def __init__(self, path: str | os.PathLike, fps: float = 5.0):
        self.path = Path(path)
        if self.path.suffix.lower() not in FOURCC_BY_SUFFIX:
            from wbc_edge.runtime.results import OutputError

            raise OutputError(f"{self.path}: video suffix must be one of {sorted(FOURCC_BY_SUFFIX)}")
        self.fps = fps
        self.frames_written = 0
        self._writer: Any = None
        self._size: tuple[int, int] | None = None

    def write(self, image_rgb: np.ndarray) -> None:
        h, w = image_rgb.shape[:2]
        if self._writer is None:
            from wbc_edge.runtime.results import OutputError

            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*FOURCC_BY_SUFFIX[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                self._writer = None
                raise OutputError(f"{self.path}: OpenCV cannot open a video writer for it")
            self._size = (w, h)
        if (w, h) != self._size:  # frames of another size would be dropped silently by OpenCV
            image_rgb = cv2.resize(image_rgb, self._size)
        self._writer.write(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
