"""Per-stage percentiles and rates."""
from __future__ import annotations

import numpy as np
import pytest

from wbc_edge.runtime.stats import RunStats


def test_percentiles_rates_and_per_set_sums():
    st = RunStats()
    samples = np.linspace(0.001, 0.1, 100)
    for v in samples:
        st.record("infer", float(v))
    st.record("read", 0.5)
    st.count("sets", 4)
    st.count("cells", 10)
    st.stop()
    snap = st.snapshot()
    inf = snap["stages"]["infer"]
    assert inf["n"] == 100
    assert inf["p50_ms"] == pytest.approx(1000 * np.percentile(samples, 50))
    assert inf["p99_ms"] == pytest.approx(1000 * np.percentile(samples, 99))
    assert snap["rates"]["cells_per_s"] == pytest.approx(10 / snap["elapsed_s"])
    assert snap["per_set"]["stages_sum_ms"] == pytest.approx(1000 * (samples.sum() + 0.5) / 4)
    text = st.format()
    assert "infer" in text and "per set:" in text and "write" not in text  # unrecorded stages are left out
