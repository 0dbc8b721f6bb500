"""wbc-calib: make an INT8 calibration set, from a run's training split or from device frames.

  wbc-calib select --run RUN [--fold 0] [--method mimo-kd] --size 256 --out DIR
  wbc-calib capture --source URI --sets N --bundle model.wbc --out DIR
  wbc-calib optics --source URI --out profile.json     the camera's scale from its frames' red cells

The folder holds inputs.npz (uint8 model inputs) and calibration.json (cell ids, class counts,
SHA-256 of the tensors); give it to `wbc-export --calib DIR`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from wbc_edge.cli import args
from wbc_edge.outputs import Input, Output, check_paths, source_input
from wbc_edge.errors import WbcError


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = args.Parser("wbc-calib", description=__doc__, add_help=add_help,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("select", help="stratified sample of a fold's training cells")
    s.add_argument("--run", type=Path, required=True, help="training run directory")
    s.add_argument("--fold", type=args.INDEX, default=0)
    s.add_argument("--method", default="mimo-kd", help="method (as wbc-train names it) whose spec (lights, input size) the inputs follow")
    s.add_argument("--size", type=args.COUNT, default=256, help="cells to select (default: %(default)s; 300+ recommended)")
    s.add_argument("--seed", type=args.INDEX, default=0)
    s.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("capture", help="cells located in frames captured on the device")
    c.add_argument("--source", required=True, help="frame source URI (/dev/video0, csi://0, a folder, synthetic://)")
    c.add_argument("--sets", type=args.COUNT, default=100, help="four-light sets to read (default: %(default)s)")
    c.add_argument("--bundle", type=Path, required=True, help="bundle whose spec (lights, input size) the inputs follow")
    c.add_argument("--max-cells", type=args.COUNT, default=512, help="keep at most this many cells (default: %(default)s)")
    c.add_argument("--crop-px", type=args.PIXELS, help="window cut around each cell (default: the runtime's for this bundle)")
    c.add_argument("--profile", type=Path, help="device profile (wbc-calib optics): the camera's scale for locating and cropping")
    c.add_argument("--out", type=Path, required=True)
    o = sub.add_parser("optics", help="measure the camera's micrometres per pixel from its frames (red cells as the ruler)")
    o.add_argument("--source", required=True, help="frame source URI (/dev/video0, csi://0, a folder, a video, synthetic://)")
    o.add_argument("--frames", type=args.COUNT, default=12, help="frames to read (default: %(default)s: three four-light cycles)")
    o.add_argument("--serial", default=None, help="camera serial number to record in the profile")
    o.add_argument("--rbc-um", type=args.RBC_UM, default=None, help="red-cell diameter of the sample in um (default: 7.5)")
    o.add_argument("--out", type=Path, required=True, help="device profile JSON to write")
    return p


def select_main(a: argparse.Namespace) -> int:
    from wbc_edge.calibration.sets import select_from_run

    calib = select_from_run(a.run, a.fold, a.method, a.size, a.seed)
    calib.save(a.out)
    print(f"wbc-calib: {len(calib)} training cells {calib.class_counts()} -> {a.out} (sha256 {calib.content_hash[:12]})")
    return 0


def capture_main(a: argparse.Namespace) -> int:
    from wbc_edge.bundle import Bundle
    from wbc_edge.calibration.capture import capture_calibration_set, default_crop_px

    bundle = Bundle.open(a.bundle)
    um = None
    if a.profile:
        from wbc_edge.runtime.optics import DeviceProfile, crop_px_for

        um = DeviceProfile.load(a.profile).um_per_px
    crop = a.crop_px or (crop_px_for(bundle.spec, um) if um else default_crop_px(bundle, bundle.spec))
    calib = capture_calibration_set(a.source, a.sets, bundle.spec, max_cells=a.max_cells, crop_px=crop, um_per_px=um)
    calib.save(a.out)
    print(f"wbc-calib: {len(calib)} cells from {calib.source.get('sets_read')} sets of {a.source} -> {a.out} (sha256 {calib.content_hash[:12]})")
    return 0


def optics_main(a: argparse.Namespace) -> int:
    from wbc_edge.runtime.optics import RBC_DIAMETER_UM, estimate_scale, read_frames

    images = read_frames(a.source, a.frames)
    sizes = sorted({im.shape[1::-1] for im in images})
    if len(sizes) > 1:
        raise DataError(f"{a.source}: frames of {len(sizes)} sizes ({', '.join(f'{w}x{h}' for w, h in sizes)}); one camera, one size")
    est = estimate_scale(images, rbc_diameter_um=a.rbc_um or RBC_DIAMETER_UM, where=f"{a.source} ({len(images)} frames)")
    w, h = sizes[0]
    est.profile(w, h, serial=a.serial, origin=f"estimated from {est.n_frames} frames of {a.source}").save(a.out)
    print(f"wbc-calib: {est.describe()} -> {a.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout, force=True)
    logging.getLogger("wbc_edge").setLevel(logging.INFO)
    try:
        check_paths([Output("--out", a.out, "json" if a.command == "optics" else "dir")],
                    [Input("--run", getattr(a, "run", None)), Input("--bundle", getattr(a, "bundle", None)),
                     Input("--profile", getattr(a, "profile", None)),
                     *filter(None, [source_input("--source", getattr(a, "source", None))])])
        return {"select": select_main, "capture": capture_main, "optics": optics_main}[a.command](a)
    except WbcError as e:
        print(f"wbc-calib {a.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
