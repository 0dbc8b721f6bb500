"""Nothing lost: `wbc-run` in a subprocess, fed damaged streams (corrupt, dropped and duplicated
frames, a light missing, undecodable files), SIGKILLed at a random point. Every line on disk parses,
`wbc-run summarize` equals a count of the cell lines, and a second run appends without touching
the first run's lines."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wbc_edge.cli.run import main as wbc_run
from wbc_edge.runtime.results import summarize

FAULTY_CAMERA = "synthetic://?seed={seed}&width=320&height=240&loop=1&drop_every=7&corrupt_every=11&duplicate_every=13"


def run_cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "wbc_edge.cli.run", *args, "--quiet", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def cell_lines(path: Path) -> int:
    return path.read_text().count('"record":"cell"') if path.exists() else 0


def wait_for_cells(path: Path, n: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t_end = time.monotonic() + timeout
    while cell_lines(path) < n:
        if proc.poll() is not None:
            raise AssertionError(f"wbc-run ended early: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > t_end:
            proc.kill()
            raise AssertionError(f"fewer than {n} cells written in {timeout}s")
        time.sleep(0.02)


def parsed_runs(path: Path) -> list[list[dict]]:
    """The file's records split into runs (a run header starts each); every line must parse."""
    runs: list[list[dict]] = []
    for line in path.read_text().splitlines():
        record = json.loads(line)  # raises on a half-written line: none may exist
        if record["record"] == "run":
            runs.append([])
        else:
            assert record["record"] == "cell" and runs, "cell line before any run header"
            runs[-1].append(record)
    return runs


def counted(cells: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cells:
        if "beyond_max_cells" not in c["flags"]:
            out[c["class"]] = out.get(c["class"], 0) + 1
    return out


@pytest.mark.parametrize("seed", [11, 23])
def test_sigkill_at_a_random_point_of_a_faulty_stream_loses_no_accepted_cell(tmp_path, tiny_bundle, seed, capsys):
    rng = random.Random(seed)
    out = tmp_path / "results.jsonl"
    proc = run_cli([FAULTY_CAMERA.format(seed=seed), "--model", str(tiny_bundle), "--precision", "fp32",
                    "--missing-light", rng.choice(["skip", "heads"]), "--out", str(out), "--batch", str(rng.choice([1, 4, 8]))])
    wait_for_cells(out, rng.randint(8, 20), proc)  # past the first injected faults
    time.sleep(rng.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL  # it really was killed, not ended on its own

    (first,) = parsed_runs(out)
    written = out.read_bytes()
    summary = summarize(out)
    assert summary.bad_lines == 0 and summary.total_cells == len(first) > 0
    assert {k: v for k, v in summary.counts.items() if v} == counted(first)
    # the flags show the injected faults reached the runtime and were survived, not avoided
    assert any(f.startswith("missing:") or "frame_rejected" in f or "duplicate" in f for c in first for f in c["flags"])

    capsys.readouterr()
    assert wbc_run(["summarize", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_cells"] == len(first)

    # a second, complete run to the same file appends; the killed run's lines stay byte-identical
    proc = run_cli([f"synthetic://?seed={seed}&sets=3&width=320&height=240", "--model", str(tiny_bundle),
                    "--precision", "fp32", "--out", str(out)])
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert out.read_bytes().startswith(written)
    first_again, second = parsed_runs(out)
    assert first_again == first
    again = summarize(out)
    assert again.runs_in_file == 2 and again.total_cells == len(second)


def _write_damaged_folder(root: Path) -> tuple[Path, dict[str, str]]:
    from wbc_edge.synth.frames import write_frames

    write_frames(root, sets=5, seed=9, width=320, height=240, video=False)
    frames = sorted((root / "frames").iterdir())
    damage = {}
    frames[1].write_bytes(b"")                                   # zero bytes
    damage[frames[1].name] = "zero bytes"
    frames[6].write_bytes(frames[6].read_bytes()[:200])          # truncated PNG
    damage[frames[6].name] = "truncated"
    frames[9].write_bytes(b"this is not an image at all")        # not an image
    damage[frames[9].name] = "not an image"
    frames[14].unlink()                                          # a light missing from a set
    damage[frames[14].name] = "missing"
    return root / "frames", damage


def test_damaged_image_folder_runs_to_the_end_with_every_readable_cell(tmp_path, tiny_bundle):
    clean_root = tmp_path / "clean"
    from wbc_edge.synth.frames import write_frames

    write_frames(clean_root, sets=5, seed=9, width=320, height=240, video=False)
    folder, damage = _write_damaged_folder(tmp_path / "damaged")
    results = {}
    for name, source in (("clean", clean_root / "frames"), ("damaged", folder)):
        out = tmp_path / f"{name}.jsonl"
        proc = run_cli([str(source), "--model", str(tiny_bundle), "--precision", "fp32", "--missing-light", "heads",
                        "--out", str(out)])
        stdout, stderr = proc.communicate(timeout=90)
        assert proc.returncode == 0, stderr
        (cells,) = parsed_runs(out)
        summary = summarize(out)
        assert summary.total_cells == len(cells) and summary.bad_lines == 0
        total_line = next(x for x in stdout.splitlines() if x.startswith("total"))
        assert int(total_line.split()[1]) == len(cells)  # what was printed is what the file holds
        results[name] = (cells, stderr)
    damaged_cells, stderr = results["damaged"]
    for file_name, what in damage.items():
        if what != "missing":
            assert file_name in stderr, f"{what} file {file_name} not named in a warning"
    assert len(damaged_cells) > 0
    # a file source drops nothing: sets the damage did not touch give exactly the clean run's cells
    untouched = [c for c in damaged_cells if not any(f.startswith(("missing:", "frame_rejected")) for f in c["flags"])]
    clean_by_box = {(tuple(c["box"]), c["class"]) for c in results["clean"][0]}
    assert untouched and all((tuple(c["box"]), c["class"]) in clean_by_box for c in untouched)


def test_sigint_mid_stream_drains_and_prints_what_the_file_holds(tmp_path, tiny_bundle):
    """Ctrl-C (SIGINT) during a run of the faulty camera: exit 0, summary printed equals the file's count."""
    out = tmp_path / "results.jsonl"
    proc = run_cli([FAULTY_CAMERA.format(seed=31), "--model", str(tiny_bundle), "--precision", "fp32", "--out", str(out)])
    wait_for_cells(out, 8, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr and "SIGINT" in stdout + stderr
    (cells,) = parsed_runs(out)
    total_line = next(x for x in stdout.splitlines() if x.startswith("total"))
    assert int(total_line.split()[1]) == len(cells) == summarize(out).total_cells >= 8
