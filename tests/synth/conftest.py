"""Fixtures for the synthetic-data tests: small outputs written once per session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cells_dir(tmp_path_factory):
    """30 paper-mix cells (every class present by the per-class floor), seed 5."""
    from wbc_edge.synth import write_cells

    root = tmp_path_factory.mktemp("cells") / "a"
    write_cells(root, 30, seed=5, n_groups=3)
    return root


@pytest.fixture(scope="session")
def frames_dir(tmp_path_factory):
    """Three small four-light sets with video, seed 9."""
    from wbc_edge.synth import write_frames

    out = tmp_path_factory.mktemp("frames") / "a"
    write_frames(out, sets=3, seed=9, width=256, height=192)
    return out
