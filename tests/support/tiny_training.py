"""One tiny, fully seeded MM-MIMO training setup shared by a test and the subprocess it kills."""
from __future__ import annotations


def tiny_mimo_setup():
    """(arrays, config): 30 random 32 px cells, ShuffleNetV2 x0.5 MM-MIMO, 2 epochs, fold 0 of 3."""
    import numpy as np

    from wbc_edge.spec import CLASSES, MODALITIES
    from wbc_edge.train.config import TrainConfig
    from wbc_edge.train.engine import CellArrays

    rng = np.random.default_rng(0)
    n = 30
    arrays = CellArrays(x=rng.integers(0, 256, size=(n, 12, 32, 32), dtype=np.uint8), labels=np.arange(n) % len(CLASSES),
                        cell_ids=[f"c{i:03d}" for i in range(n)], classes=CLASSES, modalities=MODALITIES,
                        fingerprint="random-0", source="memory")
    cfg = TrainConfig(method="mimo", backbone="shufflenet_v2_x0_5", img_size=32, epochs=2, batch_size=4, folds=3,
                      fold_subset=[0], threads=1, eval_batch_size=64, rho=0.3, light_dropout=0.2)
    return arrays, cfg
