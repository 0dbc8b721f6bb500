"""The training run directory, in one place: where each fold, method, checkpoint and split lives.

    RUN/config.json
    RUN/folds/fold<k>/split.json                 {"dataset", "dataset_fingerprint", "train", "val"}
    RUN/folds/fold<k>/<method-dir>/model.pt      release checkpoint (weights_only loadable)
    RUN/folds/fold<k>/<method-dir>/last.pt       resume state
    RUN/folds/fold<k>/<method-dir>/metrics.json, history.csv, spec.json

A method is named the same everywhere users type it (`single:color1`, `mimo-kd`); its folder name
replaces ':' (not allowed in paths on every system) with '-'. Either spelling is accepted.
"""
from __future__ import annotations

import os
from pathlib import Path

CONFIG = "config.json"
SPLIT = "split.json"
CHECKPOINT = "model.pt"
RESUME_STATE = "last.pt"
METRICS = "metrics.json"
HISTORY = "history.csv"
SPEC = "spec.json"


def method_dirname(name: str) -> str:
    """Folder for a method's results ('single:color1' -> 'single-color1')."""
    return name.replace(":", "-")


class RunLayout:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    def fold_dir(self, fold: int) -> Path:
        return self.root / "folds" / f"fold{fold}"

    def split(self, fold: int) -> Path:
        return self.fold_dir(fold) / SPLIT

    def method_dir(self, fold: int, method: str) -> Path:
        return self.fold_dir(fold) / method_dirname(method)

    def checkpoint(self, fold: int, method: str) -> Path:
        return self.method_dir(fold, method) / CHECKPOINT

    def metrics(self, fold: int, method: str) -> Path:
        return self.method_dir(fold, method) / METRICS

    def history(self, fold: int, method: str) -> Path:
        return self.method_dir(fold, method) / HISTORY

    def spec(self, fold: int, method: str) -> Path:
        return self.method_dir(fold, method) / SPEC

    def is_done(self, fold: int, method: str) -> bool:
        return method_is_done(self.method_dir(fold, method))


def method_is_done(method_dir: Path) -> bool:
    """A method's training finished: its release checkpoint and metrics are both written."""
    return (method_dir / CHECKPOINT).is_file() and (method_dir / METRICS).is_file()


def split_of_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """The fold's split.json for a release checkpoint inside a run (two folders up)."""
    return Path(checkpoint).parent.parent / SPLIT
