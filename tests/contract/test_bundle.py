import zipfile

import numpy as np
import pytest

from wbc_edge.bundle import Bundle, atomic_write_bytes, write_bundle
from wbc_edge.data.images import read_image, write_image
from wbc_edge.errors import BundleError, DataError
from wbc_edge.spec import spec_for


@pytest.fixture
def bundle_path(tmp_path):
    spec = spec_for("mimo", input_size=32)
    return write_bundle(tmp_path / "m.wbc", spec, {"model.fp32.onnx": b"fake-onnx-bytes" * 100, "accuracy.json": b"{}"})


def test_bundle_round_trip(bundle_path):
    b = Bundle.open(bundle_path)
    assert b.spec.input_size == 32
    assert b.model_bytes("fp32") == b"fake-onnx-bytes" * 100
    assert b.precisions == ["fp32"]
    with pytest.raises(BundleError, match="no member"):
        b.model_bytes("int8-cpu")


def test_tampered_member_is_rejected(tmp_path, bundle_path):
    with zipfile.ZipFile(bundle_path) as zf:
        items = {n: zf.read(n) for n in zf.namelist()}
    items["model.fp32.onnx"] = b"evil" + items["model.fp32.onnx"][4:]
    bad = tmp_path / "bad.wbc"
    with zipfile.ZipFile(bad, "w") as zf:
        for n, d in items.items():
            zf.writestr(n, d)
    with pytest.raises(BundleError, match="SHA-256"):
        Bundle.open(bad)


def test_truncated_bundle_is_rejected(tmp_path, bundle_path):
    data = bundle_path.read_bytes()
    cut = tmp_path / "cut.wbc"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError) as e:
        Bundle.open(cut)
    assert str(cut) in str(e.value) and "\n" not in str(e.value)


def test_member_names_cannot_escape(tmp_path):
    with pytest.raises(BundleError, match="unsafe"):
        write_bundle(tmp_path / "x.wbc", spec_for("mimo"), {"../evil.txt": b"x"})


def test_unpack_stays_inside(tmp_path, bundle_path):
    out = Bundle.open(bundle_path).unpack(tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.json", "manifest.json", "model.fp32.onnx", "spec.json"]


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"good")

    class Boom(bytes):
        pass

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # fails mid-write
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_image_io_round_trip_and_errors(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    write_image(tmp_path / "x.png", img)
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), img)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty.png: empty file"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "trunc.png").write_bytes((tmp_path / "x.png").read_bytes()[:20])
    with pytest.raises(DataError, match="trunc.png"):
        read_image(tmp_path / "trunc.png")


def test_atomic_write_gives_usual_permissions(tmp_path):
    import os

    target = tmp_path / "perm.bin"
    atomic_write_bytes(target, b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
