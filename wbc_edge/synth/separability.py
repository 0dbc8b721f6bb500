"""How much class evidence each light carries: a cheap, rotation-invariant feature probe.

Used by the tests and by docs/synthetic-data.md. Features per light: per-channel ring means and ring
standard deviations around the crop centre (size, nucleus/cytoplasm/granule colour and texture) of
the RGB planes and of a Laplacian (edge/texture) plane. A shrinkage linear discriminant on one light
vs all lights concatenated shows whether each light is imperfect alone and whether fusing helps.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import cv2
import numpy as np

N_RINGS = 10


def light_features(image: np.ndarray, n_rings: int = N_RINGS) -> np.ndarray:
    """Rotation-invariant features of one light of one cell crop (RGB uint8 HxWx3)."""
    img = image.astype(np.float32) / 255.0
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    rmax = min(h, w) / 2
    ring = np.minimum((r / rmax * n_rings).astype(int), n_rings)
    feats = []
    gray = img.mean(axis=2)
    lap = np.abs(cv2.Laplacian(gray, cv2.CV_32F))
    planes = [img[..., c] for c in range(3)] + [lap]
    for plane in planes:
        sums = np.bincount(ring.ravel(), plane.ravel(), minlength=n_rings + 1)[:n_rings]
        sq = np.bincount(ring.ravel(), (plane * plane).ravel(), minlength=n_rings + 1)[:n_rings]
        cnt = np.bincount(ring.ravel(), minlength=n_rings + 1)[:n_rings]
        mean = sums / cnt
        feats.append(mean)
        feats.append(np.sqrt(np.maximum(sq / cnt - mean * mean, 0)))
    return np.concatenate(feats)


def feature_matrix(cells: Sequence[Mapping[str, np.ndarray]], lights: Sequence[str]) -> dict[str, np.ndarray]:
    """{light: [n_cells, n_features]} for the given cells."""
    return {light: np.stack([light_features(c[light]) for c in cells]) for light in lights}


def probe(features: Mapping[str, np.ndarray], labels: np.ndarray, folds: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    """Cross-validated accuracy, macro F1 and weighted F1 per light and for all lights fused."""
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    sets = dict(features)
    sets["fused"] = np.concatenate([features[k] for k in features], axis=1)
    labels = np.asarray(labels)
    n_splits = min(folds, int(np.bincount(np.unique(labels, return_inverse=True)[1]).min()))
    cv = StratifiedKFold(n_splits=max(n_splits, 2), shuffle=True, random_state=seed)
    # one BLAS thread: the matrices are small, and busy-waiting BLAS threads stall a loaded 2-core machine
    with threadpool_limits(1):
        return {name: _cross_validated_scores(x, labels, cv) for name, x in sets.items()}


def _cross_validated_scores(x: np.ndarray, labels: np.ndarray, cv) -> dict[str, float]:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from wbc_edge.metrics import label_metrics

    model = make_pipeline(StandardScaler(), LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"))
    pred = cross_val_predict(model, x, labels, cv=cv)
    classes, y_true = np.unique(labels, return_inverse=True)
    m = label_metrics(y_true, np.searchsorted(classes, pred), classes)
    return {k: m[k] for k in ("accuracy", "macro_f1", "weighted_f1")}
