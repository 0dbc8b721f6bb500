"""wbc-train: cross-validated training of one method; `table` and `complexity` subcommands.

    wbc-train --data DIR --method mimo-kd --backbone shufflenet_v2_x1_0 --folds 5 --epochs 30 \\
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

from wbc_edge.errors import DataError, WbcError

SUBCOMMANDS = ("table", "complexity")


def _fold_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of fold numbers") from None


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    from wbc_edge.train.config import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(prog="wbc-train", add_help=add_help,
                                description="Train a Table 1 method with k-fold cross-validation "
                                            "(subcommands: table, complexity).")
    p.add_argument("--data", help="dataset folder or manifest CSV")
    p.add_argument("--method", default=d.method,
                   help="single:<light>, early, late, mimo, early-kd or mimo-kd (default %(default)s)")
    p.add_argument("--backbone", default=d.backbone, help="backbone (see --list-backbones; default %(default)s)")
    p.add_argument("--list-backbones", action="store_true", help="print the backbone names and exit")
    p.add_argument("--out", help="run directory")
    p.add_argument("--folds", type=int, default=d.folds, help="cross-validation folds (default %(default)s)")
    p.add_argument("--fold-subset", type=_fold_list, default=None, help="only these folds, e.g. 0,1")
    p.add_argument("--epochs", type=int, default=d.epochs, help="default %(default)s")
    p.add_argument("--img-size", type=int, default=d.img_size, help="input size in px (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (default %(default)s)")
    p.add_argument("--lr", type=float, default=None,
                   help="AdamW peak learning rate (default: per backbone, 4e-3 ShuffleNetV2, 1e-3 ResNet)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default %(default)s")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="default %(default)s")
    p.add_argument("--seed", type=int, default=d.seed, help="folds, init, sampling, augmentation (default %(default)s)")
    p.add_argument("--teachers", default=None, help="run dir with late-fusion teachers for *-kd (default: --out)")
    p.add_argument("--rho", type=float, default=d.rho, help="MIMO input repetition (default %(default)s)")
    p.add_argument("--batch-repetition", type=int, default=d.batch_repetition, help="MIMO (default %(default)s)")
    p.add_argument("--light-dropout", type=float, default=d.light_dropout, help="MIMO (default %(default)s)")
    p.add_argument("--solo-rows", type=float, default=d.solo_rows,
                   help="MIMO: fraction of rows that keep one light only (default %(default)s)")
    p.add_argument("--kd-temperature", type=float, default=d.kd_temperature, help="default %(default)s")
    p.add_argument("--kd-alpha", type=float, default=d.kd_alpha, help="KD weight (default %(default)s)")
    p.add_argument("--randaugment", type=int, nargs=2, metavar=("N", "M"),
                   default=[d.randaugment_n, d.randaugment_m], help="RandAugment ops and magnitude (default 0 0: off; the paper: 2 18)")
    p.add_argument("--flip-rotate", action=argparse.BooleanOptionalAction, default=d.flip_rotate,
                   help="random flips and 90-degree rotations per cell, before RandAugment (default on; the paper: --no-flip-rotate)")
    p.add_argument("--pretrained-weights", default=None, help="local backbone state_dict (.pth) to start from")
    p.add_argument("--device", default=d.device, help="cpu or cuda[:N] (default %(default)s)")
    p.add_argument("--no-amp", action="store_true", help="CUDA: train in FP32 instead of mixed precision")
    p.add_argument("--num-workers", type=int, default=d.num_workers, help="batches prepared ahead (default %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per training (default: torch's choice; with --jobs: cores / jobs)")
    p.add_argument("--jobs", type=int, default=d.jobs,
                   help="trainings (method x fold) run side by side in worker processes (default 0: one per "
                        "core up to 4 on a CPU, 1 on CUDA; 1: one after the other in this process)")
    p.add_argument("--resume", action="store_true", help="continue a method an interrupted run left half-done")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (logs and results still print)")
    return p


def config_from_args(args: argparse.Namespace):
    from wbc_edge.train.config import TrainConfig

    cfg = TrainConfig(method=args.method, backbone=args.backbone, img_size=args.img_size, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      warmup_epochs=args.warmup_epochs, seed=args.seed, folds=args.folds,
                      fold_subset=args.fold_subset, rho=args.rho, batch_repetition=args.batch_repetition,
                      light_dropout=args.light_dropout, solo_rows=args.solo_rows, kd_temperature=args.kd_temperature, kd_alpha=args.kd_alpha,
                      randaugment_n=args.randaugment[0], randaugment_m=args.randaugment[1], flip_rotate=args.flip_rotate, amp=not args.no_amp,
                      device=args.device, num_workers=args.num_workers, threads=args.threads, jobs=args.jobs,
                      teachers=args.teachers, pretrained_weights=args.pretrained_weights)
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
    from wbc_edge.train.cv import run_cv
    from wbc_edge.train.parallel import train_side_by_side

    if ctx.enabled and cfg.jobs > 1:
        raise WbcError("--jobs runs trainings side by side in one process tree; under torchrun leave it out")
    dataset = open_dataset(data)
    done = train_side_by_side(dataset, cfg, out, [cfg.method], resume=resume, progress=progress,
                              distributed=ctx.enabled)
    if done is None:
        return run_cv(dataset, cfg, out, resume=resume, ctx=ctx, progress=progress)
    return {fold: metrics for (method, fold), metrics in done.items() if method == cfg.method}


def get_table_parser() -> argparse.ArgumentParser:
    """wbc-train's training options (one definition, shared) plus the table's own."""
    parser = argparse.ArgumentParser(
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


def main_complexity(argv: Sequence[str] | None = None) -> int:
    """`wbc-train complexity`: Table 1's MACs and params for a backbone, without training."""
    parser = argparse.ArgumentParser(prog="wbc-train complexity",
                                     description="Print MACs (fvcore) and parameters of every Table 1 model.")
    parser.add_argument("--backbone", default="shufflenet_v2_x1_0", help="backbone name (default %(default)s)")
    parser.add_argument("--img-size", type=int, default=224, help="input size in px (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        from wbc_edge.train.complexity import COMPLEXITY_METHODS, complexity_rows
        from wbc_edge.train.models import check_backbone

        check_backbone(args.backbone)
        if not 16 <= args.img_size <= 4096:
            raise DataError(f"--img-size: {args.img_size} is not in 16..4096")
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
