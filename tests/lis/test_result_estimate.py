"""The LIS reports the run's estimated differential (the sample's own mix), not the argmax count."""
from wbc_edge.lis.identity import SampleIdentity
from wbc_edge.lis.result import from_summary
from wbc_edge.runtime.reference import default_reference_intervals


def test_the_message_carries_the_estimate_and_the_runs_review_reasons():
    summary = {
        "sample": SampleIdentity("ACC-9").to_dict(), "total_cells": 200,
        "counts": {"neutrophil": 100, "lymphocyte": 60, "eosinophil": 30, "monocyte": 6, "basophil": 4},
        "rows": [{"label": c, "percent": p, "count": n, "ci_low": 0.0, "ci_high": 100.0}
                 for c, p, n in (("neutrophil", 50, 100), ("lymphocyte", 30, 60), ("eosinophil", 15, 30), ("monocyte", 3, 6), ("basophil", 2, 4))],
        "estimate": {"method": "em", "n_cells": 200,
                     "shares": {"neutrophil": 0.62, "lymphocyte": 0.30, "eosinophil": 0.04, "monocyte": 0.03, "basophil": 0.01},
                     "low": {"neutrophil": 0.55, "lymphocyte": 0.24, "eosinophil": 0.02, "monocyte": 0.01, "basophil": 0.0},
                     "high": {"neutrophil": 0.69, "lymphocyte": 0.36, "eosinophil": 0.07, "monocyte": 0.06, "basophil": 0.03}},
        "assessment": {"review": ["basophil interval 0.0-3.0% crosses a reference limit (0-2%)"]},
    }
    result = from_summary(summary)
    shares = {s.label: s for s in result.shares}
    assert result.estimate == "em"
    assert abs(shares["eosinophil"].percent - 4.0) < 1e-9 and shares["eosinophil"].count == 30  # estimate, raw count beside
    assert (round(shares["neutrophil"].ci_low, 9), round(shares["neutrophil"].ci_high, 9)) == (55.0, 69.0)
    # The run's crossing reasons are judged again against the table the message carries.
    assert result.review_reasons == ["eosinophil interval 2.0-7.0% crosses a reference limit (1-6%)",
                                     "monocyte interval 1.0-6.0% crosses a reference limit (2-10%)",
                                     "basophil interval 0.0-3.0% crosses a reference limit (0-2%)"]
    ref = default_reference_intervals()
    assert shares["monocyte"].reference.low == ref.intervals["monocyte"][0]  # one table for report and message


def test_a_laboratorys_own_table_decides_flags_and_crossings(tmp_path):
    import json

    lab = tmp_path / "lab.json"
    lab.write_text(json.dumps({"source": "LAB", "intervals": {"neutrophil": [50, 60], "lymphocyte": [20, 40],
                                                             "eosinophil": [0, 10], "monocyte": [0, 10], "basophil": [0, 5]}}))
    summary = {
        "sample": SampleIdentity("ACC-10").to_dict(), "total_cells": 200, "counts": {"neutrophil": 120, "lymphocyte": 80},
        "estimate": {"method": "em", "shares": {"neutrophil": 0.58, "lymphocyte": 0.42},
                     "low": {"neutrophil": 0.52, "lymphocyte": 0.35}, "high": {"neutrophil": 0.64, "lymphocyte": 0.49}},
        "assessment": {"review": ["neutrophil interval 52.0-64.0% crosses a reference limit (40-80%)", "3 of 200 cells low confidence"]},
    }
    result = from_summary(summary, reference_table=lab)
    assert result.reference_source == "LAB"
    assert result.review_reasons == ["3 of 200 cells low confidence",
                                     "neutrophil interval 52.0-64.0% crosses a reference limit (50-60%)",
                                     "lymphocyte 42.0 % outside 20-40 %"]


def test_the_library_path_carries_the_runs_start_time():
    """queue_summary(box, analyzer.analyze(...)) passes no header: the summary itself knows when the run started."""
    from wbc_edge.cli.run import default_model
    from wbc_edge.runtime import Analyzer

    with Analyzer(default_model(), backend="onnxruntime", precision="fp32") as analyzer:
        summary = analyzer.analyze("synthetic://?seed=2&sets=2", sample="ACC-11")
    assert summary.started.endswith("Z") and len(summary.started) == 20
    assert from_summary(summary).observed_at == summary.started
