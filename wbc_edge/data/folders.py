"""Folder layouts and `open_dataset`, the one entry point that recognises every format.

- four-light folder: `<root>/<class>/<cell_id>/<light>.<png|jpg|jpeg|tif|tiff>`
- single-light folder: `<root>/<class>/<image>` -> one light named `rgb`
- manifest CSV (a `.csv` file, or a folder holding `manifest.csv`): see `wbc_edge.data.manifest`
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

from wbc_edge.data.dataset import CellDataset, CellRecord, ClassNames, check_file, check_on_error, order_lights, show, show_path
from wbc_edge.data.manifest import MANIFEST_NAME, read_manifest
from wbc_edge.errors import DataError

log = logging.getLogger(__name__)

FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SINGLE_LIGHT = "rgb"


def open_dataset(
    path: str | os.PathLike,
    classes: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    on_error: str = "raise",
) -> CellDataset:
    """Open a dataset in any supported layout (see the module docstring).

    `classes` fixes class names and order (default: the spec's five, in paper order); folder and
    label names may be spec names or NEU/LYM/EOS/MO/BAS in any case. `modalities` picks lights and
    their order (default: a manifest's path columns; for a folder, the lights most cells have, spec
    order first). `on_error="skip"` leaves out bad cells, recorded in `.skipped`.
    """
    check_on_error(on_error)
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{show_path(path)}: not a dataset (expected a folder or a manifest .csv)")
        return read_manifest(path, classes, modalities, on_error)
    if not path.is_dir():
        raise DataError(f"{show_path(path)}: no such file or folder")
    if (path / MANIFEST_NAME).is_file():
        return read_manifest(path / MANIFEST_NAME, classes, modalities, on_error)
    return read_folder(path, classes, modalities, on_error)


def _visible(entries) -> list[Path]:
    return sorted(e for e in entries if not e.name.startswith("."))


def _list_dir(folder: Path) -> list[Path]:
    try:
        return _visible(folder.iterdir())
    except OSError as e:
        raise DataError(f"{show_path(folder)}: cannot list folder ({e.strerror or e})") from None


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES


def read_folder(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    on_error: str = "raise",
) -> CellDataset:
    """Read a four-light or single-light class folder (which one is decided from its contents)."""
    check_on_error(on_error)
    root = Path(root)
    names = ClassNames(classes)
    skipped: list[tuple[str, str]] = []

    def fail(item: str, message: str) -> None:
        if on_error == "raise":
            raise DataError(message)
        skipped.append((item, message))
        log.warning("%s", message)

    class_dirs: list[tuple[Path, str]] = []
    for entry in _list_dir(root):
        if not entry.is_dir():
            continue
        try:
            class_dirs.append((entry, names.resolve(entry.name, str(entry))))
        except DataError as e:
            fail(entry.name, str(e))
    if not class_dirs:
        detail = f" ({len(skipped)} skipped; first: {skipped[0][1]})" if skipped else ""
        raise DataError(f"{show_path(root)}: empty dataset (no class folders such as {show_path(root / names.names[0])}/){detail}")

    contents = {d: _list_dir(d) for d, _ in class_dirs}
    has_cell_dirs = any(e.is_dir() for entries in contents.values() for e in entries)
    has_images = any(_is_image(e) for entries in contents.values() for e in entries)
    if has_cell_dirs and has_images:
        mixed = next(d for d, entries in contents.items() if any(_is_image(e) for e in entries))
        raise DataError(f"{show_path(mixed)}: images directly in a class folder, but other class folders hold cell folders; use one layout")

    if has_cell_dirs:
        cells, lights = _four_light_cells(class_dirs, contents, modalities, fail)
        layout = "folder"
    else:
        if modalities is not None and tuple(modalities) != (SINGLE_LIGHT,):
            raise DataError(f"{show_path(root)}: a single-light folder has one light named {SINGLE_LIGHT!r}, not {list(modalities)}")
        cells = _single_light_cells(class_dirs, contents, fail)
        lights = (SINGLE_LIGHT,)
        layout = "single-light folder"

    kept: list[CellRecord] = []
    seen: dict[str, Path] = {}
    for cell in cells:
        first_path = next(iter(cell.paths.values()))
        if cell.cell_id in seen:
            fail(cell.cell_id, f"{show_path(first_path)}: duplicate cell id {show(cell.cell_id)} (also {show_path(seen[cell.cell_id])})")
            continue
        seen[cell.cell_id] = first_path
        try:
            for light in lights:
                check_file(cell.paths[light])
        except DataError as e:
            fail(cell.cell_id, str(e))
            continue
        kept.append(cell)
    if not kept:
        detail = f" ({len(skipped)} skipped; first: {skipped[0][1]})" if skipped else ""
        raise DataError(f"{show_path(root)}: empty dataset (no usable cells){detail}")
    return CellDataset(kept, names.names, lights, root, layout=layout, skipped=skipped, on_error=on_error)


def _four_light_cells(class_dirs, contents, modalities, fail) -> tuple[list[CellRecord], tuple[str, ...]]:
    found: list[tuple[str, str, dict[str, Path], Path]] = []
    for class_dir, label in class_dirs:
        for cell_dir in contents[class_dir]:
            if not cell_dir.is_dir():
                continue
            images: dict[str, Path] = {}
            for f in _list_dir(cell_dir):
                if not _is_image(f):
                    continue
                if f.stem in images:
                    fail(cell_dir.name, f"{show_path(f)}: second image for light {show(f.stem)} (also {images[f.stem].name})")
                    images = {}
                    break
                images[f.stem] = f
            else:
                found.append((cell_dir.name, label, images, cell_dir))
    if modalities is not None:
        lights = tuple(modalities)
        if not lights:
            raise DataError("modalities: need one or more light names")
    else:
        # The light set most cells share: one stray file in one cell does not change the dataset's lights.
        common = Counter(frozenset(images) for _, _, images, _ in found if images)
        if not common:
            raise DataError(f"{show_path(class_dirs[0][0].parent)}: empty dataset (no cell folder holds an image)")
        top = max(common.values())
        lights = max((order_lights(s) for s, n in common.items() if n == top), key=lambda s: (len(s), s))
    cells = []
    for cell_id, label, images, cell_dir in found:
        missing = [light for light in lights if light not in images]
        if missing:
            have = ", ".join(order_lights(images)) or "none"
            fail(cell_id, f"{show_path(cell_dir)}: missing light {show(missing[0])} (has: {have})")
            continue
        cells.append(CellRecord(cell_id=cell_id, label=label, group=None, paths={light: images[light] for light in lights}))
    return cells, lights


def _single_light_cells(class_dirs, contents, fail) -> list[CellRecord]:
    cells = []
    for class_dir, label in class_dirs:
        for f in contents[class_dir]:
            if _is_image(f):
                cells.append(CellRecord(cell_id=f.stem, label=label, group=None, paths={SINGLE_LIGHT: f}))
    return cells
