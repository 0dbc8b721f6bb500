"""The disk fills up in the middle of a run (embedding API, real pipeline and locator): one-line
OutputError naming the file, the lines already on disk intact, and every cell the caller was handed
as counted is on disk; nothing on disk was not handed over."""
from __future__ import annotations

import errno
import io
import json

import pytest

from wbc_edge.errors import WbcError
from wbc_edge.runtime import Analyzer, open_source
from wbc_edge.runtime.results import ResultWriter, summarize


class FillingFile(io.FileIO):
    """A real file on disk that takes `room` bytes more, then fails as a full disk does (after a partial write)."""

    room = 0

    def write(self, data):
        space = self.room - self.tell()
        if len(data) > space:
            super().write(bytes(data[: max(space, 0)]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


@pytest.mark.parametrize("room", [2500, 6000])
def test_disk_full_mid_run_keeps_every_counted_cell(tmp_path, tiny_bundle, room):
    path = tmp_path / "results.jsonl"

    def opener(p, mode):
        f = FillingFile(p, mode)
        f.room = room
        return f

    handed = []
    with Analyzer(tiny_bundle, backend="onnxruntime", precision="fp32", intra_op_threads=1, batch_size=2) as an:
        writer = ResultWriter(path, header={"classes": list(an.spec.classes), "record_note": "disk-full test"}, opener=opener)
        with pytest.raises(WbcError) as e:
            an.analyze(open_source("synthetic://?seed=5&width=320&height=240&loop=1"), sink=writer,
                       on_result=lambda cell: handed.append(cell))
        writer.close()
    message = str(e.value)
    assert "\n" not in message and "No space left" in message and "results.jsonl" in message
    data = path.read_bytes()
    assert len(data) <= room and data.endswith(b"\n")  # the partial line was cut off again
    lines = [json.loads(x) for x in data.decode().splitlines()]
    cells = [x for x in lines if x["record"] == "cell"]
    assert len(cells) >= 1
    on_disk = [(c["set_index"], c["cell_index"], c["class"]) for c in cells]
    assert on_disk == [(c.set_index, c.cell_index, c.label) for c in handed]  # counted == written, in order
    assert summarize(path).total_cells == len(cells)
