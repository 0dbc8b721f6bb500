"""Fixtures for the training tests: tiny synthetic four-light data and one torch thread."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core box run fastest (and steadiest) on one intra-op thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synth_cells(tmp_path_factory):
    """40 balanced synthetic four-light cells at 32 px in eight donor groups (folder + manifest)."""
    from wbc_edge.synth.cells import write_cells

    root = tmp_path_factory.mktemp("synth") / "cells"
    write_cells(root, 40, seed=3, size=32, class_mix="balanced")
    return root


@pytest.fixture
def random_arrays():
    """A CellArrays of random pixels: 30 cells, four lights, 32 px, balanced labels, no groups."""
    from wbc_edge.spec import CLASSES, MODALITIES
    from wbc_edge.train.engine import CellArrays

    rng = np.random.default_rng(0)
    n = 30
    x = rng.integers(0, 256, size=(n, 12, 32, 32), dtype=np.uint8)
    labels = np.arange(n) % len(CLASSES)
    return CellArrays(x=x, labels=labels, cell_ids=[f"c{i:03d}" for i in range(n)], classes=CLASSES,
                      modalities=MODALITIES, fingerprint="random-0", source="memory")
