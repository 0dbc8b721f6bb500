"""Trainings side by side (`--jobs`): the dependency graph, and the same results as one after the other."""
from __future__ import annotations

import json

import pytest

from wbc_edge.spec import MODALITIES
from wbc_edge.train.parallel import task_graph

SINGLES = {f"single:{m}" for m in MODALITIES}


def test_task_graph_closes_over_teachers_and_keeps_folds_apart():
    graph = task_graph(["mimo-kd", "early"], [0, 2], MODALITIES)
    assert set(graph) == {(m, k) for k in (0, 2) for m in SINGLES | {"late", "mimo-kd", "early"}}
    assert graph[("mimo-kd", 2)] == {("late", 2)}
    assert graph[("late", 0)] == {(s, 0) for s in SINGLES}
    assert graph[("early", 0)] == set() and all(not graph[(s, 2)] for s in SINGLES)


def test_task_graph_with_teachers_from_another_run_trains_only_the_student():
    assert task_graph(["mimo-kd"], [1], MODALITIES, external_teachers=True) == {("mimo-kd", 1): set()}


def test_auto_jobs(monkeypatch):
    import wbc_edge.train.parallel as P
    from wbc_edge.train.config import TrainConfig

    monkeypatch.setattr(P, "usable_cpus", lambda: 2)
    assert P.resolve_jobs(TrainConfig(), n_tasks=12) == 2
    assert P.resolve_jobs(TrainConfig(), n_tasks=1) == 1  # one training: in process, no workers
    assert P.resolve_jobs(TrainConfig(device="cuda"), n_tasks=12) == 1
    assert P.resolve_jobs(TrainConfig(jobs=3), n_tasks=12, distributed=True) == 1
    monkeypatch.setattr(P, "usable_cpus", lambda: 64)
    assert P.resolve_jobs(TrainConfig(), n_tasks=12) == P.MAX_AUTO_JOBS
    assert P.resolve_jobs(TrainConfig(jobs=6), n_tasks=12) == 6


@pytest.mark.slow
def test_two_jobs_give_the_results_of_one(tmp_path):
    """Every training is seeded from (seed, fold, method): two worker processes reproduce the sequential
    run's metrics exactly (one torch thread in both), teachers included, and a second call retrains nothing."""
    from wbc_edge.cli.synth import main as synth_main
    from wbc_edge.cli.train import main as train_main

    data = tmp_path / "data"
    assert synth_main(["cells", "-q", "--out", str(data), "--n", "30", "--seed", "4", "--size", "32",
                       "--class-mix", "balanced"]) == 0
    common = ["--data", str(data), "--method", "mimo-kd", "--folds", "2", "--epochs", "1", "--img-size", "32",
              "--batch-size", "8", "--threads", "1"]
    assert train_main(common + ["--out", str(tmp_path / "seq"), "--jobs", "1"]) == 0
    assert train_main(common + ["--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    for fold in (0, 1):
        for method in ("single-color2", "late", "mimo-kd"):
            seq = json.loads((tmp_path / "seq" / "folds" / f"fold{fold}" / method / "metrics.json").read_text())
            par = json.loads((tmp_path / "par" / "folds" / f"fold{fold}" / method / "metrics.json").read_text())
            assert par == seq, (fold, method)
    assert not list((tmp_path / "par").glob(".cells-*"))  # the shared stack is removed
    model = tmp_path / "par" / "folds" / "fold1" / "mimo-kd" / "model.pt"
    before = model.stat().st_mtime_ns
    assert train_main(common + ["--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    assert model.stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_failing_worker_stops_the_run_with_its_one_line_error(tmp_path, capsys):
    from wbc_edge.cli.synth import main as synth_main
    from wbc_edge.cli.train import main as train_main

    data = tmp_path / "data"
    assert synth_main(["cells", "-q", "--out", str(data), "--n", "20", "--seed", "4", "--size", "32",
                       "--class-mix", "balanced"]) == 0
    capsys.readouterr()
    rc = train_main(["--data", str(data), "--method", "mimo-kd", "--teachers", str(tmp_path / "no-teachers"),
                     "--folds", "2", "--epochs", "1", "--img-size", "32", "--batch-size", "8", "--jobs", "2",
                     "--out", str(tmp_path / "run")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("wbc-train: ") and "no-teachers" in err[-1]
    assert not list((tmp_path / "run").glob(".cells-*"))
