"""The summary's counters are the events its warnings name (issue 18, item 6): a frame warned as
rejected is counted rejected, a skipped set is counted as a skipped set (never as a rejected frame),
each with its reason. Checked by construction: the simulated camera's faults and a frames folder with
a corrupt file, the log lines counted and compared with the summary exactly."""
from __future__ import annotations

import logging
import re

import pytest

from wbc_edge.errors import DataError
from wbc_edge.runtime.assembler import REJECT_FRAME_FLAGS
from wbc_edge.runtime.pipeline import Analyzer
from wbc_edge.runtime.sources import open_source

FAULTS = "synthetic://?seed=3&sets=8&width=320&height=240&corrupt_every=5&duplicate_every=7&drop_every=11"


def _lines(caplog, pattern: str, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level and re.match(pattern, r.getMessage())]


def _run(bundle, source, **kw):
    sets = []
    with Analyzer(bundle, backend="onnxruntime", precision="fp32", intra_op_threads=1, **kw) as an:
        summary = an.analyze(source, on_set=lambda s, _r: sets.append(s))
    return summary, sets


def test_simulated_camera_faults_are_counted_as_warned(tiny_bundle, caplog):
    with open_source(FAULTS) as source:
        delivered = list(source)
    bad = {f.index for f in delivered if REJECT_FRAME_FLAGS & f.flags}
    duplicates = {f.index for f in delivered if f.source_info["kind"] == "duplicate" and f.index not in bad}
    assert len(bad) >= 5 and len(duplicates) >= 2  # the faults happened: the counts below mean something
    caplog.clear()
    with caplog.at_level(logging.INFO):
        summary, sets = _run(tiny_bundle, FAULTS)

    rejected = _lines(caplog, r"frame \d+ rejected", logging.WARNING)
    assert {int(line.split()[1]) for line in rejected} == bad
    assert summary.frames_rejected == len(rejected) == sum(summary.frames_rejected_by.values())
    assert set(summary.frames_rejected_by) <= {",".join(sorted(REJECT_FRAME_FLAGS & f.flags)) for f in delivered if f.index in bad}
    assert summary.frames == len(delivered)
    assert summary.frames_duplicate == len(_lines(caplog, r"frame \d+ duplicates the previous frame")) == len(duplicates)
    skipped = _lines(caplog, r"set \d+ skipped")
    assert summary.sets_skipped == len(skipped) == sum(summary.sets_skipped_by.values()) > 0
    assert summary.sets == len(sets)
    assert all(s.missing for s in sets if any(f"set {s.index} skipped" in line for line in skipped))
    # every frame read is in a set or in exactly one counter
    placed = sum(len(s.frame_indices) for s in sets)
    assert placed + summary.frames_rejected + summary.frames_duplicate + summary.frames_unassembled == summary.frames
    line = summary.counts_line()
    assert f"{summary.sets} sets ({summary.sets_skipped} skipped: " in line
    assert f"{summary.frames} frames (0 dropped, {summary.frames_rejected} rejected: " in line


def test_a_corrupt_file_in_a_frames_folder_is_one_rejected_frame(tmp_path, tiny_bundle, caplog):
    from wbc_edge.synth import write_frames

    write_frames(tmp_path, sets=3, seed=6, width=320, height=240, video=False)
    (tmp_path / "frames" / "000005.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # set 1's color1
    with caplog.at_level(logging.INFO):
        summary, sets = _run(tiny_bundle, str(tmp_path))
    rejected = _lines(caplog, r"frame \d+ rejected", logging.WARNING)
    assert len(rejected) == 1 and "000005.png" in rejected[0]
    assert summary.frames == 12 and summary.frames_rejected == 1 and summary.frames_rejected_by == {"undecodable": 1}
    assert _lines(caplog, r"set \d+ skipped") == ["set 1 skipped: light missing: color1"]
    assert summary.sets == 3 and summary.sets_skipped == 1
    assert summary.sets_skipped_by == {"light missing: color1": 1}
    assert "1 rejected: undecodable 1" in summary.counts_line()


def test_a_set_that_cannot_be_prepared_is_a_skipped_set_not_a_rejected_frame(tiny_bundle, tiny_spec, fakes, caplog):
    def crop_failing_on_set_1(light_set, boxes, crop_px, spec):
        if light_set.index == 1:
            raise DataError("set 1: crop window outside the frame")
        return fakes.fake_crop(light_set, boxes, crop_px, spec)

    frames = fakes.make_fields(3, tiny_spec, cells_per_field=2)
    with caplog.at_level(logging.INFO):
        summary, sets = _run(tiny_bundle, fakes.FakeSource(frames), locator=fakes.fake_locate,
                             cropper=crop_failing_on_set_1, assembler_factory=fakes.FakeAssembler,
                             crop_px=fakes.CROP_PX)
    assert _lines(caplog, r"set \d+ skipped", logging.WARNING) == ["set 1 skipped: set 1: crop window outside the frame"]
    assert summary.frames_rejected == 0 and summary.frames_rejected_by == {}
    assert summary.sets_skipped == 1 and summary.sets_skipped_by == {"could not be prepared": 1}
    assert summary.frames == len(frames) and summary.total_cells == 4


@pytest.mark.parametrize("field", ["frames_rejected_by", "sets_skipped_by", "light_order"])
def test_the_new_counters_survive_to_dict(field, tiny_bundle):
    summary, _ = _run(tiny_bundle, "synthetic://?seed=1&sets=1&width=320&height=240")
    assert field in summary.to_dict()


@pytest.mark.parametrize("seed", range(6))
def test_every_frame_pushed_is_in_a_set_or_in_exactly_one_counter(seed, caplog):
    """Camera faults plus frames of no learnt colour (some back to back, which makes the assembler
    re-learn the cycle and judge the doubtful frames again): each frame given up is one warning and
    one count, none counted twice."""
    import dataclasses

    import numpy as np

    from wbc_edge.runtime.assembler import LightCycleAssembler

    rng = np.random.default_rng(seed)
    faults = "&".join(f"{k}={rng.integers(5, 12)}" for k in ("corrupt_every", "duplicate_every", "drop_every"))
    with open_source(f"synthetic://?seed={seed}&sets=8&width=320&height=240&{faults}") as source:
        frames = list(source)
    strange = set(rng.choice(len(frames) - 1, size=int(rng.integers(1, 6)), replace=False).tolist())
    if seed % 2:
        strange.add(min(strange) + 1)  # two in a row: the colours no longer fit, the cycle is re-learnt
    for k in strange:
        image = np.zeros_like(frames[k].image)
        image[..., 1] = 200
        image[..., 0] = rng.integers(80, 120, image.shape[:2])
        frames[k] = dataclasses.replace(frames[k], image=image, light_hint=None)
    assembler = LightCycleAssembler()
    with caplog.at_level(logging.WARNING):
        sets = [s for f in frames for s in assembler.push(f)] + assembler.flush()
    st = assembler.stats
    placed = sum(len(s.frame_indices) for s in sets)
    assert placed + st["rejected"] + st["duplicates"] + st["unlocked_dropped"] + st["unrecognised_skipped"] == len(frames)
    rejected = _lines(caplog, r"frame \d+ rejected", logging.WARNING)
    assert len(rejected) == st["rejected"] + st["unrecognised_skipped"] == sum(assembler.rejected_by.values()) + st["unrecognised_skipped"]
    assert len({line.split()[1] for line in rejected}) == len(rejected)  # no frame warned twice


def test_two_unrecognisable_frames_at_the_start_end_instead_of_relocking_forever():
    """Before, the assembler re-learnt the same colours from the same frames for ever (a hung run)."""
    import dataclasses
    import threading

    import numpy as np

    from wbc_edge.runtime.assembler import LightCycleAssembler

    with open_source("synthetic://?seed=1&sets=4&width=320&height=240") as source:
        frames = list(source)
    for k in (0, 1):
        image = np.zeros_like(frames[k].image)
        image[..., 1] = 200
        image[..., 0] = np.random.default_rng(k).integers(80, 120, image.shape[:2])
        frames[k] = dataclasses.replace(frames[k], image=image, light_hint=None)
    assembler, sets = LightCycleAssembler(), []
    worker = threading.Thread(target=lambda: sets.extend([s for f in frames for s in assembler.push(f)] + assembler.flush()),
                              daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the assembler did not finish"
    st = assembler.stats
    assert sum(len(s.frame_indices) for s in sets) + st["unrecognised_skipped"] + st["unlocked_dropped"] + st["rejected"] == len(frames)
    assert st["unrecognised_skipped"] >= 1 and len(sets) >= 3
