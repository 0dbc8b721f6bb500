"""wbc-train: cross-validated training of one method; `table` and `complexity` subcommands.

    wbc-train --data DIR --method mimo-kd --backbone shufflenet_v2_x1_0 --folds 5 --epochs 32 \\
              --img-size 64 --out RUN_DIR [--fold-subset 0,1] [--teachers RUN_DIR] [--resume]
    torchrun --nproc_per_node 2 -m wbc_edge.cli.train ...   (DistributedDataParallel)
    wbc-train table --data DIR --backbone NAME --out RUN_DIR ...
    wbc-train complexity --backbone NAME [--img-size 224] [--json]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from wbc_edge.cli.args import INPUT_PX, Number, Parser
from wbc_edge.errors import DataError, UsageError, WbcError
from wbc_edge.spec import input_size_problem

SUBCOMMANDS = ("table", "complexity")


def _fold_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of fold numbers") from None


# How a field's annotation becomes an argparse type (None-able fields default to None).
_TYPES = {"int": int, "float": float, "str": str, "list[int]": _fold_list}
# Fields whose valid range depends on another field: checked with the whole config, after parsing.
_CROSS_FIELD = {"fold_subset", "batch_repetition", "warmup_epochs"}


def _checked(name: str, base):
    """A parse-time type for one TrainConfig field: its value checked by TrainConfig.validate itself
    (the one home of the training ranges), so a bad value is a one-line argparse error."""
    from wbc_edge.errors import SpecError
    from wbc_edge.train.config import TrainConfig

    def parse(text: str):
        value = base(text)
        if name not in _CROSS_FIELD:
            try:
                TrainConfig(**{name: value}).validate()
            except SpecError as e:
                raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None
        return value

    parse.__name__ = base.__name__
    return parse


def add_training_options(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field that declares one (`wbc_edge.train.config.option`)."""
    import dataclasses

    from wbc_edge.train.config import TrainConfig

    group = p.add_argument_group("training options")
    for f in dataclasses.fields(TrainConfig):
        cli = f.metadata.get("cli")
        if cli is None:
            continue
        flag = cli["flag"] or "--" + f.name.replace("_", "-")
        kind = str(f.type).replace(" | None", "")
        if f.name == "randaugment_n":  # one option, two fields
            group.add_argument(flag, dest="randaugment", type=Number(int, 0, 30), nargs=2, metavar=("N", "M"),
                               default=[TrainConfig.randaugment_n, TrainConfig.randaugment_m],
                               help=cli["help"] + " (default %(default)s)")
        elif kind == "bool":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                               help=cli["help"] + " (default %(default)s)")
        else:
            shown = "" if f.default is None else " (default %(default)s)"
            metavar = cli["metavar"] or {"int": "N", "float": "X"}.get(kind)
            group.add_argument(flag, dest=f.name, type=_checked(f.name, _TYPES[kind]), default=f.default, metavar=metavar,
                               help=cli["help"] + shown)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = Parser(prog="wbc-train", add_help=add_help,
               description="Train a Table 1 method with k-fold cross-validation (subcommands: table, complexity).")
    p.add_argument("--data", help="dataset folder or manifest CSV")
    p.add_argument("--out", help="run directory")
    p.add_argument("--list-backbones", action="store_true", help="print the backbone names and exit")
    p.add_argument("--resume", action="store_true", help="continue a method an interrupted run left half-done")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (logs and results still print)")
    add_training_options(p)
    return p


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the parsed options describe, validated (one-line error before any work)."""
    import dataclasses

    from wbc_edge.train.config import TrainConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values["randaugment_n"], values["randaugment_m"] = args.randaugment
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return (main_table if argv[0] == "table" else main_complexity)(argv[1:])
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from wbc_edge.train.models import BACKBONES

    if args.list_backbones:
        print("\n".join(BACKBONES))
        return 0
    try:
        if not args.data or not args.out:
            raise WbcError("wbc-train needs --data DIR and --out RUN_DIR (or --list-backbones)")
        cfg = config_from_args(args)
        from wbc_edge.train.distributed import init_distributed, shutdown
        from wbc_edge.train.models import check_backbone

        check_backbone(cfg.backbone)
        if cfg.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                from wbc_edge.errors import BackendUnavailable

                raise BackendUnavailable("--device cuda: no CUDA device visible to torch")
        ctx = init_distributed(cfg.device)
        try:
            results = _train(args.data, cfg, args.out, args.resume, ctx, progress=not args.quiet)
        finally:
            shutdown(ctx)
    except WbcError as e:
        print(f"wbc-train: {e}", file=sys.stderr)
        return 2
    if ctx.is_main:
        for fold, m in sorted(results.items()):
            print(f"fold {fold} {cfg.method}: accuracy {m.get('accuracy', float('nan')):.4f} "
                  f"weighted F1 {m.get('weighted_f1', float('nan')):.4f} macro F1 {m.get('macro_f1', float('nan')):.4f}")
        print(f"run directory: {args.out}")
    return 0


def _train(data: str, cfg, out: str, resume: bool, ctx, progress: bool = True) -> dict:
    """One method's folds (and the teachers they need): side by side on worker processes when
    `--jobs` (or auto) allows more than one, else in this process (also every torchrun rank)."""
    from wbc_edge.data import open_dataset
    from wbc_edge.train.parallel import train_methods

    if ctx.enabled and cfg.jobs > 1:
        raise UsageError("--jobs runs trainings side by side in one process tree; under torchrun leave it out")
    done = train_methods(open_dataset(data), cfg, out, [cfg.method], resume=resume, progress=progress, ctx=ctx)
    return {fold: metrics for (method, fold), metrics in done.items() if method == cfg.method}


def get_table_parser() -> argparse.ArgumentParser:
    """wbc-train's training options (one definition, shared) plus the table's own."""
    parser = Parser(
        prog="wbc-train table", parents=[get_args_parser(add_help=False)], conflict_handler="resolve",
        description="Run every method of the paper's Table 1 with cross-validation and write "
                    "RUN/table.md, RUN/table.json and RUN/plots/. Finished methods are reused.")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="subset of single:<light> late early mimo early-kd mimo-kd (default: all, in "
                             "dependency order)")
    parser.add_argument("--no-plots", action="store_true", help="skip the plots")
    # The table picks the methods itself: hide the single-method options it inherits.
    parser.add_argument("--method", default="mimo-kd", help=argparse.SUPPRESS)
    parser.add_argument("--list-backbones", action="store_true", help=argparse.SUPPRESS)
    return parser


def main_table(argv: Sequence[str] | None = None) -> int:
    """`wbc-train table`: every Table 1 method on one dataset, then table.md/table.json/plots."""
    args = get_table_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if not args.data or not args.out:
            raise DataError("wbc-train table needs --data DIR and --out RUN_DIR")
        from wbc_edge.data import open_dataset
        from wbc_edge.train.models import check_backbone
        from wbc_edge.train.table import render_table_md, run_table

        config = config_from_args(args)  # its --method is replaced by each table method in turn
        check_backbone(config.backbone)
        dataset = open_dataset(args.data)
        table = run_table(dataset, config, args.out, methods=args.methods, plots=not args.no_plots,
                          dataset_name=str(args.data), resume=args.resume, progress=not args.quiet)
    except WbcError as e:
        print(f"wbc-train table: {e}", file=sys.stderr)
        return 2
    print(render_table_md(table))
    print(f"wrote {Path(args.out) / 'table.md'} and {Path(args.out) / 'table.json'}")
    return 0


def get_complexity_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="wbc-train complexity", description="Print MACs (fvcore) and parameters of every Table 1 model.")
    parser.add_argument("--backbone", default="shufflenet_v2_x1_0", help="backbone name (default %(default)s)")
    parser.add_argument("--img-size", type=INPUT_PX, default=224, help="input size in px (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main_complexity(argv: Sequence[str] | None = None) -> int:
    """`wbc-train complexity`: Table 1's MACs and params for a backbone, without training."""
    parser = get_complexity_parser()
    args = parser.parse_args(argv)
    try:
        from wbc_edge.train.complexity import COMPLEXITY_METHODS, complexity_rows
        from wbc_edge.train.models import check_backbone

        check_backbone(args.backbone)
        if (problem := input_size_problem(args.img_size)) is not None:
            raise UsageError(f"--img-size: {problem}")
        rows = complexity_rows(args.backbone, args.img_size, methods=COMPLEXITY_METHODS)
    except WbcError as e:
        print(f"wbc-train complexity: {e}", file=sys.stderr)
        return 2
    if args.json:
        import json

        print(json.dumps({"backbone": args.backbone, "img_size": args.img_size, "rows": rows}, indent=2))
    else:
        from wbc_edge.train.complexity import format_complexity_table

        print(format_complexity_table(rows, args.backbone, args.img_size), end="")
    return 0

if __name__ == "__main__":
    sys.exit(main())
