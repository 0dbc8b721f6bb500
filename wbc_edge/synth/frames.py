"""Synthetic camera fields: several white cells among red cells, one frame per light, with ground truth.

Fields use the same appearance model (`wbc_edge.synth.scene`) and native scale as `render_cell`, so a
`CROP_PX` window the runtime cuts around a located cell looks like a training crop. Truth boxes are
in the fluorescence frame's coordinates (the other lights are shifted by up to MAX_SHIFT_PX).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import cv2
import numpy as np

from wbc_edge.errors import DataError
from wbc_edge.spec import CLASSES
from wbc_edge.synth.cells import PAPER_MIX, resolve_mix
from wbc_edge.synth.scene import (
    K_RBC,
    LIGHTS,
    NoiseBank,
    Scene,
    Stain,
    illumination_map,
    sample_optics,
    sample_shifts,
    sample_wbc,
)

log = logging.getLogger(__name__)

WBC_GAP_PX = 6  # minimum free space between two white cells


@dataclass(frozen=True)
class TruthCell:
    """A white cell in a field: box (x0, y0, x1, y1) clipped to the frame, exclusive right/bottom."""

    box: tuple[int, int, int, int]
    center: tuple[float, float]
    label: str
    cut_by_border: bool = False

    def to_dict(self) -> dict:
        return {"box": list(self.box), "center": [round(self.center[0], 2), round(self.center[1], 2)],
                "label": self.label, "cut_by_border": self.cut_by_border}


@dataclass(frozen=True)
class SynthFrame:
    """One single-light frame as the camera delivers it. kind: 'ok', 'duplicate' or 'corrupt'."""

    index: int
    set_index: int
    light: str
    image: np.ndarray
    time: float
    kind: str = "ok"


def _check_lights(light_order: Sequence[str]) -> tuple[str, ...]:
    order = tuple(light_order)
    if sorted(order) != sorted(LIGHTS) or len(set(order)) != len(order):
        raise DataError(f"light order {list(order)}: must name each of {list(LIGHTS)} once")
    return order


def render_field(rng: np.random.Generator, width: int = 640, height: int = 480, n_wbc: tuple[int, int] = (3, 8),
                 light_order: Sequence[str] = LIGHTS, stain: Stain | None = None,
                 class_mix: Mapping[str, float] | None = None, optics: "CameraOptics | None" = None,
                 ) -> tuple[dict[str, np.ndarray], list[TruthCell]]:
    """One camera field in every light ({light: RGB uint8 height x width x 3}) and its white cells.

    `optics` (a camera's fixed illumination, sensor noise and red-cell tile) makes streaming cheap;
    without it they are drawn for this field alone.
    """
    order = _check_lights(light_order)
    if width < 64 or height < 64:
        raise DataError(f"field size {width}x{height}: must be at least 64x64")
    stain = stain if stain is not None else Stain.sample(rng)
    mix = class_mix or PAPER_MIX
    classes = [c for c in CLASSES if mix.get(c, 0) > 0]
    p = np.array([mix[c] for c in classes], float)
    p /= p.sum()
    if not 0 <= n_wbc[0] <= n_wbc[1]:
        raise DataError(f"n_wbc {tuple(n_wbc)}: need 0 <= min <= max white cells per field")
    n = int(rng.integers(n_wbc[0], n_wbc[1] + 1))
    placed: list[tuple[float, float, float]] = []
    cells = []
    truth: list[TruthCell] = []
    for _ in range(n):
        label = classes[int(rng.choice(len(classes), p=p))]
        shape = sample_wbc(label, rng)
        br = shape.box_radius()
        for _try in range(40):
            # centres may sit slightly beyond the edge so some cells are cut by the border
            cx = float(rng.uniform(-0.3 * br, width - 1 + 0.3 * br))
            cy = float(rng.uniform(-0.3 * br, height - 1 + 0.3 * br))
            if all(math.hypot(cx - x, cy - y) > br + r + WBC_GAP_PX for x, y, r in placed):
                break
        else:
            continue
        placed.append((cx, cy, br))
        cells.append((shape, cx, cy))
        raw = (cx - br, cy - br, cx + br + 1, cy + br + 1)
        box = (max(0, int(math.floor(raw[0]))), max(0, int(math.floor(raw[1]))),
               min(width, int(math.ceil(raw[2]))), min(height, int(math.ceil(raw[3]))))
        cut = raw[0] < 0 or raw[1] < 0 or raw[2] > width or raw[3] > height
        truth.append(TruthCell(box=box, center=(cx, cy), label=label, cut_by_border=cut))
    scene = Scene(width, height)
    if optics is not None:
        scene.set_rbc_layer(optics.rbc_window(rng, scene.maps.shape[1:]))
    else:
        scene.add_rbcs(rng, haemoglobin=stain.haemoglobin)
    for shape, cx, cy in cells:
        scene.add_wbc(shape, cx, cy, rng, stain.jitter(rng))
    scene.add_debris(rng, int(rng.integers(0, 4)))
    shifts = sample_shifts(rng, order)
    if optics is not None:
        per_field = {light: sample_optics(rng, light) for light in order}
        images = scene.render(rng, order, stain, shifts, illumination=optics.illumination, optics=per_field, noise=optics.noise)
    else:
        images = scene.render(rng, order, stain, shifts)
    return images, truth


class CameraOptics:
    """What stays fixed for one camera and slide: illumination per light, sensor noise, a red-cell tile."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, haemoglobin: float = 1.0):
        self.illumination = {}
        self.noise = {}
        for light in LIGHTS:
            opt = sample_optics(rng, light)
            self.illumination[light] = illumination_map(opt, (0.0, 0.0), (width, height), height, width)
            self.noise[light] = NoiseBank(rng, height, width, opt["noise"])
        tile = Scene(2 * width, 2 * height, pad=0)
        tile.add_rbcs(rng, haemoglobin=haemoglobin)
        self.rbc_tile = tile.maps[K_RBC]

    def rbc_window(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        h, w = shape
        th, tw = self.rbc_tile.shape
        y, x = int(rng.integers(0, th - h + 1)), int(rng.integers(0, tw - w + 1))
        win = self.rbc_tile[y : y + h, x : x + w]
        if rng.random() < 0.5:
            win = win[::-1]
        if rng.random() < 0.5:
            win = win[:, ::-1]
        return win


class SyntheticCamera:
    """A simulated four-light camera: single-light frames cycling through `light_order`.

    Iterating yields `SynthFrame`s; `index` counts delivered frames, `time` is the capture time
    (capture slot / fps). Faults for tests, counted in capture slots (1-based): every `drop_every`-th
    frame is lost, every `duplicate_every`-th frame is delivered twice, every `corrupt_every`-th frame
    arrives with its lower part lost (grey fill, as a truncated transfer decodes).
    """

    def __init__(self, seed: int = 0, light_order: Sequence[str] = LIGHTS, width: int = 640, height: int = 480,
                 fps: float = 30.0, n_sets: int | None = None, drop_every: int | None = None,
                 duplicate_every: int | None = None, corrupt_every: int | None = None, n_wbc: tuple[int, int] = (3, 8),
                 class_mix: str | Mapping[str, float] | None = None, scale: float = 1.0):
        self.light_order = _check_lights(light_order)
        self.class_mix = resolve_mix(class_mix) if class_mix is not None else None  # None: the paper's mix
        if not 0.1 <= float(scale) <= 10.0:
            raise DataError(f"synthetic camera scale: must be a magnification in 0.1..10, got {scale}")
        # magnification against the simulator's native optics: a field of width/scale x height/scale
        # native pixels is drawn, then resampled to the frame size (cells `scale` times as large)
        self.scale = float(scale)
        self._native = (width, height) if self.scale == 1.0 else (
            max(64, int(round(width / self.scale))), max(64, int(round(height / self.scale))))
        for name, value in (("drop_every", drop_every), ("duplicate_every", duplicate_every), ("corrupt_every", corrupt_every)):
            if value is not None and value < 2:
                raise DataError(f"synthetic camera {name}: must be >= 2 or None, got {value}")
        if fps <= 0:
            raise DataError(f"synthetic camera fps: must be > 0, got {fps}")
        self.seed, self.width, self.height, self.fps = seed, width, height, float(fps)
        self.n_sets, self.n_wbc = n_sets, n_wbc
        self.drop_every, self.duplicate_every, self.corrupt_every = drop_every, duplicate_every, corrupt_every
        self.stain = Stain.sample(np.random.default_rng([seed, 2, 0]))
        self._optics = CameraOptics(np.random.default_rng([seed, 4]), *self._native, self.stain.haemoglobin)
        self._cache: dict[int, tuple[dict[str, np.ndarray], list[TruthCell]]] = {}

    def render_set(self, set_index: int) -> tuple[dict[str, np.ndarray], list[TruthCell]]:
        """All lights of field `set_index` and its truth (deterministic, independent of call order)."""
        if set_index not in self._cache:
            if len(self._cache) >= 8:
                self._cache.pop(next(iter(self._cache)))
            rng = np.random.default_rng([self.seed, 3, set_index])
            images, truth = render_field(rng, *self._native, self.n_wbc, self.light_order, stain=self.stain,
                                         class_mix=self.class_mix, optics=self._optics)
            if self._native != (self.width, self.height):
                images, truth = _resampled(images, truth, self.width, self.height, self._native)
            self._cache[set_index] = (images, truth)
        return self._cache[set_index]

    @property
    def um_per_px(self) -> float:
        """The camera's scale: the simulator's native micrometres per pixel over the magnification."""
        from wbc_edge.spec import SIM_UM_PER_PX

        return SIM_UM_PER_PX * self._native[0] / self.width

    def truth(self, set_index: int) -> list[TruthCell]:
        return self.render_set(set_index)[1]

    def __iter__(self) -> Iterator[SynthFrame]:
        delivered = 0
        set_index = 0
        n_lights = len(self.light_order)
        while self.n_sets is None or set_index < self.n_sets:
            images, _ = self.render_set(set_index)
            for j, light in enumerate(self.light_order):
                slot = set_index * n_lights + j
                count = slot + 1
                t = slot / self.fps
                if self.drop_every and count % self.drop_every == 0:
                    continue
                image = images[light]
                kind = "ok"
                if self.corrupt_every and count % self.corrupt_every == 0:
                    image = _truncated(image, np.random.default_rng([self.seed, 5, slot]))
                    kind = "corrupt"
                yield SynthFrame(delivered, set_index, light, image, t, kind)
                delivered += 1
                if self.duplicate_every and count % self.duplicate_every == 0:
                    yield SynthFrame(delivered, set_index, light, image, t, "duplicate")
                    delivered += 1
            set_index += 1


def _resampled(images: dict[str, np.ndarray], truth: list[TruthCell], width: int, height: int,
               native: tuple[int, int]) -> tuple[dict[str, np.ndarray], list[TruthCell]]:
    """A native field seen through other optics: every light resampled to width x height, truth scaled."""
    fx, fy = width / native[0], height / native[1]
    interp = cv2.INTER_AREA if fx < 1 else cv2.INTER_LINEAR
    out = {k: cv2.resize(v, (width, height), interpolation=interp) for k, v in images.items()}
    cells = [TruthCell(box=(max(0, int(math.floor(c.box[0] * fx))), max(0, int(math.floor(c.box[1] * fy))),
                            min(width, int(math.ceil(c.box[2] * fx))), min(height, int(math.ceil(c.box[3] * fy)))),
                       center=((c.center[0] + 0.5) * fx - 0.5, (c.center[1] + 0.5) * fy - 0.5), label=c.label,
                       cut_by_border=c.cut_by_border) for c in truth]
    return out, cells


def _truncated(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = image.copy()
    start = int(rng.integers(image.shape[0] // 4, 3 * image.shape[0] // 4))
    out[start:] = 128
    return out


VIDEO_CODECS = ("FFV1", "png ", "MJPG")  # lossless first; MJPG is the last resort


def open_video_writer(path: Path, fps: float, width: int, height: int) -> tuple[cv2.VideoWriter, str]:
    for codec in VIDEO_CODECS:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
        if writer.isOpened():
            return writer, codec
        writer.release()
    raise DataError(f"{path}: OpenCV cannot write a video with any of the codecs {list(VIDEO_CODECS)}")


def count_video_frames(path: str | os.PathLike) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    try:
        while cap.read()[0]:
            n += 1
    finally:
        cap.release()
    return n


def _remove_stale_frames(folder: Path, n_frames: int) -> None:
    """Frames of an earlier, longer run in the same folder would be read as part of this one."""
    for path in folder.glob("*.png"):
        if len(path.stem) == 6 and path.stem.isdigit() and int(path.stem) >= n_frames:
            path.unlink()
            log.info("removed stale frame %s from an earlier run", path)


def write_frames(out: str | os.PathLike, sets: int, seed: int, light_order: Sequence[str] = LIGHTS, width: int = 640,
                 height: int = 480, video: bool = True, fps: float = 30.0, progress: bool = False,
                 class_mix: str | Mapping[str, float] | None = None, scale: float = 1.0) -> Path:
    """Write `sets` four-light fields as single-light frames in capture order.

    Layout: `out/frames/000000.png ...`, `out/video.avi` (same frames, lossless where OpenCV can),
    `out/truth.jsonl` (one line per set), `out/meta.json`. Same seed, same bytes (PNG frames and JSON).
    """
    from wbc_edge.bundle import atomic_write_text
    from wbc_edge.data.images import write_image

    if sets < 1:
        raise DataError(f"sets: must be >= 1, got {sets}")
    out = Path(out)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    camera = SyntheticCamera(seed=seed, light_order=light_order, width=width, height=height, fps=fps, n_sets=sets,
                             class_mix=class_mix, scale=scale)
    writer = codec = None
    tmp_video = out / ".video.avi.tmp.avi"
    if video:
        writer, codec = open_video_writer(tmp_video, fps, width, height)
    set_frames: dict[int, list[int]] = {}
    frames = iter(camera)
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, total=sets * len(camera.light_order), desc="frames", unit="frame")
    try:
        for frame in frames:
            write_image(out / "frames" / f"{frame.index:06d}.png", frame.image)
            if writer is not None:
                writer.write(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
            set_frames.setdefault(frame.set_index, []).append(frame.index)
    except BaseException:
        if writer is not None:
            writer.release()
            tmp_video.unlink(missing_ok=True)
        raise
    if writer is not None:
        writer.release()
    n_frames = sum(len(v) for v in set_frames.values())
    _remove_stale_frames(out / "frames", n_frames)
    if writer is not None:
        read_back = count_video_frames(tmp_video)
        if read_back != n_frames:
            tmp_video.unlink(missing_ok=True)
            raise DataError(f"{out / 'video.avi'}: wrote {n_frames} frames with codec {codec!r} but read back {read_back}")
        os.replace(tmp_video, out / "video.avi")
    lines = []
    for s in range(sets):
        lines.append(json.dumps({"set_index": s, "frames": set_frames.get(s, []), "lights": list(camera.light_order),
                                 "cells": [c.to_dict() for c in camera.truth(s)]}, sort_keys=True))
    atomic_write_text(out / "truth.jsonl", "\n".join(lines) + "\n")
    meta = {"seed": seed, "sets": sets, "n_frames": n_frames, "light_order": list(camera.light_order), "fps": fps,
            "width": width, "height": height, "video": "video.avi" if video else None, "video_codec": codec,
            "frames": "frames/%06d.png", "truth_reference_light": "fluorescent", "generator": "wbc_edge.synth",
            "class_mix": camera.class_mix or dict(PAPER_MIX)}
    if scale != 1.0:  # meta of 1x folders stays byte-identical to earlier versions
        meta.update(scale=scale, um_per_px=round(camera.um_per_px, 6))
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    log.info("wrote %d frames (%d sets) to %s", n_frames, sets, out)
    return out
