"""Training: Table 1 models, the MM-MIMO sampler, distillation, cross-validation and run directories.

Importing this package stays cheap (no torch); the names below load their module on first use:
`create_model`, `BACKBONES` (models), `TrainConfig` (config), `run_cv` (cv), `fit`, `evaluate` (engine),
`load_model` (checkpoint).
"""
from __future__ import annotations

from wbc_edge._lazy import lazy_exports

_LAZY = {
    "create_model": "wbc_edge.train.models",
    "BACKBONES": "wbc_edge.train.models",
    "TrainConfig": "wbc_edge.train.config",
    "run_cv": "wbc_edge.train.cv",
    "fit": "wbc_edge.train.engine",
    "evaluate": "wbc_edge.train.engine",
    "load_model": "wbc_edge.train.checkpoint",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports("wbc_edge.train", _LAZY, globals())
