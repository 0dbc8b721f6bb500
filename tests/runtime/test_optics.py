"""Physical scale: spec fields, device profiles, the locator in micrometres, scale from red cells."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from wbc_edge.runtime.locator import GEOMETRY, detection_scores, locate_cells
from wbc_edge.runtime.optics import (DeviceProfile, ScaleError, crop_px_for, estimate_scale, profile_warnings,
                                     red_cell_diameters, white_cell_check)
from wbc_edge.spec import SIM_CROP_UM, SIM_UM_PER_PX, ModelSpec, SpecError, spec_for
from wbc_edge.synth.frames import SyntheticCamera
from wbc_edge.synth.scene import CROP_PX, PX_PER_UM

BRIGHT = ("color1", "color2", "color3")


def test_spec_defaults_are_the_simulators_scale_and_old_specs_load():
    assert SIM_UM_PER_PX == pytest.approx(1 / PX_PER_UM) and SIM_CROP_UM == pytest.approx(CROP_PX / PX_PER_UM)
    old = spec_for("mimo", input_size=64).to_dict()
    del old["crop_um"], old["train_um_per_px"]  # a spec written before the fields existed
    spec = ModelSpec.from_dict(old)
    assert spec.crop_um == SIM_CROP_UM and spec.train_um_per_px == SIM_UM_PER_PX
    assert crop_px_for(spec, SIM_UM_PER_PX) == CROP_PX  # today's 64 px window at the simulator's scale
    assert crop_px_for(spec, SIM_UM_PER_PX / 2) == 2 * CROP_PX
    new = spec.replace(crop_um=40.0, train_um_per_px=None)
    assert ModelSpec.from_json(new.to_json()) == new
    with pytest.raises(SpecError, match="crop_um"):
        spec.replace(crop_um=0.0)


def test_locator_geometry_in_pixels_is_the_old_constants_at_the_simulators_scale_and_scales():
    px = GEOMETRY.in_pixels(SIM_UM_PER_PX)
    assert px == {"min_area": 90, "max_area": 3000, "min_body_area": 270, "merge_distance": 9.0, "border_margin": 2,
                  "cell_margin": 6, "max_cell_margin": 16, "background_px": 61, "blur_sigma": 1.0,
                  "open_px": 6, "nucleus_px": 159, "context_px": 9}  # new: 2.5 um opening; 30 um2 whole nucleus; 4 um context
    px2 = GEOMETRY.in_pixels(SIM_UM_PER_PX / 2)  # twice the magnification: lengths x2, areas x4
    assert px2["min_area"] == 360 and px2["merge_distance"] == 18.0 and px2["max_cell_margin"] == 32


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_locator_finds_cells_at_other_magnifications(scale):
    camera = SyntheticCamera(seed=21, scale=scale)
    tp = fp = fn = 0
    for set_index in range(8):
        images, truth = camera.render_set(set_index)
        boxes = locate_cells(images["fluorescent"], um_per_px=camera.um_per_px)
        s = detection_scores(boxes, [c.box for c in truth if not c.cut_by_border])
        tp, fp, fn = tp + s["tp"], fp + s["fp"], fn + s["fn"]
    assert tp >= 25
    assert tp / (tp + fn) >= 0.9 and tp / (tp + fp) >= 0.9


def test_locator_at_the_wrong_scale_fails_so_the_scale_matters():
    camera = SyntheticCamera(seed=21, scale=0.5)  # cells half the simulator's size
    right = wrong = n = 0
    for set_index in range(4):
        images, truth = camera.render_set(set_index)
        cells = [c.box for c in truth if not c.cut_by_border]
        right += detection_scores(locate_cells(images["fluorescent"], um_per_px=camera.um_per_px), cells)["tp"]
        wrong += detection_scores(locate_cells(images["fluorescent"]), cells)["tp"]  # the simulator's scale assumed
        n += len(cells)
    assert right >= 0.9 * n and wrong < 0.6 * n  # the small nuclei pass for debris


def test_synthetic_camera_scale_magnifies_cells_and_truth():
    one, two = SyntheticCamera(seed=3), SyntheticCamera(seed=3, scale=2.0)
    assert two.um_per_px == pytest.approx(SIM_UM_PER_PX / 2)
    images, truth = two.render_set(0)
    assert images["color1"].shape == (480, 640, 3)
    widths = [c.box[2] - c.box[0] for c in truth if not c.cut_by_border]
    widths1 = [c.box[2] - c.box[0] for i in range(3) for c in one.render_set(i)[1] if not c.cut_by_border]
    assert np.median(widths) == pytest.approx(2 * np.median(widths1), rel=0.25)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_scale_estimated_from_red_cells_within_ten_percent(scale):
    camera = SyntheticCamera(seed=5, scale=scale)
    frames = [camera.render_set(i)[0][light] for i in range(3) for light in BRIGHT]
    est = estimate_scale(frames)
    assert est.um_per_px == pytest.approx(camera.um_per_px, rel=0.1)
    assert est.n_cells >= 30 and 0 < est.spread <= 0.3
    profile = est.profile(640, 480, origin="test")
    assert profile.um_per_px == pytest.approx(est.um_per_px, rel=1e-5) and profile.n_cells == est.n_cells


def test_scale_estimate_refuses_frames_without_a_ruler():
    camera = SyntheticCamera(seed=5)
    images, _ = camera.render_set(0)
    rng = np.random.default_rng(0)
    with pytest.raises(ScaleError, match="no clear red cells"):
        estimate_scale([np.full((480, 640, 3), 200, np.uint8)] * 3)  # blank
    with pytest.raises(ScaleError, match="cannot estimate"):
        estimate_scale([images["fluorescent"]])  # a dark field has no dark red cells on a bright background
    with pytest.raises(ScaleError, match="cannot estimate"):
        estimate_scale([rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)])  # noise
    blurred = [cv2.GaussianBlur(images[light], (0, 0), 12) for light in BRIGHT]
    with pytest.raises(ScaleError, match="cannot estimate"):
        estimate_scale(blurred)  # far out of focus
    with pytest.raises(ScaleError, match="no frames"):
        estimate_scale([])
    assert red_cell_diameters(np.zeros((8, 8, 3), np.uint8))[0].size == 0


def test_device_profile_round_trip_and_one_line_errors(tmp_path):
    p = DeviceProfile(0.25, 1440, 900, serial="CAM-7", origin="given").save(tmp_path / "p.json")
    assert DeviceProfile.load(p) == DeviceProfile(0.25, 1440, 900, serial="CAM-7", origin="given")
    (tmp_path / "bad.json").write_text(json.dumps({"um_per_px": -1}))
    with pytest.raises(ScaleError, match=r"bad.json.*um_per_px"):
        DeviceProfile.load(tmp_path / "bad.json")
    (tmp_path / "typo.json").write_text(json.dumps({"um_per_pix": 0.2}))
    with pytest.raises(ScaleError, match="typo.json field 'um_per_pix': unknown"):
        DeviceProfile.load(tmp_path / "typo.json")
    with pytest.raises(ScaleError, match="not valid JSON"):
        (tmp_path / "t.json").write_text("{")
        DeviceProfile.load(tmp_path / "t.json")
    with pytest.raises(ScaleError, match="cannot read"):
        DeviceProfile.load(tmp_path / "missing.json")


def test_profile_warnings_for_another_camera_and_a_scale_against_the_evidence():
    camera = SyntheticCamera(seed=5)
    est = estimate_scale([camera.render_set(0)[0][light] for light in BRIGHT])
    good = DeviceProfile(camera.um_per_px, 640, 480)
    assert profile_warnings(good, 640, 480, est) == []
    lines = profile_warnings(DeviceProfile(camera.um_per_px * 2, 1920, 1080), 640, 480, est)
    assert len(lines) == 2 and "1920x1080" in lines[0] and "red cells say" in lines[1]


class _ScaleHidden:
    """A source that does not know its scale (as a real camera does not)."""

    def __init__(self, source):
        self._source, self.uri = source, "hidden"

    def read(self, timeout=1.0):
        return self._source.read(timeout)

    @property
    def is_streaming(self):
        return self._source.is_streaming

    def close(self):
        self._source.close()


def test_analyzer_scale_from_the_source_from_the_frames_or_a_profile(tmp_path, rt_bundle, caplog):
    from wbc_edge.runtime.pipeline import Analyzer
    from wbc_edge.runtime.results import read_results
    from wbc_edge.runtime.sources import open_source

    path, _ = rt_bundle
    uri = "synthetic://?scale=2&sets=2&seed=3"
    with Analyzer(path, backend="onnxruntime", intra_op_threads=1, profile="auto") as an:
        summary = an.analyze(uri, sink=tmp_path / "r.jsonl")
    assert an.um_per_px == pytest.approx(SIM_UM_PER_PX / 2) and an.crop_px == 2 * CROP_PX
    assert "own scale" in summary.scale
    header, cells, _ = read_results(tmp_path / "r.jsonl")
    assert header["um_per_px"] == pytest.approx(SIM_UM_PER_PX / 2, rel=1e-5) and cells
    for c in cells:
        assert c.size_um == pytest.approx(((c.box[2] - c.box[0]) * an.um_per_px, (c.box[3] - c.box[1]) * an.um_per_px), abs=0.01)
        assert 6 < c.size_um[0] < 25  # white cells are 7-20 um across

    with Analyzer(path, backend="onnxruntime", intra_op_threads=1, profile="auto") as an:
        summary = an.analyze(_ScaleHidden(open_source(uri)))
    assert an.um_per_px == pytest.approx(SIM_UM_PER_PX / 2, rel=0.1) and "estimated" in an.scale_origin
    assert summary.frames == 8  # the frames read to measure the scale were replayed, none lost

    caplog.set_level("WARNING")
    with Analyzer(path, backend="onnxruntime", intra_op_threads=1, profile=DeviceProfile(SIM_UM_PER_PX, 1920, 1080)) as an:
        an.analyze(uri)
    assert an.um_per_px == SIM_UM_PER_PX  # a given profile is used as given, but doubted aloud
    text = caplog.text
    assert "1920x1080 frames used on 640x480" in text and "red cells say" in text


def _pair_and_neutrophil() -> np.ndarray:
    img = np.full((200, 300, 3), 8, np.uint8)
    yy, xx = np.mgrid[:200, :300]
    # two lymphocytes side by side: round nuclei 7.4 um across (38 um2 each), 1.3 um apart, one glow
    img[((xx - 80) ** 2 + (yy - 100) ** 2 < 14**2) | ((xx - 104) ** 2 + (yy - 100) ** 2 < 14**2), 0] = 40
    for cx in (80, 103):
        img[(xx - cx) ** 2 + (yy - 100) ** 2 < 8**2] = (60, 200, 60)
    # a neutrophil: four lobes of 9 um2 each
    img[(xx - 220) ** 2 + (yy - 100) ** 2 < 16**2, 0] = 40
    for dx, dy in ((-9, 0), (-3, 7), (4, 7), (10, 0)):
        img[(xx - 220 - dx) ** 2 + (yy - 100 - dy) ** 2 < 3.5**2] = (60, 200, 60)
    return img


def test_touching_cells_are_split_at_their_whole_nuclei_and_flagged_a_lobed_nucleus_is_not():
    boxes = sorted(locate_cells(_pair_and_neutrophil()), key=lambda b: b.x0)
    assert len(boxes) == 3
    left, right, neutrophil = boxes
    assert (left.n_lobes, right.n_lobes) == (1, 1) and left.whole_nuclei == right.whole_nuclei == 2
    assert abs(left.cx - 80) < 1.5 and abs(right.cx - 103) < 1.5 and abs(left.cy - 100) < 1.5
    assert neutrophil.n_lobes >= 3 and neutrophil.whole_nuclei == 0 and abs(neutrophil.cx - 220) < 3


def test_results_flag_touching_cells(rt_bundle):
    from wbc_edge.runtime.assembler import LightSet
    from wbc_edge.runtime.pipeline import Analyzer
    from wbc_edge.runtime.results import FLAG_TOUCHING

    fluo = _pair_and_neutrophil()
    bright = np.full(fluo.shape, 200, np.uint8)
    light_set = LightSet(0, {"fluorescent": fluo, "color1": bright, "color2": bright, "color3": bright}, {})
    with Analyzer(rt_bundle[0], backend="onnxruntime", intra_op_threads=1) as an:
        results = sorted(an.classify_set(light_set), key=lambda r: r.box[0])
    assert [FLAG_TOUCHING in r.flags for r in results] == [True, True, False]  # the pair split, each flagged
    assert results[0].size_um[0] == pytest.approx((results[0].box[2] - results[0].box[0]) * SIM_UM_PER_PX)


def test_white_cells_as_a_second_ruler_check_the_scale():
    camera = SyntheticCamera(seed=5, scale=2.0)
    fluo = [camera.render_set(i)[0]["fluorescent"] for i in range(3)]
    assert white_cell_check(fluo, camera.um_per_px) is None  # right scale: cells 10-20 um
    line = white_cell_check(fluo, camera.um_per_px * 2)  # a profile for half the magnification: cells too large
    assert line is not None and "check the scale" in line  # (a coarse ruler: 1.6x off still passes)
    assert white_cell_check([], camera.um_per_px) is None  # too few cells: no verdict


def test_cli_synth_frames_scale_then_calib_optics_and_a_refusal(tmp_path, capsys):
    from wbc_edge.cli.calib import main as calib_main
    from wbc_edge.cli.synth import main as synth_main

    assert synth_main(["frames", "--out", str(tmp_path / "f"), "--sets", "3", "--seed", "2", "--scale", "2",
                       "--no-video", "-q"]) == 0
    meta = json.loads((tmp_path / "f" / "meta.json").read_text())
    assert meta["scale"] == 2.0 and meta["um_per_px"] == pytest.approx(SIM_UM_PER_PX / 2, rel=1e-5)
    assert calib_main(["optics", "--source", str(tmp_path / "f" / "frames"), "--serial", "CAM-1",
                       "--out", str(tmp_path / "p.json")]) == 0
    profile = DeviceProfile.load(tmp_path / "p.json")
    assert profile.um_per_px == pytest.approx(SIM_UM_PER_PX / 2, rel=0.1)
    assert (profile.width, profile.height, profile.serial) == (640, 480, "CAM-1")
    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(4):
        cv2.imwrite(str(blank / f"{i:06d}.png"), np.full((120, 160, 3), 200, np.uint8))
    capsys.readouterr()
    assert calib_main(["optics", "--source", str(blank), "--out", str(tmp_path / "q.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no clear red cells" in err and not (tmp_path / "q.json").exists()


def test_a_clump_is_not_split_into_cells():
    img = np.full((120, 160, 3), 8, np.uint8)
    for cx in (66, 92):  # two round nuclei of 450 px each, touching: a clump when their sum is over max_area
        cv2.circle(img, (cx, 60), 12, (60, 200, 60), -1)
    assert len(locate_cells(img, open_px=0, max_area=2000)) == 2  # cells: split at their whole nuclei
    assert locate_cells(img, open_px=0, max_area=800) == []  # a clump: rejected whole, not cut into two "cells"
