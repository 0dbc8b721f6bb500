"""Frame sources: image folders, video files, the synthetic camera, live cameras (faked), URI parsing."""
from __future__ import annotations

import json
import logging
import threading
import time

import cv2
import numpy as np
import pytest

from wbc_edge.data.images import read_image, write_image
from wbc_edge.errors import SourceError
from wbc_edge.runtime.sources import FrameValidator, backoff_delays, light_from_name, open_source
from wbc_edge.synth.frames import SyntheticCamera, write_frames

W, H = 96, 72


def _frame(value: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(value, 8, (H, W, 3)), 0, 255).astype(np.uint8)


def test_image_folder_skips_and_reports_a_corrupt_file(tmp_path, caplog):
    images = {}
    for i in range(6):
        images[i] = _frame(40 + 20 * i, seed=i)
        write_image(tmp_path / f"{i:06d}.png", images[i])
    (tmp_path / "000002b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "000004b.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING, logger="wbc_edge.runtime.sources"):
        with open_source(str(tmp_path)) as source:
            frames = list(source)
            assert not source.is_streaming
    assert [f.source_info["path"].rsplit("/", 1)[1] for f in frames] == [f"{i:06d}.png" for i in range(6)]
    for f, i in zip(frames, range(6)):
        assert np.array_equal(f.image, images[i])
        assert f.image.dtype == np.uint8 and f.image.shape == (H, W, 3)
    assert source.stats.corrupt == 2 and source.stats.frames_read == 6 and source.stats.dropped == 0
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 2
    assert any("000002b.png" in w for w in warnings) and any("000004b.png" in w for w in warnings)
    assert all("\n" not in w for w in warnings)


def test_folder_light_hint_from_file_names_and_loop(tmp_path):
    for i, light in enumerate(["fluorescent", "color1", "color2", "color3"]):
        write_image(tmp_path / f"{i:03d}_{light}.png", _frame(100, seed=i))
    write_image(tmp_path / "004_other.png", _frame(100, seed=9))
    with open_source(f"file://{tmp_path}", loop=True) as source:
        frames = [source.read() for _ in range(7)]
        assert source.is_streaming
    assert [f.light_hint for f in frames] == ["fluorescent", "color1", "color2", "color3", None, "fluorescent", "color1"]
    assert light_from_name("frame_color10", ["color1"]) is None  # a light name must be a whole token


def test_synthetic_frames_folder_and_video(tmp_path):
    out = write_frames(tmp_path / "synth", sets=3, seed=2, width=128, height=96,
                       light_order=("fluorescent", "color2", "color1", "color3"))
    meta = json.loads((out / "meta.json").read_text())
    with open_source(str(out)) as folder:  # the output folder itself: frames/ and meta.json found
        frames = list(folder)
    assert len(frames) == meta["n_frames"] == 12
    assert folder.light_order == ("fluorescent", "color2", "color1", "color3")
    with open_source(str(out / "video.avi")) as video:
        assert not video.is_live
        vframes = list(video)
    assert len(vframes) == meta["n_frames"]
    assert video.light_order == folder.light_order  # from meta.json beside the video
    assert video.stats.dropped == 0
    if meta["video_codec"] in ("FFV1", "png "):  # lossless: the very same pixels
        assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, vframes))


def test_synthetic_source_hints_and_truth():
    with open_source("synthetic://?seed=3&sets=2&width=96&height=80&duplicate_every=3") as source:
        frames = list(source)
        truth = source.truth(1)
    assert len(frames) == 8 + 2  # two duplicated slots
    assert all(f.light_hint == f.source_info["light"] for f in frames)
    assert [f.source_info["set_index"] for f in frames] == sorted(f.source_info["set_index"] for f in frames)
    assert sum(f.source_info["kind"] == "duplicate" for f in frames) == 2
    assert all(len(c.box) == 4 for c in truth)
    images, _ = SyntheticCamera(seed=3, width=96, height=80).render_set(0)
    assert np.array_equal(frames[0].image, images[frames[0].light_hint])  # RGB kept as the camera made it
    with pytest.raises(SourceError, match="unknown option 'bogus'"):
        open_source("synthetic://?bogus=1")
    with pytest.raises(SourceError, match="needs a number"):
        open_source("synthetic://?seed=x")


def test_validator_converts_and_flags():
    v = FrameValidator()
    rgb, flags = v.check(_frame(120), "f0")
    assert not flags
    grey16 = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 7) | 0x0100
    rgb, flags = v.check(grey16, "f1")
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8 and np.array_equal(rgb[:, :, 0], (grey16 >> 8).astype(np.uint8))
    bgra = np.dstack([_frame(100), np.full((H, W), 255, np.uint8)])
    rgb, _ = v.check(bgra, "f2")
    assert np.array_equal(rgb, cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB))
    assert "black" in v.check(np.zeros((H, W, 3), np.uint8), "f3")[1]
    assert "saturated" in v.check(np.full((H, W, 3), 255, np.uint8), "f4")[1]
    assert "size_mismatch" in v.check(_frame(120)[:40], "f5")[1]
    with_nan = np.full((H, W, 3), 0.5, np.float32)
    with_nan[3, 4] = np.nan
    rgb, flags = v.check(with_nan, "f6")
    assert "non_finite" in flags and rgb.dtype == np.uint8
    cut = _frame(120)
    cut[50:] = 128
    assert "truncated" in v.check(cut, "f7")[1]
    with pytest.raises(Exception, match="f8"):
        v.check(np.zeros((H, W, 5), np.uint8), "f8")


class FakeCapture:
    """Delivers `n_frames` frames (or forever if None), then behaves like an unplugged camera."""

    def __init__(self, n_frames, opened=True, period=0.0):
        self.n_frames, self.opened, self.period = n_frames, opened, period
        self.count = 0
        self.released = False
        self.props = {}

    def isOpened(self):
        return self.opened

    def set(self, prop, value):
        self.props[prop] = value
        return True

    def get(self, prop):
        return 0.0

    def read(self):
        if self.period:
            time.sleep(self.period)
        if not self.opened or (self.n_frames is not None and self.count >= self.n_frames):
            return False, None
        self.count += 1
        return True, np.full((H, W, 3), 40 + self.count % 200, np.uint8)

    def release(self):
        self.released = True


def test_live_camera_reconnects_with_backoff_then_gives_up():
    # first connection: 5 frames; then one failed reopen, a good one with 4 frames, then never again
    plan = [FakeCapture(5, period=0.002), FakeCapture(0, opened=False), FakeCapture(4, period=0.002)]
    made = []

    def factory(target, api):
        cap = plan.pop(0) if plan else FakeCapture(0, opened=False)
        made.append((target, api, cap))
        return cap

    source = open_source("/dev/video3", capture_factory=factory, max_reconnects=3, backoff_initial=0.005, backoff_max=0.02)
    assert source.is_live
    frames = []
    deadline = time.monotonic() + 10
    while source.is_streaming and time.monotonic() < deadline:
        frame = source.read(timeout=0.05)
        if frame is not None:
            frames.append(frame)
    assert not source.is_streaming
    source.close()
    assert source.stats.reconnects == 1
    assert source.stats.reconnect_attempts == 2 + 3  # 2 to come back, 3 more before giving up
    assert len(made) == 1 + 2 + 3
    assert all(api == cv2.CAP_V4L2 and target == "/dev/video3" for target, api, _ in made)
    assert made[0][2].props.get(cv2.CAP_PROP_BUFFERSIZE) == 1  # one-frame buffer
    assert all(cap.released for _, _, cap in made)
    assert 1 <= len(frames) <= 9
    assert [f.index for f in frames] == sorted({f.index for f in frames})


def test_backoff_doubles_up_to_its_cap():
    assert backoff_delays(0.5, 8.0, 7) == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff_delays(1.0, 8.0, 0) == []


def test_live_camera_keeps_only_the_newest_frame():
    source = open_source("rtsp://camera.local/stream", capture_factory=lambda t, a: FakeCapture(None, period=0.001))
    try:
        got = []
        for _ in range(5):
            frame = source.read(timeout=1.0)
            assert frame is not None
            got.append(frame.index)
            time.sleep(0.03)  # a slow consumer
        assert source.stats.dropped > 0
        assert got == sorted(got) and got[-1] - got[0] > len(got)  # stale frames were skipped, not queued
    finally:
        source.close()
    assert not any(t.name.startswith("grab:rtsp") and t.is_alive() for t in threading.enumerate())


def test_live_grabber_on_a_real_opencv_capture(tmp_path):
    """The live path (grabber thread, BGR -> RGB) on a real cv2.VideoCapture: a recorded clip
    standing in for a camera; at its end the camera is 'lost' and, with no reconnect tries, the stream ends."""
    out = write_frames(tmp_path / "clip", sets=2, seed=5, width=96, height=64)
    meta = json.loads((out / "meta.json").read_text())
    source = open_source("rtsp://camera.local/live", capture_factory=lambda t, a: cv2.VideoCapture(str(out / "video.avi")),
                         max_reconnects=0)
    frames = []
    while source.is_streaming:
        frame = source.read(timeout=0.5)
        if frame is not None:
            frames.append(frame)
            time.sleep(0.002)
    source.close()
    assert 1 <= len(frames) <= meta["n_frames"]
    assert len(frames) + source.stats.dropped == meta["n_frames"]
    if meta["video_codec"] in ("FFV1", "png "):
        for f in frames:
            assert np.array_equal(f.image, read_image(out / "frames" / f"{f.index:06d}.png"))


def test_read_times_out_with_none_on_a_silent_camera():
    class Silent(FakeCapture):
        def read(self):
            time.sleep(0.01)
            return True, None  # "ok" but no image yet: never delivered

    source = open_source("v4l2:///dev/video1", capture_factory=lambda t, a: Silent(None))
    try:
        assert source.read(timeout=0.05) is None
        assert source.is_streaming
    finally:
        source.close()


def test_device_uris_fail_cleanly_without_a_device():
    with pytest.raises(SourceError) as e:
        open_source("/dev/video99")
    assert "/dev/video99" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SourceError, match="v4l2:///dev/video98"):
        open_source("v4l2:///dev/video98")
    with pytest.raises(SourceError, match="expected v4l2:///dev/videoN"):
        open_source("v4l2://camera")
    with pytest.raises(SourceError, match="unknown source scheme"):
        open_source("ftp://x/y")
    with pytest.raises(SourceError, match="no such file"):
        open_source("/nonexistent/clip.mp4")


def test_csi_and_gst_pipelines_are_passed_as_one_argument():
    seen = []

    def factory(target, api):
        seen.append((target, api))
        return FakeCapture(None, period=0.001)

    for uri in ("csi://1", "gst:videotestsrc ! videoconvert ! appsink drop=true max-buffers=1"):
        source = open_source(uri, capture_factory=factory, width=1280, height=720)
        assert source.read(timeout=1.0) is not None
        source.close()
    (csi, api1), (gst, api2) = seen
    assert api1 == api2 == cv2.CAP_GSTREAMER
    assert csi.startswith("nvarguscamerasrc sensor-id=1 ") and "width=(int)1280" in csi
    assert csi.endswith("appsink drop=true max-buffers=1 sync=false")
    assert gst == "videotestsrc ! videoconvert ! appsink drop=true max-buffers=1"
    if "GStreamer:                   NO" in cv2.getBuildInformation():
        with pytest.raises(SourceError, match="no GStreamer support"):
            open_source("csi://0")
