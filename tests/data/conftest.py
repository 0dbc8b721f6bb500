"""Builders for tiny datasets on disk: every test writes real PNGs with `write_image`."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from wbc_edge.data import write_image

LIGHTS = ("fluorescent", "color1", "color2", "color3")


def cell_pixels(cell_index: int, light_index: int, size=(6, 5)) -> np.ndarray:
    """A distinct, recognisable RGB image per (cell, light): channel values encode both."""
    img = np.zeros((*size, 3), np.uint8)
    img[..., 0] = 10 + cell_index
    img[..., 1] = 100 + light_index
    img[..., 2] = 200
    return img


class FolderBuilder:
    """Writes `<root>/<class>/<cell_id>/<light>.png` datasets."""

    def __init__(self, root: Path):
        self.root = root
        self.count = 0

    def cell(self, label: str, cell_id: str | None = None, lights=LIGHTS, size=(6, 5), suffix=".png") -> dict[str, Path]:
        cell_id = cell_id or f"cell{self.count:03d}"
        paths = {}
        for j, light in enumerate(lights):
            paths[light] = self.root / label / cell_id / f"{light}{suffix}"
            write_image(paths[light], cell_pixels(self.count, j, size))
        self.count += 1
        return paths


@pytest.fixture
def folder(tmp_path) -> FolderBuilder:
    return FolderBuilder(tmp_path / "cells")


@pytest.fixture(scope="session")
def four_light_template(tmp_path_factory) -> Path:
    builder = FolderBuilder(tmp_path_factory.mktemp("template") / "cells")
    for label in ("neutrophil", "neutrophil", "lymphocyte", "lymphocyte", "eosinophil", "basophil"):
        builder.cell(label)
    return builder.root


@pytest.fixture
def four_light(folder, four_light_template) -> FolderBuilder:
    """Six four-light cells: two neutrophils, two lymphocytes, one eosinophil, one basophil.

    Written once per session and copied per test (each test may damage its copy).
    """
    shutil.copytree(four_light_template, folder.root)
    folder.count = 6
    return folder


@pytest.fixture
def write_csv():
    def write(path: Path, text: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return write


def one_line(message: str) -> bool:
    return len(message.splitlines()) == 1 and message.strip() == message


@pytest.fixture
def assert_one_line():
    def check(err) -> str:
        message = str(err.value) if hasattr(err, "value") else str(err)
        assert one_line(message), repr(message)
        return message

    return check
