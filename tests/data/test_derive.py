"""The rgb-hed four-light derivation: which light holds what, a fixed density scale, determinism, bad files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")
from skimage.color import hed2rgb  # noqa: E402

from wbc_edge.cli.data import main as wbc_data  # noqa: E402
from wbc_edge.data import open_dataset, write_image  # noqa: E402
from wbc_edge.data.derive import (DERIVATION_FILE, HAEMATOXYLIN_RANGE, centre_square, derive_lights,  # noqa: E402
                                  haematoxylin_uint8, write_four_light)
from wbc_edge.errors import DataError  # noqa: E402
from wbc_edge.spec import MODALITIES  # noqa: E402

PBC_DEV = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pbc_dev"


def _stain(h: float, e: float = 0.0) -> np.ndarray:
    """The RGB uint8 pixel of haematoxylin density h (and eosin e) by skimage's own stain model."""
    rgb = hed2rgb(np.array([[[h, e, 0.0]]]))
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)[0, 0]


def _crop(h: int = 30, w: int = 34, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = _stain(0.0, 0.05)  # pink background
    img[h // 2 - 5:h // 2 + 5, w // 2 - 5:w // 2 + 5] = _stain(0.15)  # a nucleus in the middle
    img += rng.integers(0, 3, size=img.shape, dtype=np.uint8)
    return img


def test_density_scale_is_fixed_not_per_image():
    lo, hi = HAEMATOXYLIN_RANGE
    for density in (0.05, 0.1, 0.15):
        pixel = _stain(density)
        # The same pixel beside a dark or a light neighbour reads the same grey level.
        dark = np.stack([pixel, _stain(0.19)])[None]
        light = np.stack([pixel, _stain(0.0)])[None]
        got_dark, got_light = haematoxylin_uint8(dark)[0, 0], haematoxylin_uint8(light)[0, 0]
        assert got_dark == got_light
        assert abs(int(got_dark) - (density - lo) / (hi - lo) * 255) <= 4  # uint8 pixels round the density
    assert haematoxylin_uint8(np.full((1, 1, 3), 255, np.uint8))[0, 0] == 0  # white glass: no stain
    assert haematoxylin_uint8(_stain(0.5)[None, None])[0, 0] == 255  # beyond the range clips
    assert haematoxylin_uint8(_stain(0.0, 0.2)[None, None])[0, 0] < 20  # eosin alone is not haematoxylin


def test_lights_are_the_channels_and_the_density_of_the_centre_square():
    img = _crop(30, 34)
    lights = derive_lights(img, size=30)
    square = img[:, 2:32]
    assert np.array_equal(centre_square(img), square)
    assert list(lights) == list(MODALITIES)
    for light, channel in (("color1", 0), ("color2", 1), ("color3", 2)):
        assert lights[light].shape == (30, 30, 3)
        assert np.array_equal(lights[light][..., 0], square[..., channel])
        assert (lights[light] == lights[light][..., :1]).all()  # grey images
    fl = lights["fluorescent"][..., 0]
    assert fl[15, 15] > 150 and fl[0, 0] < 20  # nucleus bright, background dark
    small = derive_lights(img, size=8)
    assert all(v.shape == (8, 8, 3) and v.dtype == np.uint8 for v in small.values())


def _single_light_folder(root: Path, n_per_class: int = 2) -> Path:
    for c, label in enumerate(("neutrophil", "basophil")):
        for i in range(n_per_class):
            write_image(root / label / f"{label[:3]}_{i}.jpg", _crop(seed=10 * c + i))
    return root


def test_writes_a_four_light_dataset_deterministically(tmp_path):
    src = _single_light_folder(tmp_path / "src")
    a = write_four_light(src, tmp_path / "a", size=16)
    b = write_four_light(src, tmp_path / "b", size=16)
    ds = open_dataset(a)
    assert ds.modalities == MODALITIES and len(ds) == 4
    assert ds.class_counts()["neutrophil"] == 2 and ds.class_counts()["basophil"] == 2
    assert ds.load(0)["color2"].shape == (16, 16, 3)
    assert ds.fingerprint() == open_dataset(b).fingerprint()
    assert a.read_bytes() == b.read_bytes()
    meta = json.loads((tmp_path / "a" / DERIVATION_FILE).read_text())
    assert meta["derivation"] == "rgb-hed" and meta["haematoxylin_range"] == list(HAEMATOXYLIN_RANGE)


def test_unreadable_crop_stops_with_one_line_or_is_skipped(tmp_path, assert_one_line, capsys):
    src = _single_light_folder(tmp_path / "src")
    bad = src / "basophil" / "bas_9.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError) as err:
        write_four_light(src, tmp_path / "out", size=16)
    assert "bas_9.jpg" in assert_one_line(err)
    assert wbc_data(["four-light", str(src), "--out", str(tmp_path / "cli"), "-q"]) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "bas_9.jpg" in message and message.startswith("wbc-data: ")
    assert wbc_data(["four-light", str(src), "--out", str(tmp_path / "skip"), "--skip-bad", "-q", "--size", "12"]) == 0
    assert len(open_dataset(tmp_path / "skip")) == 4
    skipped = json.loads((tmp_path / "skip" / DERIVATION_FILE).read_text())["skipped"]
    assert [s["item"] for s in skipped] == ["bas_9"]


def test_refuses_four_light_input_and_output_inside_the_source(tmp_path, assert_one_line):
    src = _single_light_folder(tmp_path / "src")
    four = write_four_light(src, tmp_path / "four", size=8).parent
    with pytest.raises(DataError) as err:
        write_four_light(four, tmp_path / "again", size=8)
    assert "single-light" in assert_one_line(err)
    with pytest.raises(DataError) as err:
        write_four_light(src, src / "derived", size=8)
    assert "inside" in assert_one_line(err)


@pytest.mark.skipif(not PBC_DEV.is_dir(), reason="../shared/data/pbc_dev is not beside this checkout")
def test_real_pbc_crops_put_the_nucleus_in_the_fluorescent_light(tmp_path):
    source = open_dataset(PBC_DEV)
    picks = [i for i, c in enumerate(source.cells) if c.cell_id.endswith(("1", "7"))][:: 60][:5]
    ds = open_dataset(write_four_light(source.subset(picks), tmp_path / "pbc", size=64))
    for i in range(len(ds)):
        fl = ds.load(i)["fluorescent"][..., 0].astype(float)
        centre, corners = fl[20:44, 20:44].mean(), np.mean([fl[:8, :8], fl[:8, -8:], fl[-8:, :8], fl[-8:, -8:]])
        assert centre > corners + 20, ds.cells[i].cell_id  # the centred cell's nucleus takes haematoxylin


def _crops_from_the_simulator(root: Path, scale: float, side: int = 160) -> float:
    """RGB 'smear crops' cut from the simulated camera's bright-field frames (red cells at a known scale)."""
    from wbc_edge.synth.frames import SyntheticCamera

    cam = SyntheticCamera(seed=11, scale=scale)
    n = 0
    for k in range(3):
        frame = cam.render_set(k)[0]["color1"]
        for y in range(0, frame.shape[0] - side + 1, side):
            for x in range(0, frame.shape[1] - side + 1, side):
                write_image(root / ("neutrophil" if n % 2 else "lymphocyte") / f"c{n:03d}.png", frame[y:y + side, x:x + side])
                n += 1
    return cam.um_per_px


def test_the_sources_scale_is_measured_from_their_red_cells_and_reaches_the_model_spec(tmp_path):
    from wbc_edge.data.derive import read_scale
    from wbc_edge.train.config import TrainConfig
    from wbc_edge.train.cv import load_arrays
    from wbc_edge.train.engine import plan_method

    truth = _crops_from_the_simulator(tmp_path / "src", scale=2.0)
    assert wbc_data(["four-light", str(tmp_path / "src"), "--out", str(tmp_path / "four"), "--size", "32", "-q"]) == 0
    recorded = json.loads((tmp_path / "four" / DERIVATION_FILE).read_text())
    assert recorded["source_scale"]["um_per_px"] == pytest.approx(truth, rel=0.1)
    assert recorded["crop_um"] == pytest.approx(160 * recorded["source_scale"]["um_per_px"], rel=1e-3)
    crop_um, um_per_px = read_scale(tmp_path / "four")
    arrays = load_arrays(open_dataset(tmp_path / "four"), 32)
    spec = plan_method(TrainConfig(), "mimo", arrays, np.arange(len(arrays.labels))).spec
    assert (spec.crop_um, spec.train_um_per_px) == (crop_um, um_per_px)  # the runtime cuts this field of view

    # a scale given by the user is recorded as given; a dataset without one keeps the simulator's defaults
    assert wbc_data(["four-light", str(tmp_path / "src"), "--out", str(tmp_path / "given"), "--size", "32",
                     "--um-per-px", "0.25", "-q"]) == 0
    assert read_scale(tmp_path / "given") == (40.0, 0.25)
    (tmp_path / "given" / DERIVATION_FILE).write_text(json.dumps({"derivation": "rgb-hed"}))
    assert read_scale(tmp_path / "given") is None
    (tmp_path / "given" / DERIVATION_FILE).write_text(json.dumps({"crop_um": -3, "source_scale": {"um_per_px": 0.1}}))
    with pytest.raises(DataError, match="crop_um"):
        read_scale(tmp_path / "given")
    # the library call without a scale records none (and says so), so training keeps the defaults
    write_four_light(tmp_path / "src", tmp_path / "unknown", size=32)
    assert read_scale(tmp_path / "unknown") is None
