"""Synthetic cells: shapes, class mix, determinism, dataset layout read back by the loader."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from wbc_edge.errors import DataError
from wbc_edge.spec import CLASSES, MODALITIES
from wbc_edge.synth import CROP_PX, PAPER_MIX, class_counts, render_cell, write_cells
from wbc_edge.synth.cells import cell_rng


@pytest.mark.parametrize("label", CLASSES)
def test_render_cell_gives_four_rgb_lights_with_dark_fluorescence(label):
    images = render_cell(label, np.random.default_rng(1))
    assert set(images) == set(MODALITIES)
    for img in images.values():
        assert img.shape == (CROP_PX, CROP_PX, 3) and img.dtype == np.uint8
    fluo = images["fluorescent"].astype(float)
    for light in ("color1", "color2", "color3"):
        assert fluo.mean() < 0.5 * images[light].mean()
    # the nucleus (bright green under Acridine Orange) sits at the centre of the window
    c = CROP_PX // 2
    centre_green = fluo[c - 8 : c + 8, c - 8 : c + 8, 1].max()
    corner_green = np.median(fluo[:8, :8, 1])
    assert centre_green > corner_green + 60


def test_lights_of_one_cell_differ_and_are_not_channel_copies():
    images = render_cell("eosinophil", np.random.default_rng(2))
    flat = {k: v.astype(float).ravel() for k, v in images.items()}
    for a in MODALITIES:
        for b in MODALITIES:
            if a < b:
                assert not np.array_equal(flat[a], flat[b])


def test_size_resizes_the_native_window_keeping_the_whole_cell():
    big = render_cell("monocyte", cell_rng(4, 0))
    small = render_cell("monocyte", cell_rng(4, 0), size=32)
    assert small["color1"].shape == (32, 32, 3)
    # same cell, same generator: the small crop is the big one shrunk, not a cut-out
    shrunk = big["color1"].reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(shrunk - small["color1"].astype(float)).mean() < 2.0


def test_same_generator_same_cell_and_unknown_class_is_a_data_error():
    a = render_cell("neutrophil", cell_rng(7, 3))
    b = render_cell("neutrophil", cell_rng(7, 3))
    c = render_cell("neutrophil", cell_rng(7, 4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["color1"], c["color1"])
    with pytest.raises(DataError, match="granulocyte"):
        render_cell("granulocyte", np.random.default_rng(0))


@pytest.mark.parametrize("n", [0, 7, 30, 100, 1000, 14912])
def test_paper_mix_counts_sum_to_n_follow_the_paper_and_keep_every_class(n):
    counts = class_counts(n, "paper")
    assert sum(counts.values()) == n
    floor = min(5, n // 5)
    assert all(counts[c] >= floor for c in CLASSES)
    if n >= 1000:
        for c in CLASSES:
            assert abs(counts[c] - n * PAPER_MIX[c]) <= floor + 1 + 0.002 * n  # shares sum to 0.999


def test_balanced_and_explicit_mixes():
    assert set(class_counts(50, "balanced").values()) == {10}
    counts = class_counts(100, "NEU=0.5,LYM=0.5")
    assert counts["neutrophil"] == 50 and counts["lymphocyte"] == 50 and counts["basophil"] == 0
    assert class_counts(10, {"monocyte": 1.0})["monocyte"] == 10
    for bad in ("XYZ=1", "NEU=abc", "NEU", "", "NEU=-1"):
        with pytest.raises(DataError):
            class_counts(10, bad)


def test_write_cells_layout_manifest_and_loader(cells_dir):
    from wbc_edge.data import open_dataset

    with open(cells_dir / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["cell_id", "label", "group", *MODALITIES]
    assert len(rows) == 30
    labels = [r["label"] for r in rows]
    assert {c: labels.count(c) for c in CLASSES} == class_counts(30, "paper")
    assert len({r["group"] for r in rows}) == 3
    for r in rows:
        for light in MODALITIES:
            assert r[light] == f"{r['label']}/{r['cell_id']}/{light}.png"
            assert (cells_dir / r[light]).is_file()
    for source in (cells_dir, cells_dir / "manifest.csv"):
        ds = open_dataset(source)
        assert len(ds) == 30 and tuple(ds.modalities) == MODALITIES
        assert sorted(ds.cell_ids) == sorted(r["cell_id"] for r in rows)
    img = ds.load(0)
    assert all(v.shape == (CROP_PX, CROP_PX, 3) for v in img.values())


def test_same_seed_gives_byte_identical_files(cells_dir, tmp_path):
    again = write_cells(tmp_path / "b", 30, seed=5, n_groups=3).parent
    other = write_cells(tmp_path / "c", 30, seed=6, n_groups=3).parent
    files = sorted(p.relative_to(cells_dir) for p in cells_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((cells_dir / p).read_bytes() == (again / p).read_bytes() for p in files)
    assert (cells_dir / "manifest.csv").read_bytes() != (other / "manifest.csv").read_bytes()


def test_bad_arguments_raise_one_line_data_errors(tmp_path):
    for kwargs in ({"size": 8}, {"fmt": "jpg"}, {"n_groups": 0}, {"class_mix": "paper,NEU"}):
        with pytest.raises(DataError) as e:
            write_cells(tmp_path / "x", 5, seed=0, **kwargs)
        assert "\n" not in str(e.value)


def test_cli_cells_and_one_line_error(tmp_path, capsys):
    from wbc_edge.cli.synth import main

    assert main(["cells", "--out", str(tmp_path / "d"), "--n", "10", "--seed", "1", "--size", "32", "--class-mix", "balanced", "-q"]) == 0
    assert len((tmp_path / "d" / "manifest.csv").read_text().splitlines()) == 11
    assert main(["cells", "--out", str(tmp_path / "e"), "--n", "10", "--class-mix", "NEU=1,FOO=2", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "FOO=2" in err and "Traceback" not in err


def test_synth_never_imports_torch():
    code = "import sys, wbc_edge.synth, wbc_edge.cli.synth, wbc_edge.synth.separability; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_named_blood_mixes_and_their_errors():
    from wbc_edge.errors import DataError
    from wbc_edge.synth.cells import BLOOD_MIXES, class_counts
    from wbc_edge.synth.frames import SyntheticCamera

    counts = class_counts(1000, "eosinophilia")
    assert counts == {c: round(1000 * v) for c, v in BLOOD_MIXES["eosinophilia"].items()}
    cam = SyntheticCamera(seed=1, class_mix="lymphocytosis", n_wbc=(6, 8))
    labels = [c.label for s in range(12) for c in cam.truth(s)]
    assert labels.count("lymphocyte") > labels.count("neutrophil")  # 60 % vs 30 %: by far, over ~80 cells
    with pytest.raises(DataError, match="expected paper, balanced, one of"):
        class_counts(10, "eosinophilla")
