"""Bad input: one DataError line naming the file and the problem, or the cell skipped and reported."""
from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from wbc_edge.data import CellRecord, open_dataset, read_image, read_manifest, write_image, write_manifest
from wbc_edge.data.images import encode_image, to_rgb_uint8
from wbc_edge.errors import DataError


def raises_one_line(assert_one_line, match, fn, *args, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as err:
        fn(*args, **kwargs)
    return assert_one_line(err)


def rel(path, root) -> str:
    return path.relative_to(root).as_posix()


# ---- folder layout -------------------------------------------------------------------------------

def test_missing_light_raises_or_skips(four_light, assert_one_line):
    gone = four_light.root / "lymphocyte" / "cell003" / "color2.png"
    gone.unlink()
    message = raises_one_line(assert_one_line, "missing light 'color2'", open_dataset, four_light.root)
    assert str(gone.parent) in message
    ds = open_dataset(four_light.root, on_error="skip")
    assert len(ds) == 5 and "cell003" not in ds.cell_ids
    assert [item for item, _ in ds.skipped] == ["cell003"]
    assert len(ds.report_skipped()) == 1 and "missing light 'color2'" in ds.report_skipped()[0]


def test_one_stray_extra_light_does_not_change_the_lights(four_light):
    write_image(four_light.root / "basophil" / "cell005" / "stray.png", np.zeros((6, 5, 3), np.uint8))
    ds = open_dataset(four_light.root)
    assert len(ds) == 6 and "stray" not in ds.modalities


def test_requested_light_absent_everywhere(four_light, assert_one_line):
    raises_one_line(assert_one_line, "missing light 'uv'", open_dataset, four_light.root, modalities=["uv"])


def test_zero_byte_image_is_caught_at_open(four_light, assert_one_line):
    empty = four_light.root / "eosinophil" / "cell004" / "color1.png"
    empty.write_bytes(b"")
    message = raises_one_line(assert_one_line, "empty file", open_dataset, four_light.root)
    assert str(empty) in message
    ds = open_dataset(four_light.root, on_error="skip")
    assert "cell004" not in ds.cell_ids and len(ds) == 5


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_truncated_image_fails_at_load_and_deep_validate(folder, assert_one_line, suffix):
    folder.cell("neutrophil", suffix=suffix, size=(32, 32))
    bad = folder.cell("monocyte", suffix=suffix, size=(32, 32))["color3"]
    data = encode_image(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8), suffix)
    bad.write_bytes(data[: len(data) // 2])
    ds = open_dataset(folder.root)  # open only stats files
    assert len(ds) == 2
    index = ds.cell_ids.index("cell001")
    message = raises_one_line(assert_one_line, "not a decodable image", ds.load, index)
    assert str(bad) in message
    raises_one_line(assert_one_line, "not a decodable image", ds.validate, deep=True)
    ds.load(1 - index)  # the good cell still loads
    skipping = open_dataset(folder.root, on_error="skip").validate(deep=True)
    assert skipping.cell_ids == ["cell000"] and skipping.skipped[0][0] == "cell001"
    assert open_dataset(folder.root).validate(deep=False) is not None  # shallow check does not decode


def test_not_an_image_at_all(folder, assert_one_line):
    path = folder.cell("neutrophil")["color1"]
    path.write_text("hello, I am text")
    raises_one_line(assert_one_line, "not a decodable image", open_dataset(folder.root).load, 0)


def test_wrong_bit_depth(folder, assert_one_line):
    path = folder.cell("neutrophil", suffix=".tiff")["color2"]
    assert cv2.imwrite(str(path), np.zeros((6, 5, 3), np.float32))
    message = raises_one_line(assert_one_line, "bit depth", open_dataset(folder.root).load, 0)
    assert str(path) in message


def test_sixteen_bit_images_are_scaled_to_eight(folder):
    path = folder.cell("neutrophil")["color2"]
    assert cv2.imwrite(str(path), np.full((6, 5, 3), 0xAB00 + 7, np.uint16))
    assert int(open_dataset(folder.root).load(0)["color2"].max()) == 0xAB


def _tiff_with_channels(path, height, width, channels) -> None:
    """A minimal uncompressed little-endian TIFF with `channels` 8-bit samples per pixel."""
    pixels = bytes(height * width * channels)
    bits_at = 8 + len(pixels)
    extra_at = bits_at + 2 * channels
    ifd_at = extra_at + 2 * (channels - 1)
    tail = struct.pack(f"<{channels}H", *([8] * channels)) + struct.pack(f"<{channels - 1}H", *([0] * (channels - 1)))
    tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, channels, bits_at), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 1, 8), (277, 3, 1, channels), (278, 3, 1, height), (279, 4, 1, len(pixels)), (284, 3, 1, 1),
            (338, 3, channels - 1, extra_at)]
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        inline_short = kind == 3 and count == 1  # a single SHORT sits in the entry; longer values are offsets
        ifd += struct.pack("<HHIHH", tag, kind, count, value, 0) if inline_short else struct.pack("<HHII", tag, kind, count, value)
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_at) + pixels + tail + ifd + struct.pack("<I", 0))


def test_wrong_channel_count(folder, assert_one_line):
    path = folder.cell("neutrophil", suffix=".tiff")["color1"]
    _tiff_with_channels(path, 6, 5, 5)  # five samples per pixel: not an RGB image
    # OpenCV refuses more than four channels while decoding, so the error is the decoder's.
    message = raises_one_line(assert_one_line, "not a decodable image", open_dataset(folder.root).load, 0)
    assert str(path) in message
    # The decoder's own output with an unusable channel count gets the named error too.
    for shape in [(4, 4, 2), (4, 4, 5), (4, 4, 3, 1)]:
        raises_one_line(assert_one_line, "channel count", to_rgb_uint8, np.zeros(shape, np.uint8), "x.png")


def test_unknown_class_folder_lists_known_classes(four_light, assert_one_line):
    four_light.cell("platelet")
    message = raises_one_line(assert_one_line, "unknown class 'platelet'", open_dataset, four_light.root)
    assert "neutrophil, lymphocyte, eosinophil, monocyte, basophil" in message
    ds = open_dataset(four_light.root, on_error="skip")
    assert len(ds) == 6 and ds.skipped[0][0] == "platelet"


def test_duplicate_cell_id_across_classes(four_light, assert_one_line):
    four_light.cell("monocyte", cell_id="cell000")
    message = raises_one_line(assert_one_line, "duplicate cell id 'cell000'", open_dataset, four_light.root)
    assert "monocyte" in message or "neutrophil" in message
    ds = open_dataset(four_light.root, on_error="skip")
    assert ds.cell_ids.count("cell000") == 1 and len(ds.skipped) == 1


def test_two_files_for_one_light(folder, assert_one_line):
    paths = folder.cell("neutrophil")
    write_image(paths["color1"].with_suffix(".jpg"), np.zeros((6, 5, 3), np.uint8))
    folder.cell("lymphocyte")
    raises_one_line(assert_one_line, "second image for light 'color1'", open_dataset, folder.root)
    assert open_dataset(folder.root, on_error="skip").cell_ids == ["cell001"]


def test_size_mismatch_between_lights(folder, assert_one_line):
    paths = folder.cell("neutrophil")
    write_image(paths["color3"], np.zeros((7, 5, 3), np.uint8))
    ds = open_dataset(folder.root)
    message = raises_one_line(assert_one_line, "is 5x7 pixels but light 'fluorescent'", ds.load, 0)
    assert str(paths["color3"]) in message
    raises_one_line(assert_one_line, "5x7", ds.validate, deep=True)
    folder.cell("lymphocyte")
    ds = open_dataset(folder.root, on_error="skip").validate(deep=True)
    assert ds.cell_ids == ["cell001"] and "5x7" in ds.report_skipped()[0]


def test_empty_datasets(tmp_path, folder, assert_one_line):
    raises_one_line(assert_one_line, "empty dataset", open_dataset, tmp_path)
    (tmp_path / "neutrophil" / "c1").mkdir(parents=True)
    raises_one_line(assert_one_line, "empty dataset", open_dataset, tmp_path)
    folder.cell("unknown-thing")
    raises_one_line(assert_one_line, "empty dataset.*1 skipped", open_dataset, folder.root, on_error="skip")
    raises_one_line(assert_one_line, "no such file or folder", open_dataset, tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    raises_one_line(assert_one_line, "not a dataset", open_dataset, tmp_path / "notes.txt")


def test_mixed_layouts_are_refused(folder, assert_one_line):
    folder.cell("neutrophil")
    write_image(folder.root / "lymphocyte" / "loose.png", np.zeros((4, 4, 3), np.uint8))
    raises_one_line(assert_one_line, "use one layout", open_dataset, folder.root)


def test_bad_arguments(four_light, assert_one_line):
    raises_one_line(assert_one_line, "on_error", open_dataset, four_light.root, on_error="ignore")
    raises_one_line(assert_one_line, "name the same class", open_dataset, four_light.root, classes=["neutrophil", "NEU"])


# ---- manifest ----------------------------------------------------------------------------------

@pytest.fixture
def manifest(four_light):
    """The four-light cells written as manifest.csv; returns (csv_path, header, rows as lists)."""
    ds = open_dataset(four_light.root)
    csv_path = write_manifest(four_light.root / "manifest.csv", ds.cells, ds.modalities)
    lines = csv_path.read_text().splitlines()
    return csv_path, lines[0], [line.split(",") for line in lines[1:]]


def rewrite(csv_path, header, rows):
    csv_path.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n")
    return csv_path


def test_manifest_unknown_label(manifest, assert_one_line):
    csv_path, header, rows = manifest
    rows[2][1] = "Platelet"
    rewrite(csv_path, header, rows)
    message = raises_one_line(assert_one_line, "line 4.*unknown class 'Platelet' \\(known: neutrophil", read_manifest, csv_path)
    assert str(csv_path) in message
    ds = read_manifest(csv_path, on_error="skip")
    assert len(ds) == 5 and ds.skipped[0][0] == rows[2][0]


def test_manifest_missing_light_and_missing_file(manifest, assert_one_line):
    csv_path, header, rows = manifest
    rows[0][4] = ""
    rows[1][5] = "neutrophil/nowhere.png"
    rewrite(csv_path, header, rows)
    raises_one_line(assert_one_line, "line 2.*missing light 'color1'", read_manifest, csv_path)
    ds = read_manifest(csv_path, on_error="skip")
    assert len(ds) == 4
    lines = ds.report_skipped()
    assert "missing light 'color1'" in lines[0] and "'neutrophil/nowhere.png': file not found" in lines[1]


@pytest.mark.parametrize("escape", ["../outside.png", "/etc/passwd", "neutrophil/../../outside.png", "C:\\x.png", "..\\x.png"])
def test_manifest_path_outside_root(manifest, assert_one_line, escape):
    csv_path, header, rows = manifest
    (csv_path.parent.parent / "outside.png").write_bytes(csv_path.read_bytes())  # exists, but out of bounds
    rows[3][6] = escape
    rewrite(csv_path, header, rows)
    raises_one_line(assert_one_line, "leaves the manifest's folder", read_manifest, csv_path)
    ds = read_manifest(csv_path, on_error="skip")
    assert rows[3][0] not in ds.cell_ids and len(ds) == 5
    for cell in ds.cells:
        for path in cell.paths.values():
            assert csv_path.parent in path.parents


def test_write_manifest_refuses_paths_outside_its_folder(four_light, tmp_path, assert_one_line):
    ds = open_dataset(four_light.root)
    raises_one_line(assert_one_line, "outside the manifest's folder", write_manifest,
                    four_light.root / "neutrophil" / "manifest.csv", ds.cells, ds.modalities)
    raises_one_line(assert_one_line, "no path for light 'uv'", write_manifest, tmp_path / "m.csv", ds.cells, ["uv"])
    raises_one_line(assert_one_line, "duplicate cell_id", write_manifest, four_light.root / "m.csv", ds.cells + ds.cells[:1], ds.modalities)
    raises_one_line(assert_one_line, "reserved", write_manifest, four_light.root / "m.csv", ds.cells, ["label"])
    blank = CellRecord(" ", "neutrophil", None, ds.cells[0].paths)
    raises_one_line(assert_one_line, "cell_id must be", write_manifest, four_light.root / "m.csv", [blank], ds.modalities)


def test_manifest_duplicate_cell_id(manifest, assert_one_line):
    csv_path, header, rows = manifest
    rows[4][0] = rows[1][0]
    rewrite(csv_path, header, rows)
    raises_one_line(assert_one_line, "line 6.*duplicate cell_id \\(first on line 3\\)", read_manifest, csv_path)
    assert len(read_manifest(csv_path, on_error="skip")) == 5


@pytest.mark.parametrize("column", ["cell_id", "label"])
def test_manifest_missing_required_column(manifest, assert_one_line, column):
    csv_path, header, rows = manifest
    index = header.split(",").index(column)
    rewrite(csv_path, ",".join(c for i, c in enumerate(header.split(",")) if i != index),
            [[f for i, f in enumerate(r) if i != index] for r in rows])
    raises_one_line(assert_one_line, f"missing column '{column}'", read_manifest, csv_path)
    raises_one_line(assert_one_line, f"missing column '{column}'", read_manifest, csv_path, on_error="skip")


def test_manifest_missing_requested_light_column(manifest, assert_one_line):
    raises_one_line(assert_one_line, "missing column 'uv'", read_manifest, manifest[0], modalities=["color1", "uv"])


def test_manifest_structural_problems(manifest, write_csv, assert_one_line):
    csv_path, header, rows = manifest
    rewrite(csv_path, header, [rows[0], rows[1][:-1]])
    raises_one_line(assert_one_line, "line 3: 6 fields, the header has 7", read_manifest, csv_path)
    rewrite(csv_path, header, [])
    raises_one_line(assert_one_line, "no usable cells", read_manifest, csv_path)
    write_csv(csv_path, "")
    raises_one_line(assert_one_line, "empty manifest", read_manifest, csv_path)
    write_csv(csv_path, "cell_id,label,group\nx,NEU,\n")
    raises_one_line(assert_one_line, "no image path columns", read_manifest, csv_path)
    write_csv(csv_path, "cell_id,label,rgb,RGB,rgb\n")
    raises_one_line(assert_one_line, "duplicate column 'rgb'", read_manifest, csv_path)
    write_csv(csv_path, 'cell_id,label,rgb\nx,"NEU\n')
    raises_one_line(assert_one_line, "malformed CSV", read_manifest, csv_path)
    csv_path.write_bytes(b"cell_id,label,rgb\n\xff\xfe,NEU,a.png\n")
    raises_one_line(assert_one_line, "not UTF-8", read_manifest, csv_path)
    raises_one_line(assert_one_line, "manifest not found", read_manifest, csv_path.parent / "other.csv")


def test_manifest_zero_byte_and_truncated_images(manifest, assert_one_line):
    csv_path, header, rows = manifest
    (csv_path.parent / rows[0][3]).write_bytes(b"")
    raises_one_line(assert_one_line, "empty file", read_manifest, csv_path)
    path = csv_path.parent / rows[1][3]
    path.write_bytes(path.read_bytes()[:20])
    ds = read_manifest(csv_path, on_error="skip")
    assert len(ds) == 5
    raises_one_line(assert_one_line, "not a decodable image", ds.load, 0)


def test_read_image_errors_name_the_file(tmp_path, assert_one_line):
    raises_one_line(assert_one_line, "cannot read", read_image, tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    raises_one_line(assert_one_line, "empty.png: empty file", read_image, tmp_path / "empty.png")
