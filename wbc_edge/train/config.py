"""The training configuration: one JSON-safe dataclass, never an argparse Namespace."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from wbc_edge.errors import SpecError

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


def method_dirname(name: str) -> str:
    """Folder for a method's results ('single:color1' -> 'single-color1': no ':' in paths)."""
    return name.replace(":", "-")


@dataclass
class TrainConfig:
    method: str = "mimo-kd"
    backbone: str = "shufflenet_v2_x1_0"
    img_size: int = 64
    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None  # None: the backbone's DEFAULT_LR (see peak_lr)
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    folds: int = 5
    fold_subset: list[int] | None = None
    # MM-MIMO recipe (see docs/training.md for the measurements behind the defaults)
    rho: float = 0.5
    batch_repetition: int = 2
    light_dropout: float = 0.1
    solo_rows: float = 0.0  # fraction of MIMO rows that keep one light only
    # knowledge distillation
    kd_temperature: float = 4.0
    kd_alpha: float = 0.3  # measured: 1.0 pulls the heads toward weak single-light teachers (docs/training.md)
    # Augmentation: flips and 90-degree rotations only. The paper's RandAugment(2, 18) (for 224 px and
    # 15,000 cells) costs 37 points on real cells at 64 px and ~2 on the synthetic ones (docs/training.md,
    # "Real cells"); `randaugment_n 2, randaugment_m 18, flip_rotate False` is the paper's setting.
    randaugment_n: int = 0
    randaugment_m: int = 0
    flip_rotate: bool = True  # random flips and 90-degree rotations per row, before RandAugment
    amp: bool = True  # CUDA only; ignored on CPU
    device: str = "cpu"
    num_workers: int = 1  # batches prepared ahead by one background thread (0: in the training loop)
    threads: int | None = None  # torch intra-op threads (None: torch's default; with jobs > 1: cores // jobs)
    jobs: int = 0  # trainings (method x fold) side by side in worker processes; 0: auto (parallel.resolve_jobs)
    teachers: str | None = None  # run dir holding late-fusion teachers (default: the output run dir)
    pretrained_weights: str | None = None
    eval_batch_size: int = 128

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
        if self.img_size < 16:
            raise bad("img_size", f"must be >= 16, got {self.img_size}")

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
