"""The training configuration: one JSON-safe dataclass, never an argparse Namespace."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from wbc_edge.errors import SpecError
from wbc_edge.spec import input_size_problem

# Method names a user types; each maps to a spec method (the network's shape).
BASE_METHODS = ("early", "late", "mimo", "early-kd", "mimo-kd")


def parse_method(name: str, modalities: tuple[str, ...] | None = None) -> tuple[str, str | None, bool]:
    """'single:<light>' | early | late | mimo | early-kd | mimo-kd -> (spec method, light, uses_kd)."""
    if name.startswith("single:"):
        light = name.split(":", 1)[1]
        if modalities is not None and light not in modalities:
            raise SpecError(f"method '{name}': light '{light}' is not one of {list(modalities)}")
        if not light:
            raise SpecError(f"method '{name}': name a light after 'single:'")
        return "single", light, False
    if name not in BASE_METHODS:
        raise SpecError(f"method '{name}': unknown, choose single:<light> or one of {list(BASE_METHODS)}")
    return name.removesuffix("-kd"), None, name.endswith("-kd")


# AdamW peak learning rate per backbone, measured from scratch at 64 px (docs/training.md): ShuffleNetV2
# learns fastest at 4e-3, ResNet-34 at that rate stays at 80 % where 1e-3 reaches 97 %. The x0_5 and
# ResNet-18 entries follow their families (not measured on their own).
DEFAULT_LR = {"shufflenet_v2_x1_0": 4e-3, "shufflenet_v2_x0_5": 4e-3, "resnet34": 1e-3, "resnet18": 1e-3}



def option(help: str, *, flag: str | None = None, metavar: str | None = None) -> dict[str, Any]:
    """Field metadata that makes a TrainConfig field a wbc-train option (the one declaration)."""
    return {"cli": {"help": help, "flag": flag, "metavar": metavar}}


def _field(default: Any, help: str, **kw: Any) -> Any:
    return dataclasses.field(default=default, metadata=option(help, **kw))


@dataclass
class TrainConfig:
    """Every training option: `wbc-train` and `wbc-train table` derive their options from these fields."""

    method: str = _field("mimo-kd", "single:<light>, early, late, mimo, early-kd or mimo-kd")
    backbone: str = _field("shufflenet_v2_x1_0", "backbone (see --list-backbones)")
    img_size: int = _field(64, "input size in px", metavar="PX")
    # measured on real cells (docs/training.md, "Real cells"): MM-MIMO + KD on fold 0 93.7 at 12 epochs, its
    # worst light missing 82, 96.7 / 92 at 24; five folds at KD weight 0.3 94.53 / 90.3 at 24, 95.87 / 92.0 at 32
    # (early fusion 94.95 -> 95.67).
    epochs: int = _field(32, "training epochs", metavar="N")
    batch_size: int = _field(64, "batch size per process", metavar="N")
    lr: float | None = _field(None, "AdamW peak learning rate (default: per backbone, 4e-3 ShuffleNetV2, 1e-3 ResNet)")
    weight_decay: float = _field(0.05, "AdamW weight decay")
    warmup_epochs: float = _field(1.0, "linear warm-up before the cosine decay, in epochs")
    label_smoothing: float = _field(0.0, "label smoothing of the cross-entropy")
    seed: int = _field(0, "folds, init, sampling, augmentation")
    folds: int = _field(5, "cross-validation folds")
    fold_subset: list[int] | None = _field(None, "only these folds, e.g. 0,1", metavar="K,K")
    # MM-MIMO recipe (see docs/training.md for the measurements behind the defaults)
    rho: float = _field(0.5, "MIMO input repetition")
    batch_repetition: int = _field(2, "MIMO batch repetition")
    light_dropout: float = _field(0.1, "MIMO: chance that a light is blanked in a training row")
    solo_rows: float = _field(0.0, "MIMO: fraction of rows that keep one light only")
    # knowledge distillation
    kd_temperature: float = _field(4.0, "KD softmax temperature")
    # real cells, five folds (docs/training.md): at 24 epochs 1.0 (the paper's) was best, at 32 epochs 0.3 is
    # (95.87 vs 95.27): a longer-trained head outgrows its single-light teacher, and a full weight pulls it back
    kd_alpha: float = _field(0.3, "KD weight (the paper: 1.0)")
    kd_fused: bool = _field(False, "MIMO: in rows holding one cell in every slot, distil each head from the average of the "
                                   "teachers of the lights present (late fusion of what is left), not from its own light's teacher")
    # Augmentation: flips and 90-degree rotations only. The paper's RandAugment(2, 18) (for 224 px and
    # 15,000 cells) costs 37 points on real cells at 64 px and ~2 on the synthetic ones (docs/training.md,
    # "Real cells"); `--randaugment 2 18 --no-flip-rotate` is the paper's setting.
    randaugment_n: int = _field(0, "RandAugment ops and magnitude (0 0: off; the paper: 2 18)", flag="--randaugment", metavar="N M")
    randaugment_m: int = 0  # set with randaugment_n by --randaugment N M
    flip_rotate: bool = _field(True, "random flips and 90-degree rotations per cell, before RandAugment (the paper: --no-flip-rotate)")
    amp: bool = _field(True, "CUDA: mixed precision (--no-amp: FP32); ignored on CPU")
    device: str = _field("cpu", "cpu or cuda[:N]")
    num_workers: int = _field(1, "batches prepared ahead by one background thread (0: in the training loop)")
    threads: int | None = _field(None, "torch CPU threads per training (default: torch's choice; with --jobs: cores / jobs)")
    jobs: int = _field(0, "trainings (method x fold) side by side in worker processes (0: one per core up to 4 "
                          "on a CPU, 1 on CUDA; 1: one after the other in this process)")
    teachers: str | None = _field(None, "run dir with late-fusion teachers for *-kd (default: --out)")
    pretrained_weights: str | None = _field(None, "local backbone state_dict (.pth) to start from")
    eval_batch_size: int = _field(128, "batch size for evaluation")

    def validate(self) -> None:
        def bad(field: str, why: str) -> SpecError:
            return SpecError(f"training config field '{field}': {why}")

        parse_method(self.method)
        if self.lr is not None and not self.lr > 0:
            raise bad("lr", f"must be > 0, got {self.lr}")
        if self.epochs < 1:
            raise bad("epochs", f"must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise bad("batch_size", f"must be >= 2, got {self.batch_size}")
        if self.folds < 2:
            raise bad("folds", f"must be >= 2, got {self.folds}")
        if self.fold_subset is not None and any(not 0 <= k < self.folds for k in self.fold_subset):
            raise bad("fold_subset", f"{self.fold_subset} has a fold outside 0..{self.folds - 1}")
        if not 0.0 <= self.rho <= 1.0:
            raise bad("rho", f"must be in [0, 1], got {self.rho}")
        if not 1 <= self.batch_repetition <= self.batch_size:
            raise bad("batch_repetition", f"must be in 1..batch_size, got {self.batch_repetition}")
        if not 0.0 <= self.light_dropout < 1.0:
            raise bad("light_dropout", f"must be in [0, 1), got {self.light_dropout}")
        if not 0.0 <= self.solo_rows <= 1.0:
            raise bad("solo_rows", f"must be in [0, 1], got {self.solo_rows}")
        if self.kd_temperature <= 0:
            raise bad("kd_temperature", f"must be > 0, got {self.kd_temperature}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise bad("device", f"'{self.device}' is not cpu or cuda[:N]")
        if self.jobs < 0:
            raise bad("jobs", f"must be >= 0 (0: automatic), got {self.jobs}")
        if (problem := input_size_problem(self.img_size)) is not None:
            raise bad("img_size", problem)
        if not 0 <= self.randaugment_n <= 14 or not 0 <= self.randaugment_m <= 30:
            raise bad("randaugment", f"ops must be in 0..14 and magnitude in 0..30, got {self.randaugment_n} {self.randaugment_m}")
        for name, value, lo, hi in (("weight_decay", self.weight_decay, 0.0, 1.0), ("warmup_epochs", self.warmup_epochs, 0.0, self.epochs),
                                    ("label_smoothing", self.label_smoothing, 0.0, 0.99), ("kd_alpha", self.kd_alpha, 0.0, 1.0)):
            if not lo <= value <= hi:
                raise bad(name, f"must be in [{lo:g}, {hi:g}], got {value}")
        for name, value, lo in (("eval_batch_size", self.eval_batch_size, 1), ("num_workers", self.num_workers, 0),
                                ("threads", self.threads, 1), ("seed", self.seed, 0)):
            if value is not None and value < lo:
                raise bad(name, f"must be >= {lo}, got {value}")

    @property
    def peak_lr(self) -> float:
        """The learning rate training uses: `lr`, or the backbone's measured default."""
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.backbone, 1e-3)

    @property
    def folds_to_run(self) -> list[int]:
        return sorted(set(self.fold_subset)) if self.fold_subset is not None else list(range(self.folds))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"training config field '{unknown[0]}': unknown field")
        return cls(**d)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
