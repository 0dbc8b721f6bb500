"""Training: Table 1 models, the MM-MIMO sampler, distillation, cross-validation and run directories.

Importing this package stays cheap (no torch); the names below load their module on first use:
`create_model`, `BACKBONES` (models), `TrainConfig` (config), `run_cv` (cv), `fit`, `evaluate` (engine),
`load_model` (checkpoint).
"""
from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wbc_edge.train' has no attribute '{name}'")
