"""Annotation, headless-safe display and video recording."""
from __future__ import annotations

import cv2
import numpy as np

from wbc_edge.runtime.display import Display, VideoRecorder, annotate, pick_view_image
from wbc_edge.runtime.results import CellResult

CLASSES = ["neutrophil", "lymphocyte"]


def result(box, label="lymphocyte"):
    return CellResult(0, 0, 0.0, box, label, 0.8, {}, {}, [])


def test_annotate_draws_boxes_on_a_copy():
    frame = np.full((120, 160, 3), 255, np.uint8)
    out = annotate(frame, [result((20, 30, 60, 70))], CLASSES, status="1 cells")
    assert (frame == 255).all()  # the source frame is untouched
    assert (out[50, 20] != 255).any() and (out[50, 60] != 255).any()  # left and right edges drawn
    assert (out[50, 40] == 255).all()  # the inside stays clear


def test_view_image_prefers_bright_field():
    fl, c1 = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8)
    assert pick_view_image({"fluorescent": fl, "color1": None, "color2": c1}) is c1
    assert pick_view_image({"fluorescent": fl, "color1": None}) is fl


def test_display_is_headless_safe(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    d = Display()
    assert not d.enabled and d.show(np.zeros((8, 8, 3), np.uint8)) is True
    d.close()


def test_video_recorder_writes_readable_frames(tmp_path):
    path = tmp_path / "out.avi"
    rec = VideoRecorder(path, fps=5)
    for i in range(4):
        frame = np.zeros((64, 96, 3), np.uint8)
        frame[:, :, 0] = 60 * i
        rec.write(frame)
    rec.write(np.zeros((32, 32, 3), np.uint8))  # another size is resized, not silently dropped
    rec.close()
    cap = cv2.VideoCapture(str(path))
    n, first = 0, None
    while True:
        ok, img = cap.read()
        if not ok:
            break
        first = img if first is None else first
        n += 1
    cap.release()
    assert n == 5 == rec.frames_written and first.shape == (64, 96, 3)
