"""Every dataset layout loads into the same CellDataset: folders, manifests, single-light folders."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from wbc_edge.data import CellRecord, open_dataset, read_manifest, write_image, write_manifest
from wbc_edge.spec import CLASSES, MODALITIES

# The real PBC sample sits beside the repository (../shared/data/pbc_sample).
PBC = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pbc_sample"
LIGHTS = ("fluorescent", "color1", "color2", "color3")


def test_four_light_folder_loads_cells_labels_and_pixels(four_light):
    ds = open_dataset(four_light.root)
    assert ds.layout == "folder"
    assert ds.classes == CLASSES
    assert ds.modalities == MODALITIES
    assert len(ds) == 6
    assert ds.groups is None and ds.skipped == []
    by_id = {c.cell_id: i for i, c in enumerate(ds.cells)}
    i = by_id["cell002"]
    assert ds.cells[i].label == "lymphocyte" and ds.labels[i] == CLASSES.index("lymphocyte")
    images = ds.load(i)
    assert list(images) == list(MODALITIES)
    for j, light in enumerate(LIGHTS):
        img = images[light]
        assert img.dtype == np.uint8 and img.shape == (6, 5, 3)
        # RGB order survives the disk round trip: R encodes the cell, G the light.
        assert tuple(img[0, 0]) == (12, 100 + j, 200)
    assert ds.class_counts() == {"neutrophil": 2, "lymphocyte": 2, "eosinophil": 1, "monocyte": 0, "basophil": 1}


def test_light_order_follows_spec_not_file_names(folder):
    folder.cell("monocyte", lights=("color3", "fluorescent", "color1", "color2"))
    ds = open_dataset(folder.root)
    assert ds.modalities == MODALITIES


def test_extra_lights_are_ordered_after_spec_lights(folder):
    folder.cell("monocyte", lights=("zeta", "color1", "alpha"))
    assert open_dataset(folder.root).modalities == ("color1", "alpha", "zeta")


def test_abbreviations_and_case_map_to_spec_classes(folder):
    for name in ("NEU", "lym", "Eos", "mo", "BAS", "Neutrophil"):
        folder.cell(name)
    ds = open_dataset(folder.root)
    assert sorted(ds.labels.tolist()) == [0, 0, 1, 2, 3, 4]
    assert {c.label for c in ds.cells} == set(CLASSES)


def test_given_classes_fix_names_and_order(four_light):
    classes = ("basophil", "eosinophil", "lymphocyte", "neutrophil")
    ds = open_dataset(four_light.root, classes=classes)
    assert ds.classes == classes
    for cell, label in zip(ds.cells, ds.labels):
        assert classes[label] == cell.label


def test_modalities_pick_lights_and_order(four_light):
    ds = open_dataset(four_light.root, modalities=["color2", "fluorescent"])
    assert ds.modalities == ("color2", "fluorescent")
    images = ds.load(0)
    assert list(images) == ["color2", "fluorescent"]
    assert images["color2"][0, 0, 1] == 102


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".tif", ".tiff", ".PNG"])
def test_every_image_suffix_is_read(folder, suffix):
    folder.cell("neutrophil", suffix=suffix, size=(16, 16))
    ds = open_dataset(folder.root)
    assert ds.load(0)["color1"].shape == (16, 16, 3)


def test_manifest_csv_with_groups(four_light):
    ds_folder = open_dataset(four_light.root)
    records = [CellRecord(c.cell_id, c.label, f"donor{i % 2}", c.paths) for i, c in enumerate(ds_folder.cells)]
    csv_path = write_manifest(four_light.root / "manifest.csv", records, MODALITIES)
    for source in (csv_path, four_light.root):  # the CSV itself, or the folder holding manifest.csv
        ds = open_dataset(source)
        assert ds.layout == "manifest"
        assert [c.cell_id for c in ds.cells] == [c.cell_id for c in records]
        assert ds.groups == [r.group for r in records]
        assert np.array_equal(ds.labels, ds_folder.labels)
        assert np.array_equal(ds.load(3)["color3"], ds_folder.load(3)["color3"])


def test_manifest_paths_are_relative_posix(four_light):
    ds = open_dataset(four_light.root)
    csv_path = write_manifest(four_light.root / "manifest.csv", ds.cells, ds.modalities)
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "cell_id,label,group,fluorescent,color1,color2,color3"
    assert lines[1].split(",")[3] == f"{ds.cells[0].label}/{ds.cells[0].cell_id}/fluorescent.png"


def test_manifest_without_group_column_and_with_abbreviations(folder, write_csv):
    a = folder.cell("neutrophil", lights=("rgb",))
    b = folder.cell("lymphocyte", lights=("rgb",))
    rel = lambda p: p.relative_to(folder.root).as_posix()  # noqa: E731
    csv_path = write_csv(folder.root / "list.csv", f"label,cell_id,rgb\nNEU,a,{rel(a['rgb'])}\n lym , b ,{rel(b['rgb'])}\n\n")
    ds = read_manifest(csv_path)
    assert ds.groups is None
    assert [c.cell_id for c in ds.cells] == ["a", "b"]
    assert ds.labels.tolist() == [0, 1]
    assert ds.modalities == ("rgb",)


def test_manifest_modalities_select_columns(four_light):
    ds = open_dataset(four_light.root)
    csv_path = write_manifest(four_light.root / "manifest.csv", ds.cells, ds.modalities)
    picked = read_manifest(csv_path, modalities=["color3"])
    assert picked.modalities == ("color3",)
    assert list(picked.load(0)) == ["color3"]


@pytest.mark.skipif(not PBC.is_dir(), reason="../shared/data/pbc_sample is not beside this checkout")
def test_single_light_folder_on_real_pbc_sample():
    ds = open_dataset(PBC)
    assert ds.layout == "single-light folder"
    assert ds.modalities == ("rgb",)
    assert len(ds) == 200
    assert ds.class_counts() == {name: 40 for name in CLASSES}
    assert len(set(ds.cell_ids)) == 200
    img = ds.load(0)["rgb"]
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 300
    assert ds.fingerprint() == open_dataset(PBC).fingerprint()
    assert "200 cells" in ds.describe()


def test_single_light_folder_rejects_other_light_names(tmp_path):
    write_image(tmp_path / "neutrophil" / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert open_dataset(tmp_path, modalities=["rgb"]).modalities == ("rgb",)
    with pytest.raises(Exception, match="single-light folder"):
        open_dataset(tmp_path, modalities=["color1"])


def test_subset_and_counts(four_light):
    ds = open_dataset(four_light.root)
    sub = ds.subset([5, 0])
    assert len(sub) == 2
    assert sub.cells == [ds.cells[5], ds.cells[0]]
    assert sub.labels.tolist() == [ds.labels[5], ds.labels[0]]
    assert sub.classes == ds.classes and sub.modalities == ds.modalities
    assert sum(sub.class_counts().values()) == 2
    assert sub.fingerprint() != ds.fingerprint()


def test_fingerprint_tracks_content_not_listing_order(four_light, tmp_path):
    ds = open_dataset(four_light.root)
    first = ds.fingerprint()
    csv_path = write_manifest(four_light.root / "manifest.csv", list(reversed(ds.cells)), ds.modalities)
    assert read_manifest(csv_path).fingerprint() == first  # same cells listed in another order
    relabelled = [CellRecord(c.cell_id, "monocyte" if i == 0 else c.label, c.group, c.paths) for i, c in enumerate(ds.cells)]
    write_manifest(csv_path, relabelled, ds.modalities)
    assert read_manifest(csv_path).fingerprint() != first
    csv_path.unlink()
    # One pixel changes: a new instance sees it, the cached value of the old one stays.
    img = ds.load(2)["color1"]
    img[0, 0, 0] ^= 1
    write_image(ds.cells[2].paths["color1"], img)
    assert open_dataset(four_light.root).fingerprint() != first
    assert ds.fingerprint() == first


def test_fingerprint_is_independent_of_where_the_dataset_lives(four_light, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(four_light.root, copy)
    assert open_dataset(copy).fingerprint() == open_dataset(four_light.root).fingerprint()


def test_describe_names_counts_lights_and_skips(four_light):
    (four_light.root / "lymphocyte" / "cell002" / "color2.png").unlink()
    ds = open_dataset(four_light.root, on_error="skip")
    text = ds.describe()
    assert "5 cells" in text and "color3" in text and "lymphocyte 1" in text and "1 cell skipped" in text


def test_synthetic_cells_read_back_in_both_layouts(tmp_path):
    cells = pytest.importorskip("wbc_edge.synth.cells")
    manifest = cells.write_cells(tmp_path / "synth", n=8, seed=3, size=24)
    from_manifest = open_dataset(manifest.parent)
    assert from_manifest.layout == "manifest" and len(from_manifest) == 8
    assert from_manifest.modalities == MODALITIES and from_manifest.groups is not None
    manifest.unlink()
    from_folder = open_dataset(manifest.parent)
    assert from_folder.layout == "folder" and sorted(from_folder.cell_ids) == sorted(from_manifest.cell_ids)
    assert from_folder.validate(deep=True).load(0)["color2"].shape == (24, 24, 3)


def test_partly_grouped_manifest_warns_and_keeps_blank_groups(four_light, caplog):
    ds = open_dataset(four_light.root)
    records = [CellRecord(c.cell_id, c.label, "donor1" if i < 4 else None, c.paths) for i, c in enumerate(ds.cells)]
    write_manifest(four_light.root / "manifest.csv", records, ds.modalities)
    with caplog.at_level("WARNING", logger="wbc_edge.data"):
        grouped = open_dataset(four_light.root)
    assert grouped.groups == ["donor1"] * 4 + ["", ""]
    assert "2 of 6 cells have no group" in caplog.text
