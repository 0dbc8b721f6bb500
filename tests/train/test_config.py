"""The training configuration: per-backbone learning rate, validation, JSON round trip."""
from __future__ import annotations

import json

import pytest
import torch

from wbc_edge.errors import SpecError
from wbc_edge.train.config import TrainConfig
from wbc_edge.train.engine import build_optimizer


def _optimizer_lr(cfg: TrainConfig) -> float:
    return build_optimizer(torch.nn.Linear(4, 2), cfg).param_groups[0]["lr"]


def test_learning_rate_defaults_per_backbone_and_an_explicit_one_wins():
    assert _optimizer_lr(TrainConfig(backbone="shufflenet_v2_x1_0")) == pytest.approx(4e-3)
    assert _optimizer_lr(TrainConfig(backbone="resnet34")) == pytest.approx(1e-3)
    assert _optimizer_lr(TrainConfig(backbone="resnet34", lr=2e-3)) == pytest.approx(2e-3)
    assert TrainConfig(backbone="shufflenet_v2_x1_0").replace(backbone="resnet34").peak_lr == pytest.approx(1e-3)


def test_cli_without_lr_takes_the_backbone_default():
    from wbc_edge.cli.train import config_from_args, get_args_parser

    args = get_args_parser().parse_args(["--data", "d", "--out", "o", "--backbone", "resnet34"])
    assert config_from_args(args).peak_lr == pytest.approx(1e-3)
    args = get_args_parser().parse_args(["--data", "d", "--out", "o", "--backbone", "resnet34", "--lr", "5e-4"])
    assert config_from_args(args).peak_lr == pytest.approx(5e-4)


def test_bad_learning_rate_is_refused_and_the_config_round_trips():
    with pytest.raises(SpecError, match="'lr'"):
        TrainConfig(lr=0.0).validate()
    cfg = TrainConfig(backbone="resnet34", fold_subset=[0, 2])
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_every_training_option_is_declared_once_and_reaches_the_config():
    import dataclasses

    from wbc_edge.cli.train import config_from_args, get_args_parser, get_table_parser
    from wbc_edge.train.config import TrainConfig

    base = ["--data", "d", "--out", "o"]
    assert config_from_args(get_args_parser().parse_args(base)) == TrainConfig()
    # A non-default value for every field that has an option; each must land in its field.
    changed = {"method": "early", "backbone": "resnet18", "img_size": 32, "epochs": 3, "batch_size": 16, "lr": 1e-4,
               "weight_decay": 0.01, "warmup_epochs": 0.5, "label_smoothing": 0.1, "seed": 4, "folds": 3,
               "fold_subset": [1, 2], "rho": 0.25, "batch_repetition": 3, "light_dropout": 0.2, "solo_rows": 0.5,
               "kd_temperature": 2.0, "kd_alpha": 0.7, "kd_fused": True, "randaugment_n": 1, "randaugment_m": 5, "flip_rotate": False, "amp": False,
               "device": "cuda:1", "num_workers": 0, "threads": 2, "jobs": 2, "teachers": "t", "pretrained_weights": "w.pth",
               "eval_batch_size": 64}
    assert set(changed) == {f.name for f in dataclasses.fields(TrainConfig)}, "a new field needs a value here"
    argv = list(base)
    for name, value in changed.items():
        if name == "randaugment_m":
            continue
        if name == "randaugment_n":
            argv += ["--randaugment", "1", "5"]
        elif name == "amp":
            argv += ["--no-amp"]
        elif name == "flip_rotate":
            argv += ["--no-flip-rotate"]
        elif name == "kd_fused":
            argv += ["--kd-fused"]
        elif name == "fold_subset":
            argv += ["--fold-subset", "1,2"]
        else:
            argv += ["--" + name.replace("_", "-"), str(value)]
    assert config_from_args(get_args_parser().parse_args(argv)) == TrainConfig(**changed)
    # The table takes the same options (its --method is chosen per row).
    table = config_from_args(get_table_parser().parse_args(argv))
    assert table.replace(method="early") == TrainConfig(**changed)


def test_cli_augmentation_defaults_are_the_configs_and_flags_reach_both_ways():
    from wbc_edge.cli.train import config_from_args, get_args_parser

    base = ["--data", "d", "--out", "o"]
    d = TrainConfig()
    cfg = config_from_args(get_args_parser().parse_args(base))
    assert (cfg.randaugment_n, cfg.randaugment_m, cfg.flip_rotate) == (d.randaugment_n, d.randaugment_m, d.flip_rotate)
    paper = config_from_args(get_args_parser().parse_args(base + ["--randaugment", "2", "18", "--no-flip-rotate"]))
    assert (paper.randaugment_n, paper.randaugment_m, paper.flip_rotate) == (2, 18, False)
    geometric = config_from_args(get_args_parser().parse_args(base + ["--randaugment", "0", "0", "--flip-rotate"]))
    assert (geometric.randaugment_n, geometric.flip_rotate) == (0, True)
