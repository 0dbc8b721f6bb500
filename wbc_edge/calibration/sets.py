"""Calibration sets: the uint8 model inputs INT8 ranges are measured on, stored with a manifest.

Chosen from the training split only (never the cells the gate judges on), stratified so the rare
classes (basophils are 0.3% of the paper's cells) are present. No torch here.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from wbc_edge.bundle import atomic_write_bytes, atomic_write_text
from wbc_edge.errors import CalibrationError
from wbc_edge.preprocess import cell_to_input
from wbc_edge.spec import ModelSpec

LOGGER = logging.getLogger(__name__)
INPUTS_FILE = "inputs.npz"
MANIFEST_FILE = "calibration.json"
RECOMMENDED_MIN = 300
MIN_PER_CLASS = 8


def tensor_hash(inputs: np.ndarray) -> str:
    """SHA-256 over dtype, shape and bytes of the input tensor."""
    h = hashlib.sha256(f"{inputs.dtype.str}{tuple(inputs.shape)}".encode())
    h.update(np.ascontiguousarray(inputs).tobytes())
    return h.hexdigest()


@dataclass
class CalibrationSet:
    """Stacked uint8 inputs [N, 3M, S, S] plus what they are (cell ids, labels, source)."""

    inputs: np.ndarray
    input_name: str
    cell_ids: list[str]
    labels: list[str | None]
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.inputs.dtype != np.uint8 or self.inputs.ndim != 4:
            raise CalibrationError(f"calibration set: inputs must be uint8 [N, C, S, S], got {self.inputs.dtype} {self.inputs.shape}")
        if len(self.cell_ids) != len(self.inputs) or len(self.labels) != len(self.inputs):
            raise CalibrationError(f"calibration set: {len(self.inputs)} inputs but {len(self.cell_ids)} cell ids and {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def content_hash(self) -> str:
        return tensor_hash(self.inputs)

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for label in self.labels:
            key = "unlabelled" if label is None else label
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def manifest(self) -> dict[str, Any]:
        from wbc_edge import __version__

        return {
            "input_name": self.input_name,
            "shape": list(self.inputs.shape),
            "dtype": str(self.inputs.dtype),
            "sha256": self.content_hash,
            "n": len(self),
            "class_counts": self.class_counts(),
            "cell_ids": list(self.cell_ids),
            "labels": list(self.labels),
            "source": self.source,
            "tool": {"wbc_edge": __version__},
        }

    def batches(self, batch_size: int = 16) -> Iterator[dict[str, np.ndarray]]:
        """Feeds {input_name: uint8 batch} (Polygraphy style); the last batch may be smaller."""
        if batch_size < 1:
            raise CalibrationError(f"calibration batch size {batch_size} must be >= 1")
        if len(self) < batch_size:
            raise CalibrationError(f"calibration set has {len(self)} inputs, fewer than the batch size {batch_size}")
        for start in range(0, len(self), batch_size):
            yield {self.input_name: self.inputs[start : start + batch_size]}

    def check_spec(self, spec: ModelSpec, where: str = "calibration set") -> None:
        expected = spec.input_shape(len(self))
        if tuple(self.inputs.shape) != expected or self.input_name != spec.input_name:
            raise CalibrationError(
                f"{where}: inputs '{self.input_name}' {tuple(self.inputs.shape)[1:]} do not match the model's "
                f"'{spec.input_name}' {expected[1:]}"
            )
        # same shape, another channel layout: the INT8 ranges would be measured on the wrong lights
        stated = self.source.get("modalities")
        if isinstance(stated, list) and stated and tuple(stated) != tuple(spec.modalities):
            raise CalibrationError(f"{where}: its manifest says its channels are the lights {','.join(map(str, stated))} "
                                   f"but the model reads {','.join(spec.modalities)} (its spec)")

    # ---- storage ---------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        buf = io.BytesIO()
        np.savez_compressed(buf, inputs=self.inputs)
        atomic_write_bytes(directory / INPUTS_FILE, buf.getvalue())
        # Manifest last: a folder with a manifest always has the tensors it describes.
        atomic_write_text(directory / MANIFEST_FILE, json.dumps(self.manifest(), indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "CalibrationSet":
        directory = Path(directory)
        manifest_path, inputs_path = directory / MANIFEST_FILE, directory / INPUTS_FILE
        if not manifest_path.is_file():
            raise CalibrationError(f"{manifest_path}: no calibration manifest (make one with wbc-calib select or capture)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CalibrationError(f"{manifest_path}: unreadable manifest ({e})") from None
        try:
            with np.load(inputs_path, allow_pickle=False) as npz:
                inputs = npz["inputs"]
        except (OSError, KeyError, ValueError, EOFError) as e:
            raise CalibrationError(f"{inputs_path}: unreadable calibration tensors ({e})") from None
        if tensor_hash(inputs) != manifest.get("sha256"):
            raise CalibrationError(f"{inputs_path}: content hash does not match {MANIFEST_FILE} (changed or corrupt)")
        try:
            return cls(inputs=inputs, input_name=manifest["input_name"], cell_ids=list(manifest["cell_ids"]),
                       labels=list(manifest["labels"]), source=dict(manifest.get("source", {})))
        except KeyError as e:
            raise CalibrationError(f"{manifest_path}: missing field {e}") from None


def stratified_quota(counts: Sequence[int], size: int, min_per_class: int = MIN_PER_CLASS) -> list[int]:
    """How many cells to take per class: at least `min_per_class` (or all there are), the rest proportional."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if size >= total:
        return counts.tolist()
    quota = np.minimum(counts, min_per_class)
    if quota.sum() >= size:  # more classes than room: one cell per class in turns, rarest first
        quota = np.zeros_like(counts)
        order = np.argsort(counts, kind="stable")
        while quota.sum() < size:
            for i in order:
                if quota.sum() < size and quota[i] < counts[i]:
                    quota[i] += 1
        return quota.tolist()
    remaining = size - int(quota.sum())
    room = counts - quota
    share = room / room.sum() * remaining
    extra = np.minimum(np.floor(share).astype(np.int64), room)
    # Largest remainders get the last few cells.
    for i in np.argsort(-(share - np.floor(share))):
        if extra.sum() >= remaining:
            break
        if extra[i] < room[i]:
            extra[i] += 1
    return (quota + extra).tolist()


def inputs_from_dataset(dataset: Any, indices: Sequence[int], spec: ModelSpec) -> np.ndarray:
    """Stack dataset cells into a uint8 [N, 3M, S, S] batch via `cell_to_input` (the one preprocessing)."""
    out = np.empty(spec.input_shape(len(indices)), dtype=np.uint8)
    for row, i in enumerate(indices):
        cell_to_input(dataset.load(int(i)), spec, out=out[row])
    return out


def labels_in_spec_order(dataset: Any, indices: Sequence[int], spec: ModelSpec) -> np.ndarray:
    """Dataset label ints mapped to the spec's class order (the two may differ)."""
    names = [dataset.classes[int(dataset.labels[int(i)])] for i in indices]
    unknown = sorted(set(names) - set(spec.classes))
    if unknown:
        raise CalibrationError(f"dataset class '{unknown[0]}' is not one of the model's classes {list(spec.classes)}")
    return np.asarray([spec.classes.index(n) for n in names], dtype=np.int64)


def indices_for_ids(dataset: Any, cell_ids: Sequence[str], where: str = "split") -> list[int]:
    position = {c.cell_id: i for i, c in enumerate(dataset.cells)}
    missing = [c for c in cell_ids if c not in position]
    if missing:
        raise CalibrationError(f"{where}: cell '{missing[0]}' (and {len(missing) - 1} more) not in the dataset")
    return [position[c] for c in cell_ids]


def select_calibration_set(
    dataset: Any,
    train_ids: Sequence[str],
    spec: ModelSpec,
    size: int = 256,
    seed: int = 0,
    min_per_class: int = MIN_PER_CLASS,
) -> CalibrationSet:
    """A stratified, seeded sample of the TRAINING cells as model inputs."""
    if size < 1:
        raise CalibrationError(f"calibration size {size} must be >= 1")
    train_idx = np.asarray(indices_for_ids(dataset, train_ids, "training split"), dtype=np.int64)
    if len(train_idx) == 0:
        raise CalibrationError("training split is empty: nothing to calibrate on")
    labels = np.asarray(dataset.labels)[train_idx]
    n_classes = len(dataset.classes)
    quota = stratified_quota(np.bincount(labels, minlength=n_classes), size, min_per_class)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for k in range(n_classes):
        members = train_idx[labels == k]
        chosen.extend(rng.choice(members, size=quota[k], replace=False).tolist())
    chosen.sort()
    if len(chosen) < RECOMMENDED_MIN:
        LOGGER.warning("calibration set has %d cells; %d or more give steadier INT8 ranges", len(chosen), RECOMMENDED_MIN)
    fingerprint = dataset.fingerprint() if hasattr(dataset, "fingerprint") else None
    return CalibrationSet(
        inputs=inputs_from_dataset(dataset, chosen, spec),
        input_name=spec.input_name,
        cell_ids=[dataset.cells[i].cell_id for i in chosen],
        labels=[dataset.classes[int(dataset.labels[i])] for i in chosen],
        source={"kind": "dataset", "dataset": str(getattr(dataset, "root", "")), "dataset_fingerprint": fingerprint,
                "split": "train", "seed": seed, "requested_size": size, "input_size": spec.input_size,
                "modalities": list(spec.modalities)},
    )


def spec_of_run(run: str | os.PathLike, fold: int, method: str) -> ModelSpec:
    """The spec of a trained method in a run: from its spec.json when written, else its checkpoint."""
    from wbc_edge.errors import DataError
    from wbc_edge.run_layout import RunLayout

    layout = RunLayout(run)
    spec_json = layout.spec(fold, method)
    if spec_json.is_file():
        return ModelSpec.from_json(spec_json.read_text())
    checkpoint = layout.checkpoint(fold, method)
    if not checkpoint.is_file():
        raise DataError(f"{checkpoint}: no such checkpoint (run {run}, fold {fold}, method {method})")
    from wbc_edge.train.checkpoint import load_payload  # torch only when no spec.json says it

    return ModelSpec.from_dict(load_payload(checkpoint)["spec"])


def select_from_run(run: str | os.PathLike, fold: int, method: str, size: int, seed: int = 0) -> CalibrationSet:
    """`wbc-calib select`: a stratified calibration set from a run's fold training split, in the method's spec."""
    from wbc_edge.data import open_dataset
    from wbc_edge.errors import DataError
    from wbc_edge.run_layout import RunLayout

    spec = spec_of_run(run, fold, method)
    split_path = RunLayout(run).split(fold)
    try:
        split = json.loads(split_path.read_text())
        dataset_path, train_ids = split["dataset"], split["train"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise DataError(f"{split_path}: unusable split ({type(e).__name__}: {e})") from None
    return select_calibration_set(open_dataset(dataset_path, classes=spec.classes), train_ids, spec, size, seed)
