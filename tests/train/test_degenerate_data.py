"""Data on which a classifier's scores cannot mean what they claim is refused (or warned) before training."""
import logging

import numpy as np
import pytest

from wbc_edge.cli.train import main as train_main
from wbc_edge.data import open_dataset
from wbc_edge.data.images import write_image
from wbc_edge.errors import DataError
from wbc_edge.spec import MODALITIES
from wbc_edge.train.cv import load_arrays


def cells(root, label, n, px, start=0):
    for i in range(start, start + n):
        for light in MODALITIES:
            write_image(root / label / f"{label[:3]}{i}" / f"{light}.png", np.full((px, px, 3), 40 * (i % 5), np.uint8))


def test_one_class_is_refused_on_the_command_line(tmp_path, capsys):
    cells(tmp_path / "d", "neutrophil", 6, 24)
    rc = train_main(["--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--folds", "2", "--epochs", "1",
                     "--img-size", "16", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "only 1 class has cells (neutrophil)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "folds").exists()


def test_tiny_images_are_refused_and_small_ones_warned(tmp_path, caplog):
    cells(tmp_path / "d", "neutrophil", 3, 24)
    cells(tmp_path / "d", "lymphocyte", 3, 24)
    with caplog.at_level(logging.WARNING):
        load_arrays(open_dataset(tmp_path / "d"), 128)  # 24 px crops for a 128 px model: upsampled 5x
    assert "under a quarter of the 128 px input size" in caplog.text
    cells(tmp_path / "d", "lymphocyte", 1, 1, start=9)
    with pytest.raises(DataError, match=r"cell 'lym9' light 'fluorescent' \(1x1 px\): smaller than 8 px"):
        load_arrays(open_dataset(tmp_path / "d"), 16)
