"""wbc-synth: write synthetic four-light cell datasets and camera frame sequences."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from wbc_edge.cli.args import COUNT, FPS, FRAME_PX, INDEX, MAGNIFICATION, PIXELS, Parser, run_reporting_errors
from wbc_edge.outputs import Output, check_paths


def get_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="wbc-synth", description="Synthetic four-light white-blood-cell data (deterministic from --seed).")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    cells = sub.add_parser("cells", help="a cell dataset: <out>/<class>/<cell_id>/<light>.png plus manifest.csv", parents=[common])
    cells.add_argument("--out", required=True, help="output folder")
    cells.add_argument("--n", type=COUNT, required=True, help="number of cells")
    cells.add_argument("--seed", type=INDEX, default=0)
    cells.add_argument("--size", type=PIXELS, default=None, help="crop side in pixels (default: the native crop, CROP_PX)")
    cells.add_argument("--class-mix", default="paper",
                       help="paper (default), balanced, a blood mix (normal, eosinophilia, neutrophilia, lymphocytosis, "
                            "monocytosis) or NEU=0.5,LYM=0.3,...")
    cells.add_argument("--groups", type=COUNT, default=8, help="simulated donors (group column)")

    frames = sub.add_parser("frames", help="camera frames: out/frames/*.png, out/video.avi, out/truth.jsonl, out/meta.json", parents=[common])
    frames.add_argument("--out", required=True, help="output folder")
    frames.add_argument("--sets", type=COUNT, required=True, help="number of four-light sets (fields)")
    frames.add_argument("--seed", type=INDEX, default=0)
    frames.add_argument("--order", default="fluorescent,color1,color2,color3", help="light order of the capture cycle")
    frames.add_argument("--width", type=FRAME_PX, default=640)
    frames.add_argument("--height", type=FRAME_PX, default=480)
    frames.add_argument("--fps", type=FPS, default=30.0)
    frames.add_argument("--scale", type=MAGNIFICATION, default=1.0,
                        help="magnification against the simulator's optics (2: cells twice as large; default: %(default)s)")
    frames.add_argument("--no-video", action="store_true", help="write the frame folder only")
    frames.add_argument("--mix", default=None,
                        help="blood mix of the white cells: paper (default), normal, eosinophilia, neutrophilia, lymphocytosis, "
                             "monocytosis or NEU=0.6,LYM=0.3,... (the stream's own: synthetic://?mix=NAME)")

    score = sub.add_parser("score", help="score a wbc-run results file against the synthetic ground truth of its source: "
                                         "cells found, classified right, argmax and estimated differential vs the true one")
    score.add_argument("results", help="results.jsonl written by wbc-run on synthetic:// or a wbc-synth frames folder/video")
    score.add_argument("--json", action="store_true", help="print the score as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    from wbc_edge.synth import CROP_PX, write_cells, write_frames

    if args.command == "score":
        from wbc_edge.runtime.score import score_results

        result = score_results(args.results)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            print(f"{args.results} against the truth of {result.source}")
            print(result.summary())
            print(result.table())
        return 0
    check_paths([Output("--out", args.out, "dir")])
    if args.command == "cells":
        manifest = write_cells(args.out, n=args.n, seed=args.seed, size=args.size or CROP_PX, class_mix=args.class_mix,
                               n_groups=args.groups, progress=not args.quiet)
        print(f"wrote {args.n} cells: {manifest}")
    else:
        order = tuple(s.strip() for s in args.order.split(",") if s.strip())
        out = write_frames(args.out, sets=args.sets, seed=args.seed, light_order=order, width=args.width,
                           height=args.height, video=not args.no_video, fps=args.fps, progress=not args.quiet,
                           class_mix=args.mix, scale=args.scale)
        print(f"wrote {args.sets} sets of {len(order)} frames: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_reporting_errors("wbc-synth", run, args, getattr(args, "out", None) or args.results)


if __name__ == "__main__":
    sys.exit(main())
