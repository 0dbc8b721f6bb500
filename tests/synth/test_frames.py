"""Synthetic camera fields, the simulated camera and the frame/video/truth writer."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from wbc_edge.errors import DataError
from wbc_edge.spec import CLASSES, MODALITIES
from wbc_edge.synth import SyntheticCamera, render_field, write_frames
from wbc_edge.synth.frames import count_video_frames


def test_field_lights_truth_boxes_and_fluorescent_darker():
    images, truth = render_field(np.random.default_rng(3), width=320, height=240, n_wbc=(4, 6))
    assert set(images) == set(MODALITIES)
    for img in images.values():
        assert img.shape == (240, 320, 3) and img.dtype == np.uint8
    assert 1 <= len(truth) <= 6
    fluo = images["fluorescent"].astype(float)
    for light in ("color1", "color2", "color3"):
        assert fluo.mean() < 0.3 * images[light].mean()
    background = np.median(fluo[..., 1])
    for cell in truth:
        x0, y0, x1, y1 = cell.box
        assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
        assert cell.label in CLASSES
        if cell.cut_by_border:
            assert x0 == 0 or y0 == 0 or x1 == 320 or y1 == 240
        # a stained nucleus lights up inside every box
        assert fluo[y0:y1, x0:x1, 1].max() > background + 60
    # white cells do not overlap
    for i, a in enumerate(truth):
        for b in truth[i + 1 :]:
            assert np.hypot(a.center[0] - b.center[0], a.center[1] - b.center[1]) > 20


def test_fluorescence_outside_boxes_is_dark_except_debris():
    images, truth = render_field(np.random.default_rng(8), width=320, height=240)
    mask = np.ones((240, 320), bool)
    for c in truth:
        x0, y0, x1, y1 = c.box
        mask[max(y0 - 4, 0) : y1 + 4, max(x0 - 4, 0) : x1 + 4] = False
    green = images["fluorescent"][..., 1][mask]
    assert np.mean(green > 60) < 0.002  # a few debris specks at most


def test_camera_cycles_lights_and_is_deterministic():
    order = ("color2", "fluorescent", "color3", "color1")
    frames = list(SyntheticCamera(seed=4, light_order=order, width=160, height=120, n_sets=2))
    assert [f.light for f in frames] == list(order) * 2
    assert [f.index for f in frames] == list(range(8))
    assert [f.set_index for f in frames] == [0] * 4 + [1] * 4
    assert all(f.kind == "ok" for f in frames)
    assert frames[1].time < frames[2].time
    again = list(SyntheticCamera(seed=4, light_order=order, width=160, height=120, n_sets=2))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, again))
    other = list(SyntheticCamera(seed=5, light_order=order, width=160, height=120, n_sets=1))
    assert not np.array_equal(frames[0].image, other[0].image)


def test_camera_truth_matches_rendered_set_in_any_order():
    cam = SyntheticCamera(seed=2, width=160, height=120)
    late_first = cam.truth(5)
    fresh = SyntheticCamera(seed=2, width=160, height=120)
    for s in range(5):
        fresh.render_set(s)
    assert fresh.truth(5) == late_first


def test_camera_injected_faults():
    def run(**kw):
        return list(SyntheticCamera(seed=1, width=96, height=96, n_sets=3, **kw))

    clean = run()
    dropped = run(drop_every=5)
    assert len(dropped) == 12 - 2
    assert [f.index for f in dropped] == list(range(10))
    assert {(f.set_index, f.light) for f in clean} - {(f.set_index, f.light) for f in dropped} == {(1, MODALITIES[0]), (2, MODALITIES[1])}
    dup = run(duplicate_every=4)
    assert len(dup) == 15 and sum(f.kind == "duplicate" for f in dup) == 3
    d = next(i for i, f in enumerate(dup) if f.kind == "duplicate")
    assert np.array_equal(dup[d].image, dup[d - 1].image) and dup[d].light == dup[d - 1].light
    bad = run(corrupt_every=6)
    corrupt = [f for f in bad if f.kind == "corrupt"]
    assert len(corrupt) == 2
    for f in corrupt:
        ok = next(c for c in clean if c.set_index == f.set_index and c.light == f.light)
        assert not np.array_equal(f.image, ok.image) and (f.image[-1] == 128).all()
    with pytest.raises(DataError):
        SyntheticCamera(drop_every=1)
    with pytest.raises(DataError):
        SyntheticCamera(light_order=("fluorescent", "color1"))


def test_write_frames_files_truth_meta_and_video(frames_dir):
    meta = json.loads((frames_dir / "meta.json").read_text())
    assert meta["light_order"] == list(MODALITIES) and meta["n_frames"] == 12
    assert (meta["width"], meta["height"], meta["seed"]) == (256, 192, 9)
    pngs = sorted((frames_dir / "frames").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(12)]
    lines = (frames_dir / "truth.jsonl").read_text().splitlines()
    assert len(lines) == 3
    for s, line in enumerate(lines):
        rec = json.loads(line)
        assert rec["set_index"] == s and rec["frames"] == [4 * s + j for j in range(4)] and rec["lights"] == list(MODALITIES)
        for cell in rec["cells"]:
            x0, y0, x1, y1 = cell["box"]
            assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 192 and cell["label"] in CLASSES
    # frame light identity: every fluorescence frame is the dark one of its set
    from wbc_edge.data.images import read_image

    means = [read_image(p).mean() for p in pngs]
    assert all(means[4 * s] < 0.3 * min(means[4 * s + 1 : 4 * s + 4]) for s in range(3))
    video = frames_dir / "video.avi"
    assert count_video_frames(video) == 12
    cap = cv2.VideoCapture(str(video))
    ok, first = cap.read()
    cap.release()
    assert ok
    diff = np.abs(cv2.cvtColor(first, cv2.COLOR_BGR2RGB).astype(int) - read_image(pngs[0]).astype(int))
    assert diff.max() == 0 if meta["video_codec"] in ("FFV1", "png ") else diff.mean() < 3


def test_write_frames_same_seed_same_bytes(frames_dir, tmp_path):
    again = write_frames(tmp_path / "b", sets=3, seed=9, width=256, height=192)
    for name in ["truth.jsonl", "meta.json", "video.avi", *(f"frames/{i:06d}.png" for i in range(12))]:
        assert (frames_dir / name).read_bytes() == (again / name).read_bytes()
    no_video = write_frames(tmp_path / "c", sets=1, seed=9, width=256, height=192, video=False)
    assert not (no_video / "video.avi").exists()
    assert (no_video / "frames/000000.png").read_bytes() == (frames_dir / "frames/000000.png").read_bytes()


def test_cli_frames_custom_order_and_bad_order(tmp_path, capsys):
    from wbc_edge.cli.synth import main

    out = tmp_path / "f"
    assert main(["frames", "--out", str(out), "--sets", "1", "--seed", "2", "--width", "128", "--height", "96",
                 "--order", "color1,color2,color3,fluorescent", "--no-video", "-q"]) == 0
    assert json.loads((out / "meta.json").read_text())["light_order"] == ["color1", "color2", "color3", "fluorescent"]
    assert len(list((out / "frames").glob("*.png"))) == 4
    assert main(["frames", "--out", str(out), "--sets", "1", "--order", "fluorescent,uv", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "uv" in err and "\n" not in err


def test_field_cells_and_training_crops_share_scale_and_neighbourhood():
    """A CROP_PX window around a field cell looks like a render_cell crop: same nucleus area and red-cell cover."""
    from wbc_edge.synth import CROP_PX, render_cell

    half = CROP_PX // 2

    def nucleus_area(fluo):  # bright green pixels (stained chromatin)
        return int((fluo[..., 1].astype(int) > 80).sum())

    def red_cover(c1):  # pixels clearly darker than the window's bright background in colour 1
        g = c1[..., 1].astype(float)
        return float((g < 0.88 * np.percentile(g, 95)).mean())

    field_nuc, field_cover = [], []
    cam = SyntheticCamera(seed=12)
    for s in range(6):
        images, truth = cam.render_set(s)
        for cell in truth:
            cx, cy = (int(round(v)) for v in cell.center)
            if cell.label != "neutrophil" or not (half <= cx < 640 - half and half <= cy < 480 - half):
                continue
            win = np.s_[cy - half : cy + half, cx - half : cx + half]
            field_nuc.append(nucleus_area(images["fluorescent"][win]))
            field_cover.append(red_cover(images["color1"][win]))
    assert len(field_nuc) >= 8
    crops = [render_cell("neutrophil", np.random.default_rng([12, i])) for i in range(30)]
    crop_nuc = [nucleus_area(c["fluorescent"]) for c in crops]
    crop_cover = [red_cover(c["color1"]) for c in crops]
    assert abs(np.mean(field_nuc) - np.mean(crop_nuc)) < 0.25 * np.mean(crop_nuc)
    assert abs(np.mean(field_cover) - np.mean(crop_cover)) < 0.25 * np.mean(crop_cover)


def test_rewriting_fewer_sets_leaves_no_stale_frames(tmp_path):
    out = tmp_path / "f"
    write_frames(out, sets=2, seed=1, width=96, height=96, video=False)
    write_frames(out, sets=1, seed=1, width=96, height=96, video=False)
    assert sorted(p.name for p in (out / "frames").glob("*.png")) == [f"{i:06d}.png" for i in range(4)]
    assert len((out / "truth.jsonl").read_text().splitlines()) == 1
