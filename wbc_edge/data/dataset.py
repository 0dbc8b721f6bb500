"""The in-memory dataset every format loads into: cell records, class names, lazy image loading.

No torch here: training wraps a `CellDataset` in its own torch Dataset; calibration and the accuracy
gate read it directly.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import numpy as np

from wbc_edge.data.images import read_image
from wbc_edge.errors import DataError
from wbc_edge.spec import CLASS_ABBREV, CLASSES, MODALITIES

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")


@dataclass(frozen=True)
class CellRecord:
    """One cell: its id, class name, optional group (donor or slide), and one image path per light."""

    cell_id: str
    label: str
    group: str | None
    paths: dict[str, Path] = field(hash=False)


def show(value: object) -> str:
    """A user-supplied string quoted for a one-line message (newlines and control characters escaped)."""
    text = str(value)
    if text.isprintable() and "'" not in text:
        return f"'{text}'"
    return repr(text)


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise DataError(f"on_error={on_error!r}: expected one of {list(ON_ERROR)}")


class ClassNames:
    """Maps the names a dataset uses for classes (spec names or paper abbreviations, any case) to labels."""

    def __init__(self, classes: Sequence[str] | None = None):
        names = tuple(CLASSES if classes is None else classes)
        if not names or not all(isinstance(c, str) and c.strip() for c in names):
            raise DataError(f"classes: need one or more non-empty names, got {list(names)!r}")
        self.names = names
        self._index: dict[str, int] = {}
        for i, name in enumerate(names):
            for alias in self._aliases(name):
                other = self._index.setdefault(alias, i)
                if other != i:
                    raise DataError(f"classes: {show(names[other])} and {show(name)} name the same class")

    @staticmethod
    def _aliases(name: str) -> set[str]:
        key = name.strip().casefold()
        aliases = {key}
        for full, abbrev in CLASS_ABBREV.items():
            if key in (full.casefold(), abbrev.casefold()):
                aliases |= {full.casefold(), abbrev.casefold()}
        return aliases

    def index(self, name: str) -> int | None:
        return self._index.get(name.strip().casefold())

    def resolve(self, name: str, where: str) -> str:
        """The dataset's spelling of class `name`; DataError listing the known classes otherwise."""
        i = self.index(name)
        if i is None:
            known = ", ".join(self.names)
            raise DataError(f"{where}: unknown class {show(name)} (known: {known}; abbreviations NEU/LYM/EOS/MO/BAS accepted)")
        return self.names[i]


def order_lights(lights: Iterable[str]) -> tuple[str, ...]:
    """Spec lights in spec order first, then any others alphabetically."""
    lights = set(lights)
    known = [m for m in MODALITIES if m in lights]
    return tuple(known + sorted(lights - set(known)))


def is_inside(relative: str) -> bool:
    """True when a manifest path stays inside the manifest's folder (no absolute path, drive or '..')."""
    if not relative or "\x00" in relative:
        return False
    posix = PurePosixPath(relative.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts:
        return False
    return not (len(relative) >= 2 and relative[1] == ":")  # a Windows drive such as C:


class CellDataset:
    """Cells of one dataset; images are read on `load`, never kept in memory.

    `cells[i].label` is a name from `classes`; `labels[i]` is its index. `skipped` holds
    `(item, reason)` for every cell left out under `on_error="skip"`.
    """

    def __init__(
        self,
        cells: Sequence[CellRecord],
        classes: Sequence[str],
        modalities: Sequence[str],
        root: str | os.PathLike,
        *,
        source: str | os.PathLike | None = None,
        layout: str = "folder",
        skipped: Sequence[tuple[str, str]] = (),
        on_error: str = "raise",
    ):
        check_on_error(on_error)
        self.cells = list(cells)
        self.classes = tuple(classes)
        self.modalities = tuple(modalities)
        self.root = Path(root)
        self.source = Path(source) if source is not None else self.root
        self.layout = layout
        self.skipped = list(skipped)
        self.on_error = on_error
        self._fingerprint: str | None = None
        ClassNames(self.classes)  # validates the class list
        for cell in self.cells:
            if cell.label not in self.classes:
                raise DataError(f"cell {show(cell.cell_id)}: label {show(cell.label)} is not one of {list(self.classes)}")
            missing = [m for m in self.modalities if m not in cell.paths]
            if missing:
                raise DataError(f"cell {show(cell.cell_id)}: no path for light {show(missing[0])}")

    # ---- basic views -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.cells)

    def __repr__(self) -> str:
        return f"CellDataset({len(self)} cells, classes={list(self.classes)}, modalities={list(self.modalities)}, source={str(self.source)!r})"

    @property
    def labels(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[c.label] for c in self.cells], dtype=np.int64)

    @property
    def groups(self) -> list[str] | None:
        if not self.cells or all(c.group is None for c in self.cells):
            return None
        return [c.group if c.group is not None else "" for c in self.cells]

    @property
    def cell_ids(self) -> list[str]:
        return [c.cell_id for c in self.cells]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(c.label for c in self.cells)
        return {name: counts.get(name, 0) for name in self.classes}

    def subset(self, indices: Iterable[int]) -> "CellDataset":
        """A dataset of the cells at `indices` (same classes, lights and root; nothing skipped)."""
        picked = [self.cells[int(i)] for i in indices]
        return CellDataset(picked, self.classes, self.modalities, self.root, source=self.source,
                           layout=self.layout, on_error=self.on_error)

    # ---- images ------------------------------------------------------------------------------
    def load(self, i: int) -> dict[str, np.ndarray]:
        """Cell i's images by light (RGB uint8 HxWx3); DataError if one is unreadable or sizes differ."""
        cell = self.cells[i]
        images = {light: read_image(cell.paths[light]) for light in self.modalities}
        check_same_size(cell, images)
        return images

    def validate(self, deep: bool = False) -> "CellDataset":
        """Check every cell's files exist and are non-empty; with `deep`, read every image too.

        Under on_error="raise" the first problem raises DataError; under "skip" bad cells are moved
        to `skipped`. Returns self.
        """
        kept: list[CellRecord] = []
        for i, cell in enumerate(self.cells):
            try:
                for light in self.modalities:
                    check_file(cell.paths[light])
                if deep:
                    self.load(i)
            except DataError as e:
                if self.on_error == "raise":
                    raise
                self.skipped.append((cell.cell_id, str(e)))
                log.warning("skipping cell %s: %s", cell.cell_id, e)
                continue
            kept.append(cell)
        if len(kept) != len(self.cells):
            self.cells = kept
            self._fingerprint = None
        if not self.cells:
            raise DataError(f"{self.source}: no usable cells ({len(self.skipped)} skipped; first: {self.skipped[0][1] if self.skipped else 'none'})")
        return self

    # ---- reporting -----------------------------------------------------------------------------
    def report_skipped(self) -> list[str]:
        """One line per skipped cell: 'item: reason'."""
        return [reason if reason.startswith(str(item)) else f"{item}: {reason}" for item, reason in self.skipped]

    def describe(self) -> str:
        counts = ", ".join(f"{name} {n}" for name, n in self.class_counts().items())
        groups = self.groups
        n_groups = len(set(groups)) if groups is not None else 0
        group_text = f"{n_groups} group{'s' if n_groups != 1 else ''}" if groups is not None else "no groups"
        skipped = f"; {len(self.skipped)} cell{'s' if len(self.skipped) != 1 else ''} skipped" if self.skipped else ""
        return (
            f"{len(self)} cells from {self.source} ({self.layout} layout), "
            f"{len(self.modalities)} light(s) [{', '.join(self.modalities)}], "
            f"{len(self.classes)} classes ({counts}), {group_text}{skipped}."
        )

    def fingerprint(self) -> str:
        """SHA-256 over each cell's id, label, group and, per light, its path relative to the root and file bytes.

        Sorted by relative path, so the order cells were listed in does not matter.
        """
        if self._fingerprint is None:
            entries = []
            for cell in self.cells:
                for light in self.modalities:
                    entries.append((self.relative_path(cell.paths[light]), cell.cell_id, cell.label, cell.group or "", light, cell.paths[light]))
            h = hashlib.sha256()
            for relative, cell_id, label, group, light, path in sorted(entries, key=lambda e: e[:5]):
                for part in (relative, cell_id, label, group, light):
                    h.update(part.encode("utf-8", "surrogatepass") + b"\x00")
                try:
                    with open(path, "rb") as f:
                        while block := f.read(1 << 20):
                            h.update(hashlib.sha256(block).digest())
                except OSError as e:
                    raise DataError(f"{show_path(path)}: cannot read ({e.strerror or e})") from None
                h.update(b"\x01")
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def relative_path(self, path: Path) -> str:
        try:
            return Path(os.path.abspath(path)).relative_to(os.path.abspath(self.root)).as_posix()
        except ValueError:
            return Path(path).as_posix()


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be an image file (missing, not a file, empty), or None if it may be one."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        return f"cannot read ({e.strerror or e})"
    if not path.is_file():
        return "not a file"
    if size == 0:
        return "empty file (0 bytes)"
    return None


def check_file(path: Path) -> None:
    """Cheap check at open time: the file exists and is not empty (the image is decoded at `load`)."""
    problem = file_problem(path)
    if problem:
        raise DataError(f"{show_path(path)}: {problem}")


def show_path(path: Path | str) -> str:
    """A path for a one-line message: as is when printable, else quoted with escapes."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def check_same_size(cell: CellRecord, images: dict[str, np.ndarray]) -> None:
    lights = list(images)
    if not lights:
        return
    first = lights[0]
    h0, w0 = images[first].shape[:2]
    for light in lights[1:]:
        h, w = images[light].shape[:2]
        if (h, w) != (h0, w0):
            raise DataError(
                f"{show_path(cell.paths[light])}: light {show(light)} of cell {show(cell.cell_id)} is {w}x{h} pixels "
                f"but light {show(first)} ({show_path(cell.paths[first].name)}) is {w0}x{h0}"
            )
