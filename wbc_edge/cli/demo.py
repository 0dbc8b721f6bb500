"""wbc-demo: the whole product on the built-in synthetic default, in a few minutes on a CPU.

synthesise four-light cells -> train the ShuffleNetV2 MM-MIMO with KD from late-fusion teachers ->
export FP32 + INT8 behind the accuracy gate -> stream a simulated four-light camera -> differential.
Each step is the same console command a user would type; the demo prints them so they can be rerun.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from wbc_edge.cli import args as argtypes
from wbc_edge.errors import WbcError


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argtypes.Parser("wbc-demo", description=__doc__, add_help=add_help,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="folder for data, run, bundle, results and report (default: %(default)s)")
    p.add_argument("--cells", type=argtypes.COUNT, default=1500, help="synthetic cells to train on (default: %(default)s)")
    p.add_argument("--donors", type=argtypes.COUNT, default=8,
                   help="simulated donors the cells come from; the fold's validation cells are other donors' (default: %(default)s)")
    p.add_argument("--class-mix", default="balanced",
                   help="class mix of the training cells: balanced (default, so the rare classes are learned in a few "
                        "epochs) or paper (NEU 64.5%%, LYM 29.8%%, EOS 4.5%%, MO 0.8%%, BAS 0.3%%)")
    p.add_argument("--epochs", type=argtypes.COUNT, default=8, help="epochs per network (default: %(default)s)")
    p.add_argument("--img-size", type=argtypes.INPUT_PX, default=64, help="network input size in pixels (default: %(default)s)")
    p.add_argument("--backbone", default="shufflenet_v2_x1_0")
    p.add_argument("--seed", type=argtypes.INDEX, default=0)
    p.add_argument("--max-cells", type=argtypes.COUNT, default=200, help="stop the count after this many cells, like an analyzer's 200-cell differential")
    p.add_argument("--max-drop", type=argtypes.POINTS, default=1.0, help="accuracy gate: largest weighted-F1 drop in points for INT8")
    return p


def steps(a: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    out = Path(a.out)
    data, run, bundle = out / "data", out / "run", out / "model.wbc"
    return [
        ("synthesise four-light cells", "wbc_edge.cli.synth",
         ["cells", "--out", str(data), "--n", str(a.cells), "--groups", str(a.donors), "--seed", str(a.seed),
          "--class-mix", a.class_mix]),
        ("train MM-MIMO + KD (late-fusion teachers first)", "wbc_edge.cli.train",
         ["--data", str(data), "--method", "mimo-kd", "--backbone", a.backbone, "--folds", "5", "--fold-subset", "0",
          "--epochs", str(a.epochs), "--img-size", str(a.img_size), "--out", str(run), "--seed", str(a.seed)]),
        ("export FP32 + INT8 with the accuracy gate", "wbc_edge.cli.export",
         ["--run", str(run), "--method", "mimo-kd", "--fold", "0", "--out", str(bundle), "--int8",
          "--max-drop", str(a.max_drop)]),
        ("stream the simulated four-light camera", "wbc_edge.cli.run",
         [f"synthetic://?seed={a.seed + 101}", "--model", str(bundle), "--max-cells", str(a.max_cells),
          "--out", str(out / "results.jsonl"), "--report", str(out / "report.html")]),
        ("score the count against the simulated sample's truth", "wbc_edge.cli.synth",
         ["score", str(out / "results.jsonl")]),
    ]


COMMANDS = {"wbc_edge.cli.synth": "wbc-synth", "wbc_edge.cli.train": "wbc-train",
            "wbc_edge.cli.export": "wbc-export", "wbc_edge.cli.run": "wbc-run"}


def main(argv: list[str] | None = None) -> int:
    a = get_args_parser().parse_args(argv)
    import importlib

    t_start = time.perf_counter()
    plan = steps(a)
    for n, (title, module, args) in enumerate(plan, 1):
        print(f"\n[{n}/{len(plan)}] {title}\n$ {COMMANDS[module]} {shlex.join(args)}", flush=True)
        t0 = time.perf_counter()
        try:
            rc = importlib.import_module(module).main(args)
        except WbcError as e:
            print(f"wbc-demo: {e}", file=sys.stderr)
            return 2
        if rc:
            print(f"wbc-demo: step {n} ({title}) failed with exit code {rc}", file=sys.stderr)
            return rc
        print(f"[{n}/{len(plan)}] done in {time.perf_counter() - t0:.1f} s", flush=True)
    out = Path(a.out)
    print(f"\nwbc-demo finished in {time.perf_counter() - t_start:.0f} s. Left in {out}/:")
    for name, what in [("data/", "synthetic four-light cells + manifest.csv"), ("run/", "run directory: checkpoints, metrics, plots"),
                       ("model.wbc", "the bundle (FP32 + INT8 ONNX, spec, calibration, accuracy report)"),
                       ("results.jsonl", "one line per classified cell"), ("report.html", "the differential report")]:
        print(f"  {name:<14} {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
