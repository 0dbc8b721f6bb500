"""Cross-validation: folds, the run directory, late fusion from single lights, KD teachers, resume.

Run directory (docs/design.md): RUN/config.json, RUN/spec.json (the last trained method's spec),
RUN/folds/fold<k>/split.json, RUN/folds/fold<k>/<method>/{last.pt, model.pt, metrics.json, history.csv}.
A method whose model.pt and metrics.json exist is done and skipped; one with only last.pt resumes.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from wbc_edge.bundle import atomic_write_text
from wbc_edge.errors import DataError, SpecError
from wbc_edge.preprocess import cell_to_input
from wbc_edge.spec import spec_for
from wbc_edge.train.checkpoint import load_model, save_release
from wbc_edge.run_layout import CHECKPOINT, CONFIG, METRICS, SPEC, RunLayout, method_is_done
from wbc_edge.train.config import TrainConfig, parse_method
from wbc_edge.train.distributed import DistContext
from wbc_edge.train.engine import (CellArrays, EpochCallback, TeacherModel, evaluate, fit, jsonable,
                                   plan_method, to_training_layout)
from wbc_edge.train.models import LateFusion

log = logging.getLogger(__name__)


# A light smaller than this holds no cell to learn from; below a quarter of the input size it is
# upsampled so far that the model learns interpolation, not morphology (warned).
MIN_IMAGE_PX = 8


def load_arrays(dataset: Any, img_size: int) -> CellArrays:
    """Read every cell of a `wbc_edge.data` dataset once into a uint8 [N, 3M, S, S] stack.

    Refuses data a classifier cannot mean anything on: fewer than two classes with cells, or a light
    image under MIN_IMAGE_PX; warns when images are far below the input size."""
    modalities = tuple(dataset.modalities)
    present = sorted({dataset.classes[k] for k in np.unique(np.asarray(dataset.labels, dtype=np.int64))})
    if len(present) < 2:
        raise DataError(f"dataset {getattr(dataset, 'source', '')}: only {len(present)} class has cells ({', '.join(present) or 'none'}); "
                        f"a classifier needs cells of two or more classes, or every score is trivially 1.0")
    layout = spec_for("late", modalities, classes=tuple(dataset.classes), input_size=img_size)
    n = len(dataset)
    x = np.empty((n, 3 * len(modalities), img_size, img_size), dtype=np.uint8)
    small: list[str] = []
    for i in range(n):
        images = dataset.load(i)
        for light, image in images.items():
            if image is None:
                continue
            side = min(image.shape[:2])
            where = f"cell '{dataset.cells[i].cell_id}' light '{light}' ({image.shape[1]}x{image.shape[0]} px)"
            if side < MIN_IMAGE_PX:
                raise DataError(f"{where}: smaller than {MIN_IMAGE_PX} px, no cell to see")
            if side * 4 < img_size:
                small.append(where)
        cell_to_input(images, layout, out=x[i])
    if small:
        log.warning("%d light image(s) are under a quarter of the %d px input size and upsampled more than 4x "
                    "(e.g. %s): train at a smaller --img-size or use larger crops", len(small), img_size, small[0])
    groups = list(dataset.groups) if getattr(dataset, "groups", None) is not None else None
    from wbc_edge.data.derive import read_scale

    scale = read_scale(dataset.root) if getattr(dataset, "root", None) is not None else None
    if scale is not None:
        log.info("cells span %.1f um (source %.4f um/px, derivation.json): the model spec records it", *scale)
    return CellArrays(x=x, labels=np.asarray(dataset.labels, dtype=np.int64),
                      cell_ids=[c.cell_id for c in dataset.cells], classes=tuple(dataset.classes),
                      modalities=modalities, groups=groups, fingerprint=str(dataset.fingerprint()),
                      source=str(getattr(dataset, "source", getattr(dataset, "root", ""))), scale=scale)


def make_folds(labels: np.ndarray, groups: Sequence[str] | None, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded stratified folds; stratified-grouped when groups exist, so a donor is never on both sides."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    counts = np.bincount(labels)
    if groups is not None and len(set(groups)) > 1:
        if len(set(groups)) < n_folds:
            raise DataError(f"dataset column 'group': {len(set(groups))} groups cannot fill {n_folds} folds")
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(labels)), labels, groups)
    else:
        if len(labels) < n_folds:
            raise DataError(f"dataset: {len(labels)} cells cannot fill {n_folds} folds")
        if counts[counts > 0].min() < n_folds:
            log.warning("a class has fewer cells (%d) than folds (%d): some validation folds miss it",
                        counts[counts > 0].min(), n_folds)
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(labels)), labels)
    return [(np.sort(tr), np.sort(va)) for tr, va in splits]


def write_or_check_split(run_dir: Path, fold: int, arrays: CellArrays, train_idx: np.ndarray,
                         val_idx: np.ndarray, is_main: bool) -> None:
    path = RunLayout(run_dir).split(fold)
    split = {"dataset": arrays.source, "dataset_fingerprint": arrays.fingerprint,
             "train": [arrays.cell_ids[i] for i in train_idx], "val": [arrays.cell_ids[i] for i in val_idx]}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("dataset_fingerprint") != split["dataset_fingerprint"] or old.get("val") != split["val"]:
            raise DataError(f"{path}: this run dir was made from other data or another split; use a new --out")
        return
    if is_main:
        atomic_write_text(path, json.dumps(split, indent=1))


def check_teacher_split(teacher_run: Path, fold: int, val_ids: Sequence[str]) -> None:
    """Refuse a teacher that trained on any of this fold's validation cells."""
    path = RunLayout(teacher_run).split(fold)
    if not path.is_file():
        raise DataError(f"{path}: teacher split missing, cannot prove the teacher never saw fold {fold}'s validation cells")
    teacher_train = set(json.loads(path.read_text()).get("train", []))
    leaked = teacher_train.intersection(val_ids)
    if leaked:
        raise DataError(f"{path}: the fold {fold} teacher trained on {len(leaked)} of this fold's validation cells "
                        f"(e.g. '{sorted(leaked)[0]}'); use teachers from a run with the same folds and seed")


def _load_metrics(method_dir: Path) -> dict[str, Any]:
    return json.loads((method_dir / METRICS).read_text())


class FoldRunner:
    """Trains methods for one fold, building the ones a method depends on (late -> singles, KD -> late)."""

    def __init__(self, cfg: TrainConfig, arrays: CellArrays, run_dir: Path, fold: int, train_idx: np.ndarray,
                 val_idx: np.ndarray, *, resume: bool, ctx: DistContext, callbacks: Sequence[EpochCallback],
                 progress: bool = True):
        self.cfg, self.arrays, self.run_dir, self.fold = cfg, arrays, Path(run_dir), fold
        self.train_idx, self.val_idx = train_idx, val_idx
        self.resume, self.ctx, self.callbacks, self.progress = resume, ctx, callbacks, progress
        self.layout = RunLayout(run_dir)
        self.device = torch.device(ctx.device if ctx.enabled else cfg.device)

    def provenance(self, method_name: str) -> dict[str, Any]:
        return {"method_name": method_name, "fold": self.fold, "dataset_fingerprint": self.arrays.fingerprint,
                "run_dir": str(self.run_dir), "seed": self.cfg.seed}

    def run(self, method_name: str) -> dict[str, Any]:
        spec_method, _, uses_kd = parse_method(method_name, self.arrays.modalities)
        method_dir = self.layout.method_dir(fold=self.fold, method=method_name)
        if method_is_done(method_dir):
            log.info("fold %d %s: done, skipped", self.fold, method_name)
            return _load_metrics(method_dir)
        if spec_method == "late":
            return self._late(method_dir)
        teacher = self._teacher() if uses_kd else None
        plan = plan_method(self.cfg, method_name, self.arrays, self.train_idx, self.provenance(method_name))
        if teacher is not None:
            plan.spec.provenance["teacher"] = teacher.source
        metrics = fit(self.cfg, plan, self.arrays.labels, self.train_idx, self.val_idx, method_dir, fold=self.fold,
                      resume=self.resume, teacher=teacher, ctx=self.ctx, callbacks=self.callbacks,
                      progress=self.progress)
        if self.ctx.is_main:
            atomic_write_text(self.run_dir / SPEC, plan.spec.to_json())
        return metrics

    def _late(self, method_dir: Path) -> dict[str, Any]:
        members = []
        for light in self.arrays.modalities:
            self.run(f"single:{light}")
            model, _, _ = load_model(self.layout.checkpoint(self.fold, f"single:{light}"))
            members.append(model)
        late = to_training_layout(LateFusion(members).to(self.device)).eval()
        plan = plan_method(self.cfg, "late", self.arrays, self.train_idx, self.provenance("late"))
        metrics = evaluate(late, plan.x, self.arrays.labels, self.val_idx, plan.spec, self.device,
                           batch_size=self.cfg.eval_batch_size, full=True)
        metrics.update({"fold": self.fold, "method": "late", "n_train": int(len(self.train_idx)),
                        "n_val": int(len(self.val_idx))})
        if self.ctx.is_main:
            save_release(method_dir / CHECKPOINT, late, plan.spec, self.cfg.to_dict(), metrics)
            atomic_write_text(method_dir / METRICS, json.dumps(jsonable(metrics), indent=2, sort_keys=True))
        self.ctx.barrier()
        return metrics

    def _teacher(self) -> TeacherModel:
        teacher_run = Path(self.cfg.teachers) if self.cfg.teachers else self.run_dir
        late_dir = RunLayout(teacher_run).method_dir(self.fold, "late")
        own_run = teacher_run.resolve() == self.run_dir.resolve()
        if not own_run:
            check_teacher_split(teacher_run, self.fold, [self.arrays.cell_ids[i] for i in self.val_idx])
        if not method_is_done(late_dir):
            if not own_run:
                raise DataError(f"{late_dir}: no late-fusion teacher for fold {self.fold} in --teachers {teacher_run}")
            log.info("fold %d: training the late-fusion teachers first", self.fold)
            self.run("late")
        check_teacher_split(teacher_run, self.fold, [self.arrays.cell_ids[i] for i in self.val_idx])
        model, spec, _ = load_model(late_dir / CHECKPOINT, device=str(self.device))
        if tuple(spec.modalities) != self.arrays.modalities or tuple(spec.classes) != self.arrays.classes:
            raise SpecError(f"{late_dir / CHECKPOINT}: teacher lights/classes differ from the dataset's")
        for p in model.parameters():
            p.requires_grad_(False)
        return TeacherModel(to_training_layout(model), spec, str(late_dir / CHECKPOINT))


def run_cv(data: Any, cfg: TrainConfig, run_dir: str | os.PathLike, *, resume: bool = True,
           ctx: DistContext | None = None, callbacks: Sequence[EpochCallback] = (),
           arrays: CellArrays | None = None, progress: bool = True,
           write_config: bool = True) -> dict[int, dict[str, Any]]:
    """Run `cfg.method` on every fold of `cfg.folds_to_run`; returns {fold: metrics}.

    `data` is a dataset path or an opened `wbc_edge.data` dataset; `arrays` may pass a preloaded stack.
    `resume=False` refuses to continue a method that an interrupted run left half-done. `progress`
    shows per-batch bars; `write_config=False` leaves RUN/config.json to the caller (parallel workers).
    """
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = ctx or DistContext(device=cfg.device)
    run_dir = Path(run_dir)
    if arrays is None:
        if isinstance(data, (str, os.PathLike)):
            from wbc_edge.data import open_dataset

            data = open_dataset(data)
        arrays = load_arrays(data, cfg.img_size)
    parse_method(cfg.method, arrays.modalities)
    if ctx.is_main and write_config:
        atomic_write_text(RunLayout(run_dir).config, cfg.to_json())
    folds = make_folds(arrays.labels, arrays.groups, cfg.folds, cfg.seed)
    results: dict[int, dict[str, Any]] = {}
    for k in cfg.folds_to_run:
        train_idx, val_idx = folds[k]
        write_or_check_split(run_dir, k, arrays, train_idx, val_idx, ctx.is_main)
        ctx.barrier()
        runner = FoldRunner(cfg, arrays, run_dir, k, train_idx, val_idx, resume=resume, ctx=ctx, callbacks=callbacks,
                            progress=progress)
        results[k] = runner.run(cfg.method)
        log.info("fold %d %s: accuracy %.4f weighted F1 %.4f", k, cfg.method,
                 results[k].get("accuracy") or float("nan"), results[k].get("weighted_f1") or float("nan"))
    return results
