"""Hostile use of every command: out-of-range numbers and outputs that would destroy inputs.

The first tests walk every parser of every console command (so a new option is covered the day it
is added); the last one tries, command by command, to write an output over an input or over a file
of another kind, and checks that the command refuses in one line before any work and that the file
it would have destroyed is byte-identical afterwards.
"""
from __future__ import annotations

import argparse
import configparser
import importlib
import json
from pathlib import Path

import pytest

from wbc_edge.cli import args as argtypes

ROOT = Path(__file__).resolve().parents[2]


def console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [l.strip() for l in cfg["options.entry_points"]["console_scripts"].splitlines() if l.strip()]
    return {name.strip(): target.strip().split(":")[0] for name, target in (l.split("=", 1) for l in lines)}


def all_parsers() -> list[argparse.ArgumentParser]:
    """Every parser of every console command, subcommands included."""
    found: list[argparse.ArgumentParser] = []
    for module_name in sorted(set(console_scripts().values())):
        module = importlib.import_module(module_name)
        for attr in sorted(dir(module)):
            if attr.startswith("get_") and attr.endswith("parser"):
                found.append(getattr(module, attr)())
    out, todo = [], list(found)
    while todo:
        p = todo.pop()
        out.append(p)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return out


def numeric_actions():
    for parser in all_parsers():
        for action in parser._actions:
            if action.option_strings and action.type is not None:
                yield parser, action


def test_every_command_is_walked():
    progs = {p.prog.split()[0] for p in all_parsers()}
    assert set(console_scripts()) <= progs, set(console_scripts()) - progs
    assert len(all_parsers()) >= 15


def test_every_parser_reports_mistakes_in_one_line():
    plain = [p.prog for p in all_parsers() if not isinstance(p, argtypes.Parser)]
    assert plain == [], f"parsers with argparse's multi-line usage errors: {plain}"


def test_no_numeric_option_is_unchecked():
    unchecked = [f"{p.prog} {a.option_strings[0]}" for p, a in numeric_actions() if a.type in (int, float)]
    assert unchecked == [], f"numeric options without a range: {unchecked}"


def _just_outside(action) -> str | None:
    t = action.type
    if isinstance(t, argtypes.Number) and t.lo is not None:
        below = t.lo if t.lo_open else t.lo - 1
        return str(int(below)) if t.kind is int else str(below)
    return None


def test_every_ranged_option_refuses_a_value_just_outside_at_parse_time(capsys):
    checked = 0
    for parser, action in numeric_actions():
        bad = _just_outside(action)
        if bad is None:
            continue
        with pytest.raises(SystemExit) as e:
            parser.parse_args([action.option_strings[0], bad] + ([bad] if action.nargs == 2 else []))
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and action.option_strings[0] in err, (parser.prog, err)
        checked += 1
    assert checked >= 40


@pytest.fixture(scope="module")
def victims(tmp_path_factory):
    """Files an output must never replace: a frame, a results file, a bundle, a checkpoint, a JSON report."""
    import numpy as np

    from wbc_edge.bundle import write_bundle
    from wbc_edge.data.images import write_image
    from wbc_edge.spec import spec_for

    root = tmp_path_factory.mktemp("victims")
    frames = root / "frames"
    write_image(frames / "000000.png", np.zeros((48, 64, 3), np.uint8))
    results = root / "r.jsonl"
    results.write_text(json.dumps({"record": "run", "classes": ["a", "b"]}) + "\n")
    bundle = write_bundle(root / "m.wbc", spec_for("mimo", input_size=32), {"model.fp32.onnx": b"x"})
    checkpoint = root / "model.pt"
    checkpoint.write_bytes(b"PK-not-a-bundle")
    data = root / "cells"
    data.mkdir()
    return {"root": root, "frames": frames, "frame": frames / "000000.png", "results": results, "bundle": bundle,
            "checkpoint": checkpoint, "data": data}


CASES = [
    # (command module, argv built from the victims, what the one line must say, the file that must survive)
    ("wbc_edge.cli.run", lambda v: [str(v["frames"]), "--model", str(v["bundle"]), "--report", str(v["frame"])], "inside input folder", "frame"),
    ("wbc_edge.cli.run", lambda v: ["--model", str(v["bundle"]), "--out", str(v["results"]), "--report", str(v["results"])], "same file as output --out", "results"),
    ("wbc_edge.cli.run", lambda v: ["--model", str(v["bundle"]), "--out", str(v["bundle"])], "same file as input --model", "bundle"),
    ("wbc_edge.cli.run", lambda v: ["--model", str(v["bundle"]), "--report", str(v["results"])], "not a wbc-edge HTML report", "results"),
    ("wbc_edge.cli.run", lambda v: ["--model", str(v["bundle"]), "--save-video", str(v["results"] / "v.mp4")], "no folder can be made", "results"),
    ("wbc_edge.cli.run", lambda v: ["--model", str(v["bundle"]), "--report", str(v["root"])], "is a folder", "results"),
    ("wbc_edge.cli.run", lambda v: ["summarize", str(v["results"]), "--report", str(v["results"])], "same file as input RESULTS", "results"),
    ("wbc_edge.cli.export", lambda v: ["--checkpoint", str(v["checkpoint"]), "--out", str(v["checkpoint"])], "same file as input --checkpoint", "checkpoint"),
    ("wbc_edge.cli.export", lambda v: ["--checkpoint", str(v["checkpoint"]), "--out", str(v["results"])], "not a wbc-edge bundle", "results"),
    ("wbc_edge.cli.export", lambda v: ["compare", "--bundle", str(v["bundle"]), "--data", str(v["data"]), "--json", str(v["bundle"])], "same file as input --bundle", "bundle"),
    ("wbc_edge.cli.export", lambda v: ["quantify", "--bundle", str(v["bundle"]), "--data", str(v["data"]), "--train-prior", "balanced",
                                       "--out", str(v["results"])], "not a wbc-edge bundle", "results"),
    ("wbc_edge.cli.export", lambda v: ["quantify", "--bundle", str(v["bundle"]), "--data", str(v["data"]), "--train-prior", "balanced",
                                       "--report", str(v["bundle"])], "same file", "bundle"),
    ("wbc_edge.cli.export", lambda v: ["report", "--bundle", str(v["bundle"]), "--out", str(v["results"])], "not a wbc-edge HTML report", "results"),
    ("wbc_edge.cli.calib", lambda v: ["optics", "--source", str(v["frames"]), "--out", str(v["results"])], "not a JSON file", "results"),
    ("wbc_edge.cli.calib", lambda v: ["capture", "--source", "synthetic://", "--bundle", str(v["bundle"]), "--out", str(v["results"])],
     "is a file, not a folder", "results"),
    ("wbc_edge.cli.calib", lambda v: ["optics", "--source", str(v["frames"]), "--out", str(v["frames"] / "p.json")], "inside input folder", "frame"),
    ("wbc_edge.cli.synth", lambda v: ["cells", "--out", str(v["results"]), "--n", "2"], "is a file, not a folder", "results"),
    ("wbc_edge.cli.data", lambda v: ["four-light", str(v["frames"]), "--out", str(v["frames"] / "four")], "inside input folder", "frame"),
    ("wbc_edge.cli.bench", lambda v: ["--model", str(v["bundle"]), "--out", str(v["bundle"])], "same file as input --model", "bundle"),
    ("wbc_edge.cli.lis", lambda v: ["--outbox", str(v["results"]), "status"], "not a SQLite outbox", "results"),
    ("wbc_edge.cli.lis", lambda v: ["--outbox", str(v["root"] / "o.db"), "queue", str(v["results"]), "--reference-table", str(v["results"])],
     None, "results"),  # reads only: must not be refused for its inputs
    ("wbc_edge.cli.engine", lambda v: ["build", "--model", str(v["bundle"]), "--output", str(v["bundle"])], "same file as input --model", "bundle"),
]


@pytest.mark.parametrize("module, argv, needle, survivor", CASES, ids=[f"{c[0].split('.')[-1]}-{i}" for i, c in enumerate(CASES)])
def test_an_output_never_destroys_an_input_or_a_foreign_file(module, argv, needle, survivor, victims, capsys):
    before = {k: v.read_bytes() for k, v in victims.items() if isinstance(v, Path) and v.is_file()}
    rc = importlib.import_module(module).main(argv(victims))
    err = capsys.readouterr().err.strip()
    if needle is not None:
        assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
    else:
        assert "refusing" not in err and "same file" not in err, err
    after = {k: victims[k].read_bytes() for k in before}
    assert after == before, f"{survivor} changed"


@pytest.mark.parametrize("uri, needle", [("synthetic://?sets=0", "'sets' must be > 0"), ("synthetic://?fps=-2", "'fps' must be > 0"),
                                         ("synthetic://?seed=-1", "'seed' must be >= 0")])
def test_a_camera_of_no_frames_is_refused(uri, needle, capsys):
    from wbc_edge.cli.run import main

    assert main([uri, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
