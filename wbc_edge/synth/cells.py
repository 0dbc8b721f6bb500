"""Synthetic four-light white-cell crops and datasets (deterministic from a seed)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from wbc_edge.errors import DataError
from wbc_edge.preprocess import fit_to_size
from wbc_edge.spec import CLASS_ABBREV, CLASSES
from wbc_edge.synth.scene import (
    CROP_PX,
    LIGHTS,
    Scene,
    Stain,
    sample_shifts,
    sample_wbc,
)

log = logging.getLogger(__name__)

# Paper's class frequencies (Yang et al., 14,912 cells).
PAPER_MIX = {"neutrophil": 0.645, "lymphocyte": 0.298, "eosinophil": 0.045, "monocyte": 0.008, "basophil": 0.003}
# Blood at a chosen mix, for validating the differential (wbc-synth --mix, benchmarks/count.py). Illustrative
# shares inside (normal) or beyond (the named conditions) common adult reference ranges, not clinical values.
BLOOD_MIXES = {
    "normal": {"neutrophil": 0.60, "lymphocyte": 0.30, "eosinophil": 0.03, "monocyte": 0.06, "basophil": 0.01},
    "eosinophilia": {"neutrophil": 0.52, "lymphocyte": 0.25, "eosinophil": 0.15, "monocyte": 0.06, "basophil": 0.02},
    "neutrophilia": {"neutrophil": 0.85, "lymphocyte": 0.09, "eosinophil": 0.015, "monocyte": 0.04, "basophil": 0.005},
    "lymphocytosis": {"neutrophil": 0.30, "lymphocyte": 0.60, "eosinophil": 0.03, "monocyte": 0.06, "basophil": 0.01},
    "monocytosis": {"neutrophil": 0.55, "lymphocyte": 0.25, "eosinophil": 0.04, "monocyte": 0.15, "basophil": 0.01},
}
VIRTUAL_FIELD = (640, 480)  # crops sit somewhere in a field of this size (sets their illumination)


def render_cell(label: str, rng: np.random.Generator, size: int = CROP_PX, stain: Stain | None = None) -> dict[str, np.ndarray]:
    """One white cell of class `label`, centred in its window among red cells, in all four lights.

    The window is always CROP_PX x CROP_PX at native field scale (what the runtime crops around a
    located cell); it is resized to size x size (area interpolation) when `size` differs, as the
    runtime's `fit_to_size` does. Returns {light: RGB uint8 size x size x 3}. `stain` is the donor's
    staining (drawn if None).
    """
    if label not in CLASSES:
        raise DataError(f"class '{label}': unknown; expected one of {list(CLASSES)}")
    if stain is None:
        stain = Stain.sample(rng)
    cell_stain = stain.jitter(rng)
    shape = sample_wbc(label, rng)
    window = CROP_PX
    scene = Scene(window, window)
    scene.add_rbcs(rng, haemoglobin=cell_stain.haemoglobin)
    # the runtime centres on the located nucleus cluster: allow a pixel of slack
    cx = (window - 1) / 2 + rng.normal(0, 0.7)
    cy = (window - 1) / 2 + rng.normal(0, 0.7)
    scene.add_wbc(shape, cx, cy, rng, cell_stain)
    if rng.random() < 0.15:
        scene.add_debris(rng, 1)
    origin = (float(rng.uniform(0, VIRTUAL_FIELD[0] - window)), float(rng.uniform(0, VIRTUAL_FIELD[1] - window)))
    shifts = sample_shifts(rng, LIGHTS)
    images = scene.render(rng, LIGHTS, cell_stain, shifts, origin=origin, field_size=VIRTUAL_FIELD)
    if size != window:
        images = {light: fit_to_size(img, size) for light, img in images.items()}
    return images


def class_counts(n: int, class_mix: str | Mapping[str, float] = "paper") -> dict[str, int]:
    """How many cells of each class for n cells; every class gets at least min(5, n // 5) when its share > 0."""
    mix = resolve_mix(class_mix)
    if n < 0:
        raise DataError(f"cell count: must be >= 0, got {n}")
    total = sum(mix.values())
    classes = [c for c in CLASSES if mix.get(c, 0) > 0]
    floor = min(5, n // 5)
    exact = {c: n * mix[c] / total for c in classes}
    counts = {c: int(exact[c]) for c in classes}
    # largest remainder
    for c in sorted(classes, key=lambda c: exact[c] - counts[c], reverse=True)[: n - sum(counts.values())]:
        counts[c] += 1
    for c in classes:
        while counts[c] < floor:
            donor = max(classes, key=lambda d: counts[d])
            counts[donor] -= 1
            counts[c] += 1
    return {c: counts.get(c, 0) for c in CLASSES}


def resolve_mix(class_mix: str | Mapping[str, float]) -> dict[str, float]:
    """Class shares from 'paper', 'balanced', a BLOOD_MIXES name, 'NEU=0.5,LYM=0.3,...' or a mapping (checked, not normalised)."""
    if isinstance(class_mix, str):
        if class_mix == "paper":
            mix = dict(PAPER_MIX)
        elif class_mix == "balanced":
            mix = {c: 1.0 for c in CLASSES}
        elif class_mix in BLOOD_MIXES:
            mix = dict(BLOOD_MIXES[class_mix])
        else:
            mix = parse_class_mix(class_mix)
    else:
        mix = dict(class_mix)
    unknown = [c for c in mix if c not in CLASSES]
    if unknown:
        raise DataError(f"class mix: unknown class '{unknown[0]}'; expected one of {list(CLASSES)}")
    if any(not np.isfinite(v) or v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise DataError(f"class mix: shares must be non-negative and sum to more than 0, got {mix}")
    return mix


def parse_class_mix(text: str) -> dict[str, float]:
    """'NEU=0.5,LYM=0.3,...' or full class names; DataError naming the bad item."""
    by_abbrev = {v.lower(): k for k, v in CLASS_ABBREV.items()}
    mix: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        key = name.strip().lower()
        cls = by_abbrev.get(key, key)
        if not sep or cls not in CLASSES:
            raise DataError(f"class mix item '{item}': expected paper, balanced, one of {list(BLOOD_MIXES)} "
                            f"or CLASS=SHARE with CLASS one of {list(CLASS_ABBREV.values())}")
        try:
            mix[cls] = float(value)
        except ValueError:
            raise DataError(f"class mix item '{item}': share '{value}' is not a number") from None
    if not mix:
        raise DataError(f"class mix '{text}': no CLASS=SHARE items")
    return mix


def cell_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for cell `index`: independent of how many cells are made or in which order."""
    return np.random.default_rng([seed, 1, index])


def donor_stain(seed: int, group: int) -> Stain:
    return Stain.sample(np.random.default_rng([seed, 2, group]))


def plan_cells(n: int, seed: int, class_mix: str | Mapping[str, float] = "paper", n_groups: int = 8) -> list[tuple[str, str, int]]:
    """(cell_id, label, group) for every cell, shuffled deterministically."""
    if n_groups < 1:
        raise DataError(f"n_groups: must be >= 1, got {n_groups}")
    counts = class_counts(n, class_mix)
    labels = [c for c in CLASSES for _ in range(counts[c])]
    order = np.random.default_rng([seed, 0]).permutation(len(labels))
    plan = []
    for i, j in enumerate(order):
        plan.append((f"c{i:06d}", labels[j], i % n_groups))
    return plan


def write_cells(out: str | os.PathLike, n: int, seed: int, size: int = CROP_PX, class_mix: str | Mapping[str, float] = "paper",
                n_groups: int = 8, fmt: str = "png", progress: bool = False) -> Path:
    """Write n four-light cells as `<out>/<class>/<cell_id>/<light>.<fmt>` plus `<out>/manifest.csv`.

    The same seed gives byte-identical files. group = simulated donor (donor-level stain variation).
    Returns the manifest path.
    """
    from wbc_edge.data.images import write_image

    if fmt not in ("png", "tif", "tiff", "bmp"):
        raise DataError(f"image format '{fmt}': use a lossless one (png, tif, bmp)")
    if not 16 <= size <= 1024:
        raise DataError(f"cell size: {size} px is outside 16..1024")
    out = Path(out)
    plan = plan_cells(n, seed, class_mix, n_groups)
    stains = {g: donor_stain(seed, g) for g in range(n_groups)}
    rows = []
    iterator = plan
    if progress:
        from tqdm import tqdm

        iterator = tqdm(plan, desc="cells", unit="cell")
    for index, (cell_id, label, group) in enumerate(iterator):
        images = render_cell(label, cell_rng(seed, index), size=size, stain=stains[group])
        paths = {}
        for light, img in images.items():
            path = out / label / cell_id / f"{light}.{fmt}"
            write_image(path, img)
            paths[light] = path
        rows.append((cell_id, label, f"donor{group:02d}", paths))
    manifest = out / "manifest.csv"
    _write_manifest(manifest, rows)
    log.info("wrote %d synthetic cells to %s", len(rows), out)
    return manifest


def _write_manifest(manifest: Path, rows) -> None:
    try:
        from wbc_edge.data.dataset import CellRecord
        from wbc_edge.data.manifest import write_manifest
    except ImportError:  # the data package's writer not present: plain CSV, same columns
        write_manifest = None
    if write_manifest is not None:
        records = [CellRecord(cell_id=c, label=l, group=g, paths=p) for c, l, g, p in rows]
        write_manifest(manifest, records, LIGHTS)
        return
    import csv
    import io

    from wbc_edge.bundle import atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["cell_id", "label", "group", *LIGHTS])
    for cell_id, label, group, paths in rows:
        writer.writerow([cell_id, label, group, *(paths[l].relative_to(manifest.parent).as_posix() for l in LIGHTS)])
    atomic_write_text(manifest, buf.getvalue())
