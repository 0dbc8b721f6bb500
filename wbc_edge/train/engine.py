"""Training and evaluation of one method on one fold: `train_one_epoch`, `evaluate`, `fit`.

Cells are preloaded once as a uint8 stack [N, 3M, S, S] (`wbc_edge.preprocess.cell_to_input`);
batches are gathered from it by the MIMO sampler's slot indices, augmented on uint8, normalised with
the spec's per-light statistics, and dropped slots set to zero (the missing fill, normalised).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from wbc_edge.bundle import atomic_write_text
from wbc_edge.run_layout import CHECKPOINT, HISTORY, METRICS, RESUME_STATE
from wbc_edge.errors import SpecError
from wbc_edge.spec import ModelSpec, spec_for
from wbc_edge.train.augment import RowAugment
from wbc_edge.train.checkpoint import load_payload, save_payload, save_release, unwrap
from wbc_edge.train.config import TrainConfig, parse_method
from wbc_edge.train.distributed import DistContext, sync_buffers, wrap_model
from wbc_edge.train.losses import total_loss
from wbc_edge.train.models import create_model
from wbc_edge.train.sampling import MimoBatchSampler, SlotBatch, eval_batches

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class CellArrays:
    """A dataset preloaded in memory: uint8 [N, 3M, S, S] in the dataset's light order."""

    x: np.ndarray
    labels: np.ndarray
    cell_ids: list[str]
    classes: tuple[str, ...]
    modalities: tuple[str, ...]
    groups: list[str] | None = None
    fingerprint: str = ""
    source: str = ""
    scale: tuple[float, float] | None = None  # (crop_um, um_per_px) of the cells when the dataset records it
    _stats: dict[bytes, tuple[tuple, tuple]] = field(default_factory=dict, repr=False, compare=False)

    def light_statistics(self, lights: Sequence[str], pool: np.ndarray) -> tuple[tuple, tuple]:
        """Per-light RGB mean and std over `pool`, computed once per pool (every method of a fold
        shares its training split's statistics)."""
        pool = np.asarray(pool, dtype=np.int64)
        key = hashlib.sha1(pool.tobytes()).digest()
        if key not in self._stats:
            self._stats[key] = light_statistics(self.x, pool)
        mean, std = self._stats[key]
        idx = [self.modalities.index(m) for m in lights]
        return tuple(mean[i] for i in idx), tuple(std[i] for i in idx)

    def select_lights(self, lights: Sequence[str]) -> np.ndarray:
        """The stack restricted to `lights` (a view when they are contiguous)."""
        idx = [self.modalities.index(m) for m in lights]
        if idx == list(range(idx[0], idx[0] + len(idx))):
            return self.x[:, 3 * idx[0] : 3 * idx[-1] + 3]
        return np.concatenate([self.x[:, 3 * i : 3 * i + 3] for i in idx], axis=1)


@dataclass
class TeacherModel:
    model: nn.Module
    spec: ModelSpec
    source: str


@dataclass
class MethodPlan:
    """What one method trains: its spec, the pixels it reads and how its batches are drawn."""

    name: str
    spec: ModelSpec
    x: np.ndarray
    n_slots: int
    head_labels_per_slot: bool = False  # True for MIMO: head k's label is slot k's cell
    # MIMO batch drawing (sampling.MimoBatchSampler); the defaults put the same cell in every slot
    rho: float = 1.0
    batch_repetition: int = 1
    light_dropout: float = 0.0
    solo_rows: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def light_statistics(x: np.ndarray, pool: np.ndarray, chunk: int = 512) -> tuple[tuple, tuple]:
    """Per-channel mean and std (0..255 units) over the cells in `pool`, grouped as RGB per light."""
    c = x.shape[1]
    s1 = np.zeros(c)
    s2 = np.zeros(c)
    n = 0
    for start in range(0, len(pool), chunk):
        block = x[pool[start : start + chunk]].astype(np.float64)
        s1 += block.sum(axis=(0, 2, 3))
        s2 += (block ** 2).sum(axis=(0, 2, 3))
        n += block.shape[0] * block.shape[2] * block.shape[3]
    mean = s1 / max(n, 1)
    std = np.sqrt(np.maximum(s2 / max(n, 1) - mean ** 2, 1e-6))
    std = np.maximum(std, 1.0)  # a flat channel must not blow up after normalising
    group = lambda v: tuple(tuple(round(float(a), 4) for a in v[i : i + 3]) for i in range(0, c, 3))  # noqa: E731
    return group(mean), group(std)


def plan_method(cfg: TrainConfig, method_name: str, arrays: CellArrays, train_idx: np.ndarray,
                provenance: dict[str, Any] | None = None) -> MethodPlan:
    spec_method, light, _ = parse_method(method_name, arrays.modalities)
    lights = (light,) if light else arrays.modalities
    x = arrays.select_lights(lights)
    mean, std = arrays.light_statistics(lights, train_idx)
    physical = {} if arrays.scale is None else {"crop_um": arrays.scale[0], "train_um_per_px": arrays.scale[1]}
    spec = spec_for(spec_method, tuple(lights), classes=tuple(arrays.classes), backbone=cfg.backbone,
                    input_size=int(x.shape[-1]), mean=mean, std=std, provenance=dict(provenance or {}), **physical)
    if spec_method == "mimo":
        return MethodPlan(method_name, spec, x, len(lights), head_labels_per_slot=True, rho=cfg.rho,
                          batch_repetition=cfg.batch_repetition, light_dropout=cfg.light_dropout,
                          solo_rows=cfg.solo_rows)
    # single and early: every slot holds the same cell (early fusion is the paper's baseline: no dropout).
    return MethodPlan(method_name, spec, x, len(lights))


def _normaliser(spec: ModelSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    return mean, std


def gather_batch(x: np.ndarray, labels: np.ndarray, batch: SlotBatch) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [B, 3M, S, S] with slot i from cell index[:, i], and labels [B, M]."""
    b, m = batch.index.shape
    out = np.empty((b, x.shape[1], x.shape[2], x.shape[3]), dtype=np.uint8)
    for i in range(m):
        out[:, 3 * i : 3 * i + 3] = x[batch.index[:, i], 3 * i : 3 * i + 3]
    return out, labels[batch.index]


def normalise_batch(xb: torch.Tensor, spec: ModelSpec, dropped: torch.Tensor | None) -> torch.Tensor:
    """uint8 [B, 3M, S, S] -> float, normalised; dropped slots become 0 (the mean fill, normalised).

    The result is channels-last, the layout the models are trained in (`to_training_layout`)."""
    mean, std = _normaliser(spec, xb.device)
    x = (xb.float() - mean) / std
    if dropped is not None and bool(dropped.any()):
        b, c, h, w = x.shape
        x = x.reshape(b, c // 3, 3, h, w).masked_fill(dropped[:, :, None, None, None], 0.0).reshape(b, c, h, w)
    return x.contiguous(memory_format=torch.channels_last)


def to_training_layout(model: nn.Module) -> nn.Module:
    """Channels-last weights: about 1.4x faster training and 1.7x faster inference of these small
    convolutions on the CPU (oneDNN's blocked kernels; measured on the 2-core machine), and the
    layout CUDA's tensor cores prefer. Values are unchanged; release files store contiguous tensors."""
    return model.to(memory_format=torch.channels_last)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no decay on BatchNorm and biases
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.peak_lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Linear warm-up for `warmup_epochs`, then cosine decay to zero, stepped per batch."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def prefetch(fn: Callable[[Any], Any], items: Sequence[Any], depth: int) -> Iterator[Any]:
    """fn(item) for each item in order; with depth > 0 one background thread works `depth` items ahead.

    One thread keeps the augmentation's RNG draws in order (reproducible) while the main thread trains;
    torch ops release the GIL, so on a 2-core CPU batch preparation overlaps the model step.
    """
    if depth <= 0:
        yield from (fn(item) for item in items)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wbc-batches") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def train_one_epoch(model: nn.Module, plan: MethodPlan, labels: np.ndarray, batches: list[SlotBatch],
                    optimizer, scheduler, scaler, cfg: TrainConfig, device: torch.device, *,
                    augment: RowAugment, teacher: TeacherModel | None = None, desc: str = "",
                    show_progress: bool = True) -> dict[str, float]:
    model.train()
    use_amp = cfg.amp and device.type == "cuda"
    sums: dict[str, float] = {}
    rows = 0

    fuse = cfg.kd_fused and teacher is not None and plan.head_labels_per_slot

    def prepare(batch: SlotBatch):
        xb_np, yb_np = gather_batch(plan.x, labels, batch)
        same = torch.from_numpy((batch.index == batch.index[:, :1]).all(axis=1)) if fuse else None
        return augment(torch.from_numpy(xb_np)), torch.from_numpy(batch.dropped), torch.from_numpy(yb_np), same

    prepared = prefetch(prepare, batches, cfg.num_workers)
    bar = tqdm(prepared, total=len(batches), desc=desc, leave=False, disable=not show_progress, unit="batch")
    for xb, dropped, y, same in bar:
        xb, dropped, y = xb.to(device, non_blocking=True), dropped.to(device), y.to(device)
        if plan.head_labels_per_slot:
            keep = ~dropped
        else:
            y, keep = y[:, :1], torch.ones_like(y[:, :1], dtype=torch.bool)
        x = normalise_batch(xb, plan.spec, dropped)
        teacher_logits = None
        if teacher is not None:
            with torch.no_grad(), torch.autocast(device.type, enabled=use_amp):
                teacher_logits = teacher.model(normalise_batch(xb, teacher.spec, dropped)).float()
        with torch.autocast(device.type, enabled=use_amp):
            logits = model(x)
        loss, parts = total_loss(logits.float(), y, keep, teacher_logits=teacher_logits,
                                 temperature=cfg.kd_temperature, alpha=cfg.kd_alpha,
                                 label_smoothing=cfg.label_smoothing, fused_rows=None if same is None else same.to(device))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        n = len(xb)
        rows += n
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * n
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * n
        bar.set_postfix(loss=f"{sums['loss'] / rows:.3f}")
    return {f"train_{k}": v / max(rows, 1) for k, v in sums.items()}


@torch.inference_mode()
def predict_logits(model: nn.Module, x: np.ndarray, pool: np.ndarray, spec: ModelSpec, device: torch.device,
                   batch_size: int = 128, only_light: int | None = None, missing_light: int | None = None) -> np.ndarray:
    """Logits [N, H, K] for the cells in `pool`. `only_light` keeps one slot and `missing_light` blanks one,
    the blanked slots holding the missing fill (zero after normalising), as the runtime does."""
    model.eval()
    n_slots = spec.in_channels // 3
    out = []
    for batch in eval_batches(pool, n_slots, batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[batch.index[:, 0]])).to(device)
        dropped = None
        if only_light is not None or missing_light is not None:
            dropped = torch.zeros((len(xb), n_slots), dtype=torch.bool, device=device)
            if only_light is not None:
                dropped[:] = True
                dropped[:, only_light] = False
            if missing_light is not None:
                dropped[:, missing_light] = True
        out.append(model(normalise_batch(xb, spec, dropped)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, spec.num_heads, spec.num_classes), np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate(model: nn.Module, x: np.ndarray, labels: np.ndarray, pool: np.ndarray, spec: ModelSpec,
             device: torch.device, *, batch_size: int = 128, full: bool = True) -> dict[str, Any]:
    """Metrics of the heads' averaged probabilities on `pool`. With `full` also: per-head metrics, the
    head-independence measure (head k given only light k, other slots at the missing fill) and the
    accuracy with each light missing (the present lights' heads averaged)."""
    from wbc_edge.metrics import compute_metrics

    y = labels[pool]
    logits = predict_logits(model, x, pool, spec, device, batch_size)
    head_probs = _softmax(logits)
    probs = head_probs.mean(axis=1)
    eps = 1e-12
    result: dict[str, Any] = dict(compute_metrics(y, probs, spec.classes))
    result["loss"] = float(-np.mean(np.log(probs[np.arange(len(y)), y] + eps))) if len(y) else float("nan")
    if full and spec.num_heads > 1:
        result["heads"] = {name: dict(compute_metrics(y, head_probs[:, h], spec.classes))
                           for h, name in enumerate(spec.heads)}
        independence = {}
        for h, name in enumerate(spec.heads):
            k = spec.head_modality_index(h)
            if k is None:
                continue
            alone = _softmax(predict_logits(model, x, pool, spec, device, batch_size, only_light=k))
            own = alone[:, h]
            others = np.delete(alone, h, axis=1)
            independence[name] = {
                "accuracy": float((own.argmax(-1) == y).mean()) if len(y) else float("nan"),
                "confidence": float(own.max(-1).mean()) if len(y) else float("nan"),
                "others_confidence": float(others.max(-1).mean()) if len(y) else float("nan"),
            }
        result["head_independence"] = independence
    if full and len(spec.modalities) > 1:
        # One light missing at run time: the heads whose light is present (all heads for one fused head).
        missing = {}
        for k, light in enumerate(spec.modalities):
            probs_k = _softmax(predict_logits(model, x, pool, spec, device, batch_size, missing_light=k))
            heads = [h for h in range(spec.num_heads) if spec.head_modality_index(h) != k]
            pred = probs_k[:, heads].mean(axis=1).argmax(-1)
            missing[light] = float((pred == y).mean()) if len(y) else float("nan")
        result["missing_light_accuracy"] = missing
    return jsonable(result)


def _history_csv(history: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def method_seed(cfg: TrainConfig, method_name: str, fold: int) -> int:
    return (cfg.seed * 1_000_003 + fold * 7919 + zlib.crc32(method_name.encode())) % (2 ** 31)


def fit(cfg: TrainConfig, plan: MethodPlan, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
        method_dir: Path, *, fold: int = 0, resume: bool = False, teacher: TeacherModel | None = None,
        ctx: DistContext | None = None, callbacks: Sequence[EpochCallback] = (),
        progress: bool = True) -> dict[str, Any]:
    """Train `plan` on `train_idx`, checkpoint every epoch, release `model.pt` with its metrics."""
    ctx = ctx or DistContext(device=cfg.device)
    method_dir = Path(method_dir)
    device = torch.device(ctx.device if ctx.enabled else cfg.device)
    seed = method_seed(cfg, plan.name, fold)
    torch.manual_seed(seed)
    model = to_training_layout(create_model(plan.spec, cfg.pretrained_weights).to(device))
    sampler = MimoBatchSampler(np.asarray(train_idx), plan.n_slots, cfg.batch_size, input_repetition=plan.rho,
                               batch_repetition=plan.batch_repetition, light_dropout=plan.light_dropout,
                               solo_rows=plan.solo_rows,
                               seed=seed, rank=ctx.rank, world_size=ctx.world_size)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(sampler))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    history: list[dict[str, Any]] = []
    start_epoch = 0
    last_path = method_dir / RESUME_STATE
    if last_path.exists():
        if not resume:
            raise SpecError(f"{last_path}: an interrupted run is here; pass --resume to continue it or use another --out")
        state = load_payload(last_path)
        if state.get("spec") != plan.spec.to_dict():
            raise SpecError(f"{last_path}: was trained with another spec (data, split or settings changed); remove it to restart")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"])
        history = list(state.get("history", []))
        log.info("%s: resuming after epoch %d of %d", method_dir, start_epoch, cfg.epochs)
    train_model = wrap_model(model, ctx)
    augment = RowAugment(cfg.randaugment_n, cfg.randaugment_m, flip_rotate=cfg.flip_rotate)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        # Augmentation draws from torch's RNG: seed it per epoch (and rank) so a resumed epoch replays.
        torch.manual_seed(seed + 1 + epoch * 101 + ctx.rank)
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        row.update(train_one_epoch(train_model, plan, labels, sampler.batches(), optimizer, scheduler, scaler, cfg,
                                   device, augment=augment, teacher=teacher,
                                   desc=f"fold{fold} {plan.name} {epoch + 1}/{cfg.epochs}", show_progress=progress and ctx.is_main))
        sync_buffers(model, ctx)
        val = evaluate(model, plan.x, labels, np.asarray(val_idx), plan.spec, device,
                       batch_size=cfg.eval_batch_size, full=False)
        row.update({"val_loss": val["loss"], "val_accuracy": val.get("accuracy"),
                    "val_weighted_f1": val.get("weighted_f1"), "seconds": round(time.perf_counter() - t0, 3)})
        history.append(jsonable(row))
        if ctx.is_main:
            state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch + 1, "history": history, "spec": plan.spec.to_dict(),
                     "config": cfg.to_dict(), "rng": {"torch": torch.get_rng_state()}}
            if scaler.is_enabled():
                state["scaler"] = scaler.state_dict()
            save_payload(last_path, state)
            atomic_write_text(method_dir / HISTORY, _history_csv(history))
        ctx.barrier()
        log.info("fold %d %s epoch %d/%d: loss %.4f val acc %.4f (%.1fs)", fold, plan.name, epoch + 1, cfg.epochs,
                 row.get("train_loss", float("nan")), row.get("val_accuracy") or float("nan"), row["seconds"])
        for cb in callbacks:
            cb({"fold": fold, "method": plan.name, "epoch": epoch + 1, "history": history, "dir": method_dir,
                "model": model, "rank": ctx.rank})
    metrics = evaluate(model, plan.x, labels, np.asarray(val_idx), plan.spec, device,
                       batch_size=cfg.eval_batch_size, full=True)
    metrics.update({"fold": fold, "method": plan.name, "epochs": cfg.epochs, "n_train": int(len(train_idx)),
                    "n_val": int(len(val_idx))})
    if ctx.is_main:
        save_release(method_dir / CHECKPOINT, model, plan.spec, cfg.to_dict(), metrics)
        atomic_write_text(method_dir / METRICS, json.dumps(metrics, indent=2, sort_keys=True))
    ctx.barrier()
    return metrics
