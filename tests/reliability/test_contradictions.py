"""Two sources that describe the same thing are compared (issue 18, item 2): a frames folder's or
video's meta.json against the user's --order / light_order= and against the model's lights, the
simulated camera's lights= against the given order. A conflict is an error naming both, or where the
user's flag must win, a warning naming both; meta.json's camera order is otherwise the truth about
the frames, and the run assembles by it."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from wbc_edge.errors import DataError, SourceError
from wbc_edge.runtime.pipeline import Analyzer
from wbc_edge.runtime.sources import open_source, run_light_order
from wbc_edge.spec import MODALITIES

SWAPPED = ("fluorescent", "color2", "color1", "color3")  # a camera whose colour lights fire in another order


@pytest.fixture(scope="module")
def swapped_frames(tmp_path_factory) -> Path:
    """Three sets from the simulated camera cycling in SWAPPED order; meta.json says so."""
    from wbc_edge.synth import write_frames

    out = tmp_path_factory.mktemp("swapped")
    write_frames(out, sets=3, seed=4, light_order=SWAPPED, width=320, height=240, video=False)
    assert json.loads((out / "meta.json").read_text())["light_order"] == list(SWAPPED)
    return out


def _true_light(path: str) -> str:
    """The light that lit a frame of `swapped_frames` (no drops: frame k is light k mod 4 of the cycle)."""
    return SWAPPED[int(Path(path).stem) % len(SWAPPED)]


def _warnings(caplog, *needles: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and all(n in r.getMessage() for n in needles)]


def test_the_run_assembles_in_meta_json_order_not_the_models(swapped_frames, tiny_bundle, caplog):
    """Every light of every set is the frame that light lit: before, the model's order put color2's
    frames in color1's place without a word."""
    sets = []
    with caplog.at_level(logging.WARNING):
        with Analyzer(tiny_bundle, backend="onnxruntime", precision="fp32", intra_op_threads=1) as an:
            summary = an.analyze(str(swapped_frames), on_set=lambda s, _r: sets.append(s))
    assert summary.light_order == list(SWAPPED) and summary.sets == len(sets) == 3
    placed = [(light, info["path"]) for s in sets for light, info in s.source_info.items()]
    assert len(placed) == 12
    assert all(_true_light(path) == light for light, path in placed)
    assert not _warnings(caplog, "light order")  # nothing contradicts: meta.json alone says the order


def test_a_given_order_wins_over_meta_json_with_a_warning_naming_both(swapped_frames, caplog):
    with caplog.at_level(logging.WARNING):
        source = open_source(str(swapped_frames), light_order=MODALITIES)
    with source:
        assert source.light_order == MODALITIES
        assert run_light_order(source, MODALITIES, MODALITIES) == MODALITIES
    lines = _warnings(caplog, "contradicts", "--order")
    assert len(lines) == 1  # once, from the source; the run's own check does not repeat it
    assert ",".join(MODALITIES) in lines[0] and ",".join(SWAPPED) in lines[0] and "meta.json" in lines[0]


def test_a_given_order_the_source_was_not_opened_with_is_warned_once_by_the_run(swapped_frames, caplog):
    with open_source(str(swapped_frames)) as source, caplog.at_level(logging.WARNING):
        assert run_light_order(source, MODALITIES, MODALITIES) == MODALITIES
    assert len(_warnings(caplog, "contradicts", ",".join(SWAPPED))) == 1


def _meta_folder(tmp_path: Path, lights) -> Path:
    from wbc_edge.data.images import write_image

    (tmp_path / "frames").mkdir()
    write_image(tmp_path / "frames" / "000000.png", np.full((8, 8, 3), 90, np.uint8))
    (tmp_path / "meta.json").write_text(json.dumps({"light_order": list(lights)}))
    return tmp_path


def test_a_model_light_the_frames_never_have_is_an_error_naming_both(tmp_path):
    folder = _meta_folder(tmp_path, ("fluorescent", "color1", "color2", "uv"))
    with open_source(str(folder)) as source:
        with pytest.raises(DataError) as e:
            run_light_order(source, MODALITIES)
        message = str(e.value)
        assert "color3" in message and "meta.json" in message and "fluorescent,color1,color2,uv" in message
        assert "\n" not in message
        # --missing-light heads classifies without it: a warning, not an error
        assert run_light_order(source, MODALITIES, missing_ok=True) == ("fluorescent", "color1", "color2", "uv")


def test_a_light_the_model_does_not_know_is_a_warning_naming_both(tmp_path, caplog):
    folder = _meta_folder(tmp_path, MODALITIES + ("uv",))
    with open_source(str(folder)) as source, caplog.at_level(logging.WARNING):
        assert run_light_order(source, MODALITIES) == MODALITIES + ("uv",)
    (line,) = _warnings(caplog, "uv", "does not know")
    assert "meta.json" in line and ",".join(MODALITIES) in line
    # a known light a fewer-light model does not read is an ordinary four-light camera: no warning
    caplog.clear()
    with open_source(str(folder)) as source, caplog.at_level(logging.WARNING):
        run_light_order(source, ("fluorescent", "color2"), ("fluorescent", "color1", "color2", "color3"))
    assert not _warnings(caplog, "does not know")


def test_an_order_without_the_fluorescent_light_is_an_error(tmp_path):
    folder = _meta_folder(tmp_path, ("color1", "color2", "color3"))
    with open_source(str(folder)) as source, pytest.raises(DataError, match="no 'fluorescent' light"):
        run_light_order(source, ("color1", "color2", "color3"))


def test_the_analyzer_refuses_before_reading_a_frame(tmp_path, tiny_bundle):
    folder = _meta_folder(tmp_path, ("fluorescent", "color1", "color2", "uv"))
    with Analyzer(tiny_bundle, backend="onnxruntime", precision="fp32", intra_op_threads=1) as an:
        with pytest.raises(DataError, match="color3"):
            an.analyze(str(folder), sink=tmp_path / "r.jsonl")
    assert not (tmp_path / "r.jsonl").exists()  # refused before the results file was started


def test_a_video_reads_its_meta_json_too(tmp_path, caplog):
    clip = tmp_path / "video.avi"
    clip.write_bytes(b"not read: the capture is a stand-in")
    (tmp_path / "meta.json").write_text(json.dumps({"light_order": list(SWAPPED)}))

    class OpenCapture:
        def isOpened(self):
            return True

        def release(self):
            pass

    with open_source(str(clip), capture_factory=lambda *_: OpenCapture()) as source:
        assert source.light_order == SWAPPED and run_light_order(source, MODALITIES) == SWAPPED
    with caplog.at_level(logging.WARNING):
        with open_source(str(clip), light_order=MODALITIES, capture_factory=lambda *_: OpenCapture()) as source:
            assert source.light_order == MODALITIES
    assert len(_warnings(caplog, "contradicts", str(tmp_path / "meta.json"))) == 1


def test_synthetic_lights_contradicting_the_given_order_is_an_error():
    with pytest.raises(SourceError, match="lights=fluorescent,color2,color1,color3 contradicts"):
        open_source("synthetic://?sets=1&lights=fluorescent,color2,color1,color3", light_order=MODALITIES)
    with open_source("synthetic://?sets=1&lights=fluorescent,color2,color1,color3", light_order=SWAPPED) as source:
        assert source.light_order == SWAPPED


def test_calibration_capture_reads_meta_json_order(swapped_frames, tiny_spec):
    from wbc_edge.calibration.capture import capture_calibration_set

    calib = capture_calibration_set(str(swapped_frames), 2, tiny_spec, crop_px=20)
    assert calib.source["light_order"] == list(SWAPPED)


def test_meta_json_scale_is_the_frames_own_and_a_profile_contradicting_it_is_warned(tmp_path, tiny_bundle, caplog):
    from wbc_edge.synth import write_frames

    write_frames(tmp_path, sets=1, seed=2, width=320, height=240, video=False, scale=2.0)
    stated = json.loads((tmp_path / "meta.json").read_text())["um_per_px"]
    with Analyzer(tiny_bundle, backend="onnxruntime", precision="fp32", intra_op_threads=1, profile="auto") as an:
        summary = an.analyze(str(tmp_path))
    assert summary.scale.startswith(f"{stated:.4f} um/px") and "meta.json" in summary.scale
    profile = 2 * stated
    with caplog.at_level(logging.WARNING):
        with Analyzer(tiny_bundle, backend="onnxruntime", precision="fp32", intra_op_threads=1, profile=profile) as an:
            summary = an.analyze(str(tmp_path))
    assert summary.scale.startswith(f"{profile:.4f} um/px")  # the user's profile wins
    (line,) = _warnings(caplog, "device profile", "meta.json")
    assert f"{profile:.4f}" in line and f"{stated:.4f}" in line


def test_results_cells_of_a_class_the_header_does_not_list_are_warned_and_kept(tmp_path, caplog):
    from wbc_edge.runtime.results import summarize

    path = tmp_path / "r.jsonl"
    cell = {"record": "cell", "set_index": 0, "class": "blast", "probability": 0.9, "probs": {"blast": 0.9}}
    path.write_text(json.dumps({"record": "run", "classes": ["neutrophil", "lymphocyte"]}) + "\n" + json.dumps(cell) + "\n")
    with caplog.at_level(logging.WARNING):
        summary = summarize(path)
    assert summary.counts["blast"] == 1
    (line,) = _warnings(caplog, "blast", "neutrophil, lymphocyte")


def test_a_calibration_set_for_other_lights_is_refused_naming_both(tiny_spec):
    from wbc_edge.calibration.sets import CalibrationError, CalibrationSet

    inputs = np.zeros(tiny_spec.input_shape(2), np.uint8)
    ok = CalibrationSet(inputs, tiny_spec.input_name, ["a", "b"], [None, None], {"modalities": list(tiny_spec.modalities)})
    ok.check_spec(tiny_spec)
    other = CalibrationSet(inputs, tiny_spec.input_name, ["a", "b"], [None, None], {"modalities": list(SWAPPED)})
    with pytest.raises(CalibrationError, match="fluorescent,color2,color1,color3 but the model reads fluorescent,color1,color2,color3"):
        other.check_spec(tiny_spec)  # same shape, same input name: only the manifest tells
