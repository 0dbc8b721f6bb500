"""Results file, differential and Wilson intervals, disk-full behaviour, summary rebuild."""
from __future__ import annotations

import errno
import io
import json
import math

import pytest

from wbc_edge.runtime.results import (CellResult, Differential, OutputError, ResultWriter, summarize,
                                      wilson_interval)


def cell(i: int, label: str, flags=()) -> CellResult:
    return CellResult(set_index=i // 3, cell_index=i % 3, time=1000.0 + i, box=(i, i, i + 10, i + 10), label=label,
                      probability=0.9, probs={label: 0.9}, head_probs={"fluorescent": [0.9, 0.1]}, flags=list(flags))


def test_wilson_matches_hand_computed_value():
    # 12 of 200 cells: p = 0.06, z = 1.96; by hand (Wilson 1927):
    # centre = (0.06 + 1.96^2/400) / (1 + 1.96^2/200) = 0.069604 / 1.019208 = 0.068292
    # half = 1.96 * sqrt(0.06*0.94/200 + 1.96^2/160000) / 1.019208 = 1.96 * 0.017487 / 1.019208 = 0.033630
    lo, hi = wilson_interval(12, 200, z=1.96)
    assert lo == pytest.approx(0.034662, abs=2e-5)
    assert hi == pytest.approx(0.101922, abs=2e-5)
    # edge cases: nothing counted, all counted, none of the class
    assert wilson_interval(0, 0) == (0.0, 0.0)
    lo0, hi0 = wilson_interval(0, 50)
    assert lo0 == 0.0 and 0.05 < hi0 < 0.08
    lo1, hi1 = wilson_interval(50, 50)
    assert hi1 == 1.0 and math.isclose(lo1, 1 - hi0, rel_tol=1e-9)


def test_differential_percentages_and_unknown_class():
    d = Differential(["a", "b"])
    for label in "aaab":
        d.add(label)
    d.add("c")  # a class the header did not list is kept, not dropped
    rows = {r.label: r for r in d.rows()}
    assert d.total == 5 and rows["a"].percent == pytest.approx(60.0) and rows["c"].count == 1
    assert rows["a"].ci_low < 60.0 < rows["a"].ci_high
    assert "3 (60%)" in d.status_line()


def test_writer_appends_and_summary_rebuilds(tmp_path):
    path = tmp_path / "r.jsonl"
    labels = ["neutrophil"] * 5 + ["lymphocyte"] * 3 + ["basophil"]
    with ResultWriter(path, header={"classes": ["neutrophil", "lymphocyte", "eosinophil", "monocyte", "basophil"]}) as w:
        for i, label in enumerate(labels):
            w.write(cell(i, label, flags=["heads_disagree"] if i == 2 else []))
    lines = path.read_text().splitlines()
    assert len(lines) == 10 and all(json.loads(x) for x in lines)
    s = summarize(path)
    assert s.counts == {"neutrophil": 5, "lymphocyte": 3, "eosinophil": 0, "monocyte": 0, "basophil": 1}
    assert s.flag_counts == {"heads_disagree": 1} and s.sets == 3 and s.bad_lines == 0
    assert CellResult.from_json_dict(json.loads(lines[3])) == cell(2, "neutrophil", flags=["heads_disagree"])


def test_summary_tolerates_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultWriter(path, header={"classes": ["x", "y"]}) as w:
        for i in range(4):
            w.write(cell(i, "xy"[i % 2]))
    with open(path, "ab") as f:
        f.write(b'{"record":"cell","set_index":9,"cla')  # what a SIGKILL mid-write could leave
    s = summarize(path)
    assert s.total_cells == 4 and s.bad_lines == 1


class FillingDisk(io.RawIOBase):
    """A file object that accepts `room` bytes and then fails like a full disk (keeping a partial write)."""

    def __init__(self, room: int):
        self.buf = bytearray()
        self.room = room

    def writable(self):
        return True

    def write(self, data):
        space = self.room - len(self.buf)
        if len(data) > space:
            self.buf += bytes(data[: max(space, 0)])
            raise OSError(errno.ENOSPC, "No space left on device")
        self.buf += bytes(data)
        return len(data)

    def tell(self):
        return len(self.buf)

    def truncate(self, size=None):
        del self.buf[size:]
        return size

    def fileno(self):
        raise OSError("no fd")


def test_disk_full_gives_one_line_error_and_keeps_written_lines(tmp_path):
    disk = FillingDisk(room=1500)
    w = ResultWriter(tmp_path / "full.jsonl", header={"classes": ["a", "b"]}, opener=lambda p, m: disk)
    with pytest.raises(OutputError) as e:
        for i in range(100):
            w.write(cell(i, "a"))
    msg = str(e.value)
    assert "\n" not in msg and "full.jsonl" in msg and "No space left" in msg
    assert disk.buf.endswith(b"\n")  # the partial line was cut off again
    lines = disk.buf.decode().splitlines()
    assert len(lines) == w.lines_written >= 2 and all(json.loads(x) for x in lines)


def test_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot open"):
        ResultWriter(blocker / "r.jsonl")


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full")
def test_real_full_device_gives_clear_error():
    with pytest.raises(OutputError, match="No space left on device"):
        ResultWriter("/dev/full", header={"classes": ["a"]})


def test_a_second_run_to_the_same_file_is_summarised_alone(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultWriter(path, header={"classes": ["a", "b"]}) as w:
        for i in range(5):
            w.write(cell(i, "a"))
    with ResultWriter(path, header={"classes": ["a", "b"]}) as w:
        for i in range(2):
            w.write(cell(i, "b"))
    s = summarize(path)
    assert s.counts == {"a": 0, "b": 2} and s.runs_in_file == 2
