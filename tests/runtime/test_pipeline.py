"""The analyzer: per-cell results equal offline inference, missing-light policies, drop policy, stops."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from wbc_edge.bundle import Bundle
from wbc_edge.runtime.backends.onnxruntime import OnnxRuntimeRunner
from wbc_edge.runtime.pipeline import Analyzer
from wbc_edge.runtime.results import FLAG_HEADS_DISAGREE, summarize


def offline(bundle_path, fakes, frames, spec):
    """Assemble, locate and crop every set directly, then run the runner on each set's crops at once."""
    asm = fakes.Assembler(spec.modalities)
    sets = [s for f in frames for s in asm.push(f)] + asm.flush()
    out = {}
    with OnnxRuntimeRunner.from_bundle(Bundle.open(bundle_path), "fp32", intra_op_threads=1) as runner:
        for s in sets:
            batch, boxes = fakes.crop(s, fakes.locate(s.images["fluorescent"]), fakes.CROP_PX, spec)
            if len(batch):
                res = runner.infer({spec.input_name: batch})
                out[s.index] = (batch, boxes, res[spec.probs_name], res[spec.head_probs_name])
    return out


def test_pipeline_results_equal_offline_inference_and_numpy(tmp_path, rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw):
    path, weights = rt_bundle
    frames = rt_fakes.make_fields(6, rt_spec, cells_per_field=3)
    expected = offline(path, rt_fakes, frames, rt_spec)
    with Analyzer(path, precision="fp32", batch_size=4, max_wait_ms=5, **rt_analyzer_kw) as an:
        summary = an.analyze(rt_fakes.Source(frames), sink=tmp_path / "r.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert lines[0]["record"] == "run" and lines[0]["classes"] == list(rt_spec.classes)
    cells = [x for x in lines if x["record"] == "cell"]
    assert len(cells) == sum(len(v[1]) for v in expected.values()) == 18 == summary.total_cells
    for c in cells:
        batch, boxes, probs, head = expected[c["set_index"]]
        i = c["cell_index"]
        assert tuple(c["box"]) == tuple(boxes[i])
        assert c["class"] == rt_spec.classes[int(np.argmax(probs[i]))]
        np.testing.assert_allclose([c["probs"][k] for k in rt_spec.classes], probs[i], rtol=1e-5, atol=1e-6)
        ref_probs, ref_head = rt_fakes.reference(batch[i : i + 1], rt_spec, weights)
        np.testing.assert_allclose(c["head_probs"]["color2"], ref_head[0, 2], rtol=1e-4, atol=1e-5)
        disagree = len({int(np.argmax(h)) for h in head[i]}) > 1
        assert (FLAG_HEADS_DISAGREE in c["flags"]) == disagree
    # the summary rebuilt from the file equals the live one
    rebuilt = summarize(tmp_path / "r.jsonl")
    assert rebuilt.counts == summary.counts and rebuilt.sets == summary.sets == 6
    assert summary.stats["stages"]["infer"]["n"] >= 5  # 18 cells in batches of at most 4


def test_classify_set_matches_threaded_run(rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw):
    path, _ = rt_bundle
    frames = rt_fakes.make_fields(2, rt_spec)
    seen = []
    with Analyzer(path, precision="fp32", batch_size=2, **rt_analyzer_kw) as an:
        an.analyze(rt_fakes.Source(frames), on_result=seen.append)
        asm = rt_fakes.Assembler(rt_spec.modalities)
        sets = [s for f in frames for s in asm.push(f)] + asm.flush()
        direct = [r for s in sets for r in an.classify_set(s)]
    assert [(r.set_index, r.label, r.box) for r in direct] == [(r.set_index, r.label, r.box) for r in seen]


def test_missing_light_skip_vs_heads(tmp_path, rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw):
    path, weights = rt_bundle
    frames = rt_fakes.make_fields(3, rt_spec, cells_per_field=2, drop={(1, "color2")})
    with Analyzer(path, precision="fp32", missing_light="skip", **rt_analyzer_kw) as an:
        skip = an.analyze(rt_fakes.Source(frames))
    assert skip.total_cells == 4 and skip.sets_skipped == 1
    with Analyzer(path, precision="fp32", missing_light="heads", **rt_analyzer_kw) as an:
        got = []
        heads = an.analyze(rt_fakes.Source(frames), on_result=got.append)
    assert heads.total_cells == 6 and heads.sets_skipped == 0
    assert heads.flag_counts["missing:color2"] == 2
    flagged = [r for r in got if r.set_index == 1]
    assert all("missing:color2" in r.flags for r in flagged)
    assert all("missing:color2" not in r.flags for r in got if r.set_index != 1)
    for r in flagged:
        assert sorted(r.head_probs) == sorted(m for m in rt_spec.modalities if m != "color2")
        combined = np.mean([r.head_probs[h] for h in r.head_probs], axis=0)
        np.testing.assert_allclose([r.probs[c] for c in rt_spec.classes], combined, rtol=1e-6)
        # the missing light's slot held the normalisation mean: check against NumPy on that input
        asm = rt_fakes.Assembler(rt_spec.modalities)
        s = [s for f in frames for s in asm.push(f) + []][1]
        batch, _ = rt_fakes.crop(s, rt_fakes.locate(s.images["fluorescent"]), rt_fakes.CROP_PX, rt_spec)
        _, ref_head = rt_fakes.reference(batch[r.cell_index : r.cell_index + 1], rt_spec, weights)
        np.testing.assert_allclose(r.head_probs["color1"], ref_head[0, 1], rtol=1e-4, atol=1e-5)


def test_max_cells_stops_and_counts_exactly(tmp_path, rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw):
    path, _ = rt_bundle
    frames = rt_fakes.make_fields(20, rt_spec, cells_per_field=3)
    with Analyzer(path, precision="fp32", **rt_analyzer_kw) as an:
        summary = an.analyze(rt_fakes.Source(frames), sink=tmp_path / "r.jsonl", max_cells=10)
    assert summary.total_cells == 10 and summary.stop_reason == "max_cells"
    assert sum(summary.counts.values()) == 10
    # cells classified in flight after the limit are on disk, flagged, and not counted by summarize
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()[1:]]
    beyond = [x for x in lines if "beyond_max_cells" in x["flags"]]
    assert len(lines) - len(beyond) == 10 and len(beyond) == summary.cells_discarded
    rebuilt = summarize(tmp_path / "r.jsonl")
    assert rebuilt.counts == summary.counts and rebuilt.cells_discarded == summary.cells_discarded


class SlowRunner(OnnxRuntimeRunner):
    def _infer_impl(self, feed):
        time.sleep(0.03)
        return super()._infer_impl(feed)


@pytest.mark.parametrize("live", [True, False])
def test_live_source_drops_file_source_loses_nothing(rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw, live):
    path, _ = rt_bundle
    frames = rt_fakes.make_fields(12, rt_spec, cells_per_field=3)
    runner = SlowRunner.from_bundle(Bundle.open(path), "fp32", intra_op_threads=1)
    with Analyzer(path, runner=runner, batch_size=1, **rt_analyzer_kw) as an:
        summary = an.analyze(rt_fakes.Source(frames, live=live, period_s=0.001))
    assert summary.frames == len(frames)
    if live:
        assert summary.frames_dropped > 0
        assert summary.total_cells < 36
    else:
        assert summary.frames_dropped == 0
        assert summary.total_cells == 36 and summary.sets == 12


def test_stop_drains_what_was_read(tmp_path, rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw):
    path, _ = rt_bundle
    frames = rt_fakes.make_fields(200, rt_spec, cells_per_field=1)
    with Analyzer(path, precision="fp32", **rt_analyzer_kw) as an:
        def stop_after_some(res):
            if an.differential.total == 5:
                an.stop("signal")
        summary = an.analyze(rt_fakes.Source(frames, period_s=0.001), sink=tmp_path / "r.jsonl", on_result=stop_after_some)
    assert summary.stop_reason == "signal"
    assert 5 <= summary.total_cells < 200
    assert summarize(tmp_path / "r.jsonl").total_cells == summary.total_cells  # every counted cell is on disk


def test_corrupt_frame_is_rejected_and_run_continues(rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw):
    path, _ = rt_bundle
    frames = rt_fakes.make_fields(3, rt_spec, cells_per_field=2)
    frames.insert(4, rt_fakes.Frame(999, 0.0, np.zeros((4, 4), np.uint8), "color1", field_id=0))
    with Analyzer(path, precision="fp32", **rt_analyzer_kw) as an:
        summary = an.analyze(rt_fakes.Source(frames))
    assert summary.frames_rejected >= 1
    assert summary.total_cells >= 4


def test_real_locator_and_cropper_results_equal_offline(rt_bundle, rt_spec, rt_fakes):
    """With the runtime's own locate_cells/crop_cells: per-cell classes equal running them directly."""
    locator = pytest.importorskip("wbc_edge.runtime.locator")
    path, _ = rt_bundle
    frames = rt_fakes.make_fields(4, rt_spec, cells_per_field=3)
    with Analyzer(path, precision="fp32", batch_size=5, assembler_factory=rt_fakes.Assembler, backend="onnxruntime",
                  intra_op_threads=1) as an:
        got = []
        an.analyze(rt_fakes.Source(frames), on_result=got.append)
    asm = rt_fakes.Assembler(rt_spec.modalities)
    sets = [s for f in frames for s in asm.push(f)] + asm.flush()
    expected = []
    with OnnxRuntimeRunner.from_bundle(Bundle.open(path), "fp32") as runner:
        for s in sets:
            boxes = locator.locate_cells(s.images["fluorescent"])
            batch, kept = locator.crop_cells(s, boxes, rt_fakes.CROP_PX, rt_spec)
            probs = runner.infer({rt_spec.input_name: batch})[rt_spec.probs_name]
            expected += [(s.index, b.box, rt_spec.classes[int(np.argmax(p))], float(p.max())) for b, p in zip(kept, probs)]
    assert len(expected) == 12
    assert [(r.set_index, r.box, r.label) for r in got] == [e[:3] for e in expected]
    np.testing.assert_allclose([r.probability for r in got], [e[3] for e in expected], rtol=1e-5)


def test_synthetic_camera_end_to_end_equals_offline(tmp_path, rt_spec, rt_fakes):
    """The real frontend (synthetic camera, light-cycle assembler, locator, cropper) through the Analyzer:
    every counted cell equals locate_cells + crop_cells + the runner run directly on the same set."""
    sources = pytest.importorskip("wbc_edge.runtime.sources")
    locator = pytest.importorskip("wbc_edge.runtime.locator")
    pytest.importorskip("wbc_edge.synth.frames")
    from wbc_edge.bundle import write_bundle
    from wbc_edge.spec import spec_for

    spec = spec_for("mimo", input_size=32)
    path = write_bundle(tmp_path / "m.wbc", spec, {"model.fp32.onnx": rt_fakes.tiny_onnx(spec, rt_fakes.tiny_weights(spec))})
    sets, got = {}, []
    with Analyzer(path, backend="onnxruntime", batch_size=4, intra_op_threads=1) as an:
        summary = an.analyze(sources.open_source("synthetic://?seed=5"), max_cells=12, on_result=got.append,
                             on_set=lambda s, results: sets.setdefault(s.index, s))
        crop_px = an.crop_px
    assert summary.total_cells == len(got) == 12 and summary.stop_reason == "max_cells"
    expected = {}
    with OnnxRuntimeRunner.from_bundle(Bundle.open(path), "fp32") as runner:
        for s in sets.values():
            batch, kept = locator.crop_cells(s, locator.locate_cells(s.images["fluorescent"]), crop_px, spec)
            if len(batch):
                probs = runner.infer({spec.input_name: batch})[spec.probs_name]
                for i, (b, p) in enumerate(zip(kept, probs)):
                    expected[(s.index, i)] = (b.box, spec.classes[int(np.argmax(p))], float(p.max()))
    for r in got:
        box, label, prob = expected[(r.set_index, r.cell_index)]
        assert (r.box, r.label) == (box, label)
        assert r.probability == pytest.approx(prob, rel=1e-5)


class FailingRunner(OnnxRuntimeRunner):
    """Fails on its third batch, as a GPU that falls off the bus would."""

    calls = 0

    def _infer_impl(self, feed):
        FailingRunner.calls += 1
        if FailingRunner.calls == 3:
            raise RuntimeError("device lost")
        return super()._infer_impl(feed)


def test_stage_failure_raises_and_keeps_what_was_classified(tmp_path, rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw):
    path, _ = rt_bundle
    runner = FailingRunner.from_bundle(Bundle.open(path), "fp32")
    with Analyzer(path, runner=runner, batch_size=3, max_wait_ms=1000, **rt_analyzer_kw) as an:
        with pytest.raises(RuntimeError, match="device lost"):
            an.analyze(rt_fakes.Source(rt_fakes.make_fields(10, rt_spec)), sink=tmp_path / "r.jsonl")
    assert summarize(tmp_path / "r.jsonl").total_cells == 6  # both good batches are on disk


@pytest.mark.parametrize("policy", ["skip", "heads"])
def test_synthetic_dropped_frames_follow_the_missing_light_policy(tmp_path, rt_fakes, policy):
    """The simulated camera drops every 7th frame: 'skip' drops those sets, 'heads' classifies them flagged."""
    sources = pytest.importorskip("wbc_edge.runtime.sources")
    pytest.importorskip("wbc_edge.runtime.locator")
    pytest.importorskip("wbc_edge.synth.frames")
    from wbc_edge.bundle import write_bundle
    from wbc_edge.spec import spec_for

    spec = spec_for("mimo", input_size=16)
    path = write_bundle(tmp_path / "m.wbc", spec, {"model.fp32.onnx": rt_fakes.tiny_onnx(spec, rt_fakes.tiny_weights(spec))})
    got = []
    with Analyzer(path, backend="onnxruntime", missing_light=policy, intra_op_threads=1) as an:
        summary = an.analyze(sources.open_source("synthetic://?seed=2&sets=7&drop_every=7"), on_result=got.append)
    flagged = [r for r in got if any(f.startswith("missing:") for f in r.flags)]
    # capture slots 7, 14, 21, 28 are dropped: color2 of set 1, color1 of set 3, the fluorescence frame
    # of set 5 (no cells can be found: skipped under either policy) and color3 of set 6
    if policy == "skip":
        assert summary.sets_skipped >= 3 and not flagged
    else:
        assert summary.sets_skipped <= 1 and len({r.set_index for r in flagged}) >= 2
        for r in flagged:
            missing = {f.split(":", 1)[1] for f in r.flags if f.startswith("missing:")}
            assert missing.isdisjoint(r.head_probs) and len(r.head_probs) == 4 - len(missing)
    assert summary.total_cells == len(got) > 0


def test_single_light_model_reads_its_light_from_the_four_light_cycle(tmp_path, rt_fakes, rt_analyzer_kw):
    from wbc_edge.bundle import write_bundle
    from wbc_edge.spec import spec_for

    spec = spec_for("single", modalities=("color2",), input_size=16)
    weights = rt_fakes.tiny_weights(spec)
    path = write_bundle(tmp_path / "c2.wbc", spec, {"model.fp32.onnx": rt_fakes.tiny_onnx(spec, weights)})
    four = spec_for("mimo", input_size=16)
    frames = rt_fakes.make_fields(2, four, cells_per_field=2)
    got = []
    with Analyzer(path, precision="fp32", crop_px=rt_fakes.CROP_PX, **rt_analyzer_kw) as an:
        assert an.light_order == ("fluorescent", "color1", "color2", "color3")
        an.analyze(rt_fakes.Source(frames), on_result=got.append)
    assert len(got) == 4 and all(list(r.head_probs) == ["color2"] for r in got)
    asm = rt_fakes.Assembler(four.modalities)
    s0 = (asm.push(frames[0]), [asm.push(f) for f in frames[1:4]], asm.flush())[2][0]
    batch, _ = rt_fakes.crop(s0, rt_fakes.locate(s0.images["fluorescent"]), rt_fakes.CROP_PX, spec)
    probs, _ = rt_fakes.reference(batch, spec, weights)
    np.testing.assert_allclose([r.probability for r in got if r.set_index == 0], probs.max(axis=1), rtol=1e-4)


def test_a_set_at_time_zero_keeps_its_time(tmp_path):
    """The first set of a file or the simulator starts at t = 0.0: not 'no time' (wall clock)."""
    from wbc_edge.cli.run import default_model
    from wbc_edge.runtime import Analyzer
    from wbc_edge.runtime.results import read_results

    out = tmp_path / "r.jsonl"
    with Analyzer(default_model(), backend="onnxruntime", precision="fp32") as analyzer:
        summary = analyzer.analyze("synthetic://?seed=3&sets=3", sink=out)
    _header, cells, _bad = read_results(out)
    assert cells and max(c.time for c in cells) < 60.0
    assert summary.duration_s < 60.0
