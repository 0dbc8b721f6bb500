"""Bad input across the runtime and the bundle: frames a caller hands in through the embedding API
(NaN-carrying floats, black, saturated, wrong channel count, size, bit depth), bundles whose schema,
spec or member names are wrong. Each is refused or flagged with one line; the run goes on."""
from __future__ import annotations

import dataclasses
import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wbc_edge.bundle import BUNDLE_SCHEMA, MANIFEST, Bundle, sha256_bytes, write_bundle
from wbc_edge.errors import BundleError, DataError
from wbc_edge.runtime import Analyzer, open_source
from wbc_edge.runtime.pipeline import _checked_frame
from wbc_edge.runtime.results import summarize
from wbc_edge.runtime.sources import Frame, FrameValidator
from wbc_edge.spec import spec_for

CAMERA = "synthetic://?seed=3&sets=6&width=320&height=240"


class ListSource:
    """A caller's own source (not a FrameSource): frames go to the Analyzer exactly as given."""

    is_live = False

    def __init__(self, frames):
        self.frames, self.i = list(frames), 0

    @property
    def is_streaming(self):
        return self.i < len(self.frames)

    def read(self, timeout=0.1):
        if self.i >= len(self.frames):
            return None
        self.i += 1
        return self.frames[self.i - 1]

    def close(self):
        pass


def _raw(frame: Frame, image) -> Frame:
    return dataclasses.replace(frame, image=image, flags=frozenset())


def test_embedded_bad_frames_are_refused_one_by_one_and_the_run_goes_on(tmp_path, tiny_bundle, strict_json, caplog):
    frames = list(open_source(CAMERA))
    h, w = frames[0].image.shape[:2]
    nan_frame = frames[5].image.astype(np.float32) / 255.0
    nan_frame[10:30, 10:30] = np.nan
    bad = {
        4: np.full((h, w, 3), np.nan, np.float64),          # all NaN
        5: nan_frame,                                       # a NaN patch in an otherwise good float frame
        9: np.zeros((h, w, 5), np.uint8),                   # five channels
        13: np.zeros((h, w, 3), np.uint8),                  # all black
        17: np.full((h, w, 3), 255, np.uint8),              # saturated
        18: np.full((h // 2, w, 3), 90, np.uint8),          # another size
        21: np.zeros((h, w, 3), np.int32),                  # another bit depth, black
    }
    damaged = [_raw(f, bad[i]) if i in bad else f for i, f in enumerate(frames)]
    with Analyzer(tiny_bundle, backend="onnxruntime", precision="fp32", intra_op_threads=1) as an:
        clean = an.analyze(ListSource(frames), sink=tmp_path / "clean.jsonl")
        summary = an.analyze(ListSource(damaged), sink=tmp_path / "bad.jsonl")
    assert clean.total_cells > 0
    lines = (tmp_path / "bad.jsonl").read_text().splitlines()
    cells = [strict_json(x) for x in lines[1:]]  # no NaN ever reaches a probability
    assert summary.total_cells == len(cells) == summarize(tmp_path / "bad.jsonl").total_cells
    # every damaged frame, and no other, is named in one warning line: refused by the pipeline
    # (unusable) or rejected by the assembler (flagged black / saturated / non_finite)
    rejected = {r.getMessage().split(" rejected")[0] for r in caplog.records
                if r.levelname == "WARNING" and " rejected" in r.getMessage()}
    assert rejected == {f"frame {i}" for i in bad}
    # the summary counts the same events the warnings name (issue 18): refused outright (five channels,
    # another size) and rejected by the assembler's flags alike
    assert summary.frames_rejected == len(bad) == sum(summary.frames_rejected_by.values())
    assert summary.frames_rejected_by["unusable"] == 2
    # sets touched by a bad frame are skipped (missing light), never classified from garbage;
    # the sets the damage did not touch give the same cells as the clean run
    clean_cells = {(c["set_index"], c["cell_index"]): c for c in map(strict_json, (tmp_path / "clean.jsonl").read_text().splitlines()[1:])}
    for c in cells:
        assert all(np.isfinite(v) for v in c["probs"].values())
        twin = clean_cells.get((c["set_index"], c["cell_index"]))
        if twin is not None and twin["box"] == c["box"]:
            assert twin["class"] == c["class"]
    assert summary.sets_skipped >= 1 and summary.total_cells < clean.total_cells


frame_arrays = st.one_of(
    hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.int16, np.int64, np.float32, np.float64, np.bool_]),
               st.tuples(st.integers(1, 24), st.integers(1, 24), st.integers(1, 6)),
               elements=None),
    hnp.arrays(st.sampled_from([np.uint8, np.float32]), st.tuples(st.integers(1, 24), st.integers(1, 24))),
    hnp.arrays(np.uint8, st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3))),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame_arrays)
def test_any_array_becomes_rgb_uint8_or_one_line_data_error(image):
    frame = Frame(index=7, time=0.0, image=image)
    try:
        checked = _checked_frame(frame, FrameValidator())
    except DataError as e:
        assert "frame 7" in str(e) and "\n" not in str(e)
        return
    rgb = checked.image
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[:2] == image.shape[:2]
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        assert "non_finite" in checked.flags
    assert frame.image is image  # the caller's frame is not modified


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _manifest(members: dict[str, bytes], schema=BUNDLE_SCHEMA) -> bytes:
    return json.dumps({"bundle_schema": schema, "files": {n: {"sha256": sha256_bytes(d)} for n, d in members.items()}}).encode()


def test_bundle_of_another_schema_is_refused_naming_both(tmp_path, tiny_spec):
    members = {"spec.json": tiny_spec.to_json().encode()}
    path = tmp_path / "future.wbc"
    path.write_bytes(_zip({MANIFEST: _manifest(members, schema=BUNDLE_SCHEMA + 1), **members}))
    with pytest.raises(BundleError, match=f"schema {BUNDLE_SCHEMA + 1}.*reads {BUNDLE_SCHEMA}") as e:
        Bundle.open(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["../evil.onnx", "/etc/evil", "a/../../evil", "C:evil", "a\\..\\evil"])
def test_hand_made_bundle_with_escaping_member_is_refused_and_writes_nothing(tmp_path, tiny_spec, name):
    members = {"spec.json": tiny_spec.to_json().encode(), name: b"payload"}
    path = tmp_path / "x" / "evil.wbc"
    path.parent.mkdir()
    path.write_bytes(_zip({MANIFEST: _manifest(members), **members}))
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(BundleError, match="unsafe name"):
        Bundle.open(path).unpack(tmp_path / "x" / "out")
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_unpack_through_a_symlinked_folder_stays_inside(tmp_path, tiny_bundle):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "models").symlink_to(outside)  # a member path through it would land outside
    b = Bundle.open(tiny_bundle)
    b._members["models/x.onnx"] = b"x"  # as if the manifest listed it
    with pytest.raises(BundleError, match="outside"):
        b.unpack(dest)
    assert list(outside.iterdir()) == []


def test_spec_json_that_is_not_a_spec_is_one_line(tmp_path):
    members = {"spec.json": b'{"method": "mimo", "input_size": -3}'}
    path = tmp_path / "bad_spec.wbc"
    path.write_bytes(_zip({MANIFEST: _manifest(members), **members}))
    with pytest.raises(BundleError) as e:
        Bundle.open(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("change", [{"input_size": 24}, {"classes": ("neutrophil", "lymphocyte", "eosinophil", "monocyte")}])
def test_model_that_does_not_match_its_spec_is_refused_at_load(tmp_path, tiny_spec, fakes, change):
    """spec.json says one thing, the ONNX graph another: refused when the backend loads, not mid-run."""
    other = spec_for("mimo", **{"input_size": 16, **change})
    model = fakes.tiny_onnx(other, fakes.tiny_weights(other))
    path = write_bundle(tmp_path / "mismatch.wbc", tiny_spec, {"model.fp32.onnx": model})
    with pytest.raises(BundleError, match="spec.json") as e:
        Analyzer(path, backend="onnxruntime", precision="fp32").open()
    assert "\n" not in str(e.value)
