"""Cell location and cropping: accuracy on synthetic fields, adversarial images, crops, alignment."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wbc_edge.errors import DataError
from wbc_edge.preprocess import cell_to_input
from wbc_edge.runtime.assembler import LightSet
from wbc_edge.runtime.locator import (
    CellBox,
    align_lights,
    box_iou,
    crop_cells,
    crop_window,
    detection_scores,
    locate_cells,
)
from wbc_edge.spec import spec_for
from wbc_edge.synth.frames import SyntheticCamera
from wbc_edge.synth.scene import CROP_PX

log = logging.getLogger(__name__)
FIELDS = str(Path(__file__).with_name("test_locator_fields.py"))


def _fields_module():
    import importlib.util
    import sys

    name = "wbc_frontend_test_fields"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FIELDS)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_detection_on_twenty_synthetic_fields():
    """Recall and precision against `wbc-synth` truth (cells cut by the border excluded)."""
    camera = SyntheticCamera(seed=21)
    tp = fp = fn = 0
    for set_index in range(20):
        images, truth = camera.render_set(set_index)
        boxes = locate_cells(images["fluorescent"])
        scores = detection_scores(boxes, [c.box for c in truth if not c.cut_by_border])
        tp, fp, fn = tp + scores["tp"], fp + scores["fp"], fn + scores["fn"]
        h, w = images["fluorescent"].shape[:2]
        assert all(0 <= b.x0 < b.x1 <= w and 0 <= b.y0 < b.y1 <= h for b in boxes)
    recall, precision = tp / (tp + fn), tp / (tp + fp)
    log.info("detection on 20 synthetic fields: recall %.4f precision %.4f (tp %d fp %d fn %d)", recall, precision, tp, fp, fn)
    assert tp > 60
    assert recall >= 0.95 and precision >= 0.95


def test_detection_on_independently_composed_fields():
    fields = _fields_module()
    tp = fp = fn = 0
    for seed in range(12):
        images, truth = fields.compose_field(seed)
        scores = detection_scores(locate_cells(images["fluorescent"]), [b for b in truth if fields.inside(b, 320, 240)])
        tp, fp, fn = tp + scores["tp"], fp + scores["fp"], fn + scores["fn"]
    assert tp / (tp + fn) >= 0.9 and tp / (tp + fp) >= 0.95


def test_lobes_of_one_cell_merge_and_debris_and_border_cells_are_rejected():
    img = np.full((200, 300, 3), 8, np.uint8)
    # a three-lobed cell: lobes 2-3 px apart inside a faint red cytoplasm disk
    yy, xx = np.mgrid[:200, :300]
    img[(xx - 100) ** 2 + (yy - 100) ** 2 < 18**2, 0] = 40
    for dx, dy in ((-10, 0), (0, 7), (10, 0)):
        img[(xx - 100 - dx) ** 2 + (yy - 100 - dy) ** 2 < 4**2] = (60, 200, 60)
    img[(xx - 200) ** 2 + (yy - 60) ** 2 < 2**2] = (90, 240, 70)  # debris: tiny, no cytoplasm
    img[(xx - 295) ** 2 + (yy - 150) ** 2 < 8**2] = (60, 200, 60)  # a nucleus cut by the right border
    boxes = locate_cells(img)
    assert len(boxes) == 1
    (cell,) = boxes
    assert cell.n_lobes == 3 and abs(cell.cx - 100) < 2 and abs(cell.cy - 102) < 3
    assert cell.x0 <= 100 - 17 and cell.x1 >= 100 + 17  # the box covers the cytoplasm, not just the lobes
    assert [b.n_lobes for b in locate_cells(img, merge_distance=2)] == [1, 1, 1]  # lobes too far apart to merge


def test_a_stray_lobe_inside_its_cell_is_not_a_second_cell():
    img = np.full((160, 160, 3), 8, np.uint8)
    yy, xx = np.mgrid[:160, :160]
    img[(xx - 80) ** 2 + (yy - 80) ** 2 < 20**2, 0] = 40  # cytoplasm glow
    img[(xx - 74) ** 2 + (yy - 80) ** 2 < 9**2] = (60, 200, 60)  # main nucleus
    img[(xx - 94) ** 2 + (yy - 80) ** 2 < 4**2] = (60, 200, 60)  # a small lobe 8 px away
    boxes = locate_cells(img, merge_distance=6, open_px=0)  # no opening: areas exactly as drawn
    assert len(boxes) == 1 and boxes[0].x0 <= 62 and boxes[0].x1 >= 98
    assert len(locate_cells(img, merge_distance=6, min_area=40, open_px=0)) == 2  # as big as a cell, it would count


@settings(max_examples=40, deadline=None)
@given(
    image=st.one_of(
        arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40), st.just(3))),
        arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40))),
        st.builds(lambda v, h, w: np.full((h, w, 3), v, np.uint8), st.sampled_from([0, 128, 255]),
                  st.integers(1, 120), st.integers(1, 120)),
        st.builds(lambda s, h, w: np.random.default_rng(s).integers(0, 256, (h, w, 3), dtype=np.uint8),
                  st.integers(0, 1000), st.integers(8, 160), st.integers(8, 160)),
    )
)
def test_locator_survives_random_and_adversarial_images(image):
    boxes = locate_cells(image)
    h, w = image.shape[:2]
    for b in boxes:
        assert 0 <= b.x0 < b.x1 <= w and 0 <= b.y0 < b.y1 <= h
        assert b.area > 0 and b.n_lobes >= 1


def test_flat_and_empty_fields_have_no_cells():
    assert locate_cells(np.zeros((120, 160, 3), np.uint8)) == []
    assert locate_cells(np.full((120, 160, 3), 255, np.uint8)) == []
    noise = np.random.default_rng(0).normal(8, 3, (240, 320, 3)).clip(0, 255).astype(np.uint8)
    assert locate_cells(noise) == []
    with pytest.raises(DataError, match="locate_cells"):
        locate_cells(np.zeros((4,), np.uint8))


def test_crop_cells_cuts_the_same_window_from_every_light():
    spec = spec_for("mimo", input_size=32)
    rng = np.random.default_rng(1)
    images = {light: rng.integers(0, 256, (100, 120, 3), dtype=np.uint8) for light in spec.modalities}
    images["color2"] = None
    light_set = LightSet(0, images, {}, {"missing:color2"})
    boxes = [CellBox(40, 30, 60, 50, 50.0, 40.0, 100, 1), CellBox(0, 0, 10, 10, 4.0, 3.0, 50, 1)]
    batch, kept = crop_cells(light_set, boxes, 32, spec)
    assert batch.shape == (2, 12, 32, 32) and batch.dtype == np.uint8 and kept == boxes
    expected = cell_to_input({k: (None if v is None else v[24:56, 34:66]) for k, v in images.items()}, spec)
    assert np.array_equal(batch[0], expected)
    assert np.array_equal(batch[1][3:6], cell_to_input({"color1": crop_window(images["color1"], 4.0, 3.0, 32)}, spec)[3:6])
    batch, kept = crop_cells(light_set, boxes, 32, spec, edge="drop")
    assert kept == boxes[:1] and batch.shape[0] == 1
    empty, none_kept = crop_cells(light_set, [], 32, spec)
    assert empty.shape == (0, 12, 32, 32) and none_kept == []


def test_crop_window_mirrors_past_the_edge():
    img = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    win = crop_window(img, 0.0, 0.0, 8)
    assert win.shape == (8, 8, 3)
    assert np.array_equal(win[4:, 4:], img[:4, :4])
    assert crop_window(img, 100.0, 100.0, 4).shape == (4, 4, 3)


def test_synthetic_crops_have_the_training_crop_size():
    camera = SyntheticCamera(seed=3, width=320, height=240)
    images, truth = camera.render_set(0)
    spec = spec_for("mimo", input_size=64)
    boxes = locate_cells(images["fluorescent"])
    batch, kept = crop_cells(images, boxes, CROP_PX, spec)
    assert batch.shape == (len(kept), 12, 64, 64)
    centres = [c.center for c in truth if not c.cut_by_border]
    for b in kept:  # every crop is centred within a few px of a true cell centre
        assert min(np.hypot(b.cx - x, b.cy - y) for x, y in centres) < 6


def test_align_lights_recovers_a_known_shift():
    camera = SyntheticCamera(seed=4, width=320, height=240)
    images, _ = camera.render_set(0)
    shifted = dict(images)
    shifted["color3"] = np.roll(images["color1"], (3, -2), axis=(0, 1))  # same structure, moved
    aligned, shifts = align_lights(shifted, reference="color1", lights=["color1", "color3"], to_fluorescent=False)
    dx, dy = shifts["color3"]
    assert abs(dx + 2) < 0.5 and abs(dy - 3) < 0.5
    inner = np.s_[10:-10, 10:-10]
    before = np.abs(shifted["color3"][inner].astype(int) - images["color1"][inner]).mean()
    after = np.abs(aligned["color3"][inner].astype(int) - images["color1"][inner]).mean()
    assert after < 0.5 * before


def test_align_to_the_fluorescence_frame_follows_a_moved_bright_field():
    """Move every bright-field light by (5, -4) px against the fluorescence frame: the shifts found
    must move by the same amount (the synthetic lights' own misregistration is unknown, so compare)."""
    camera = SyntheticCamera(seed=12)
    images, _ = camera.render_set(1)
    moved = {k: (v if k == "fluorescent" else np.roll(v, (-4, 5), axis=(0, 1))) for k, v in images.items()}
    _, before = align_lights(images)
    aligned, after = align_lights(moved)
    assert set(after) == {"color1", "color2", "color3"}
    for light in after:
        assert abs(after[light][0] - before.get(light, (0, 0))[0] - 5) < 1.0
        assert abs(after[light][1] - before.get(light, (0, 0))[1] + 4) < 1.0
    assert aligned["fluorescent"] is moved["fluorescent"]  # cells are located there: it never moves


def test_detection_scores_matches_one_to_one():
    truth = [(0, 0, 10, 10), (20, 20, 30, 30)]
    assert detection_scores([(1, 1, 10, 10), (0, 0, 9, 9)], truth) == {"tp": 1, "fp": 1, "fn": 1, "recall": 0.5, "precision": 0.5}
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert detection_scores([], [])["recall"] == 1.0


def _nucleus_in_debris(debris_level: int, nucleus_level: int = 200) -> np.ndarray:
    """A round nucleus (8 px) among specks of stain debris (2 px, each far too small to be a cell), 16-22 px out."""
    img = np.full((120, 120, 3), 8, np.uint8)
    for angle in np.arange(0, 2 * np.pi, np.pi / 8):
        for r in (16, 22):
            cv2.circle(img, (int(round(60 + r * np.cos(angle))), int(round(60 + r * np.sin(angle)))), 2, (0, debris_level, 0), -1)
    cv2.circle(img, (60, 60), 7, (0, nucleus_level, 0), -1)
    return img


def _the_nucleus(boxes):
    return [b for b in boxes if abs(b.cx - 60) < 1 and abs(b.cy - 60) < 1 and b.x1 - b.x0 < 25]


def test_a_nucleus_must_outshine_its_surroundings_at_any_exposure():
    kw = {"open_px": 0, "merge_distance": 4}  # the specks apart from the nucleus and each other, areas as drawn
    for gain in (1.0, 0.5):  # the rule is a ratio: the same verdict at half the exposure
        bright_debris = (_nucleus_in_debris(130) * gain).astype(np.uint8)
        faint_debris = (_nucleus_in_debris(60) * gain).astype(np.uint8)
        assert _the_nucleus(locate_cells(bright_debris, **kw)) == []  # 200 among specks of 130: a knot in debris
        assert len(_the_nucleus(locate_cells(faint_debris, **kw))) == 1
        assert len(_the_nucleus(locate_cells(bright_debris, min_local_contrast=0, **kw))) == 1  # the rule rejected it


def _touching_pair(dx: int) -> np.ndarray:
    """Two white cells whose cytoplasm glow overlaps: nuclei 8 px in radius, dx px apart."""
    img = np.full((160, 220, 3), 8, np.uint8)
    for cx in (90, 90 + dx):
        cv2.circle(img, (cx, 80), 16, (40, 8, 8), -1)
    for cx in (90, 90 + dx):
        cv2.circle(img, (cx, 80), 8, (60, 200, 60), -1)
    return img


@pytest.mark.parametrize("dx", [18, 24, 28, 30, 34])
def test_touching_cells_are_both_found_split_or_apart(dx):
    """Merged and split (close), or apart with a neighbour's nucleus inside each cell's context ring: a
    neighbouring nucleus is not the glow a nucleus must outshine."""
    boxes = sorted(locate_cells(_touching_pair(dx)), key=lambda b: b.cx)
    assert len(boxes) == 2 and abs(boxes[0].cx - 90) < 2 and abs(boxes[1].cx - 90 - dx) < 2


def _one_cell(nucleus_level: int) -> np.ndarray:
    img = np.full((160, 160, 3), 8, np.uint8)
    cv2.circle(img, (80, 80), 18, (8 + (nucleus_level - 8) // 5, 8, 8), -1)  # cytoplasm glow, as exposed as the nucleus
    cv2.circle(img, (80, 80), 9, (8, nucleus_level, 8), -1)
    return img


def test_an_under_exposed_frame_is_brought_up_and_a_well_exposed_one_left_alone():
    from wbc_edge.runtime.locator import exposure_gain

    dim = _one_cell(40)  # 32 above background: under the 45 a nucleus must reach
    assert locate_cells(dim, min_peak=0) == []
    (cell,) = locate_cells(dim)
    assert abs(cell.cx - 80) < 1 and abs(cell.cy - 80) < 1
    assert cell.x0 <= 80 - 17 and cell.x1 >= 80 + 17 and cell.body_area > 0  # the cytoplasm glow, brought up too
    assert 25 < cell.intensity < 40  # reported as the frame recorded it
    assert locate_cells(np.zeros((64, 64, 3), np.uint8), min_peak_snr=0) == []  # a black frame: nothing to bring up
    bright = _one_cell(200)
    assert locate_cells(bright) == locate_cells(bright, min_peak=0)  # bright enough: no gain, same boxes
    assert exposure_gain(np.full((8, 8), 100, np.float32), min_peak=60, max_gain=8, min_snr=3) == 1.0
    signal = np.zeros((40, 40), np.float32)
    signal[10:20, 10:20] = 2.0  # 2 grey levels: a gain of 30 wanted, at most 8 given
    assert exposure_gain(signal, min_peak=60, max_gain=8, min_snr=0.5) == 8.0


def test_a_field_of_strong_noise_is_not_amplified_into_cells():
    from wbc_edge.runtime.locator import GEOMETRY, exposure_gain, opened_signal

    px = GEOMETRY.in_pixels(GEOMETRY.work_um_per_px)
    side = int(round(px["min_area"] ** 0.5))
    # up to a 5 MP frame's size at the locator's working resolution: the brightest noise pixel grows with
    # the frame, its mean over a nucleus' area does not
    for (h, w), background, sd in (((240, 320), 8, 10), ((240, 320), 30, 20), ((1024, 1224), 8, 20), ((1024, 1224), 8, 40)):
        noise = np.random.default_rng(sd).normal(background, sd, (h, w, 3)).clip(0, 255).astype(np.uint8)
        assert locate_cells(noise) == []
        signal = opened_signal(noise, background_px=px["background_px"], blur_sigma=px["blur_sigma"], open_px=px["open_px"])
        assert exposure_gain(signal, min_peak=100, max_gain=8, min_snr=3, nucleus_side=side) == 1.0
        assert exposure_gain(signal, min_peak=100, max_gain=8, min_snr=0, nucleus_side=side) > 1.0  # the guard decided
