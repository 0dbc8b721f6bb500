"""Training losses: per-head cross-entropy (masked for dropped lights) plus knowledge distillation.

loss = sum_h CE_h + alpha * T^2 * sum_h KL(softmax(teacher_h / T) || softmax(student_h / T)),
each term averaged over the rows whose slot h was not dropped. With fused rows (`kd_fused`), a row
holding one cell in every slot takes the present teachers' average as every head's target.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(per_row: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over kept rows per head ([B, H] -> [H]); a head with no kept row contributes 0."""
    keep = keep.to(per_row.dtype)
    return (per_row * keep).sum(0) / keep.sum(0).clamp_min(1.0)


def head_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None = None,
                       label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum over heads of the mean CE. logits [B, H, K], labels [B, H] int, keep [B, H] bool."""
    b, h, k = logits.shape
    ce = F.cross_entropy(logits.reshape(b * h, k).float(), labels.reshape(b * h),
                         reduction="none", label_smoothing=label_smoothing).reshape(b, h)
    if keep is None:
        keep = torch.ones_like(ce, dtype=torch.bool)
    return _masked_mean(ce, keep).sum()


def teacher_probs(teacher_logits: torch.Tensor, temperature: float, n_student_heads: int) -> torch.Tensor:
    """Softened teacher targets [B, H_student, K]: per head, or the heads' average for a 1-head student."""
    p = F.softmax(teacher_logits.float() / temperature, dim=-1)
    if n_student_heads == p.shape[1]:
        return p
    if n_student_heads == 1:
        return p.mean(dim=1, keepdim=True)  # early fusion + KD: the late-fusion average
    raise ValueError(f"teacher has {p.shape[1]} heads, student {n_student_heads}: cannot pair them")


def fused_targets(target_probs: torch.Tensor, present: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Per-head targets [B, H, K] where `rows` [B] (one cell in every slot) get, for every head, the
    average of the present heads' targets (`present` [B, H]): what the lights left agree on."""
    w = present.to(target_probs.dtype).unsqueeze(-1)
    fused = (target_probs * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
    return torch.where(rows[:, None, None], fused.expand_as(target_probs), target_probs)


def distillation(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float,
                 keep: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * sum over heads of the mean KL(target || softmax(student / T))."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_q, target_probs, reduction="none").sum(-1)  # [B, H]
    if keep is None:
        keep = torch.ones_like(kl, dtype=torch.bool)
    return temperature ** 2 * _masked_mean(kl, keep).sum()


def total_loss(student_logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None = None, *,
               teacher_logits: torch.Tensor | None = None, temperature: float = 4.0, alpha: float = 1.0,
               label_smoothing: float = 0.0, fused_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """CE (+ alpha * KD when teacher logits are given); returns the loss and its parts for logging.

    fused_rows [B] bool: rows whose heads are distilled from the present teachers' average (`fused_targets`)."""
    ce = head_cross_entropy(student_logits, labels, keep, label_smoothing)
    parts = {"ce": float(ce.detach())}
    if teacher_logits is None or alpha == 0:
        return ce, parts
    target = teacher_probs(teacher_logits, temperature, student_logits.shape[1])
    if fused_rows is not None and target.shape[1] > 1:
        present = keep if keep is not None else torch.ones(target.shape[:2], dtype=torch.bool, device=target.device)
        target = fused_targets(target, present, fused_rows)
    kd = distillation(student_logits, target, temperature, keep)
    parts["kd"] = float(kd.detach())
    return ce + alpha * kd, parts
