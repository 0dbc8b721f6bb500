"""Table 1: rendering from per-fold metrics, the claims checker, and the resumable run (fake CV)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from wbc_edge.errors import DataError
from wbc_edge.run_layout import method_dirname
from wbc_edge.train.config import TrainConfig
from wbc_edge.metrics import compute_metrics
from wbc_edge.cli.train import main_table
from wbc_edge.train.table import (
    build_table, check_claims, order_methods, render_table_md, run_table, table_methods,
)

CLASSES = ("neutrophil", "lymphocyte", "eosinophil", "monocyte", "basophil")
LIGHTS = ("fluorescent", "color1", "color2", "color3")


def summary(means: dict[str, float]) -> dict[str, dict]:
    return {m: {"weighted_f1": {"mean": v, "std": 0.01}} for m, v in means.items()}


PAPER_LIKE = {"single:fluorescent": 0.9361, "single:color1": 0.9417, "single:color2": 0.9460,
              "single:color3": 0.9533, "early": 0.9543, "late": 0.9587, "mimo": 0.9565,
              "early-kd": 0.9568, "mimo-kd": 0.9599}


def test_claims_hold_on_the_papers_numbers():
    claims = check_claims(summary(PAPER_LIKE), {"late": 591_158_048, "mimo-kd": 172_190_408})
    assert [c["holds"] for c in claims] == [True, True, True, True]
    assert "0.291" in claims[3]["detail"]  # the MACs ratio is reported


@pytest.mark.parametrize("change, broken", [
    ({"single:color1": 0.93}, 0),              # a bright-field light below fluorescence
    ({"single:color3": 0.96}, 1),              # a single light beats late fusion
    ({"mimo": 0.95}, 2),                       # MM-MIMO below early fusion
    ({"mimo-kd": 0.958}, 3),                   # MM-MIMO + KD below late fusion
])
def test_each_claim_can_fail(change, broken):
    claims = check_claims(summary({**PAPER_LIKE, **change}), {"late": 4, "mimo-kd": 1})
    assert [c["holds"] for c in claims] == [i != broken for i in range(4)]


def test_claim_fails_when_mimo_kd_is_not_cheap():
    claims = check_claims(summary(PAPER_LIKE), {"late": 100, "mimo-kd": 90})
    assert claims[3]["holds"] is False


def test_claims_not_tested_without_their_methods():
    claims = check_claims(summary({"early": 0.9, "mimo": 0.92}))
    assert [c["holds"] for c in claims] == [None, None, True, None]


def fold_metrics(rng: np.random.Generator, accuracy: float, n: int = 60) -> dict:
    y = rng.integers(0, len(CLASSES) - 1, size=n)  # no basophil in these folds
    pred = np.where(rng.random(n) < accuracy, y, (y + 1) % len(CLASSES))
    probs = np.full((n, len(CLASSES)), 0.05)
    probs[np.arange(n), pred] = 0.8
    return compute_metrics(y, probs, CLASSES)


def test_render_from_fold_metrics():
    rng = np.random.default_rng(0)
    per_method = {"early": [fold_metrics(rng, 0.8), fold_metrics(rng, 0.9)],
                  "mimo": [fold_metrics(rng, 0.85), fold_metrics(rng, 0.95)]}
    cx = {"early": {"run": {"macs": 14_060_000, "params": 1_260_673}, "paper": {"macs": 172_175_048, "params": 1_260_673}}}
    table = build_table(per_method, backbone="shufflenet_v2_x1_0", img_size=64, folds=2, classes=CLASSES,
                        complexity=cx, dataset="synthetic", epochs=1)
    md = render_table_md(table)
    f1 = [m["weighted_f1"] for m in per_method["mimo"]]
    expected = f"{100 * np.mean(f1):.2f} ± {100 * np.std(f1):.2f}"
    mimo_line = next(line for line in md.splitlines() if line.startswith("| MM-MIMO |"))
    assert mimo_line.split(" | ")[1] == expected
    early_line = next(line for line in md.splitlines() if line.startswith("| early fusion |"))
    assert "| 14.06 | 172.18 | 1.261 |" in early_line
    assert "n/a" in mimo_line  # no complexity given for mimo
    assert "| method | NEU | LYM | EOS | MO | BAS |" in md
    assert "MM-MIMO beats early fusion: **" in md
    mimo_claim = next(c for c in table["claims"] if c["claim"] == "MM-MIMO beats early fusion")
    f1_early = np.mean([m["weighted_f1"] for m in per_method["early"]])
    assert mimo_claim["holds"] == bool(np.mean(f1) > f1_early)
    json.dumps(table)  # JSON-safe


def test_method_order_and_unknown_methods():
    assert order_methods(["mimo-kd", "single:color1", "late"], LIGHTS) == ["single:color1", "late", "mimo-kd"]
    assert table_methods(LIGHTS)[:5] == [f"single:{m}" for m in LIGHTS] + ["late"]
    with pytest.raises(DataError, match="'mimo2'"):
        order_methods(["mimo2"], LIGHTS)


class FakeCV:
    """Writes what the real CV writes (metrics.json, history.csv per fold) and records the calls."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, dataset, config, run_dir):
        self.calls.append(config.method)
        rng = np.random.default_rng(len(self.calls))
        for k in config.folds_to_run:
            d = run_dir / "folds" / f"fold{k}" / method_dirname(config.method)
            d.mkdir(parents=True, exist_ok=True)
            (d / "metrics.json").write_text(json.dumps({"metrics": fold_metrics(rng, 0.6 + 0.03 * len(self.calls))}))
            (d / "history.csv").write_text("epoch,train_loss,val_weighted_f1\n1,1.5,0.5\n2,1.2,0.6\n")
        return {}


def test_run_table_order_outputs_and_resume(tmp_path):
    dataset = SimpleNamespace(modalities=LIGHTS, classes=CLASSES)
    # 224 px: the run's counts and the paper-size counts are one set (and shared with test_complexity).
    config = TrainConfig(backbone="shufflenet_v2_x1_0", img_size=224, epochs=1, folds=2)
    fake = FakeCV()
    methods = ["mimo-kd", "single:color1", "single:fluorescent", "late", "mimo"]
    table = run_table(dataset, config, tmp_path, methods=methods, run_cv=fake)
    assert fake.calls == ["single:fluorescent", "single:color1", "late", "mimo", "mimo-kd"]
    assert (tmp_path / "table.md").is_file()
    saved = json.loads((tmp_path / "table.json").read_text())
    assert list(saved["methods"]) == fake.calls
    assert saved["methods"]["late"]["complexity"]["paper"]["macs"] == 4 * saved["methods"]["single:color1"]["complexity"]["paper"]["macs"]
    assert {"plots/weighted_f1.png", "plots/confusion-mimo-kd.png", "plots/learning-late.png"} <= set(table["plots"])
    assert all((tmp_path / p).stat().st_size > 5000 for p in table["plots"])

    # Resume: finished methods are reused, a method with a missing fold is run again.
    (tmp_path / "folds" / "fold1" / "mimo" / "metrics.json").unlink()
    fake.calls.clear()
    run_table(dataset, config, tmp_path, methods=methods, run_cv=fake, plots=False)
    assert fake.calls == ["mimo"]


def test_run_table_fails_clearly_when_cv_leaves_no_metrics(tmp_path):
    dataset = SimpleNamespace(modalities=LIGHTS, classes=CLASSES)
    with pytest.raises(DataError, match="'early'"):
        run_table(dataset, TrainConfig(folds=2), tmp_path, methods=["early"], run_cv=lambda *a: {}, plots=False)


def test_main_table_bad_data_is_one_line(tmp_path, capsys):
    assert main_table(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--folds", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err


@pytest.fixture
def one_torch_thread():
    """--threads 1 sets torch's process-wide thread count: put it back for the tests after this one."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_real_small_table_run(tmp_path, capsys, one_torch_thread):
    """The real chain on synthetic cells: data -> CV training -> table, Figure 4, reuse on a second call."""
    from wbc_edge.cli.synth import main as synth_main

    data = tmp_path / "data"
    assert synth_main(["cells", "-q", "--out", str(data), "--n", "30", "--seed", "3", "--size", "32",
                       "--class-mix", "balanced"]) == 0
    run = tmp_path / "run"
    argv = ["--data", str(data), "--out", str(run), "--folds", "2", "--epochs", "1", "--img-size", "32",
            "--batch-size", "16", "--methods", "single:color1", "mimo", "--randaugment", "0", "0", "--threads", "1"]
    assert main_table(argv) == 0
    table = json.loads((run / "table.json").read_text())
    assert list(table["methods"]) == ["single:color1", "mimo"]
    for method, row in table["methods"].items():
        assert len(row["folds"]) == 2
        assert 0.0 <= row["summary"]["weighted_f1"]["mean"] <= 1.0
        assert sum(map(sum, row["summary"]["confusion"])) == 30  # every cell validated exactly once
    assert table["methods"]["mimo"]["complexity"]["paper"]["params"] == 1_276_048
    fig4 = json.loads((run / "plots" / "figure4-mimo.json").read_text())
    assert set(fig4["conditions"]) == {"all lights", "only fluorescent", "only color1", "only color2", "only color3"}
    md = (run / "table.md").read_text()
    assert "| color1 only |" in md and "| MM-MIMO |" in md and "MM-MIMO beats early fusion: **not tested**" in md
    missing = table["methods"]["mimo"]["missing_light"]
    assert set(missing) == {"fluorescent", "color1", "color2", "color3"} and 0 <= missing["color2"]["mean"] <= 1
    assert "| method | all lights | no fluorescent |" in md and "Recipe: lr 0.004, batch_size 16" in md

    model = run / "folds" / "fold0" / "mimo" / "model.pt"
    before = model.stat().st_mtime_ns
    capsys.readouterr()
    assert main_table(argv) == 0  # everything finished: reused, not retrained
    assert model.stat().st_mtime_ns == before
