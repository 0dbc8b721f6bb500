"""Plots a person would rather look at than read: learning curves, confusion matrix, Figure 4.

Matplotlib with the Agg backend (no display needed). Every plot is written atomically as PNG.
`plot_head_confidence` takes a plain `predict(batch_uint8) -> head_probs` callable, so it works with a
PyTorch model, an ONNX Runtime session or a TensorRT engine alike.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from wbc_edge.bundle import atomic_write_bytes  # noqa: E402
from wbc_edge.errors import DataError  # noqa: E402
from wbc_edge.spec import CLASS_ABBREV, ModelSpec  # noqa: E402

log = logging.getLogger(__name__)

DPI = 110


def _save(fig: plt.Figure, out_png: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out_png, buf.getvalue())
    log.info("wrote %s", out_png)
    return Path(out_png)


def _short(name: str) -> str:
    return CLASS_ABBREV.get(name, name)


def _read_history(history_csv: str | Path) -> dict[str, list[float]]:
    path = Path(history_csv)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read learning history ({e.strerror})") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise DataError(f"{path}: learning history has no rows")
    columns: dict[str, list[float]] = {}
    for name in rows[0]:
        values = []
        for row in rows:
            try:
                values.append(float(row[name]))
            except (TypeError, ValueError):
                values.append(math.nan)
        if not all(math.isnan(v) for v in values):
            columns[name] = values
    return columns


SCORE_HINTS = ("acc", "f1", "auc", "recall", "precision", "specificity", "sensitivity")
NOT_PLOTTED = {"epoch", "step", "lr", "time", "seconds", "wall_s"}


def plot_learning_curves(history_csv: str | Path, out_png: str | Path, title: str | None = None) -> Path:
    """Losses on the left (every numeric column that is not a score), scores (accuracy, F1, ...) right.

    The x axis is the `epoch` column when there is one, else the row number.
    """
    columns = _read_history(history_csv)
    n_rows = len(next(iter(columns.values())))
    x = columns["epoch"] if "epoch" in columns else list(range(1, n_rows + 1))
    plotted = [c for c in columns if c.lower() not in NOT_PLOTTED]
    score_cols = [c for c in plotted if any(h in c.lower() for h in SCORE_HINTS)]
    loss_cols = [c for c in plotted if c not in score_cols]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for c in loss_cols:
        axes[0].plot(x, columns[c], marker="o", ms=3, label=c)
    axes[0].set(title="Losses", xlabel="epoch", ylabel="loss")
    for c in score_cols:
        axes[1].plot(x, columns[c], marker="o", ms=3, label=c)
    axes[1].set(title="Scores", xlabel="epoch", ylabel="score")
    if all(0.0 <= v <= 1.0 for c in score_cols for v in columns[c] if not math.isnan(v)):
        axes[1].set_ylim(0.0, 1.02)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title or f"Learning curves ({Path(history_csv).parent.name})")
    return _save(fig, out_png)


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], out_png: str | Path,
                   title: str = "Confusion matrix") -> Path:
    """Counts on the left, row-normalised (recall per true class) on the right: rare classes stay visible."""
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.shape != (len(classes), len(classes)):
        raise DataError(f"confusion matrix: shape {list(cm.shape)} does not match {len(classes)} classes")
    labels = [_short(c) for c in classes]
    row_sums = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=np.float64), where=row_sums > 0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    ConfusionMatrixDisplay(cm, display_labels=labels).plot(ax=axes[0], cmap="Blues", colorbar=False, values_format="d")
    axes[0].set_title("Counts")
    ConfusionMatrixDisplay(normalised, display_labels=labels).plot(ax=axes[1], cmap="Blues", colorbar=False,
                                                                  values_format=".2f")
    axes[1].set_title("Share of each true class (recall on the diagonal)")
    for ax in axes:
        ax.set(xlabel="predicted class", ylabel="true class")
    fig.suptitle(f"{title} ({int(cm.sum())} cells)")
    return _save(fig, out_png)


def head_confidence_conditions(cells_uint8: np.ndarray, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Figure 4's inputs: 'all lights', and for each light that light copied into every slot."""
    n_lights = len(spec.modalities)
    conditions = {"all lights": cells_uint8}
    for k, light in enumerate(spec.modalities):
        one = cells_uint8[:, 3 * k : 3 * k + 3]
        conditions[f"only {light}"] = np.ascontiguousarray(np.tile(one, (1, n_lights, 1, 1)))
    return conditions


def plot_head_confidence(predict: Callable[[np.ndarray], np.ndarray], cells_uint8: np.ndarray,
                         labels: Sequence[int], spec: ModelSpec, out_png: str | Path,
                         batch_size: int = 64) -> dict[str, Any]:
    """The paper's Figure 4: each head's confidence in the true class under (a) all lights and
    (b-e) one light copied into all slots.

    `predict` maps uint8 [B, 3M, S, S] to per-head probabilities [B, H, K]. Returns
    {"conditions": {condition: {head: {"mean_confidence", "accuracy"}}}, "heads", "n"}; with
    independent heads only the head of the given light stays confident in (b-e).
    """
    cells_uint8 = np.asarray(cells_uint8)
    labels = np.asarray(labels, dtype=np.int64)
    expected = spec.input_shape(len(cells_uint8))
    if cells_uint8.dtype != np.uint8 or cells_uint8.shape != expected:
        raise DataError(f"head confidence cells: expected uint8 {list(expected)}, got {cells_uint8.dtype} "
                        f"{list(cells_uint8.shape)}")
    if labels.shape != (len(cells_uint8),):
        raise DataError(f"head confidence labels: expected {len(cells_uint8)} labels, got shape {list(labels.shape)}")
    heads = list(spec.heads)
    rows = np.arange(len(labels))
    result: dict[str, Any] = {"heads": heads, "n": int(len(labels)), "conditions": {}}
    confidences: dict[str, np.ndarray] = {}
    for condition, batch in head_confidence_conditions(cells_uint8, spec).items():
        head_probs = np.concatenate([np.asarray(predict(batch[i : i + batch_size]))
                                     for i in range(0, len(batch), batch_size)])
        if head_probs.shape != (len(labels), len(heads), spec.num_classes):
            raise DataError(f"head confidence: predict returned shape {list(head_probs.shape)}, expected "
                            f"{[len(labels), len(heads), spec.num_classes]}")
        true_conf = head_probs[rows, :, labels]  # [N, H]
        correct = head_probs.argmax(axis=2) == labels[:, None]
        confidences[condition] = true_conf
        result["conditions"][condition] = {
            head: {"mean_confidence": float(true_conf[:, h].mean()), "accuracy": float(correct[:, h].mean())}
            for h, head in enumerate(heads)
        }

    fig, axes = plt.subplots(1, len(confidences), figsize=(3.2 * len(confidences), 3.8), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (letter, (condition, conf)) in zip(axes, zip("abcdefghij", confidences.items())):
        parts = ax.violinplot([conf[:, h] for h in range(len(heads))], showmeans=True, showextrema=False)
        lit = condition.removeprefix("only ")
        for h, body in enumerate(parts["bodies"]):
            body.set_facecolor("tab:orange" if heads[h] == lit else "tab:blue")
            body.set_alpha(0.6)
        ax.set_xticks(range(1, len(heads) + 1), heads, rotation=30, fontsize=8)
        ax.set_title(f"({letter}) {condition}", fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("probability of the true class")
    method = (spec.provenance or {}).get("method_name", spec.method)  # 'mimo-kd', not the network's 'mimo'
    fig.suptitle(f"Per-head confidence ({method}, {spec.backbone}, {len(labels)} cells; "
                 "orange = the head of the light given)")
    _save(fig, out_png)
    return result


def plot_method_comparison(summary_rows: Sequence[dict[str, Any]], out_png: str | Path,
                           metric: str = "weighted_f1", title: str | None = None) -> Path:
    """Bar chart of one metric's mean +- std per method (Table 1 at a glance)."""
    names = [r["method"] for r in summary_rows]
    means = [(r.get(metric) or {}).get("mean") for r in summary_rows]
    stds = [(r.get(metric) or {}).get("std") or 0.0 for r in summary_rows]
    means_pct = [100 * m if m is not None else 0.0 for m in means]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names)), 4))
    ax.bar(range(len(names)), means_pct, yerr=[100 * s for s in stds], capsize=3, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    low = min((m for m in means_pct if m > 0), default=0.0)
    ax.set_ylim(max(0.0, low - 10), 100)
    ax.set(ylabel=f"{metric} (%)", title=title or f"{metric} per method (mean +- std over folds)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_png)
