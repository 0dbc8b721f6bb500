"""Manifest CSV: `cell_id,label,group,<one path column per light>`, paths relative to the CSV's folder.

`group` (donor or slide, for grouped cross-validation) is optional. Fields are stripped of
surrounding whitespace. Paths are POSIX style and must stay inside the CSV's folder.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from wbc_edge.bundle import atomic_write_text
from wbc_edge.data.dataset import CellDataset, CellRecord, ClassNames, check_on_error, file_problem, show_path, is_inside, show
from wbc_edge.errors import DataError

__all__ = ["CellRecord", "MANIFEST_NAME", "read_manifest", "write_manifest"]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
ID_COLUMN, LABEL_COLUMN, GROUP_COLUMN = "cell_id", "label", "group"
RESERVED = (ID_COLUMN, LABEL_COLUMN, GROUP_COLUMN)


def write_manifest(csv_path: str | os.PathLike, records: Iterable[CellRecord], modalities: Sequence[str]) -> Path:
    """Write records as a manifest CSV atomically; paths are stored relative to the CSV's folder.

    Relative paths in `records` are taken as ordinary paths (against the current directory). A path
    outside the CSV's folder, a missing light, a duplicate or blank cell id raise DataError.
    """
    csv_path = Path(csv_path)
    base = os.path.abspath(csv_path.parent)
    lights = list(modalities)
    if not lights:
        raise DataError(f"{show_path(csv_path)}: need one or more lights to write a manifest")
    for light in lights:
        if not isinstance(light, str) or not light.strip() or light != light.strip() or "\r" in light or "\n" in light or light.casefold() in RESERVED or lights.count(light) > 1:
            raise DataError(f"{show_path(csv_path)}: light name {show(light)} cannot be a manifest column (blank, padded, with a line break, duplicate or reserved)")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([ID_COLUMN, LABEL_COLUMN, GROUP_COLUMN, *lights])
    seen: set[str] = set()
    for record in records:
        where = f"{show_path(csv_path)}: cell {show(record.cell_id)}"
        fields = [record.cell_id, record.label, record.group or "", *(str(record.paths.get(light, "")) for light in lights)]
        if any(isinstance(f, str) and ("\r" in f or "\n" in f) for f in fields):
            raise DataError(f"{where}: a field contains a line break (not allowed in a manifest)")
        for name, value in (("cell_id", record.cell_id), ("label", record.label)):
            if not isinstance(value, str) or not value.strip() or value != value.strip():
                raise DataError(f"{where}: {name} must be a non-empty string without surrounding spaces")
        if record.group is not None and (not isinstance(record.group, str) or record.group != record.group.strip()):
            raise DataError(f"{where}: group must be a string without surrounding spaces or None")
        if record.cell_id in seen:
            raise DataError(f"{where}: duplicate cell_id")
        seen.add(record.cell_id)
        row = [record.cell_id, record.label, record.group or ""]
        for light in lights:
            if light not in record.paths:
                raise DataError(f"{where}: no path for light {show(light)}")
            relative = os.path.relpath(os.path.abspath(record.paths[light]), base)
            relative = Path(relative).as_posix()
            if not is_inside(relative):
                raise DataError(f"{where}: {show_path(record.paths[light])} is outside the manifest's folder {show_path(base)}")
            if relative != relative.strip():
                raise DataError(f"{where}: path {show(relative)} has surrounding spaces (fields are stripped on reading)")
            row.append(relative)
        writer.writerow(row)
    atomic_write_text(csv_path, out.getvalue())
    log.info("wrote manifest %s (%d cells, lights %s)", csv_path, len(seen), lights)
    return csv_path


def read_manifest(
    csv_path: str | os.PathLike,
    classes: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    on_error: str = "raise",
) -> CellDataset:
    """Read a manifest CSV into a CellDataset (image files are checked to exist, not read).

    `classes`: class names and order (default: the spec's); labels may be names or NEU/LYM/EOS/MO/BAS.
    `modalities`: which path columns to use, in that order (default: every path column, header order).
    `on_error="skip"` leaves out bad rows and records them in `.skipped`; file-level problems always raise.
    """
    check_on_error(on_error)
    csv_path = Path(csv_path)
    names = ClassNames(classes)
    rows = _read_rows(csv_path)
    if not rows:
        raise DataError(f"{show_path(csv_path)}: empty manifest (no header row)")
    header_line, header = rows[0]
    columns = _parse_header(csv_path, header_line, header)
    path_columns = [c for c in columns if c.casefold() not in RESERVED]
    if modalities is None:
        lights = path_columns
    else:
        lights = list(modalities)
        for light in lights:
            if light not in path_columns:
                raise DataError(f"{show_path(csv_path)}: missing column {show(light)} for a requested light (path columns: {path_columns})")
    if not lights:
        raise DataError(f"{show_path(csv_path)}: no image path columns (header needs {ID_COLUMN},{LABEL_COLUMN}[,{GROUP_COLUMN}] and one column per light)")
    position = {c.casefold() if c.casefold() in RESERVED else c: i for i, c in enumerate(columns)}

    root = csv_path.parent
    cells: list[CellRecord] = []
    skipped: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}
    for line, row in rows[1:]:
        if not any(field.strip() for field in row):
            continue
        try:
            cell = _parse_row(csv_path, line, row, columns, position, lights, names, root, first_line)
        except DataError as e:
            if on_error == "raise":
                raise
            item = row[position[ID_COLUMN]].strip() if len(row) > position[ID_COLUMN] else ""
            skipped.append((item or f"line {line}", str(e)))
            log.warning("%s", e)
            continue
        first_line[cell.cell_id] = line
        cells.append(cell)
    if not cells:
        detail = f" ({len(skipped)} skipped; first: {skipped[0][1]})" if skipped else ""
        raise DataError(f"{show_path(csv_path)}: no usable cells{detail}")
    with_group = sum(c.group is not None for c in cells)
    if 0 < with_group < len(cells):
        log.warning("%s: %d of %d cells have no group; grouped cross-validation treats them as one group ''",
                    show_path(csv_path), len(cells) - with_group, len(cells))
    return CellDataset(cells, names.names, lights, root, source=csv_path, layout="manifest", skipped=skipped, on_error=on_error)


def _read_rows(csv_path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) per CSV record; DataError for an unreadable or malformed file."""
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{show_path(csv_path)}: manifest not found") from None
    except IsADirectoryError:
        raise DataError(f"{show_path(csv_path)}: is a folder, not a manifest CSV") from None
    except OSError as e:
        raise DataError(f"{show_path(csv_path)}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{show_path(csv_path)}: not UTF-8 text (byte {e.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows = []
    try:
        for fields in reader:
            rows.append((reader.line_num, fields))
    except csv.Error as e:
        raise DataError(f"{show_path(csv_path)} line {reader.line_num}: malformed CSV ({e})") from None
    while rows and not any(f.strip() for f in rows[0][1]):
        rows.pop(0)
    return rows


def _parse_header(csv_path: Path, line: int, header: list[str]) -> list[str]:
    columns = [c.strip() for c in header]
    seen: set[str] = set()
    for i, name in enumerate(columns):
        key = name.casefold() if name.casefold() in RESERVED else name
        if not name:
            raise DataError(f"{show_path(csv_path)} line {line}: column {i + 1} of the header has no name")
        if key in seen:
            raise DataError(f"{show_path(csv_path)} line {line}: duplicate column {show(name)}")
        seen.add(key)
    for required in (ID_COLUMN, LABEL_COLUMN):
        if required not in seen:
            raise DataError(f"{show_path(csv_path)} line {line}: missing column {show(required)} (header: {columns})")
    return columns


def _parse_row(csv_path, line, row, columns, position, lights, names, root, first_line) -> CellRecord:
    where = f"{show_path(csv_path)} line {line}"
    if len(row) != len(columns):
        raise DataError(f"{where}: {len(row)} fields, the header has {len(columns)}")
    cell_id = row[position[ID_COLUMN]].strip()
    if not cell_id:
        raise DataError(f"{where}: empty cell_id")
    where = f"{where} (cell {show(cell_id)})"
    if cell_id in first_line:
        raise DataError(f"{where}: duplicate cell_id (first on line {first_line[cell_id]})")
    label = names.resolve(row[position[LABEL_COLUMN]].strip(), where)
    group = row[position[GROUP_COLUMN]].strip() or None if GROUP_COLUMN in position else None
    paths: dict[str, Path] = {}
    for light in lights:
        relative = row[position[light]].strip()
        if not relative:
            raise DataError(f"{where}: missing light {show(light)} (empty path)")
        if not is_inside(relative):
            raise DataError(f"{where}: path {show(relative)} for light {show(light)} leaves the manifest's folder (absolute or '..')")
        path = root / relative
        problem = file_problem(path)
        if problem:
            raise DataError(f"{where}: light {show(light)}: {show(relative)}: {problem}")
        paths[light] = path
    return CellRecord(cell_id=cell_id, label=label, group=group, paths=paths)
