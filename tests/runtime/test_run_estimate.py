"""The differential estimate in a run: calibrated per-cell probabilities, the same estimate live and
from `summarize`, and an older bundle without quantification.json still runs (argmax counts only)."""
import json

import numpy as np
import pytest

from wbc_edge.bundle import Bundle, rewrite_bundle
from wbc_edge.errors import SpecError
from wbc_edge.runtime import Analyzer
from wbc_edge.runtime.quantify import QUANT_MEMBER, QUANT_SCHEMA, apply_temperature, pool_heads
from wbc_edge.runtime.results import summarize

T = 2.5
HEAD_T = {"fluorescent": 0.5, "color1": 1.5, "color2": 2.0, "color3": 3.0}


def with_quantification(path, spec, pooling=None, head_t=None):
    k = spec.num_classes
    member = {"schema": QUANT_SCHEMA if pooling else 1, "classes": list(spec.classes), "heads": list(spec.heads), "train_prior": [0.2] * k,
              "temperature": {"combined": T, "heads": head_t or HEAD_T, "class_bias": [0.0, 0.1, -0.2, 0.3, -0.4]},
              "precisions": {"fp32": {"n_cells": 500, "confusion": (np.eye(k, dtype=int) * 80 + 5).tolist(),
                                      "mean_posteriors": ((np.eye(k) * 0.6 + 0.08)).tolist()}}}
    if pooling is not None:  # None: a schema-1 member, from before pooling was recorded (the heads' mean)
        member["pooling"] = pooling
    rewrite_bundle(Bundle.open(path), {QUANT_MEMBER: json.dumps(member).encode()})
    return path


@pytest.mark.parametrize("estimator,pooling", [("em", None), ("acc", None), ("em", "log-mean")])
def test_live_estimate_equals_summarize_and_probabilities_are_calibrated(tmp_path, rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw,
                                                                          estimator, pooling):
    # below the probability floor a head's temperature cannot be undone exactly from the line, and the
    # geometric mean reads those tails: the log-mean case keeps the heads at T = 1 (the mean cases check them)
    head_t = {h: 1.0 for h in HEAD_T} if pooling == "log-mean" else HEAD_T
    path = with_quantification(rt_bundle[0], rt_spec, pooling, head_t)
    frames = rt_fakes.make_fields(6, rt_spec, cells_per_field=3)
    with Analyzer(path, precision="fp32", batch_size=4, estimator=estimator, **rt_analyzer_kw) as an:
        live = an.analyze(rt_fakes.Source(frames), sink=tmp_path / "r.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert lines[0]["quantification"]["estimator"] == estimator and lines[0]["quantification"]["temperature"] == T
    rebuilt = summarize(tmp_path / "r.jsonl")
    assert live.estimate is not None and live.estimate == rebuilt.estimate
    assert live.estimate["method"] == estimator and live.estimate["n_cells"] == live.total_cells == 18
    assert sum(live.estimate["shares"].values()) == pytest.approx(1.0)
    assert rebuilt.counts == live.counts  # the argmax counts stay beside the estimate
    assert "estimate:" in live.format_table() and "argmax" in live.format_table()
    # each line's probabilities are the heads pooled (their mean, or their geometric mean) at temperature T:
    # undo the per-head temperatures, pool and compare
    for c in (x for x in lines if x["record"] == "cell"):
        p = np.array([c["probs"][k] for k in rt_spec.classes])
        heads = np.stack([apply_temperature(np.array(v), 1 / head_t[h]) for h, v in c["head_probs"].items()])
        pooled = pool_heads(heads[None], pooling or "mean")[0]
        np.testing.assert_allclose(p, apply_temperature(pooled, T), atol=1e-5)
        # the class is the model's own combined output (the heads' mean), whatever the pooling
        assert c["class"] == rt_spec.classes[int(np.argmax(heads.mean(axis=0)))]


def test_older_bundle_runs_with_argmax_counts_only_and_says_so(tmp_path, rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw):
    path = rt_bundle[0]
    assert not Bundle.open(path).has(QUANT_MEMBER)
    with Analyzer(path, precision="fp32", **rt_analyzer_kw) as an:
        live = an.analyze(rt_fakes.Source(rt_fakes.make_fields(2, rt_spec)), sink=tmp_path / "r.jsonl")
    assert live.estimate is None and "no quantification.json" in live.estimate_note
    assert summarize(tmp_path / "r.jsonl").estimate is None
    assert "argmax counts, not corrected" in live.format_table()


def test_unknown_estimator_is_refused(rt_bundle, rt_analyzer_kw):
    with pytest.raises(SpecError, match="estimator 'mode'"):
        Analyzer(rt_bundle[0], estimator="mode", **rt_analyzer_kw)


def test_a_run_that_finds_no_white_cell_says_so_in_one_line(tmp_path, rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw, caplog):
    caplog.set_level("WARNING")
    with Analyzer(rt_bundle[0], precision="fp32", **rt_analyzer_kw) as an:
        empty = an.analyze(rt_fakes.Source(rt_fakes.make_fields(6, rt_spec, cells_per_field=0)), sink=tmp_path / "e.jsonl")
    warned = [r.getMessage() for r in caplog.records if "no white cell found" in r.getMessage()]
    assert empty.total_cells == 0 and len(warned) == 1 and "\n" not in warned[0] and "in 6 analysed sets" in warned[0]
    caplog.clear()
    with Analyzer(rt_bundle[0], precision="fp32", **rt_analyzer_kw) as an:
        an.analyze(rt_fakes.Source(rt_fakes.make_fields(6, rt_spec, cells_per_field=2)))
    assert not any("no white cell found" in r.getMessage() for r in caplog.records)


def test_the_export_report_reads_a_minimal_quantification_member(tmp_path, rt_bundle, rt_spec):
    """A member the runtime accepts (no fit, no ECE) still makes a report: 'not recorded', no traceback."""
    from wbc_edge.export.report import write_export_report
    from wbc_edge.outputs import REPORT_MARKER

    path = with_quantification(rt_bundle[0], rt_spec, "log-mean")
    page = write_export_report(path, tmp_path / "r.html").read_text()
    assert REPORT_MARKER in page and "not recorded" in page and "the heads&#x27; geometric mean" in page
    assert page.count("<svg ") == 2  # both diagrams drawn, empty


def test_with_a_light_missing_the_row_pools_the_present_heads_only(tmp_path, rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw):
    path = with_quantification(rt_bundle[0], rt_spec, "log-mean", {h: 1.0 for h in HEAD_T})
    frames = rt_fakes.make_fields(4, rt_spec, cells_per_field=2, drop=[(1, "color2"), (2, "color2")])
    with Analyzer(path, precision="fp32", missing_light="heads", **rt_analyzer_kw) as an:
        an.analyze(rt_fakes.Source(frames), sink=tmp_path / "r.jsonl")
    cells = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()][1:]
    cells = [c for c in cells if c.get("record") == "cell"]
    short = [c for c in cells if "color2" not in c["head_probs"]]
    assert short and len(short) < len(cells)
    for c in cells:
        heads = np.array(list(c["head_probs"].values()))  # the present heads only
        np.testing.assert_allclose([c["probs"][k] for k in rt_spec.classes],
                                   apply_temperature(pool_heads(heads[None], "log-mean")[0], T), atol=1e-5)
        assert c["class"] == rt_spec.classes[int(np.argmax(heads.mean(axis=0)))]
