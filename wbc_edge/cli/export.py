"""wbc-export: a trained checkpoint -> a verified bundle (ONNX FP32, INT8 Q/DQ, FP16) behind an accuracy gate.

  wbc-export --run RUN [--method mimo-kd] [--fold 0] --out model.wbc --int8 [--fp16]
  wbc-export --checkpoint model.pt --out model.wbc --int8 --gate-data DIR --calib DIR
  wbc-export compare --bundle model.wbc --data DIR
  wbc-export quantify --bundle model.wbc --data DIR --train-prior balanced
  wbc-export report --bundle model.wbc --out export.html

Exits 1 when a precision loses more than --max-drop weighted-F1 points (nothing is written), 2 on a
usage or input error.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from wbc_edge.cli import args
from wbc_edge.errors import AccuracyGateError, UsageError, WbcError
from wbc_edge.outputs import Input, Output, check_paths


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = args.Parser("wbc-export", description=__doc__, add_help=add_help,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="training run directory (RUN/folds/fold<k>/<method>/model.pt)")
    src.add_argument("--checkpoint", type=Path, help="a release model.pt (split.json two folders up is used when present)")
    p.add_argument("--method", default="mimo-kd", help="method as wbc-train names it, e.g. mimo-kd, single:color1 (default: %(default)s)")
    p.add_argument("--fold", type=args.INDEX, default=0, help="fold inside the run (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="bundle to write (.wbc)")
    p.add_argument("--int8", action="store_true", help="add static INT8 (explicit Q/DQ) graphs")
    p.add_argument("--int8-variant", default="trt,cpu", help="Q/DQ variants: trt (symmetric int8) and/or cpu (uint8 activations) (default: %(default)s)")
    p.add_argument("--fp16", action="store_true", help="add an FP16 graph with FP32 I/O (TensorRT 11 strongly typed FP16)")
    calib = p.add_mutually_exclusive_group()
    calib.add_argument("--calib", type=Path, help="calibration set folder from wbc-calib (default: select from the fold's training split)")
    calib.add_argument("--calib-size", type=args.COUNT, default=256, help="cells to select from the training split (default: %(default)s)")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--max-drop", type=args.POINTS, default=1.0, help="largest allowed weighted-F1 drop vs FP32, in points (default: %(default)s)")
    p.add_argument("--min-agreement", type=args.PERCENT, help="also fail a precision whose predictions agree with FP32 on fewer than this %% of cells")
    p.add_argument("--gate-data", type=Path, help="held-out dataset for the gate (default: the fold's validation split)")
    p.add_argument("--keep-float", default="", help="comma-separated node names to leave unquantized")
    p.add_argument("--no-fallback", action="store_true", help="do not keep sensitive layers in float automatically when the gate fails")
    p.add_argument("--engine", default="", help="also build TensorRT engines for this host: fp16,int8 (needs TensorRT and a CUDA GPU)")
    p.add_argument("--engine-batch", default=None, metavar="MIN,OPT,MAX",
                   help="engine batch range, as trtexec's min/opt/max shapes (default: 1,8,32)")
    p.add_argument("--workspace-mb", type=args.WORKSPACE_MB, default=None, help="TensorRT builder workspace in MiB (default: 1024)")
    p.add_argument("--via", default="onnx", choices=["onnx", "torch-tensorrt"], help="how engines are built (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, help="calibration-range cache (default: .wbc-calib-cache beside --out)")
    p.add_argument("--opset", type=args.OPSET, default=17, help="ONNX opset (default: %(default)s)")
    p.add_argument("--report", type=Path, help="also write the export's report here (HTML: gate, calibration, reliability diagrams)")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only (no step progress or table)")
    return p


def get_compare_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = args.Parser("wbc-export compare", description="Accuracy of every precision in a bundle vs its FP32 graph.", add_help=add_help)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="labelled dataset to evaluate on")
    p.add_argument("--max-drop", type=args.POINTS, default=1.0)
    p.add_argument("--min-agreement", type=args.PERCENT)
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "tensorrt"),
                   help="tensorrt: gate the engines built on this device beside ONNX Runtime FP32, and record auto's choice")
    p.add_argument("--engine", default="fp16,int8", help="with --backend tensorrt: engines to gate (default: %(default)s)")
    p.add_argument("--engine-cache", type=Path, default=None)
    return p


def get_quantify_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = args.Parser("wbc-export quantify", add_help=add_help,
                                description="Measure temperatures and held-out confusion of an existing bundle on labelled cells "
                                            "it never trained on, and write it again with quantification.json (atomically).")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="held-out labelled dataset (not the model's training cells)")
    p.add_argument("--train-prior", required=True,
                   help="class shares of the model's training split: balanced, paper or NEU=0.2,LYM=0.2,...")
    p.add_argument("--pooling", default="log-mean", choices=("log-mean", "mean"),
                   help="how a cell's heads become one probability row before calibration: their geometric (log-mean, "
                        "measured better for the differential) or arithmetic mean (default: %(default)s)")
    p.add_argument("--out", type=Path, help="write here instead of replacing --bundle")
    p.add_argument("--report", type=Path, help="also write the export's report here (HTML)")
    return p


def get_report_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = args.Parser("wbc-export report", add_help=add_help,
                    description="The export's report of a bundle (HTML): the accuracy gate, the probability calibration "
                                "with its reliability diagrams, and the held-out confusion per precision.")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="the HTML report to write")
    return p


def report_main(argv: list[str]) -> int:
    a = get_report_parser().parse_args(argv)
    from wbc_edge.export.report import write_export_report

    try:
        check_paths([Output("--out", a.out, "report")], [Input("--bundle", a.bundle)])
        write_export_report(a.bundle, a.out)
    except WbcError as e:
        print(f"wbc-export report: {e}", file=sys.stderr)
        return 2
    print(f"wbc-export report: wrote {a.out}")
    return 0


def quantify_main(argv: list[str]) -> int:
    a = get_quantify_parser().parse_args(argv)
    from wbc_edge.export.gate import format_calibration, calibration_summary
    from wbc_edge.export.pipeline import add_quantification
    from wbc_edge.synth.cells import resolve_mix

    try:
        check_paths([Output("--out", a.out or a.bundle, "bundle"), Output("--report", a.report, "report")],
                    [Input("--data", a.data, untouchable_tree=True)] + ([Input("--bundle", a.bundle)] if a.out else []))
        quant = add_quantification(a.bundle, a.data, resolve_mix(a.train_prior), a.out, pooling=a.pooling)
        if a.report:
            from wbc_edge.export.report import write_export_report

            write_export_report(a.out or a.bundle, a.report)
    except WbcError as e:
        print(f"wbc-export quantify: {e}", file=sys.stderr)
        return 2
    print(format_calibration(calibration_summary(quant)))
    print(f"wbc-export quantify: wrote {a.out or a.bundle} with quantification.json" + (f"; report {a.report}" if a.report else ""))
    return 0


def _setup_logging(quiet: bool) -> None:
    # Root at WARNING silences ONNX Runtime's quantizer chatter (it logs INFO on the root logger);
    # our own steps still reach the handler through the wbc_edge logger.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout, force=True)
    logging.getLogger("wbc_edge").setLevel(logging.WARNING if quiet else logging.INFO)


def compare_main(argv: list[str]) -> int:
    a = get_compare_parser().parse_args(argv)
    from wbc_edge.bundle import atomic_write_text
    from wbc_edge.export.gate import format_table
    from wbc_edge.export.pipeline import compare_bundle

    try:
        check_paths([Output("--json", a.json, "json")], [Input("--bundle", a.bundle), Input("--data", a.data, untouchable_tree=True)])
        if a.backend == "tensorrt":
            from wbc_edge.export.engine_gate import compare_engines
            from wbc_edge.runtime.backends.tensorrt_build import parse_engine_list

            report = compare_engines(a.bundle, a.data, parse_engine_list(a.engine), a.engine_cache, a.max_drop, a.min_agreement)
        else:
            report = compare_bundle(a.bundle, a.data, a.max_drop, a.min_agreement)
        if a.json:
            atomic_write_text(a.json, json.dumps(report, indent=2))
    except WbcError as e:
        print(f"wbc-export compare: {e}", file=sys.stderr)
        return 2
    from wbc_edge.bundle import Bundle

    print(format_table(report, Bundle.open(a.bundle).spec.classes))
    if "auto_precision" in report:
        print(f"auto precision on this device: {report['auto_precision']['precision']} ({report['auto_precision']['why']})")
    failed = [p for p, r in report["precisions"].items() if r.get("passed") is False]
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    if argv[:1] == ["quantify"]:
        return quantify_main(argv[1:])
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    a = get_args_parser().parse_args(argv)
    _setup_logging(a.quiet)
    from wbc_edge.export.pipeline import INT8_VARIANTS, ExportOptions, checkpoint_in_run, export_bundle, load_source, parse_list

    emit = logging.getLogger("wbc_edge.export").info
    try:
        engines: tuple[str, ...] = ()
        engine_options: dict = {}
        if a.engine:
            from wbc_edge.export.tensorrt import parse_batch_range, parse_engine_list

            engines = tuple(parse_engine_list(a.engine))
            if a.engine_batch is not None:
                engine_options["batch_range"] = parse_batch_range(a.engine_batch)
            if a.workspace_mb is not None:
                engine_options["workspace_mb"] = a.workspace_mb
        elif a.engine_batch is not None or a.workspace_mb is not None:
            raise UsageError("--engine-batch and --workspace-mb set how engines are built: give --engine too")
        options = ExportOptions(
            out=a.out, int8=a.int8, int8_variants=parse_list(a.int8_variant, INT8_VARIANTS, "--int8-variant"), fp16=a.fp16,
            calib_dir=a.calib, calib_size=a.calib_size, calib_method=a.calib_method, max_drop=a.max_drop, min_agreement=a.min_agreement,
            gate_data=a.gate_data, keep_float=parse_list(a.keep_float), auto_fallback=not a.no_fallback,
            engines=engines, engine_options=engine_options, via=a.via, cache_dir=a.cache_dir, opset=a.opset,
        )
        checkpoint = a.checkpoint if a.checkpoint is not None else checkpoint_in_run(a.run, a.method, a.fold)
        check_paths([Output("--out", a.out, "bundle"), Output("--report", a.report, "report")],
                    [Input("--checkpoint", checkpoint), Input("--calib", a.calib, untouchable_tree=True),
                     Input("--gate-data", a.gate_data, untouchable_tree=True)])
        result = export_bundle(load_source(checkpoint), options, emit)
        if a.report:
            from wbc_edge.export.report import write_export_report

            write_export_report(result.bundle, a.report)
    except AccuracyGateError as e:
        print(f"wbc-export: {e}; no bundle written", file=sys.stderr)
        return 1
    except WbcError as e:
        print(f"wbc-export: {e}", file=sys.stderr)
        return 2
    precisions = sorted(result.accuracy.get("precisions") or ["fp32"])
    print(f"wbc-export: wrote {result.bundle} ({', '.join(precisions)})" + (f"; report {a.report}" if a.report else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
