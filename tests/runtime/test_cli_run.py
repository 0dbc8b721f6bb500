"""wbc-run end to end in a subprocess: results survive SIGKILL, SIGTERM writes the summary, summarize works.

The subprocess runs the real CLI (`wbc_edge.cli.run.main`) with the stand-in frontend of conftest.py
plugged in (source, assembler, locator, cropper), so these tests do not depend on the camera stages.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wbc_edge.cli.run import main
from wbc_edge.runtime.report import write_report
from wbc_edge.runtime.results import summarize

DRIVER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("rt_conftest", {conftest!r})
fakes = importlib.util.module_from_spec(spec); sys.modules["rt_conftest"] = fakes; spec.loader.exec_module(fakes)
import wbc_edge.runtime.pipeline as pipeline, wbc_edge.runtime.sources as sources
from wbc_edge.spec import spec_for
init = pipeline.Analyzer.__init__
def patched(self, *a, **kw):
    kw.update(locator=fakes.fake_locate, cropper=fakes.fake_crop, assembler_factory=fakes.FakeAssembler)
    init(self, *a, **kw)
pipeline.Analyzer.__init__ = patched
frames = fakes.make_fields({fields}, spec_for("mimo", input_size=fakes.INPUT_SIZE), cells_per_field=2)
sources.open_source = lambda uri, **kw: fakes.FakeSource(frames, period_s={period})
from wbc_edge.cli.run import main
sys.exit(main(sys.argv[1:]))
"""


def start(tmp_path: Path, args: list[str], fields: int, period: float) -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(conftest=str(Path(__file__).with_name("conftest.py")), fields=fields, period=period))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(driver), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def wait_for_cells(path: Path, n: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if path.exists() and path.read_text().count('"record":"cell"') >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"wbc-run ended early: {proc.communicate()[1]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no cells written in time")


def test_results_survive_sigkill(tmp_path, rt_bundle, capsys):
    out = tmp_path / "r.jsonl"
    proc = start(tmp_path, ["x", "--model", str(rt_bundle[0]), "--out", str(out), "--quiet", "--precision", "fp32"],
                 fields=400, period=0.004)
    wait_for_cells(out, 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    lines = out.read_text().splitlines()
    assert all(json.loads(x) for x in lines)  # every line on disk parses
    s = summarize(out)
    assert s.total_cells == len(lines) - 1 >= 6 and s.bad_lines == 0
    assert main(["summarize", str(out), "--report", str(tmp_path / "s.html")]) == 0
    assert f"<th>{s.total_cells}</th>" in (tmp_path / "s.html").read_text()
    capsys.readouterr()
    assert main(["summarize", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_cells"] == s.total_cells


def test_sigterm_stops_drains_and_prints_summary(tmp_path, rt_bundle, capsys):
    out, report = tmp_path / "r.jsonl", tmp_path / "report.html"
    proc = start(tmp_path, ["x", "--model", str(rt_bundle[0]), "--out", str(out), "--report", str(report),
                            "--precision", "fp32", "--stats"], fields=400, period=0.004)
    wait_for_cells(out, 6, proc)
    proc.send_signal(signal.SIGUSR1)  # stats on demand, the run goes on
    time.sleep(0.3)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "p50 ms" in stderr and "cells/s" in stderr
    assert "SIGTERM" in stderr and "stopped: interrupted (SIGTERM)" in stdout
    s = summarize(out)
    total_line = next(x for x in stdout.splitlines() if x.startswith("total"))
    assert int(total_line.split()[1]) == s.total_cells  # the printed count is what the file holds
    assert "p50 ms" in stdout and report.exists()


def test_max_cells_run_and_report(tmp_path, rt_bundle):
    out, report = tmp_path / "r.jsonl", tmp_path / "report.html"
    proc = start(tmp_path, ["x", "--model", str(rt_bundle[0]), "--out", str(out), "--report", str(report),
                            "--max-cells", "15", "--missing-light", "heads", "--save-video", str(tmp_path / "v.avi")],
                 fields=40, period=0.0)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert summarize(out).total_cells == 15 and "stopped: max_cells" in stdout
    assert "int8-cpu" in stderr  # the choice line says what auto picked
    page = report.read_text()
    assert "data:image/png;base64," in page and "<svg" in page and "95% CI" in page
    assert (tmp_path / "v.avi").stat().st_size > 0 and "video:" in stdout


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "missing.wbc"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.wbc" in err and "Traceback" not in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("garbage\n")
    assert main(["summarize", str(bad)]) == 2


def test_report_contains_differential_and_gallery(tmp_path, rt_bundle, rt_spec, rt_fakes, rt_analyzer_kw):
    from wbc_edge.runtime.pipeline import Analyzer

    with Analyzer(rt_bundle[0], precision="fp32", gallery_per_class=3, **rt_analyzer_kw) as an:
        summary = an.analyze(rt_fakes.Source(rt_fakes.make_fields(8, rt_spec, cells_per_field=3)))
    page = write_report(tmp_path / "r.html", summary, an.gallery).read_text()
    for row in summary.rows:
        assert f"{row.ci_low:.1f} &ndash; {row.ci_high:.1f}" in page
        assert f"<td>{row.count}</td>" in page
    assert page.count("data:image/png;base64,") == sum(len(v) for v in an.gallery.values()) > 0
    assert all(len(v) <= 3 for v in an.gallery.values())
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched


def test_real_cli_on_simulated_camera_survives_sigkill(tmp_path, rt_spec, rt_fakes):
    """`python -m wbc_edge.cli.run synthetic://` with nothing patched, killed mid-stream."""
    pytest.importorskip("wbc_edge.synth.frames")
    from wbc_edge.bundle import write_bundle
    from wbc_edge.spec import spec_for

    spec = spec_for("mimo", input_size=16)
    model = write_bundle(tmp_path / "m.wbc", spec, {"model.fp32.onnx": rt_fakes.tiny_onnx(spec, rt_fakes.tiny_weights(spec))})
    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "wbc_edge.cli.run", "synthetic://?seed=4", "--model", str(model),
                             "--out", str(out), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_cells(out, 5, proc, timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["source"] == "synthetic://?seed=4"
    s = summarize(out)
    assert s.bad_lines == 0 and s.total_cells == len(lines) - 1 >= 5


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_is_one_line_exit_2(tmp_path, rt_bundle):
    proc = start(tmp_path, ["x", "--model", str(rt_bundle[0]), "--out", "/dev/full", "--quiet"], fields=3, period=0.0)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert stderr.strip().count("\n") == 0 and "/dev/full" in stderr and "No space left" in stderr
