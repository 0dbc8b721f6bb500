"""One run-directory layout, and one method name that users type everywhere."""
from pathlib import Path

import pytest

from wbc_edge.errors import DataError
from wbc_edge.export.pipeline import checkpoint_in_run
from wbc_edge.run_layout import RunLayout, method_is_done, split_of_checkpoint


def test_both_spellings_of_a_method_name_the_same_folder(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.checkpoint(2, "single:color1") == layout.checkpoint(2, "single-color1") == \
        tmp_path / "folds" / "fold2" / "single-color1" / "model.pt"
    assert split_of_checkpoint(layout.checkpoint(2, "mimo-kd")) == layout.split(2)
    method_dir = layout.method_dir(0, "single:fluorescent")
    method_dir.mkdir(parents=True)
    (method_dir / "model.pt").write_bytes(b"x")
    assert not method_is_done(method_dir)  # a checkpoint without metrics is a training still running
    (method_dir / "metrics.json").write_text("{}")
    assert layout.is_done(0, "single:fluorescent")
    assert checkpoint_in_run(tmp_path, "single:fluorescent", 0) == method_dir / "model.pt"
    with pytest.raises(DataError, match="no such checkpoint"):
        checkpoint_in_run(tmp_path, "single:color2", 0)
