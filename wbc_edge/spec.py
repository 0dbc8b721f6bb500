"""The model spec: the one contract between train, export and runtime.

Written by training, carried inside every checkpoint, ONNX file (metadata_props) and bundle,
and read back by the runtime. Nothing downstream hard-codes classes, lights, sizes or tensor names.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from wbc_edge.errors import SpecError

SCHEMA_VERSION = 1

# Paper order (Yang et al.); abbreviations as the paper writes them.
CLASSES = ("neutrophil", "lymphocyte", "eosinophil", "monocyte", "basophil")
CLASS_ABBREV = {"neutrophil": "NEU", "lymphocyte": "LYM", "eosinophil": "EOS", "monocyte": "MO", "basophil": "BAS"}
MODALITIES = ("fluorescent", "color1", "color2", "color3")
# The light cells are located in: stained nuclei glow in the dark-field fluorescence frame.
LOCATOR_LIGHT = MODALITIES[0]

METHODS = ("single", "early", "late", "mimo")
CHANNEL_LAYOUTS = ("modality_major",)  # channels 3*i .. 3*i+2 are light i, RGB order
HEAD_COMBINE = ("mean",)
MISSING_FILL = ("mean",)  # a missing light's slot holds the normalisation mean (zero after normalising)

# Neutral per-light statistics (0..255 units) until training measures them.
DEFAULT_MEAN = (127.5, 127.5, 127.5)
DEFAULT_STD = (64.0, 64.0, 64.0)

# Physical scale of the built-in simulator (wbc_edge.synth.scene: 2.3 px per micrometre, 64 px crops):
# the default for a spec that does not say (every spec written before the fields existed).
SIM_UM_PER_PX = 1.0 / 2.3
SIM_CROP_UM = 64 * SIM_UM_PER_PX  # 27.8 um: a crop holds a large monocyte with room to spare


# Key under which export embeds the spec in every ONNX graph's metadata_props: the graph carries its
# own contract, and a loader compares it with the bundle's spec.json.
ONNX_METADATA_KEY = "wbc_edge.spec"

# Model input sizes in px: below 16 the backbones' five 2x downsamplings leave nothing to classify.
INPUT_SIZE_RANGE = (16, 4096)


def input_size_problem(value: object) -> str | None:
    """Why `value` is not a model input size, or None when it is one."""
    lo, hi = INPUT_SIZE_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        return f"{value!r} is not an integer in {lo}..{hi}"
    return None


@dataclass(frozen=True)
class ModelSpec:
    """What a model expects and what it returns.

    Input: one uint8 tensor `input_name` of shape [batch, 3 * len(modalities), input_size, input_size],
    channels laid out by `channel_layout` (modality-major: light i occupies channels 3i..3i+2, RGB).
    Normalisation (x - mean) / std per light and channel happens inside the exported graph.
    Outputs: `probs_name` [batch, n_classes], the combined probabilities, and `head_probs_name`
    [batch, n_heads, n_classes]; head k reads light `heads[k]` ("fused" for single-network fusion).
    Physical scale: a crop spans `crop_um` micrometres (the runtime cuts that field of view from any
    camera and resamples it to input_size); `train_um_per_px` is the training frames' scale when known.
    Both default to the simulator's (SIM_CROP_UM, SIM_UM_PER_PX).
    """

    classes: tuple[str, ...] = CLASSES
    modalities: tuple[str, ...] = MODALITIES
    method: str = "mimo"
    backbone: str = "shufflenet_v2_x1_0"
    input_size: int = 224
    channel_layout: str = "modality_major"
    mean: tuple[tuple[float, float, float], ...] = (DEFAULT_MEAN,) * 4
    std: tuple[tuple[float, float, float], ...] = (DEFAULT_STD,) * 4
    heads: tuple[str, ...] = MODALITIES
    head_combine: str = "mean"
    missing_fill: str = "mean"
    input_name: str = "pixels"
    probs_name: str = "probs"
    head_probs_name: str = "head_probs"
    provenance: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    crop_um: float = SIM_CROP_UM
    train_um_per_px: float | None = SIM_UM_PER_PX
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    @property
    def in_channels(self) -> int:
        return 3 * len(self.modalities)

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, self.in_channels, self.input_size, self.input_size)

    @property
    def input_um_per_px(self) -> float:
        """Micrometres per pixel of the model input: the physical resolution the model sees."""
        return float(self.crop_um) / self.input_size

    def head_modality_index(self, head: int) -> int | None:
        """The light a head reads, or None for a fused head that reads every light."""
        name = self.heads[head]
        return self.modalities.index(name) if name in self.modalities else None

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        def bad(field_name: str, why: str) -> SpecError:
            return SpecError(f"model spec field '{field_name}': {why}")

        if self.schema_version != SCHEMA_VERSION:
            raise bad("schema_version", f"is {self.schema_version}, this wbc-edge reads {SCHEMA_VERSION}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise bad("classes", f"need two or more distinct names, got {list(self.classes)}")
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise bad("modalities", f"need one or more distinct names, got {list(self.modalities)}")
        if self.method not in METHODS:
            raise bad("method", f"'{self.method}' is not one of {list(METHODS)}")
        if (problem := input_size_problem(self.input_size)) is not None:
            raise bad("input_size", problem)
        if self.channel_layout not in CHANNEL_LAYOUTS:
            raise bad("channel_layout", f"'{self.channel_layout}' is not one of {list(CHANNEL_LAYOUTS)}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != len(self.modalities) or any(len(v) != 3 for v in value):
                raise bad(name, f"need one RGB triple per light ({len(self.modalities)}), got {value!r}")
        if any(s <= 0 for triple in self.std for s in triple):
            raise bad("std", "every value must be > 0")
        if not self.heads:
            raise bad("heads", "need at least one head")
        for h in self.heads:
            if h != "fused" and h not in self.modalities:
                raise bad("heads", f"head '{h}' is neither 'fused' nor one of the lights {list(self.modalities)}")
        if self.method in ("mimo", "late") and tuple(self.heads) != tuple(self.modalities):
            raise bad("heads", f"method '{self.method}' needs one head per light in light order")
        if self.method in ("early",) and tuple(self.heads) != ("fused",):
            raise bad("heads", "method 'early' has one head named 'fused'")
        if self.method == "single" and (len(self.modalities) != 1 or tuple(self.heads) != self.modalities):
            raise bad("heads", "method 'single' reads one light and has one head named after it")
        if self.head_combine not in HEAD_COMBINE:
            raise bad("head_combine", f"'{self.head_combine}' is not one of {list(HEAD_COMBINE)}")
        if self.missing_fill not in MISSING_FILL:
            raise bad("missing_fill", f"'{self.missing_fill}' is not one of {list(MISSING_FILL)}")
        if not isinstance(self.crop_um, (int, float)) or not 1.0 <= float(self.crop_um) <= 1000.0:
            raise bad("crop_um", f"{self.crop_um!r} is not a number of micrometres in 1..1000")
        if self.train_um_per_px is not None and (not isinstance(self.train_um_per_px, (int, float))
                                                 or not 0.005 <= float(self.train_um_per_px) <= 50.0):
            raise bad("train_um_per_px", f"{self.train_um_per_px!r} is not null or micrometres per pixel in 0.005..50")
        names = (self.input_name, self.probs_name, self.head_probs_name)
        if len(set(names)) != 3 or not all(isinstance(n, str) and n for n in names):
            raise bad("input_name", f"tensor names must be distinct non-empty strings, got {names}")

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = [list(x) if isinstance(x, tuple) else x for x in v]
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        if not isinstance(d, dict):
            raise SpecError(f"model spec: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"model spec field '{unknown[0]}': unknown field")
        if "schema_version" not in d:
            raise SpecError("model spec field 'schema_version': missing")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k in ("classes", "modalities", "heads"):
                if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                    raise SpecError(f"model spec field '{k}': expected a list of strings, got {v!r}")
                v = tuple(v)
            elif k in ("mean", "std"):
                try:
                    v = tuple(tuple(float(c) for c in triple) for triple in v)
                except (TypeError, ValueError):
                    raise SpecError(f"model spec field '{k}': expected a list of RGB triples, got {v!r}") from None
            elif k == "provenance" and not isinstance(v, dict):
                raise SpecError(f"model spec field 'provenance': expected an object, got {v!r}")
            kw[k] = v
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"model spec: not valid JSON ({e})") from None
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> dict[str, Any]:
        """The fields a runtime must agree with (provenance excluded)."""
        d = self.to_dict()
        d.pop("provenance")
        return d


def spec_for(method: str, modalities: tuple[str, ...] = MODALITIES, **kw: Any) -> ModelSpec:
    """A spec with heads derived from the method: the usual way to make one."""
    if method == "single":
        if len(modalities) != 1:
            raise SpecError(f"model spec field 'modalities': method 'single' reads one light, got {list(modalities)}")
        heads = tuple(modalities)
    elif method == "early":
        heads = ("fused",)
    else:
        heads = tuple(modalities)
    n = len(modalities)
    kw.setdefault("mean", (DEFAULT_MEAN,) * n)
    kw.setdefault("std", (DEFAULT_STD,) * n)
    return ModelSpec(method=method, modalities=tuple(modalities), heads=heads, **kw)


def first_difference(a: ModelSpec, b: ModelSpec) -> tuple[str, Any, Any] | None:
    """(field, a's value, b's value) of the first compared field in which two specs differ, or None."""
    for f in dataclasses.fields(ModelSpec):
        if f.compare and getattr(a, f.name) != getattr(b, f.name):
            return f.name, getattr(a, f.name), getattr(b, f.name)
    return None
