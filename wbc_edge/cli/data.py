"""wbc-data: dataset tools. `four-light` derives a four-light development set from RGB smear crops."""
from __future__ import annotations

import argparse
import logging
import sys

from wbc_edge.cli.args import PIXELS, UM_PER_PX, Parser, run_reporting_errors
from wbc_edge.outputs import Input, Output, check_paths


def get_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="wbc-data", description="Dataset tools (no torch).")
    sub = parser.add_subparsers(dest="command", required=True)
    four = sub.add_parser(
        "four-light", help="single-light RGB crops <src>/<class>/<image> -> four-light folder + manifest.csv",
        description="Derive a four-light development dataset (derivation rgb-hed): R, G, B as the three "
                    "bright-field lights, haematoxylin density (colour deconvolution, fixed range) as the "
                    "fluorescent light; centre square resized to --size. See docs/data-formats.md.")
    four.add_argument("src", help="single-light folder <src>/<class>/<image>, e.g. ../shared/data/pbc_dev")
    four.add_argument("--out", required=True, help="output folder (<out>/<class>/<cell_id>/<light>.png, manifest.csv)")
    four.add_argument("--size", type=PIXELS, default=64, help="output side in pixels (default %(default)s)")
    four.add_argument("--um-per-px", type=UM_PER_PX, default=None,
                      help="the source crops' scale in micrometres per pixel (default: measured from their red cells); "
                           "recorded with the cells' field of view in derivation.json, where training reads it")
    four.add_argument("--skip-bad", action="store_true",
                      help="leave out unreadable images (listed in derivation.json) instead of stopping")
    four.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    from wbc_edge.data import open_dataset
    from wbc_edge.data.derive import write_four_light

    check_paths([Output("--out", args.out, "dir")], [Input("SRC", args.src, untouchable_tree=True)])
    source = open_dataset(args.src, on_error="skip" if args.skip_bad else "raise")
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(source), desc="four-light", unit="cell")
    try:
        if args.um_per_px:
            scale = {"um_per_px": args.um_per_px, "origin": "given (--um-per-px)"}
        else:  # the sources' own red cells, the runtime's ruler
            from wbc_edge.data.derive import CROP_MIN_RED_CELLS, scale_sample
            from wbc_edge.runtime.optics import scale_record

            scale = scale_record(scale_sample(source, source.modalities[0]), where=f"{args.src} (sample of crops)",
                                 min_frame_cells=CROP_MIN_RED_CELLS)
        manifest = write_four_light(source, args.out, size=args.size, on_error="skip" if args.skip_bad else "raise",
                                    progress=(lambda done, total: bar.update(1)) if bar else None, scale=scale)
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {len(open_dataset(manifest))} four-light cells: {manifest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_reporting_errors("wbc-data", run, args, args.out)


if __name__ == "__main__":
    sys.exit(main())
