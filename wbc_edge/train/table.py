"""The paper's Table 1 on any four-light dataset: every method, cross-validated, in one run directory.

`run_table` trains the methods in dependency order (the single-light networks are the late-fusion
members and the KD teachers) through the cross-validation entry point, reuses every method whose
folds are already finished (a killed run resumes), and writes `RUN/table.md`, `RUN/table.json` and
`RUN/plots/*.png`. The paper's claims are checked on the numbers as they come out, never adjusted.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from wbc_edge.bundle import atomic_write_text
from wbc_edge.errors import DataError, WbcError
from wbc_edge.spec import CLASS_ABBREV
from wbc_edge.train.complexity import complexity_rows
from wbc_edge.run_layout import RunLayout, method_dirname
from wbc_edge.metrics import SCALAR_METRICS, mean_std, summarize_folds

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "shufflenet_v2_x1_0"
PAPER_SIZE = 224
FLUORESCENT_HINT = "fluor"  # a light whose name contains this is the fluorescence light

METRIC_TITLES = {
    "weighted_f1": "weighted F1", "sensitivity": "sensitivity", "specificity": "specificity", "auc": "AUC",
    "accuracy": "accuracy", "macro_f1": "macro F1",
}


def table_methods(modalities: Sequence[str]) -> list[str]:
    """Every Table 1 method in dependency order: singles, late, early, mimo, early-kd, mimo-kd."""
    return [f"single:{m}" for m in modalities] + ["late", "early", "mimo", "early-kd", "mimo-kd"]


def order_methods(methods: Sequence[str], modalities: Sequence[str]) -> list[str]:
    """`methods` sorted into dependency order; unknown names raise one clear line."""
    known = table_methods(modalities)
    for m in methods:
        if m not in known:
            raise DataError(f"--methods: '{m}' is not one of {known}")
    return [m for m in known if m in set(methods)]


def method_label(method: str) -> str:
    """How a method reads in the table ('single:color1' -> 'color1 only', 'mimo-kd' -> 'MM-MIMO + KD')."""
    if method.startswith("single:"):
        return f"{method.split(':', 1)[1]} only"
    names = {"early": "early fusion", "late": "late fusion", "mimo": "MM-MIMO",
             "early-kd": "early fusion + KD", "mimo-kd": "MM-MIMO + KD"}
    return names.get(method, method)


# ---- reading finished folds -------------------------------------------------------------------

def fold_metrics_path(run_dir: Path, fold: int, method: str) -> Path:
    return RunLayout(run_dir).metrics(fold, method)


def _metrics_from_file(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable fold metrics ({e})") from None
    # Accept either the metric dict itself or one nested under "metrics" (with other run facts).
    if isinstance(payload, dict) and "weighted_f1" not in payload and isinstance(payload.get("metrics"), dict):
        payload = payload["metrics"]
    if not isinstance(payload, dict) or "weighted_f1" not in payload:
        raise DataError(f"{path}: fold metrics have no 'weighted_f1'")
    return payload


def finished_folds(run_dir: Path, method: str, folds: Sequence[int]) -> list[dict[str, Any]] | None:
    """The per-fold metrics of `method` when every fold in `folds` has finished, else None."""
    paths = [fold_metrics_path(run_dir, k, method) for k in folds]
    if not all(p.is_file() for p in paths):
        return None
    return [_metrics_from_file(p) for p in paths]


# ---- claims -----------------------------------------------------------------------------------

def _mean(summaries: Mapping[str, Mapping[str, Any]], method: str, metric: str) -> float | None:
    s = summaries.get(method)
    return None if s is None else (s.get(metric) or {}).get("mean")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def check_claims(summaries: Mapping[str, Mapping[str, Any]], macs: Mapping[str, int] | None = None,
                 metric: str = "weighted_f1") -> list[dict[str, Any]]:
    """The paper's four claims tested on mean `metric` over folds.

    Returns [{"claim", "holds": True | False | None, "detail"}]; None means a method it needs is missing.
    """
    macs = macs or {}
    singles = [m for m in summaries if m.startswith("single:")]
    fluor = [m for m in singles if FLUORESCENT_HINT in m.split(":", 1)[1].lower()]
    bright = [m for m in singles if m not in fluor]
    title = METRIC_TITLES.get(metric, metric)
    claims: list[dict[str, Any]] = []

    def add(claim: str, holds: bool | None, detail: str) -> None:
        claims.append({"claim": claim, "holds": holds, "detail": detail})

    def have(*methods: str) -> bool:
        return all(_mean(summaries, m, metric) is not None for m in methods)

    claim = "bright-field single lights beat fluorescence"
    if fluor and bright and have(*fluor, *bright):
        f = _mean(summaries, fluor[0], metric)
        losers = [m for m in bright if _mean(summaries, m, metric) <= f]
        detail = f"{fluor[0]} {_pct(f)}; " + ", ".join(f"{m} {_pct(_mean(summaries, m, metric))}" for m in bright)
        add(claim, not losers, detail + (f"; not above fluorescence: {', '.join(losers)}" if losers else ""))
    else:
        add(claim, None, "needs a fluorescence single and at least one bright-field single")

    claim = "late fusion beats early fusion and every single light"
    rivals = ["early"] + singles
    if have("late", *rivals) and singles:
        late = _mean(summaries, "late", metric)
        losers = [m for m in rivals if _mean(summaries, m, metric) >= late]
        best = max(rivals, key=lambda m: _mean(summaries, m, metric))
        detail = f"late {_pct(late)} vs best other {best} {_pct(_mean(summaries, best, metric))}"
        add(claim, not losers, detail + (f"; not beaten: {', '.join(losers)}" if losers else ""))
    else:
        add(claim, None, "needs late, early and the single-light rows")

    claim = "MM-MIMO beats early fusion"
    if have("mimo", "early"):
        a, b = _mean(summaries, "mimo", metric), _mean(summaries, "early", metric)
        add(claim, a > b, f"MM-MIMO {_pct(a)} vs early {_pct(b)} ({100 * (a - b):+.2f} points)")
    else:
        add(claim, None, "needs mimo and early")

    claim = "MM-MIMO + KD matches or beats late fusion at about a quarter of its MACs"
    if have("mimo-kd", "late"):
        a, b = _mean(summaries, "mimo-kd", metric), _mean(summaries, "late", metric)
        detail = f"MM-MIMO + KD {_pct(a)} vs late {_pct(b)} ({100 * (a - b):+.2f} points)"
        cheap = True
        if macs.get("mimo-kd") and macs.get("late"):
            ratio = macs["mimo-kd"] / macs["late"]
            cheap = ratio <= 1 / 3
            detail += f"; MACs ratio {ratio:.3f}"
        add(claim, a >= b and cheap, detail)
    else:
        add(claim, None, "needs mimo-kd and late")
    for c in claims:
        c["metric"] = title
    return claims


# ---- rendering --------------------------------------------------------------------------------

def _cell(stat: Mapping[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    return f"{100 * stat['mean']:.2f} ± {100 * (stat.get('std') or 0.0):.2f}"


def _in_light_order(table: Mapping[str, Any], names) -> list[str]:
    """Light names in the dataset's light order (the JSON files sort their keys), others after."""
    names = list(dict.fromkeys(names))
    order = {light: i for i, light in enumerate(table.get("lights") or [])}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def render_table_md(table: Mapping[str, Any]) -> str:
    """Markdown in the Table 1 layout from the dict `build_table` returns."""
    size = table["img_size"]
    methods = table["methods"]
    lines = [
        f"# Table 1 on {table.get('dataset', 'the dataset')}",
        "",
        f"Backbone `{table['backbone']}`, {table['folds']}-fold cross-validation, epochs: {table.get('epochs', '?')}, "
        f"{size} x {size} px. Mean ± std over folds, in %. MACs and params by fvcore at {size} px "
        f"and at {PAPER_SIZE} px (the paper's size).",
        "",
        "| method | weighted F1 | sensitivity | specificity | AUC | accuracy | macro F1 | "
        f"MACs @{size} (M) | MACs @{PAPER_SIZE} (M) | params (M) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, row in methods.items():
        s = row["summary"]
        c_run, c_224 = row.get("complexity", {}).get("run"), row.get("complexity", {}).get("paper")
        macs_run = f"{c_run['macs'] / 1e6:.2f}" if c_run else "n/a"
        macs_224 = f"{c_224['macs'] / 1e6:.2f}" if c_224 else "n/a"
        params = f"{(c_run or c_224)['params'] / 1e6:.3f}" if (c_run or c_224) else "n/a"
        cells = " | ".join(_cell(s.get(m)) for m in SCALAR_METRICS)
        lines.append(f"| {method_label(method)} | {cells} | {macs_run} | {macs_224} | {params} |")

    classes = table.get("classes") or []
    if classes:
        lines += ["", "Per-class recall (%), mean ± std over the folds where the class occurs:", "",
                  "| method | " + " | ".join(CLASS_ABBREV.get(c, c) for c in classes) + " |",
                  "|---|" + "---:|" * len(classes)]
        for method, row in methods.items():
            recall = row["summary"].get("per_class_recall", {})
            lines.append(f"| {method_label(method)} | " + " | ".join(_cell(recall.get(c)) for c in classes) + " |")

    independent = {m: row["head_independence"] for m, row in methods.items() if row.get("head_independence")}
    if independent:
        heads = _in_light_order(table, (h for rows in independent.values() for h in rows))
        lines += ["", "Head independence: accuracy (%) of head k when only light k is given (other slots at the "
                  "missing fill), mean ± std over folds:", "",
                  "| method | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
        for m, rows in independent.items():
            lines.append(f"| {method_label(m)} | " + " | ".join(_cell((rows.get(h) or {}).get("accuracy"))
                                                              for h in heads) + " |")

    missing = {m: row["missing_light"] for m, row in methods.items() if row.get("missing_light")}
    if missing:
        lights = _in_light_order(table, (k for rows in missing.values() for k in rows))
        lines += ["", "One light missing at run time: accuracy (%) with that light blanked (missing fill) and the "
                  "present lights' heads averaged, mean ± std over folds; all lights for comparison:", "",
                  "| method | all lights | " + " | ".join(f"no {k}" for k in lights) + " |",
                  "|---|---:|" + "---:|" * len(lights)]
        for m, rows in missing.items():
            lines.append(f"| {method_label(m)} | {_cell(methods[m]['summary'].get('accuracy'))} | "
                         + " | ".join(_cell(rows.get(k)) for k in lights) + " |")

    recipe = table.get("recipe")
    if recipe:
        lines += ["", "Recipe: " + ", ".join(f"{k} {v}" for k, v in recipe.items()) + ". MM-MIMO rows train "
                  f"on batch_repetition x the rows per epoch, so {recipe.get('batch_repetition', 1)}x the "
                  "optimizer steps of the other rows at the same epochs."]

    lines += ["", "## The paper's claims on this run", ""]
    mark = {True: "holds", False: "does NOT hold", None: "not tested"}
    for c in table.get("claims", []):
        lines.append(f"- {c['claim']}: **{mark[c['holds']]}** ({c['metric']}: {c['detail']})")
    plots = table.get("plots") or []
    if plots:
        lines += ["", "## Plots", ""] + [f"- [{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def summarize_head_independence(per_fold: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Mean +- std over folds of each head's accuracy and confidence when only its own light is given
    (the CV's `head_independence` measure); None for methods without it."""
    rows = [m["head_independence"] for m in per_fold if m.get("head_independence")]
    if not rows:
        return None
    heads = list(dict.fromkeys(h for r in rows for h in r))
    return {h: {k: mean_std([(r.get(h) or {}).get(k) for r in rows]) for k in ("accuracy", "confidence")}
            for h in heads}


def summarize_missing_light(per_fold: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Mean +- std over folds of the accuracy with each light missing (the CV's `missing_light_accuracy`)."""
    rows = [m["missing_light_accuracy"] for m in per_fold if m.get("missing_light_accuracy")]
    if not rows:
        return None
    lights = list(dict.fromkeys(k for r in rows for k in r))
    return {k: mean_std([r.get(k) for r in rows]) for k in lights}


RECIPE_FIELDS = ("lr", "batch_size", "randaugment_n", "randaugment_m", "flip_rotate", "rho", "batch_repetition", "light_dropout",
                 "solo_rows", "kd_temperature", "kd_alpha", "kd_fused", "seed")


def build_table(fold_metrics: Mapping[str, Sequence[Mapping[str, Any]]], *, backbone: str, img_size: int,
                folds: int, classes: Sequence[str], complexity: Mapping[str, Mapping[str, Any]] | None = None,
                dataset: str | None = None, epochs: int | None = None,
                recipe: Mapping[str, Any] | None = None, lights: Sequence[str] | None = None) -> dict[str, Any]:
    """The table's JSON: per method the fold metrics, their summary and complexity; then the claims.

    `complexity` maps method -> {"run": {"macs", "params"}, "paper": {"macs", "params"}} (either optional).
    """
    complexity = complexity or {}
    methods: dict[str, Any] = {}
    for method, per_fold in fold_metrics.items():
        methods[method] = {"label": method_label(method), "summary": summarize_folds(list(per_fold)),
                           "folds": list(per_fold), "complexity": dict(complexity.get(method, {}))}
        independence = summarize_head_independence(per_fold)
        if independence:
            methods[method]["head_independence"] = independence
        missing = summarize_missing_light(per_fold)
        if missing:
            methods[method]["missing_light"] = missing
    summaries = {m: row["summary"] for m, row in methods.items()}
    macs = {m: (row["complexity"].get("paper") or row["complexity"].get("run") or {}).get("macs")
            for m, row in methods.items()}
    return {"backbone": backbone, "img_size": img_size, "folds": folds, "epochs": epochs, "dataset": dataset,
            "recipe": dict(recipe or {}), "classes": list(classes), "lights": list(lights or []), "methods": methods,
            "claims": check_claims(summaries, {m: v for m, v in macs.items() if v})}


def table_complexity(methods: Sequence[str], backbone: str, img_size: int,
                     modalities: Sequence[str]) -> dict[str, dict[str, Any]]:
    """method -> {"run": counts at img_size, "paper": counts at 224} (counted once if the sizes agree)."""
    run_rows = {r["method"]: r for r in complexity_rows(backbone, img_size, tuple(modalities), tuple(methods))}
    paper_rows = run_rows if img_size == PAPER_SIZE else {
        r["method"]: r for r in complexity_rows(backbone, PAPER_SIZE, tuple(modalities), tuple(methods))}
    keep = ("macs", "params")
    return {m: {"run": {k: run_rows[m][k] for k in keep}, "paper": {k: paper_rows[m][k] for k in keep}}
            for m in methods}


# ---- the run ----------------------------------------------------------------------------------

def run_table(dataset, base_config, run_dir: str | Path, methods: Sequence[str] | None = None,
              run_cv: Callable[..., Any] | None = None, plots: bool = True,
              dataset_name: str | None = None, resume: bool = True, progress: bool = True) -> dict[str, Any]:
    """Train (or reuse) every method, then write `table.md`, `table.json` and the plots.

    `base_config` is a `TrainConfig`; each method runs with `base_config.replace(method=...)` through
    `wbc_edge.train.cv.run_cv` (cells loaded once for all methods), or through `run_cv(dataset, config,
    run_dir)` when given (tests). `resume` lets a method an interrupted run left half-done continue.
    """
    run_dir = Path(run_dir)
    methods = order_methods(methods or table_methods(dataset.modalities), dataset.modalities)
    folds = list(base_config.folds_to_run)
    arrays = None
    per_method: dict[str, list[dict[str, Any]]] = {}
    todo = [m for m in methods if finished_folds(run_dir, m, folds) is None]
    for method in methods:
        if method not in todo:
            log.info("table: %s already finished in %s, reusing its folds", method, run_dir)
    if todo and run_cv is None:
        from wbc_edge.train.cv import load_arrays
        from wbc_edge.train.parallel import train_methods

        log.info("table: training %s (%d folds each)", ", ".join(todo), len(folds))
        arrays = load_arrays(dataset, base_config.img_size)
        train_methods(dataset, base_config, run_dir, todo, resume=resume, progress=progress, arrays=arrays)
    for method in methods:
        done = finished_folds(run_dir, method, folds)
        if done is None:
            if run_cv is not None and method in todo:
                run_cv(dataset, base_config.replace(method=method), run_dir)
            done = finished_folds(run_dir, method, folds)
            if done is None:
                raise DataError(f"{run_dir}: method '{method}' finished without a metrics.json for every fold")
        per_method[method] = done

    cx = table_complexity(methods, base_config.backbone, base_config.img_size, dataset.modalities)
    table = build_table(per_method, backbone=base_config.backbone, img_size=base_config.img_size,
                        folds=base_config.folds, classes=dataset.classes, complexity=cx,
                        dataset=dataset_name, epochs=base_config.epochs,
                        recipe={k: base_config.peak_lr if k == "lr" else getattr(base_config, k) for k in RECIPE_FIELDS},
                        lights=dataset.modalities)
    table["folds_run"] = folds
    if plots:
        table["plots"] = write_table_plots(table, dataset, run_dir, folds, arrays=arrays)
    atomic_write_text(run_dir / "table.json", json.dumps(table, indent=2, sort_keys=False, default=_json_default))
    atomic_write_text(run_dir / "table.md", render_table_md(table))
    log.info("table: wrote %s and %s", run_dir / "table.md", run_dir / "table.json")
    return table


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_table_plots(table: Mapping[str, Any], dataset, run_dir: Path, folds: Sequence[int],
                      figure4_cells: int = 256, arrays=None) -> list[str]:
    """Confusion matrices (summed over folds), learning curves (first fold), the method comparison and
    Figure 4 for the MM-MIMO rows. Returns paths relative to `run_dir`. A plot that cannot be drawn is
    logged and skipped: the table matters more than a picture."""
    from wbc_edge.train import plots as P

    out = run_dir / "plots"
    written: list[Path] = []
    rows = [{"method": method_label(m), **row["summary"]} for m, row in table["methods"].items()]
    written.append(P.plot_method_comparison(rows, out / "weighted_f1.png",
                                            title=f"Weighted F1 per method ({table['backbone']}, mean ± std)"))
    for method, row in table["methods"].items():
        name = method_dirname(method)
        confusion = row["summary"].get("confusion")
        if confusion is not None:
            written.append(P.plot_confusion(confusion, table["classes"], out / f"confusion-{name}.png",
                                            title=f"Confusion matrix, {method_label(method)}, all folds"))
        history = RunLayout(run_dir).history(folds[0], method)
        if history.is_file():
            try:
                written.append(P.plot_learning_curves(history, out / f"learning-{name}.png",
                                                      title=f"Learning curves, {method_label(method)}, fold {folds[0]}"))
            except WbcError as e:
                log.warning("learning curves for %s skipped: %s", method, e)
    for method in ("mimo-kd", "mimo"):
        if method in table["methods"]:
            try:
                path = figure4(dataset, run_dir, folds[0], method, out / f"figure4-{method}.png", figure4_cells,
                               arrays=arrays)
            except WbcError as e:
                log.warning("Figure 4 for %s skipped: %s", method, e)
                continue
            if path is not None:
                written.append(path)
    return [str(p.relative_to(run_dir)) for p in written]


def figure4(dataset, run_dir: Path, fold: int, method: str, out_png: Path, max_cells: int = 256,
            arrays=None) -> Path | None:
    """Figure 4 for the released model of `method` in `fold`, on that fold's validation cells.

    `arrays` (the CV's preloaded uint8 stack, all lights at the model's size) saves re-reading images.
    """
    import torch

    from wbc_edge.preprocess import cell_to_input, normalise
    from wbc_edge.train import plots as P
    from wbc_edge.train.checkpoint import load_model

    model_path = RunLayout(run_dir).checkpoint(fold, method)
    split_path = RunLayout(run_dir).split(fold)
    if not model_path.is_file() or not split_path.is_file():
        log.info("Figure 4 for %s: no %s or %s", method, model_path, split_path)
        return None
    model, spec, _ = load_model(model_path)
    model.eval()
    val_ids = json.loads(split_path.read_text(encoding="utf-8")).get("val", [])
    cell_ids = arrays.cell_ids if arrays is not None else dataset.cell_ids
    index_of = {cid: i for i, cid in enumerate(cell_ids)}
    indices = [index_of[c] for c in val_ids if c in index_of][:max_cells]
    if not indices:
        raise DataError(f"{split_path}: none of the validation cells are in the dataset")
    if arrays is not None and arrays.x.shape[1:] == spec.input_shape(1)[1:]:
        cells = arrays.x[indices]
    else:
        cells = np.stack([cell_to_input(dataset.load(i), spec) for i in indices])
    labels = np.asarray(dataset.labels)[indices]

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(torch.from_numpy(normalise(batch, spec)))
            return torch.softmax(logits.float(), dim=-1).numpy()

    stats = P.plot_head_confidence(predict, cells, labels, spec, out_png)
    atomic_write_text(out_png.with_suffix(".json"), json.dumps(stats, indent=2))
    return out_png
