"""wbc-bench: throughput, latency and accuracy of every backend and precision of a bundle, side by side.

    wbc-bench --model model.wbc --batch 1,8,32 --rounds 30 --out bench_out
    wbc-bench --model model.wbc --checkpoint run/folds/fold0/mimo-kd/model.pt --data cells/ --sets 16

One run: warm-up, then interleaved rounds (one call per configuration per round, order rotated) and
medians; the runtime pipeline end to end beside each stage alone; cold start and peak RSS in
subprocesses; accuracy per precision on --data (the export gate's evaluation); the FLOP floor.
Writes OUT/bench.json and OUT/bench.md. Rows that cannot run here say why ("not available here: ...").
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from wbc_edge.cli import args
from wbc_edge.errors import WbcError
from wbc_edge.outputs import Input, Output, check_paths

log = logging.getLogger("wbc_edge.cli.bench")


def _list(text: str, allowed: tuple[str, ...], flag: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{flag} '{text}': each must be one of {','.join(allowed)}")
    return items


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(dict.fromkeys(int(t) for t in text.split(",") if t.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch '{text}': expected comma-separated integers, e.g. 1,8,32") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--batch '{text}': every batch size must be >= 1")
    return values


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    from wbc_edge.bench.run import BACKENDS, PRECISIONS

    p = args.Parser("wbc-bench", description=__doc__, add_help=add_help,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="the .wbc bundle")
    p.add_argument("--backends", default=",".join(BACKENDS), type=lambda t: _list(t, BACKENDS, "--backends"),
                   help="comma list of %(default)s")
    p.add_argument("--precisions", default=",".join(PRECISIONS), type=lambda t: _list(t, PRECISIONS, "--precisions"),
                   help="comma list of %(default)s")
    p.add_argument("--batch", default="1,8,32", type=_batches, help="batch sizes (default: %(default)s)")
    p.add_argument("--img-size", type=args.INPUT_PX, default=None, help="must equal the bundle's input size (a check, not a resize)")
    p.add_argument("--rounds", type=args.COUNT, default=30, help="timed rounds per configuration (default: %(default)s)")
    p.add_argument("--warmup", type=args.Number(int, 0), default=3, help="untimed calls per configuration first (default: %(default)s)")
    p.add_argument("--data", type=Path, default=None, help="labelled cells (folder or manifest) for accuracy per precision")
    p.add_argument("--sets", type=args.COUNT, default=8, help="synthetic four-light sets for the pipeline runs (default: %(default)s)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="release model.pt for the PyTorch eager baseline (default: the bundle's weights.npz)")
    p.add_argument("--threads", type=args.THREADS, default=None, help="intra-op threads for ONNX Runtime and torch (default: theirs)")
    p.add_argument("--no-pipeline", action="store_true", help="skip the pipeline, cold start and RSS parts")
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="folder for bench.json and bench.md (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["device-check"]:  # one report from the device: wbc_edge.bench.device_check
        from wbc_edge.cli.engine import device_check_main

        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        return device_check_main(argv[1:], prog="wbc-bench device-check")
    a = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    from wbc_edge.bench import BenchOptions, format_markdown, run_bench, write_report

    opts = BenchOptions(model=a.model, backends=a.backends, precisions=a.precisions, batches=a.batch,
                        img_size=a.img_size, rounds=a.rounds, warmup=a.warmup, data=a.data, sets=a.sets,
                        checkpoint=a.checkpoint, out=a.out, threads=a.threads, pipeline=not a.no_pipeline)
    try:
        check_paths([Output("--out", a.out, "dir")],
                    [Input("--model", a.model), Input("--data", a.data, untouchable_tree=True), Input("--checkpoint", a.checkpoint)])
        report = run_bench(opts, progress=log.info)
        json_path, md_path = write_report(report, a.out)
    except WbcError as e:
        print(f"wbc-bench: {e}", file=sys.stderr)
        return 2
    print(format_markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
