"""Scoring a stream against the synthetic truth, on real runs of the packaged demo bundle."""
from __future__ import annotations

import json

import pytest

from wbc_edge.cli.run import default_model, main as run_main
from wbc_edge.cli.synth import main as synth_main
from wbc_edge.runtime.score import score_results

pytestmark = pytest.mark.skipif(default_model() is None, reason="no packaged demo bundle")


def _rewrite_cells(src, dst, change):
    lines = []
    for line in src.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("record") == "cell":
            change(rec)
        lines.append(json.dumps(rec))
    dst.write_text("\n".join(lines) + "\n")


def test_stream_is_matched_to_the_simulated_truth(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert run_main(["synthetic://?seed=3&sets=6", "--out", str(out), "--quiet"]) == 0
    score = score_results(out)
    assert score.sets == 6 and score.classified == sum(score.reported_counts.values())
    assert score.true_cells == sum(score.true_counts.values()) > 10
    assert score.found <= score.true_cells and score.recall >= 0.9 and score.precision >= 0.9
    assert score.matched == sum(map(sum, score.confusion)) and score.correct <= score.matched
    assert score.accuracy > 0.7  # the demo model, far above the 0.2 of chance

    # the matching follows the boxes and the labels: relabel everything, then move everything away
    neutrophil = score.classes.index("neutrophil")
    relabelled = tmp_path / "all_neutrophil.jsonl"
    _rewrite_cells(out, relabelled, lambda rec: rec.update({"class": "neutrophil"}))
    again = score_results(relabelled)
    assert again.matched == score.matched
    assert again.correct == sum(score.confusion[neutrophil])  # right exactly on the true neutrophils
    moved = tmp_path / "moved.jsonl"
    _rewrite_cells(out, moved, lambda rec: rec.update({"box": [v + 5000 for v in rec["box"]]}))
    assert score_results(moved).matched == 0

    assert synth_main(["score", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"classified right: {score.correct} of {score.matched}" in printed and "basophil" in printed


def test_frames_folder_scores_like_the_camera_it_was_written_from(tmp_path):
    from wbc_edge.synth import write_frames

    write_frames(tmp_path / "capture", sets=3, seed=2, video=False)
    from_folder, from_camera = tmp_path / "folder.jsonl", tmp_path / "camera.jsonl"
    assert run_main([str(tmp_path / "capture" / "frames"), "--out", str(from_folder), "--quiet"]) == 0
    assert run_main(["synthetic://?seed=2&sets=3", "--out", str(from_camera), "--quiet"]) == 0
    folder, camera = score_results(from_folder).to_dict(), score_results(from_camera).to_dict()
    assert folder.pop("source") != camera.pop("source")
    assert folder == camera and folder["matched"] > 0


def test_source_without_truth_is_a_one_line_error(tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps({"record": "run", "classes": ["neutrophil"], "source": "/dev/video0"}) + "\n")
    assert synth_main(["score", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "/dev/video0" in err and "no ground truth" in err


def test_score_checks_the_estimate_against_the_truth_at_a_chosen_mix(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert run_main(["synthetic://?seed=4&sets=6&mix=lymphocytosis", "--out", str(out), "--quiet"]) == 0
    score = score_results(out)
    assert score.true_counts["lymphocyte"] > score.true_counts["neutrophil"]  # the camera drew the chosen mix
    check = score.estimate_check()
    assert set(check) == set(score.classes)
    for c, e in check.items():  # "inside" is exactly the truth against the printed interval
        assert e["inside"] == (e["low"] <= score.true_counts[c] / score.true_cells <= e["high"])
    # force a wrong estimate: its interval then misses the truth and the table says so
    assert score.estimate is not None
    score.estimate["low"]["lymphocyte"] = score.estimate["high"]["lymphocyte"] = 0.0
    assert score.estimate_check()["lymphocyte"]["inside"] is False and " NO" in score.table()
    assert synth_main(["score", str(out)]) == 0
    assert "truth inside the 95% interval for" in capsys.readouterr().out
