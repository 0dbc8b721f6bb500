"""wbc-engine: TensorRT engines on the device, from a bundle, without torch.

    wbc-engine build --model model.wbc --precision fp16 [--batch 1,8,32] [--workspace-mb 1024]
                     [--opt-level 3] [--timing-cache FILE] [--dla-core 0] [--output model.engine]
    wbc-engine check model.engine --model model.wbc
    wbc-engine device-check --model model.wbc [--data cells/] --out device_check

`build` puts the engine in the engine cache (where `wbc-run --backend tensorrt` finds it) and, with
--output, also writes FILE plus FILE.json (the sidecar: what it was built from and for), which
`wbc-run --engine FILE` loads after checking it against the bundle's spec and this TensorRT and GPU.
Options follow trtexec (--minShapes/--optShapes/--maxShapes as --batch, --memPoolSize=workspace,
--builderOptimizationLevel, --timingCacheFile, --useDLACore + --allowGPUFallback) and Ultralytics
(precision, batch, workspace, output file). `device-check` is `wbc-bench device-check`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from wbc_edge.cli import args
from wbc_edge.errors import WbcError
from wbc_edge.outputs import Input, Output, check_paths


def _build_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="the .wbc bundle")
    p.add_argument("--precision", default="fp16", help="engine precision(s), comma list of fp32,fp16,int8 (default: %(default)s)")
    p.add_argument("--batch", default="1,8,32", help="batch range MIN,OPT,MAX of the optimisation profile (default: %(default)s)")
    p.add_argument("--workspace-mb", type=args.WORKSPACE_MB, default=1024, help="builder workspace in MiB (default: %(default)s)")
    p.add_argument("--opt-level", type=args.Number(int, 0, 5), default=None, help="builder optimisation level 0..5 (TensorRT's default: 3)")
    p.add_argument("--timing-cache", type=Path, default=None, help="timing cache file, shared and merged under a lock (default: one per TensorRT and GPU in the cache)")
    p.add_argument("--dla-core", type=args.INDEX, default=None, help="build for this DLA core, GPU fallback on (Jetson Orin, TensorRT 10.x)")
    p.add_argument("--fp16-source", default="auto", choices=("auto", "flag", "graph"), help="10.x FP16: FP32 graph + flag, or the FP16 graph")
    p.add_argument("--output", type=Path, default=None, help="also write the engine here (+ FILE.json sidecar); several precisions: FILE stem.<precision>")
    p.add_argument("--cache", type=Path, default=None, help="engine cache folder (default: $WBC_EDGE_ENGINE_CACHE or ~/.cache/wbc-edge/engines)")


def get_build_parser() -> argparse.ArgumentParser:
    p = args.Parser("wbc-engine build", description="Build TensorRT engines for a bundle on this device.")
    _build_parser(p)
    return p


def build_main(argv: list[str]) -> int:
    a = get_build_parser().parse_args(argv)
    from wbc_edge.bundle import Bundle
    from wbc_edge.runtime.backends import tensorrt_build as tb

    try:
        check_paths([Output("--output", a.output, "engine")], [Input("--model", a.model)])
        engines = tb.parse_engine_list(a.precision)
        rows = tb.build_bundle_engines(Bundle.open(a.model), engines, a.cache, batch_range=tb.parse_batch_range(a.batch),
                                       workspace_mb=a.workspace_mb, fp16_source=a.fp16_source, optimization_level=a.opt_level,
                                       dla_core=a.dla_core, timing_cache=a.timing_cache, output=a.output)
    except WbcError as e:
        print(f"wbc-engine build: {e}", file=sys.stderr)
        return 2
    for r in rows:
        print(f"{r['precision']}: {r['path']} ({r['bytes']} bytes)")
    return 0


def get_check_parser() -> argparse.ArgumentParser:
    p = args.Parser("wbc-engine check", description="Check an engine file against a bundle and this TensorRT and GPU.")
    p.add_argument("engine", type=Path)
    p.add_argument("--model", type=Path, required=True)
    return p


def check_main(argv: list[str]) -> int:
    a = get_check_parser().parse_args(argv)
    from wbc_edge.bundle import Bundle
    from wbc_edge.runtime.backends import tensorrt_build as tb

    try:
        _, meta = tb.read_engine_file(a.engine, Bundle.open(a.model).spec, tb.current_target())
    except WbcError as e:
        print(f"wbc-engine check: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: meta[k] for k in ("precision", "batch_range", "tensorrt_version", "gpu_name", "compute_capability", "build_path", "build_options") if k in meta}))
    return 0


def get_device_check_parser(prog: str = "wbc-engine device-check") -> argparse.ArgumentParser:
    p = args.Parser(prog, description="Build every engine, run parity, the engine gate and a short benchmark; write one report.")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, default=None, help="labelled held-out cells for the engine gate (without: parity on random pixels only)")
    p.add_argument("--out", type=Path, default=Path("device_check"), help="report folder (default: %(default)s)")
    p.add_argument("--precision", default="fp32,fp16,int8", help="engines to build (default: %(default)s)")
    p.add_argument("--batch", default="1,8,32")
    p.add_argument("--workspace-mb", type=args.WORKSPACE_MB, default=1024)
    p.add_argument("--rounds", type=args.COUNT, default=20, help="timed batches per engine (default: %(default)s)")
    p.add_argument("--cache", type=Path, default=None)
    return p


def device_check_main(argv: list[str], prog: str = "wbc-engine device-check") -> int:
    a = get_device_check_parser(prog).parse_args(argv)
    from wbc_edge.bench.device_check import DeviceCheckOptions, format_markdown, run_device_check, write_device_report
    from wbc_edge.runtime.backends import tensorrt_build as tb

    try:
        check_paths([Output("--out", a.out, "dir")], [Input("--model", a.model), Input("--data", a.data, untouchable_tree=True)])
        opts = DeviceCheckOptions(model=a.model, out=a.out, data=a.data, engines=tb.parse_engine_list(a.precision),
                                  batch_range=tb.parse_batch_range(a.batch), workspace_mb=a.workspace_mb, cache=a.cache, rounds=a.rounds)
        report = run_device_check(opts, progress=logging.getLogger("wbc_edge").info)
        json_path, md_path = write_device_report(report, a.out)
    except WbcError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    print(format_markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    verbs = {"build": build_main, "check": check_main, "device-check": device_check_main}
    if not argv or argv[0] not in verbs:
        print(f"usage: wbc-engine {{{','.join(verbs)}}} ... (wbc-engine VERB --help)", file=sys.stderr)
        return 2
    return verbs[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
