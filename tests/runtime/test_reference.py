"""H/L flags and the review flag, by construction."""
import json

import pytest

from wbc_edge.errors import DataError
from wbc_edge.runtime.reference import ReferenceIntervals, assess, load_reference_intervals

REF = ReferenceIntervals({"neutrophil": (40.0, 80.0), "eosinophil": (1.0, 6.0)}, "test table")


def est(shares, low, high):
    return {"shares": shares, "low": low, "high": high}


def test_flags_follow_the_estimate_and_review_follows_the_interval():
    e = est({"neutrophil": 0.85, "eosinophil": 0.005}, {"neutrophil": 0.81, "eosinophil": 0.0}, {"neutrophil": 0.9, "eosinophil": 0.02})
    out = assess(e, [{"neutrophil": 0.9, "eosinophil": 0.1}] * 20, 0, REF)
    assert out["flags"] == {"neutrophil": "H", "eosinophil": "L"}
    assert len(out["review"]) == 1 and "eosinophil interval 0.0-2.0%" in out["review"][0]  # crosses 1%
    inside = est({"neutrophil": 0.6, "eosinophil": 0.03}, {"neutrophil": 0.55, "eosinophil": 0.02}, {"neutrophil": 0.65, "eosinophil": 0.04})
    assert assess(inside, [{"neutrophil": 0.9}] * 20, 0, REF) == {**assess(inside, [], 0, REF)}
    assert assess(inside, [{"neutrophil": 0.9}] * 20, 0, REF)["review"] == []


def test_low_confidence_or_disagreeing_cells_ask_for_review():
    inside = est({"neutrophil": 0.6}, {"neutrophil": 0.55}, {"neutrophil": 0.65})
    probs = [{"neutrophil": 0.5, "eosinophil": 0.5}] * 3 + [{"neutrophil": 0.95, "eosinophil": 0.05}] * 17
    assert "3 of 20 cells low confidence" in assess(inside, probs, 0, REF)["review"][0]
    assert assess(inside, probs[3:], 1, REF)["review"] == []  # 1 of 17 disagree: under 10 %
    assert "2 of 17 cells with disagreeing heads" in assess(inside, probs[3:], 2, REF)["review"][0]


def test_an_edited_table_loads_and_a_bad_one_is_a_one_line_error(tmp_path):
    good = tmp_path / "ref.json"
    good.write_text(json.dumps({"source": "our lab 2026", "intervals": {"neutrophil": [45, 75]}}))
    ref = load_reference_intervals(good)
    assert ref.intervals == {"neutrophil": (45.0, 75.0)} and ref.source == "our lab 2026"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"intervals": {"neutrophil": [75, 45]}}))
    with pytest.raises(DataError, match="interval for 'neutrophil' is"):
        load_reference_intervals(bad)
