"""Each light carries some but not all of the class evidence; fusing the lights helps."""
from __future__ import annotations

import numpy as np

from wbc_edge.spec import MODALITIES
from wbc_edge.synth.cells import cell_rng, donor_stain, plan_cells, render_cell
from wbc_edge.synth.separability import feature_matrix, light_features, probe


def test_single_lights_are_imperfect_and_fusion_is_clearly_better():
    plan = plan_cells(200, seed=1, class_mix="balanced")
    stains = {g: donor_stain(1, g) for g in range(8)}
    cells = [render_cell(label, cell_rng(1, i), stain=stains[g]) for i, (_, label, g) in enumerate(plan)]
    labels = np.array([label for _, label, _ in plan])
    scores = probe(feature_matrix(cells, MODALITIES), labels, folds=4)
    singles = {light: scores[light]["accuracy"] for light in MODALITIES}
    # every light is informative (chance is 0.2) but none is enough on its own
    assert all(0.45 < acc < 0.9 for acc in singles.values()), singles
    assert scores["fused"]["accuracy"] >= max(singles.values()) + 0.04, (scores["fused"], singles)


def test_light_features_are_rotation_invariant():
    img = render_cell("neutrophil", np.random.default_rng(0))["color2"]
    rotated = np.ascontiguousarray(np.rot90(img))
    assert np.allclose(light_features(img), light_features(rotated), atol=1e-5)
    other = render_cell("lymphocyte", np.random.default_rng(0))["color2"]
    assert not np.allclose(light_features(img), light_features(other), atol=1e-2)
