"""Frame sources: cameras, streams, video files, image folders and the synthetic camera, behind one URI.

URI forms follow jetson-inference's `videoSource`:
    /dev/video0, v4l2:///dev/video0   V4L2 camera through OpenCV (one-frame buffer, newest frame wins)
    csi://0                           Jetson CSI camera: a GStreamer nvarguscamerasrc pipeline
    gst:<pipeline>                    any GStreamer pipeline ending in an appsink
    rtsp://host/path                  network stream through OpenCV (FFmpeg)
    file:///path/clip.avi, clip.mp4   video file
    DIR, file:///DIR                  image folder (sorted; one light per frame)
    synthetic://?seed=1&sets=50       the built-in simulated four-light camera (wbc_edge.synth.frames);
                                      &mix=eosinophilia (or NEU=0.6,LYM=0.3,...) sets its blood mix

Every source returns `Frame`s with RGB uint8 images. `read(timeout)` returns None on timeout;
`is_streaming` turns False at the end of the stream. Live sources (cameras, RTSP) keep only the
newest frame (stale frames are counted as dropped) and reconnect with exponential backoff; file
sources lose nothing and never drop.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

import cv2
import numpy as np

from wbc_edge.data.images import IMAGE_SUFFIXES, read_image, to_rgb_uint8
from wbc_edge.errors import DataError, SourceError
from wbc_edge.spec import MODALITIES

log = logging.getLogger(__name__)

DEFAULT_URI = "synthetic://"
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".webm", ".mjpeg", ".mjpg")

# Frame quality thresholds (0..255 units).
BLACK_LEVEL = 6  # a frame whose 99.9th percentile is below this carries no signal
SATURATED_LEVEL = 250
SATURATED_FRACTION = 0.5  # more than half the pixels clipped in every channel
TRUNCATED_MIN_ROWS = 4  # this many identical flat bottom rows: the frame was cut short

# A capture factory builds an object with OpenCV's VideoCapture interface (isOpened, read, set, release).
CaptureFactory = Callable[[Any, int], Any]


@dataclass
class Frame:
    """One single-light camera frame.

    `light_hint` is the light the source believes lit this frame (file name, synthetic truth), or None;
    the assembler checks it against the frame's appearance. `flags` holds quality findings
    ("black", "saturated", "truncated", "size_mismatch",
    "non_finite"); `source_info` what the source knows
    (file path, synthetic set index, ...).
    """

    index: int
    time: float
    image: np.ndarray
    light_hint: str | None = None
    source_info: dict[str, Any] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()


@dataclass
class SourceStats:
    frames_read: int = 0
    dropped: int = 0  # live frames overwritten before anyone read them
    reconnects: int = 0  # successful reconnections
    reconnect_attempts: int = 0
    corrupt: int = 0  # undecodable frames, skipped
    flagged: int = 0  # frames delivered with quality flags

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class FrameValidator:
    """Brings raw decoded frames to RGB uint8 and flags the ones a classifier should not trust."""

    def __init__(self) -> None:
        self.first_shape: tuple[int, int] | None = None

    def check(self, raw: np.ndarray, where: str, rgb_order: bool = False) -> tuple[np.ndarray, frozenset[str]]:
        """Return (rgb uint8, flags); DataError when the frame cannot be made into an image at all.

        `raw` is as OpenCV decodes it (BGR/BGRA/grey, 8 or 16 bit) unless `rgb_order` says it is RGB."""
        flags: set[str] = set()
        if raw is None or not isinstance(raw, np.ndarray) or raw.size == 0:
            raise DataError(f"{where}: empty or undecodable frame")
        if raw.dtype.kind == "f":
            if not np.isfinite(raw).all():
                flags.add("non_finite")
                raw = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
            scale = 255.0 if float(raw.max(initial=0.0)) <= 1.0 else 1.0
            raw = np.clip(raw * scale, 0, 255).astype(np.uint8)
        elif raw.dtype == np.bool_ or (raw.dtype.kind in "iu" and raw.dtype not in (np.uint8, np.uint16)):
            raw = np.clip(raw, 0, 255).astype(np.uint8)
        if rgb_order and raw.ndim == 3 and raw.shape[2] == 3 and raw.dtype == np.uint8:
            rgb = raw.copy()  # already what we keep; a copy so consumers may draw on it
        elif rgb_order and raw.ndim == 3 and raw.shape[2] == 3:
            rgb = to_rgb_uint8(np.ascontiguousarray(raw[:, :, ::-1]), where)
        else:
            rgb = to_rgb_uint8(raw, where)
        h, w = rgb.shape[:2]
        if self.first_shape is None:
            self.first_shape = (h, w)
        elif (h, w) != self.first_shape:
            flags.add("size_mismatch")
        step = max(4, (4 * w) // 640)  # about 160 samples a row whatever the sensor (5 MP: 4x fewer than every 4th)
        small = rgb[::step, ::step]
        if float(np.percentile(small, 99.9)) < BLACK_LEVEL:
            flags.add("black")
        if float((small.min(axis=2) >= SATURATED_LEVEL).mean()) > SATURATED_FRACTION:
            flags.add("saturated")
        if truncated_rows(rgb) >= TRUNCATED_MIN_ROWS:
            flags.add("truncated")
        return rgb, frozenset(flags)


def truncated_rows(rgb: np.ndarray) -> int:
    """How many bottom rows hold one flat mid-grey value: what a transfer cut short decodes to.

    A real sensor row always carries noise; flat black or white (0/255) rows are left to the
    black/saturated checks, since optics can clip there."""
    bottom = rgb[-1]
    value = bottom[0]
    if (bottom != value).any() or int(value.min()) == 0 or int(value.max()) == 255:
        return 0
    flat = (rgb == value).all(axis=(1, 2))[::-1]
    return int(flat.argmin()) if not flat.all() else len(flat)


def light_from_name(name: str, lights: Sequence[str]) -> str | None:
    """The light whose name appears as a token in a file name (longest match wins), or None."""
    stem = name.lower()
    for light in sorted(lights, key=len, reverse=True):
        if re.search(rf"(^|[^a-z0-9]){re.escape(light.lower())}($|[^a-z0-9])", stem):
            return light
    return None


def read_frames_meta(path: Path) -> dict[str, Any]:
    """The `meta.json` written by `wbc-synth frames` beside (or one level above) frames or a video."""
    return find_frames_meta(path)[0]


def find_frames_meta(path: Path) -> tuple[dict[str, Any], Path | None]:
    """(metadata, its path) for frames or a video; ({}, None) when there is none."""
    folder = path if path.is_dir() else path.parent
    for candidate in (folder / "meta.json", folder.parent / "meta.json"):
        if candidate.is_file():
            try:
                meta = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError) as e:
                log.warning("%s: ignoring unreadable frames metadata (%s)", candidate, e)
                return {}, None
            return (meta, candidate) if isinstance(meta, dict) else ({}, None)
    return {}, None


def _meta_um_per_px(meta: dict[str, Any]) -> float | None:
    value = meta.get("um_per_px")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def _meta_light_order(meta: dict[str, Any]) -> tuple[str, ...] | None:
    for key in ("light_order", "lights", "modalities"):
        value = meta.get(key)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
    return None


GIVEN_ORDER = "the given light order (--order / light_order=)"


def _lights(order: Sequence[str]) -> str:
    return ",".join(order)


def order_conflict_warning(uri: str, given: Sequence[str], stated: Sequence[str], stated_by: str) -> str:
    return (f"{uri}: {GIVEN_ORDER} {_lights(given)} contradicts {stated_by} ({_lights(stated)}); "
            "using the given order")


def run_light_order(source: Any, model_lights: Sequence[str], given: Sequence[str] | None = None, *,
                    missing_ok: bool = False, default: Sequence[str] | None = None) -> tuple[str, ...]:
    """The camera's light cycle for a run, from every place that states it, and checked against the model.

    The user's order (`given`) wins over what the source states (meta.json, the simulated camera), with a
    warning naming both when they differ; without one, what the source states is the truth about its
    frames; without either, `default` (the model's cycle). The order must hold the fluorescent light (the
    cells are located in it) and every light the model reads (else every set would be skipped: an error
    naming both, a warning under `missing_ok`, i.e. --missing-light heads); a light the model does not
    read is a warning (its frames are assembled, never classified)."""
    from wbc_edge.spec import LOCATOR_LIGHT

    stated = getattr(source, "stated_light_order", None)
    stated_by = getattr(source, "stated_by", "") or "the source"
    uri = str(getattr(source, "uri", "") or type(source).__name__)
    if given:
        order, origin = tuple(given), GIVEN_ORDER
        if stated and tuple(stated) != order and tuple(getattr(source, "light_order", ()) or ()) != order:
            log.warning("%s", order_conflict_warning(uri, order, stated, stated_by))  # opened without it: not said yet
    elif stated:
        order, origin = tuple(stated), stated_by
    else:
        order, origin = tuple(default or model_lights), "the model's lights"
    model = _lights(model_lights)
    if LOCATOR_LIGHT not in order:
        raise DataError(f"{uri}: {origin} ({_lights(order)}) has no '{LOCATOR_LIGHT}' light, which cells are "
                        f"located in (the model reads {model})")
    absent = [m for m in model_lights if m not in order]
    if absent:
        line = f"{uri}: the model reads {model}, but {origin} is {_lights(order)}, without {_lights(absent)}"
        if not missing_ok:
            raise DataError(line + "; every set would be skipped (give --order the camera's lights, or "
                                   "--missing-light heads)")
        log.warning("%s; every set is classified without it (flagged missing:)", line)
    unknown = [light for light in order if light not in model_lights and light not in MODALITIES]
    if unknown:  # a known light the model does not read is a fewer-light model on a four-light camera: fine
        log.warning("%s: %s (%s) has %s, a light the model (%s) does not know; those frames are not classified",
                    uri, origin, _lights(order), _lights(unknown), model)
    return order


class FrameSource:
    """Base class: iteration, context manager, counters. Subclasses implement `_read` and `_close`."""

    is_live = False

    def __init__(self, uri: str, light_order: Sequence[str] | None = None, *, stated: Sequence[str] | None = None,
                 stated_by: str = "", default: Sequence[str] | None = None) -> None:
        """light_order: the user's; stated: what the source itself says (meta.json, the simulated camera)."""
        self.uri = uri
        # what the source itself says its light cycle is, and where that comes from (see run_light_order)
        self.stated_light_order: tuple[str, ...] | None = tuple(stated) if stated else None
        self.stated_by = stated_by
        if light_order and self.stated_light_order and tuple(light_order) != self.stated_light_order:
            log.warning("%s", order_conflict_warning(uri, tuple(light_order), self.stated_light_order, stated_by))
        self.light_order: tuple[str, ...] = tuple(light_order or self.stated_light_order or default or MODALITIES)
        self.stats = SourceStats()
        self.validator = FrameValidator()
        self._streaming = True
        self._closed = False

    # -- public API ---------------------------------------------------------------------------
    @property
    def is_streaming(self) -> bool:
        """False once the stream has ended (file exhausted, camera lost for good, or closed)."""
        return self._streaming and not self._closed

    def read(self, timeout: float = 1.0) -> Frame | None:
        """The next frame, or None if none arrived within `timeout` seconds or the stream ended."""
        if self._closed:
            return None
        return self._read(timeout)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def counters(self) -> dict[str, int]:
        return self.stats.as_dict()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while self.is_streaming:
            frame = self.read()
            if frame is not None:
                yield frame

    # -- for subclasses -----------------------------------------------------------------------
    def _read(self, timeout: float) -> Frame | None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def _make_frame(self, raw: Any, index: int, t: float, where: str, hint: str | None, info: dict[str, Any],
                    rgb_order: bool = False) -> Frame | None:
        """Validate a raw frame; a corrupt one is counted, reported in one line and skipped (None)."""
        try:
            rgb, flags = self.validator.check(raw, where, rgb_order)
        except DataError as e:
            self.stats.corrupt += 1
            log.warning("frame %s rejected (undecodable, skipped): %s", index, e)
            return None
        if flags:
            self.stats.flagged += 1  # the consumer rejects it and says so (one warning per frame)
            log.info("%s: flagged %s", where, ",".join(sorted(flags)))
        self.stats.frames_read += 1
        return Frame(index=index, time=t, image=rgb, light_hint=hint, source_info=info, flags=flags)


class ImageFolderSource(FrameSource):
    """A sorted folder of single-light frame images; light hint from the file name when it names a light."""

    def __init__(self, uri: str, folder: Path, light_order: Sequence[str] | None = None, loop: bool = False, fps: float | None = None,
                 default_light_order: Sequence[str] | None = None) -> None:
        if not folder.is_dir():
            raise SourceError(f"{folder}: image folder does not exist")
        files = self._image_files(folder)
        if not files and (folder / "frames").is_dir():  # the `wbc-synth frames` output folder itself
            folder = folder / "frames"
            files = self._image_files(folder)
        if not files:
            raise SourceError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        meta, meta_path = find_frames_meta(folder)
        super().__init__(uri, light_order, stated=_meta_light_order(meta), stated_by=str(meta_path),
                         default=default_light_order)
        self.um_per_px = _meta_um_per_px(meta)  # the frames' scale, where their meta.json states it
        self.um_per_px_origin = f"{meta_path}"
        self.folder = folder
        self.files = files
        self.loop = loop
        self.fps = float(fps or meta.get("fps") or 30.0)
        self._pos = 0
        self._count = 0

    @staticmethod
    def _image_files(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    def _read(self, timeout: float) -> Frame | None:
        while True:
            if self._pos >= len(self.files):
                if not self.loop:
                    self._streaming = False
                    return None
                self._pos = 0
            path = self.files[self._pos]
            self._pos += 1
            index = self._count
            self._count += 1
            try:
                raw_rgb = read_image(path)
            except DataError as e:
                self.stats.corrupt += 1
                log.warning("frame %s rejected (undecodable, skipped): %s", index, e)
                continue
            digits = re.search(r"\d+", path.stem)
            info = {"path": str(path), "file_number": int(digits.group()) if digits else None}
            hint = light_from_name(path.stem, self.light_order)
            frame = self._make_frame(raw_rgb, index, index / self.fps, str(path), hint, info, rgb_order=True)
            if frame is not None:
                return frame


def backoff_delays(initial: float, maximum: float, tries: int) -> list[float]:
    """Seconds to wait before each reconnect try: doubling from `initial`, capped at `maximum`."""
    return [min(initial * 2**k, maximum) for k in range(max(tries, 0))]


def _has_gstreamer() -> bool:
    info = cv2.getBuildInformation()
    match = re.search(r"GStreamer:\s*(\w+)", info)
    return bool(match and match.group(1).upper() == "YES")


def _cv2_capture(target: Any, api: int) -> Any:
    return cv2.VideoCapture(target, api)


class CaptureSource(FrameSource):
    """OpenCV VideoCapture: video files (lossless, in order) or live cameras/streams (newest frame wins).

    Live capture runs in a grabber thread that keeps only the newest frame (so the consumer never sees
    stale frames) and reconnects with exponential backoff when the device stops delivering.
    `capture_factory(target, api)` builds the capture object; tests inject a fake one.
    """

    def __init__(
        self,
        uri: str,
        target: Any,
        api: int,
        *,
        live: bool,
        light_order: Sequence[str] | None = None,
        loop: bool = False,
        capture_factory: CaptureFactory | None = None,
        max_reconnects: int = 10,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        properties: dict[int, float] | None = None,
        meta: dict[str, Any] | None = None,
        meta_path: Path | None = None,
        default_light_order: Sequence[str] | None = None,
    ) -> None:
        super().__init__(uri, light_order, stated=_meta_light_order(meta or {}), stated_by=str(meta_path) if meta_path else "",
                         default=default_light_order)
        self.um_per_px = _meta_um_per_px(meta or {})  # the video's scale, where its meta.json states it
        self.um_per_px_origin = f"{meta_path}"
        self.is_live = live
        self.target = target
        self.api = api
        self.loop = loop
        self.max_reconnects = max_reconnects
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.properties = dict(properties or {})
        self._factory = capture_factory or _cv2_capture
        self._index = 0
        self._cap = self._open_capture()
        if self._cap is None:
            raise SourceError(f"{uri}: cannot open ({self._open_failure_reason()})")
        if live:
            self._cond = threading.Condition()
            self._latest: tuple[np.ndarray, int, float] | None = None
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._grab_loop, name=f"grab:{uri}", daemon=True)
            self._thread.start()

    @property
    def is_streaming(self) -> bool:
        """A live stream that has ended still streams until its last grabbed frame is read."""
        if self.is_live and not self._closed and self._latest is not None:
            return True
        return super().is_streaming

    def _open_failure_reason(self) -> str:
        if self.api == cv2.CAP_GSTREAMER and self._factory is _cv2_capture and not _has_gstreamer():
            return "this OpenCV build has no GStreamer support"
        if self.api == cv2.CAP_V4L2:
            return "no such V4L2 device or it is busy"
        return "OpenCV could not open it"

    def _open_capture(self) -> Any | None:
        try:
            cap = self._factory(self.target, self.api)
        except Exception as e:  # noqa: BLE001 - a capture backend failing to open is a runtime condition
            log.warning("%s: open failed (%s)", self.uri, e)
            return None
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        for prop, value in self.properties.items():
            cap.set(prop, value)
        return cap

    # -- file sources: read in the caller's thread, never drop ---------------------------------
    def _read(self, timeout: float) -> Frame | None:
        if self.is_live:
            return self._read_live(timeout)
        while True:
            if self._cap is None:
                self._streaming = False
                return None
            ok, raw = self._cap.read()
            if not ok:
                if self.loop and self._index > 0:
                    self._cap.release()
                    self._cap = self._open_capture()
                    continue
                self._streaming = False
                return None
            index = self._index
            self._index += 1
            frame = self._make_frame(raw, index, index / self._fps(), f"{self.uri} frame {index}", None, {"uri": self.uri})
            if frame is not None:
                return frame

    def _fps(self) -> float:
        fps = self._cap.get(cv2.CAP_PROP_FPS) if self._cap is not None and hasattr(self._cap, "get") else 0
        return float(fps) if fps and fps > 0 else 30.0

    # -- live sources: grabber thread, newest frame wins ---------------------------------------
    def _grab_loop(self) -> None:
        while not self._stop.is_set():
            ok, raw = (False, None)
            try:
                ok, raw = self._cap.read()
            except Exception as e:  # noqa: BLE001 - a driver error is treated like a disconnect
                log.warning("%s: read failed (%s)", self.uri, e)
            if self._stop.is_set():
                break
            if ok and raw is not None:
                with self._cond:
                    if self._latest is not None:
                        self.stats.dropped += 1
                    self._latest = (raw, self._index, time.monotonic())
                    self._index += 1
                    self._cond.notify_all()
                continue
            if not self._reconnect():
                break
        with self._cond:
            self._streaming = False
            self._cond.notify_all()

    def _reconnect(self) -> bool:
        """Reopen the device with exponential backoff; False when every try failed or we are closing."""
        log.warning("%s: camera stopped delivering frames; reconnecting", self.uri)
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        delays = backoff_delays(self.backoff_initial, self.backoff_max, self.max_reconnects)
        for attempt, delay in enumerate(delays, start=1):
            if self._stop.wait(delay):
                return False
            self.stats.reconnect_attempts += 1
            self._cap = self._open_capture()
            if self._cap is not None:
                self.stats.reconnects += 1
                log.warning("%s: reconnected after %d attempt(s)", self.uri, attempt)
                return True
            log.info("%s: reconnect attempt %d/%d failed", self.uri, attempt, self.max_reconnects)
        log.error("%s: camera lost after %d reconnect attempts; stream ended", self.uri, self.max_reconnects)
        return False

    def _read_live(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            with self._cond:
                while self._latest is None and self._streaming:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._cond.wait(remaining):
                        break
                item, self._latest = self._latest, None
            if item is None:
                return None
            raw, index, t = item
            frame = self._make_frame(raw, index, t, f"{self.uri} frame {index}", None, {"uri": self.uri})
            if frame is not None or time.monotonic() >= deadline:
                return frame

    def _close(self) -> None:
        if self.is_live:
            self._stop.set()
            self._thread.join(timeout=5.0)
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class SyntheticSource(FrameSource):
    """The simulated four-light camera (`wbc_edge.synth.frames.SyntheticCamera`); light hints are the truth."""

    def __init__(self, uri: str, light_order: Sequence[str] | None = None, loop: bool = False, realtime: bool = False,
                 default_light_order: Sequence[str] | None = None, **camera_options: Any) -> None:
        super().__init__(uri, light_order, default=default_light_order)
        from wbc_edge.synth.frames import SyntheticCamera  # lazy: only this source needs the renderer

        camera_options.setdefault("light_order", self.light_order)
        try:
            self.camera = SyntheticCamera(**camera_options)
        except TypeError as e:
            raise SourceError(f"{uri}: bad synthetic camera option ({e})") from None
        self.light_order = tuple(getattr(self.camera, "light_order", self.light_order))
        self.stated_light_order, self.stated_by = self.light_order, "the simulated camera's cycle"  # it renders this order
        self.loop = loop
        self.realtime = realtime
        self._iter = iter(self.camera)
        self._start = time.monotonic()

    @property
    def um_per_px(self) -> float | None:
        """The simulated camera knows its own scale (the runtime then needs no estimate)."""
        return getattr(self.camera, "um_per_px", None)

    def truth(self, set_index: int) -> Any:
        """Ground truth (cell boxes and classes) of one synthetic set, for tests and benchmarks."""
        return self.camera.truth(set_index)

    def _read(self, timeout: float) -> Frame | None:
        while True:
            try:
                sf = next(self._iter)
            except StopIteration:
                if not self.loop:
                    self._streaming = False
                    return None
                self._iter = iter(self.camera)
                continue
            if self.realtime:
                wait = self._start + float(sf.time) - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            info = {"set_index": sf.set_index, "light": sf.light, "kind": getattr(sf, "kind", "ok")}
            frame = self._make_frame(sf.image, sf.index, float(sf.time), f"{self.uri} frame {sf.index}", sf.light, info,
                                     rgb_order=True)
            if frame is not None:
                return frame


def csi_pipeline(sensor_id: int = 0, width: int = 1920, height: int = 1080, fps: int = 30, flip: int = 0) -> str:
    """The GStreamer pipeline for a Jetson CSI camera, ending in a one-buffer, dropping appsink."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, framerate=(fraction){fps}/1 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def _synthetic_options(query: str) -> dict[str, Any]:
    names = {"sets": "n_sets", "n_sets": "n_sets", "seed": "seed", "width": "width", "height": "height", "fps": "fps",
             "drop_every": "drop_every", "duplicate_every": "duplicate_every", "corrupt_every": "corrupt_every",
             "scale": "scale"}
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in ("loop", "realtime"):
            options[key] = value.lower() in ("1", "true", "yes", "")
            continue
        if key == "lights":
            options["light_order"] = tuple(v for v in value.split(",") if v)
            continue
        if key == "mix":  # a named blood mix or NEU=0.6,LYM=0.3,... (wbc_edge.synth.cells.resolve_mix)
            options["class_mix"] = value
            continue
        if key not in names:
            raise SourceError(f"synthetic://?{query}: unknown option '{key}' (known: {', '.join(sorted(set(names) | {'loop', 'realtime', 'lights', 'mix'}))})")
        try:
            options[names[key]] = float(value) if key in ("fps", "scale") else int(value)
        except ValueError:
            raise SourceError(f"synthetic://?{query}: option '{key}' needs a number, got '{value}'") from None
        if key in ("sets", "n_sets", "width", "height", "fps", "scale") and not options[names[key]] > 0:
            raise SourceError(f"synthetic://?{query}: option '{key}' must be > 0, got '{value}' (a camera of no frames)")
        if key == "seed" and options[names[key]] < 0:
            raise SourceError(f"synthetic://?{query}: option 'seed' must be >= 0, got '{value}'")
    return options


def open_source(
    uri: str | None = None,
    *,
    light_order: Sequence[str] | None = None,
    loop: bool = False,
    capture_factory: CaptureFactory | None = None,
    default_light_order: Sequence[str] | None = None,
    **opts: Any,
) -> FrameSource:
    """Open a frame source from a URI (see the module docstring); the synthetic camera when uri is None.

    Options: `max_reconnects`, `backoff_initial`, `backoff_max` (live sources); `width`, `height`,
    `fps` (cameras, CSI, synthetic); `realtime` and camera options (synthetic); `capture_factory`
    replaces `cv2.VideoCapture` (tests, custom drivers). light_order: the user's light cycle (it wins over
    a meta.json's, with a warning naming both); default_light_order: the cycle when neither says one (the
    model's: the simulated camera then renders it).
    """
    uri = uri or DEFAULT_URI
    live_opts = {k: opts.pop(k) for k in ("max_reconnects", "backoff_initial", "backoff_max") if k in opts}
    common = dict(light_order=light_order, loop=loop, capture_factory=capture_factory, **live_opts)

    if uri.startswith("synthetic://"):
        options = _synthetic_options(urlsplit(uri).query)
        options.update(opts)
        loop = bool(options.pop("loop", loop))
        order = options.pop("light_order", None)
        if order and light_order and tuple(order) != tuple(light_order):
            raise SourceError(f"{uri}: lights={_lights(order)} contradicts {GIVEN_ORDER} {_lights(light_order)}; "
                              "give the cycle once")
        return SyntheticSource(uri, light_order=order or light_order, loop=loop, default_light_order=default_light_order,
                               **options)

    if uri.startswith("gst:"):
        pipeline = uri[len("gst:"):].lstrip("/") if uri.startswith("gst://") else uri[len("gst:"):]
        return CaptureSource(uri, pipeline.strip(), cv2.CAP_GSTREAMER, live=True, **common)

    if uri.startswith("csi://"):
        sensor = uri[len("csi://"):] or "0"
        if not sensor.isdigit():
            raise SourceError(f"{uri}: expected csi://<sensor id>, e.g. csi://0")
        pipeline = csi_pipeline(int(sensor), int(opts.get("width", 1920)), int(opts.get("height", 1080)), int(opts.get("fps", 30)))
        return CaptureSource(uri, pipeline, cv2.CAP_GSTREAMER, live=True, **common)

    if uri.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return CaptureSource(uri, uri, cv2.CAP_FFMPEG, live=True, **common)

    if uri.startswith("v4l2://") or re.fullmatch(r"/dev/video\d+", uri):
        device = uri[len("v4l2://"):] if uri.startswith("v4l2://") else uri
        if not re.fullmatch(r"/dev/video\d+", device):
            raise SourceError(f"{uri}: expected v4l2:///dev/videoN")
        props = {cv2.CAP_PROP_BUFFERSIZE: 1}  # one-frame buffer: a slow consumer never sees stale frames
        if "width" in opts:
            props[cv2.CAP_PROP_FRAME_WIDTH] = int(opts["width"])
        if "height" in opts:
            props[cv2.CAP_PROP_FRAME_HEIGHT] = int(opts["height"])
        if "fps" in opts:
            props[cv2.CAP_PROP_FPS] = float(opts["fps"])
        return CaptureSource(uri, device, cv2.CAP_V4L2, live=True, properties=props, **common)

    path = Path(unquote(urlsplit(uri).path)) if uri.startswith("file://") else Path(uri)
    if "://" in uri and not uri.startswith("file://"):
        raise SourceError(f"{uri}: unknown source scheme (use /dev/videoN, v4l2://, csi://, gst:, rtsp://, file://, a folder or synthetic://)")
    if path.is_dir():
        return ImageFolderSource(uri, path, light_order=light_order, loop=loop, fps=opts.get("fps"),
                                 default_light_order=default_light_order)
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise SourceError(f"{path}: a single image is not a stream; pass its folder")
    meta, meta_path = find_frames_meta(path)
    return CaptureSource(uri, str(path), cv2.CAP_FFMPEG, live=False, meta=meta, meta_path=meta_path,
                         default_light_order=default_light_order, **common)
