"""Property-based tests of the manifest parser: any content either parses consistently or raises DataError."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wbc_edge.data import CellDataset, CellRecord, read_manifest, write_image, write_manifest
from wbc_edge.errors import DataError
from wbc_edge.spec import CLASS_ABBREV, CLASSES

SETTINGS = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Text without lone surrogates (they cannot be written as UTF-8), with the characters that break CSVs.
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
NASTY = st.text(alphabet=st.sampled_from(list('ab ,"\'\n\r\t\\/.:é\u2028\x00NEUlym')), max_size=10)

GOOD_PATHS = ("good/a.png", "good/b.png", " good/a.png ", "good/we,ird \"näme\".png")
BAD_PATHS = ("", "   ", "empty.png", "missing.png", "good", "../outside.png", "/etc/passwd",
             "good/../../outside.png", "good/../good/a.png", "C:\\good\\a.png", "good/\x00a.png")
FRAGMENTS = ["cell_id", "label", "group", "rgb", "uv", ",", ",", "\n", "\r\n", '"', '""', " ", "NEU", "lym",
             "Monocyte", "x1", "x2", *GOOD_PATHS, *BAD_PATHS, "\ufeff", "\u2028", "é"]
KNOWN_LABELS = {name.casefold() for name in CLASSES} | {a.casefold() for a in CLASS_ABBREV.values()}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "data"
    for name in ("a.png", "b.png", 'we,ird "näme".png'):
        write_image(root / "good" / name, np.full((4, 4, 3), 7, np.uint8))
    (root / "empty.png").write_bytes(b"")
    write_image(base / "outside.png", np.zeros((4, 4, 3), np.uint8))
    return root


def check_outcome(csv_path: Path, on_error: str) -> CellDataset | None:
    """Read the manifest; a dataset must be self-consistent, an error one DataError line naming the file."""
    try:
        ds = read_manifest(csv_path, on_error=on_error)
    except DataError as e:
        message = str(e)
        assert len(message.splitlines()) == 1, repr(message)
        assert str(csv_path) in message
        return None
    assert len(ds) >= 1
    ids = ds.cell_ids
    assert len(set(ids)) == len(ids) and all(i and i == i.strip() for i in ids)
    assert ds.labels.min() >= 0 and ds.labels.max() < len(ds.classes)
    for cell in ds.cells:
        assert set(cell.paths) == set(ds.modalities)
        for path in cell.paths.values():
            assert csv_path.parent in path.parents and ".." not in path.parts
            assert path.is_file() and path.stat().st_size > 0
    if on_error == "raise":
        assert ds.skipped == []
    for item, reason in ds.skipped:
        assert len(reason.splitlines()) == 1 and str(csv_path) in reason
    return ds


def data_rows(csv_path: Path) -> int:
    """Non-blank records after the header, counted with the csv module on its own."""
    text = csv_path.read_bytes().decode("utf-8-sig")
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if any(f.strip() for f in r)]
    return max(len(rows) - 1, 0)


@SETTINGS
@given(pieces=st.lists(st.one_of(st.sampled_from(FRAGMENTS), TEXT), max_size=60))
def test_random_content_parses_consistently_or_raises_data_error(root, pieces):
    csv_path = root / "manifest.csv"
    csv_path.write_text("".join(pieces), encoding="utf-8")
    strict = check_outcome(csv_path, "raise")
    lenient = check_outcome(csv_path, "skip")
    if strict is not None:
        # Nothing bad to skip: both modes agree exactly.
        assert lenient is not None and lenient.cell_ids == strict.cell_ids and lenient.skipped == []
        assert lenient.labels.tolist() == strict.labels.tolist()
    if lenient is not None:
        # No row is lost silently: each one is either a cell or a skipped entry.
        assert len(lenient) + len(lenient.skipped) == data_rows(csv_path)
        again = read_manifest(csv_path, on_error="skip")
        assert again.cell_ids == lenient.cell_ids and again.fingerprint() == lenient.fingerprint()


@SETTINGS
@given(content=st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_data_error(root, content):
    csv_path = root / "manifest.csv"
    csv_path.write_bytes(b"cell_id,label,rgb\n" + content)
    check_outcome(csv_path, "skip")
    check_outcome(csv_path, "raise")


ROW = st.tuples(
    NASTY,                                                    # cell_id
    st.one_of(st.sampled_from(["NEU", " lym ", "Monocyte", "BAS", "eos"]), NASTY),  # label
    st.one_of(st.none(), NASTY),                              # group
    st.sampled_from(GOOD_PATHS + BAD_PATHS),                  # path
    st.booleans(),                                            # drop the last field
)


@SETTINGS
@given(rows=st.lists(ROW, max_size=12), header_case=st.sampled_from(["cell_id,label,group,rgb", "Label,GROUP,rgb,Cell_ID"]))
def test_structured_rows_match_an_independent_model(root, rows, header_case):
    columns = header_case.split(",")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # so that a lone '\r' inside a field is quoted too
    writer.writerow(columns)
    expected: dict[str, str] = {}
    blank = 0
    for cell_id, label, group, path, drop in rows:
        values = {"cell_id": cell_id, "label": label, "group": group or "", "rgb": path}
        fields = [values[c.casefold()] for c in columns]
        if drop:
            fields = fields[:-1]
        writer.writerow(fields)
        if not any(f.strip() for f in fields):
            blank += 1
            continue
        ok = (
            not drop
            and cell_id.strip() != ""
            and cell_id.strip() not in expected
            and label.strip().casefold() in KNOWN_LABELS
            and path in GOOD_PATHS
        )
        if ok:
            expected[cell_id.strip()] = label.strip().casefold()
    csv_path = root / "manifest.csv"
    csv_path.write_text(out.getvalue(), encoding="utf-8")
    n_rows = len(rows) - blank

    lenient = check_outcome(csv_path, "skip")
    if not expected:
        assert lenient is None
    else:
        assert lenient is not None and lenient.cell_ids == list(expected)
        for cell in lenient.cells:
            assert expected[cell.cell_id] in (cell.label.casefold(), CLASS_ABBREV[cell.label].casefold())
        assert len(lenient.skipped) == n_rows - len(expected)
    strict = check_outcome(csv_path, "raise")
    assert (strict is not None) == (len(expected) == n_rows and n_rows > 0)


RESERVED = ("cell_id", "label", "group")
LABEL = st.sampled_from(list(CLASSES) + list(CLASS_ABBREV.values())).flatmap(
    lambda name: st.sampled_from([name, name.upper(), name.lower(), name.title()]))


def writable(text: str | None, may_be_empty: bool = False) -> bool:
    """Independent statement of what write_manifest accepts in a name field."""
    if text is None:
        return True
    return (may_be_empty or text != "") and text == text.strip() and "\r" not in text and "\n" not in text


@SETTINGS
@given(
    ids=st.lists(st.one_of(TEXT, NASTY), min_size=1, max_size=6, unique=True),
    lights=st.lists(st.one_of(TEXT, NASTY, st.sampled_from(["Label", "color1"])), min_size=1, max_size=3, unique=True),
    data=st.data(),
)
def test_write_then_read_round_trips_or_refuses(root, ids, lights, data):
    files = sorted((root / "good").iterdir())
    records = []
    for cell_id in ids:
        label = data.draw(LABEL)
        group = data.draw(st.one_of(st.none(), st.just(""), TEXT, NASTY))
        paths = {light: data.draw(st.sampled_from(files)) for light in lights}
        records.append(CellRecord(cell_id, label, group, paths))
    valid = (
        all(writable(light) and light.casefold() not in RESERVED for light in lights)
        and all(writable(r.cell_id) and writable(r.group, may_be_empty=True) for r in records)
    )
    csv_path = root / "manifest.csv"
    csv_path.write_text("old content\n")
    try:
        write_manifest(csv_path, records, lights)
    except DataError as e:
        assert not valid and len(str(e).splitlines()) == 1, str(e)
        assert csv_path.read_text() == "old content\n"  # a refused write leaves the file alone
        return
    assert valid
    ds = read_manifest(csv_path, modalities=lights)
    assert ds.cell_ids == ids
    assert ds.modalities == tuple(lights)
    for record, cell in zip(records, ds.cells):
        assert cell.label in CLASSES and record.label.casefold() in (cell.label, CLASS_ABBREV[cell.label].casefold())
        assert cell.group == (record.group or None)
        assert {k: os.path.abspath(v) for k, v in cell.paths.items()} == {k: os.path.abspath(v) for k, v in record.paths.items()}
    expected_groups = None if all(not r.group for r in records) else [r.group or "" for r in records]
    assert ds.groups == expected_groups
