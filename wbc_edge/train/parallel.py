"""The trainings of a cross-validation run side by side in worker processes (`--jobs N`).

Every (method, fold) of a run is an independent training once the methods it needs are done: the
single-light networks before late fusion, late fusion before the KD students of the same fold. On a
CPU these small networks use a second intra-op thread poorly, so N trainings with one thread each
finish sooner than the same trainings one after the other with N threads (docs/training.md has the
measurement). Each training is seeded from (seed, fold, method) alone, so the results do not depend on
which worker ran it or in what order.

The parent writes the preloaded uint8 cell stack once to a temporary `.npy` in the run directory;
workers map it read-only (no copy per worker) and run `run_cv` for one method and one fold each.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import multiprocessing as mp
import numpy as np

from wbc_edge.run_layout import RunLayout
from wbc_edge.train.config import TrainConfig, parse_method

log = logging.getLogger(__name__)

Task = tuple[str, int]  # (method, fold)

# Within a fold: the teachers first (they unblock the KD students), the longest trainings early.
_PRIORITY = {"single": 0, "late": 1, "mimo-kd": 2, "early-kd": 3, "mimo": 4, "early": 5}


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


MAX_AUTO_JOBS = 4


def resolve_jobs(cfg: TrainConfig, n_tasks: int, distributed: bool = False) -> int:
    """How many trainings to run side by side: `cfg.jobs`, or for 0 (auto) one per core up to
    MAX_AUTO_JOBS on a CPU and one on CUDA or under torchrun; never more than there are trainings."""
    if distributed or (cfg.device.startswith("cuda") and cfg.jobs == 0):
        return 1
    jobs = cfg.jobs or min(MAX_AUTO_JOBS, usable_cpus())
    return max(1, min(jobs, n_tasks))


def pending_tasks(run_dir: str | os.PathLike, methods: Sequence[str], folds: Sequence[int],
                  modalities: Sequence[str], external_teachers: bool = False) -> int:
    """How many trainings `methods` on `folds` still need in `run_dir` (teachers included)."""
    graph = task_graph(methods, folds, modalities, external_teachers)
    return sum(not _finished(Path(run_dir), t) for t in graph)


def method_needs(method: str, modalities: Sequence[str], external_teachers: bool) -> list[str]:
    """The methods that must be finished (same fold) before `method` can train."""
    spec_method, _, uses_kd = parse_method(method, tuple(modalities))
    if spec_method == "late":
        return [f"single:{m}" for m in modalities]
    if uses_kd and not external_teachers:
        return ["late"]
    return []


def task_graph(methods: Sequence[str], folds: Sequence[int], modalities: Sequence[str],
               external_teachers: bool = False) -> dict[Task, set[Task]]:
    """Every training `methods` need on `folds`, each with the tasks it waits for (closed under needs)."""
    graph: dict[Task, set[Task]] = {}
    todo = [(m, k) for k in folds for m in methods]
    while todo:
        method, fold = todo.pop()
        if (method, fold) in graph:
            continue
        needs = {(m, fold) for m in method_needs(method, modalities, external_teachers)}
        graph[(method, fold)] = needs
        todo.extend(needs)
    return graph


def _priority(task: Task) -> tuple[int, int]:
    method, fold = task
    return fold, _PRIORITY["single" if method.startswith("single:") else method]


def _finished(run_dir: Path, task: Task) -> bool:
    return RunLayout(run_dir).is_done(task[1], task[0])


def _metrics(run_dir: Path, task: Task) -> dict[str, Any]:
    path = RunLayout(run_dir).metrics(task[1], task[0])
    return json.loads(path.read_text(encoding="utf-8"))


# ---- worker side ----------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(stack_path: str, meta: dict[str, Any], threads: int, log_level: int) -> None:
    import torch

    from wbc_edge.train.engine import CellArrays

    logging.basicConfig(level=log_level, format=f"%(asctime)s worker{os.getpid()} %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    _WORKER["arrays"] = CellArrays(x=np.load(stack_path, mmap_mode="r", allow_pickle=False), **meta)


def _train(config: dict[str, Any], run_dir: str, resume: bool) -> dict[str, Any]:
    from wbc_edge.train.cv import run_cv

    cfg = TrainConfig.from_dict(config)
    return run_cv(None, cfg, run_dir, resume=resume, arrays=_WORKER["arrays"], progress=False,
                  write_config=False)


# ---- parent side ----------------------------------------------------------------------------------

def train_side_by_side(dataset, cfg: TrainConfig, run_dir: str | os.PathLike, methods: Sequence[str], *,
                       resume: bool = True, progress: bool = True,
                       distributed: bool = False, arrays: Any = None) -> dict[Task, dict[str, Any]] | None:
    """`run_parallel` for `methods` (teachers included) when `cfg.jobs` (or auto) gives more than one
    worker for the trainings still to do; None when one at a time it is, for the caller to train in
    its own process (also every torchrun rank)."""
    from wbc_edge.train.cv import load_arrays

    n_tasks = pending_tasks(run_dir, methods, cfg.folds_to_run, dataset.modalities, bool(cfg.teachers))
    jobs = resolve_jobs(cfg, n_tasks, distributed=distributed)
    if jobs == 1:
        return None
    if arrays is None:
        arrays = load_arrays(dataset, cfg.img_size)
    return run_parallel(arrays, cfg, run_dir, methods, jobs=jobs, resume=resume, progress=progress)


def train_methods(dataset, cfg: TrainConfig, run_dir: str | os.PathLike, methods: Sequence[str], *,
                  resume: bool = True, progress: bool = True, ctx: Any = None, arrays: Any = None) -> dict[Task, dict[str, Any]]:
    """Train `methods` on `cfg.folds_to_run` (teachers first): side by side in worker processes when
    `cfg.jobs` (or auto) allows more than one, else one after the other in this process (also every
    torchrun rank, given its `ctx`). Returns {(method, fold): metrics}. The one place that decides."""
    from wbc_edge.train.cv import load_arrays, run_cv

    distributed = bool(ctx is not None and ctx.enabled)
    done = train_side_by_side(dataset, cfg, run_dir, methods, resume=resume, progress=progress, distributed=distributed,
                              arrays=arrays)
    if done is not None:
        return done
    if arrays is None:
        arrays = load_arrays(dataset, cfg.img_size)
    results: dict[Task, dict[str, Any]] = {}
    for method in methods:
        for fold, metrics in run_cv(dataset, cfg.replace(method=method), run_dir, resume=resume, ctx=ctx,
                                    arrays=arrays, progress=progress).items():
            results[(method, fold)] = metrics
    return results


def run_parallel(arrays, cfg: TrainConfig, run_dir: str | os.PathLike, methods: Sequence[str], *, jobs: int,
                 resume: bool = True, progress: bool = True) -> dict[Task, dict[str, Any]]:
    """Train `methods` on `cfg.folds_to_run` with `jobs` worker processes; returns {(method, fold): metrics}
    of every training the run holds for them (finished ones are read, not retrained). A failing training
    stops the run with its error; what finished stays finished, and the same call resumes."""
    from tqdm.auto import tqdm

    from wbc_edge.bundle import atomic_write_text
    from wbc_edge.train.cv import make_folds, write_or_check_split

    run_dir = Path(run_dir)
    folds = cfg.folds_to_run
    graph = task_graph(methods, folds, arrays.modalities, external_teachers=bool(cfg.teachers))
    done = {t for t in graph if _finished(run_dir, t)}
    pending = {t: needs for t, needs in graph.items() if t not in done}
    results = {t: _metrics(run_dir, t) for t in done}
    if not pending:
        return results
    # Splits are written once here, so workers only ever check them.
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RunLayout(run_dir).config, cfg.to_json())
    all_folds = make_folds(arrays.labels, arrays.groups, cfg.folds, cfg.seed)
    for k in folds:
        write_or_check_split(run_dir, k, arrays, *all_folds[k], True)
    threads = cfg.threads or max(1, usable_cpus() // jobs)
    meta = {"labels": arrays.labels, "cell_ids": arrays.cell_ids, "classes": arrays.classes,
            "modalities": arrays.modalities, "groups": arrays.groups, "fingerprint": arrays.fingerprint,
            "source": arrays.source}
    log.info("%d trainings on %d worker processes, %d torch thread(s) each", len(pending), jobs, threads)
    with tempfile.TemporaryDirectory(prefix=".cells-", dir=run_dir) as tmp:
        stack_path = os.path.join(tmp, "cells.npy")
        np.save(stack_path, np.ascontiguousarray(arrays.x))
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                   initargs=(stack_path, meta, threads, logging.getLogger().getEffectiveLevel()))
        running: dict[Any, Task] = {}
        bar = tqdm(total=len(pending), desc="trainings", unit="training", disable=not progress)
        try:
            while pending or running:
                ready = sorted((t for t, needs in pending.items() if needs <= done), key=_priority)
                for task in ready[: max(0, jobs - len(running))]:
                    del pending[task]
                    task_cfg = replace(cfg, method=task[0], fold_subset=[task[1]], threads=threads)
                    running[pool.submit(_train, task_cfg.to_dict(), str(run_dir), resume)] = task
                if not running:  # nothing can start: a dependency cannot be met
                    raise RuntimeError(f"trainings {sorted(pending)} wait for trainings that never ran")
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    task = running.pop(future)
                    metrics = future.result()[task[1]]  # re-raises the worker's error
                    results[task] = metrics
                    done.add(task)
                    bar.update(1)
                    log.info("fold %d %s: accuracy %.4f weighted F1 %.4f", task[1], task[0],
                             metrics.get("accuracy") or float("nan"), metrics.get("weighted_f1") or float("nan"))
        except BaseException:
            # A failed training or Ctrl-C: stop the others now rather than after their last epoch. Their
            # last.pt (written atomically each epoch) lets the same command resume them.
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            raise
        finally:
            bar.close()
            pool.shutdown(wait=True, cancel_futures=True)
    return results
