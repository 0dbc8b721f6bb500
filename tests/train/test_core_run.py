"""Cross-validated runs: the run directory, resume after a kill, KD teachers and their leak guard."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from support.cli import exit_code
import torch

from wbc_edge.errors import DataError, SpecError
from wbc_edge.train.checkpoint import load_model
from wbc_edge.train.config import TrainConfig
from wbc_edge.train.cv import run_cv

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _tiny(method: str, **kw) -> TrainConfig:
    base = dict(method=method, backbone="shufflenet_v2_x0_5", img_size=32, epochs=1, batch_size=8, folds=3,
                fold_subset=[0], threads=1, eval_batch_size=64)
    base.update(kw)
    return TrainConfig(**base)


def test_cli_fold_run_writes_the_run_directory(synth_cells, tmp_path, capsys):
    from wbc_edge.cli.train import main

    run = tmp_path / "run"
    rc = main(["--data", str(synth_cells), "--method", "mimo", "--backbone", "shufflenet_v2_x0_5", "--folds", "4",
               "--fold-subset", "0", "--epochs", "1", "--img-size", "32", "--batch-size", "8", "--out", str(run),
               "--threads", "1", "--light-dropout", "0.25"])
    assert rc == 0, capsys.readouterr().err
    fold = run / "folds" / "fold0"
    split = json.loads((fold / "split.json").read_text())
    assert set(split["train"]).isdisjoint(split["val"]) and len(split["train"]) + len(split["val"]) == 40
    donors = {p.parent.name: p for p in synth_cells.glob("*/*/fluorescent.png")}
    assert donors  # cells on disk, grouped by donor in the manifest
    manifest = list(csv.DictReader(open(synth_cells / "manifest.csv")))
    group = {row["cell_id"]: row["group"] for row in manifest}
    assert {group[c] for c in split["train"]}.isdisjoint({group[c] for c in split["val"]})

    method_dir = fold / "mimo"
    state = torch.load(method_dir / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    model, spec, payload = load_model(method_dir / "model.pt")
    assert spec.method == "mimo" and spec.input_size == 32 and spec.mean[0] != (127.5, 127.5, 127.5)
    with torch.no_grad():
        assert model(torch.zeros(spec.input_shape(2))).shape == (2, 4, 5)
    metrics = json.loads((method_dir / "metrics.json").read_text())
    assert metrics == payload["metrics"]
    assert set(metrics["heads"]) == set(spec.modalities)
    assert set(metrics["head_independence"]["color1"]) == {"accuracy", "confidence", "others_confidence"}
    assert set(metrics["missing_light_accuracy"]) == set(spec.modalities)
    assert 0.0 <= metrics["weighted_f1"] <= 1.0 and len(metrics["confusion"]) == 5
    assert len(list(csv.DictReader(open(method_dir / "history.csv")))) == 1
    assert json.loads((run / "config.json").read_text())["light_dropout"] == 0.25
    assert json.loads((run / "spec.json").read_text())["method"] == "mimo"
    captured = capsys.readouterr()
    assert "fold 0 mimo" in captured.out and "fold0 mimo 1/1" in captured.err  # the epoch's progress bar

    quiet = tmp_path / "quiet"
    assert main(["--data", str(synth_cells), "--method", "single:color1", "--backbone", "shufflenet_v2_x0_5",
                 "--folds", "4", "--fold-subset", "0", "--epochs", "1", "--img-size", "32", "--out", str(quiet),
                 "--threads", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "fold 0 single:color1" in captured.out and "1/1" not in captured.err


class Killed(Exception):
    pass


def _kill_after(epoch: int):
    def callback(info):
        if info["epoch"] == epoch:
            raise Killed()
    return callback


def test_killed_run_resumes_to_the_uninterrupted_result(random_arrays, tmp_path):
    cfg = _tiny("mimo", epochs=2, rho=0.3, batch_repetition=2, light_dropout=0.2)
    whole = run_cv(None, cfg, tmp_path / "whole", arrays=random_arrays)[0]

    with pytest.raises(Killed):
        run_cv(None, cfg, tmp_path / "killed", arrays=random_arrays, callbacks=[_kill_after(1)])
    method_dir = tmp_path / "killed" / "folds" / "fold0" / "mimo"
    assert (method_dir / "last.pt").exists() and not (method_dir / "model.pt").exists()
    with pytest.raises(SpecError, match="--resume"):
        run_cv(None, cfg, tmp_path / "killed", arrays=random_arrays, resume=False)
    resumed = run_cv(None, cfg, tmp_path / "killed", arrays=random_arrays, resume=True)[0]

    a = torch.load(tmp_path / "whole" / "folds" / "fold0" / "mimo" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(method_dir / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["weighted_f1"] == whole["weighted_f1"] and resumed["confusion"] == whole["confusion"]
    history = list(csv.DictReader(open(method_dir / "history.csv")))
    assert [row["epoch"] for row in history] == ["1", "2"]


def test_kd_trains_late_teachers_first_then_reuses_them(random_arrays, tmp_path):
    run = tmp_path / "run"
    metrics = run_cv(None, _tiny("mimo-kd"), run, arrays=random_arrays)[0]
    fold = run / "folds" / "fold0"
    for light in random_arrays.modalities:
        assert (fold / f"single-{light}" / "model.pt").exists()
    late, late_spec, _ = load_model(fold / "late" / "model.pt")
    assert late_spec.method == "late" and late_spec.num_heads == 4
    _, spec, payload = load_model(fold / "mimo-kd" / "model.pt")
    assert spec.provenance["teacher"].endswith("late/model.pt")
    assert "kd" in payload["metrics"] or metrics["method"] == "mimo-kd"
    history = list(csv.DictReader(open(fold / "mimo-kd" / "history.csv")))
    assert float(history[0]["train_kd"]) > 0
    stamp = (fold / "late" / "model.pt").stat().st_mtime_ns
    run_cv(None, _tiny("early-kd"), run, arrays=random_arrays)
    assert (fold / "late" / "model.pt").stat().st_mtime_ns == stamp  # teachers reused, not retrained
    assert (fold / "early-kd" / "model.pt").exists()


def test_teacher_that_saw_validation_cells_is_refused(random_arrays, tmp_path):
    from wbc_edge.train.cv import make_folds

    folds = make_folds(random_arrays.labels, None, 3, seed=0)
    leaky = tmp_path / "other_split"
    split = {"dataset": "memory", "dataset_fingerprint": random_arrays.fingerprint,
             "train": [random_arrays.cell_ids[i] for i in folds[1][0]],  # fold 1's train holds fold 0's val
             "val": [random_arrays.cell_ids[i] for i in folds[1][1]]}
    (leaky / "folds" / "fold0").mkdir(parents=True)
    (leaky / "folds" / "fold0" / "split.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match="validation cells"):
        run_cv(None, _tiny("mimo-kd", teachers=str(leaky)), tmp_path / "student", arrays=random_arrays)
    assert not (tmp_path / "student" / "folds" / "fold0" / "mimo-kd").exists()


def test_bad_method_and_bad_data_are_one_line_cli_errors(synth_cells, tmp_path, capsys):
    from wbc_edge.cli.train import main

    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"), "--method", "mimo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wbc-train:") and "\n" not in err
    assert main(["--data", str(synth_cells), "--out", str(tmp_path / "r"), "--method", "single:uv"]) == 2
    assert "single:uv" in capsys.readouterr().err
    assert main(["--data", str(synth_cells), "--out", str(tmp_path / "r"), "--backbone", "vgg"]) == 2
    assert "resnet34" in capsys.readouterr().err
    assert exit_code(main, ["--data", str(synth_cells), "--out", str(tmp_path / "r"), "--jobs", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--jobs" in err and "\n" not in err
