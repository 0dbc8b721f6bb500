"""CE + KD loss against a value computed by hand with explicit math."""
from __future__ import annotations

import math

import torch

from wbc_edge.train.losses import total_loss


def _softmax(v):
    e = [math.exp(a) for a in v]
    s = sum(e)
    return [a / s for a in e]


def test_total_loss_equals_hand_computed_value():
    student = [[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]],
               [[0.0, 1.0, 0.0], [1.0, -2.0, 3.0]]]  # [B=2, H=2, K=3]
    teacher = [[[1.0, 1.0, 0.0], [0.0, 2.0, 0.0]],
               [[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]
    labels = [[0, 1], [1, 2]]
    keep = [[True, True], [True, False]]  # row 1, head 1 dropped: no CE, no KD for it
    T, alpha = 2.0, 0.5

    ce = 0.0
    kd = 0.0
    for h in range(2):
        rows = [b for b in range(2) if keep[b][h]]
        ce_h = sum(-math.log(_softmax(student[b][h])[labels[b][h]]) for b in rows) / len(rows)
        kl_h = 0.0
        for b in rows:
            p = _softmax([t / T for t in teacher[b][h]])
            q = _softmax([s / T for s in student[b][h]])
            kl_h += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
        ce += ce_h
        kd += kl_h / len(rows)
    expected = ce + alpha * T * T * kd

    loss, parts = total_loss(torch.tensor(student), torch.tensor(labels), torch.tensor(keep),
                             teacher_logits=torch.tensor(teacher), temperature=T, alpha=alpha)
    assert abs(float(loss) - expected) < 1e-5
    assert abs(parts["ce"] - ce) < 1e-5 and abs(parts["kd"] - T * T * kd) < 1e-5


def test_one_head_student_distils_from_the_teachers_average():
    student = [[[1.0, 0.0]]]
    teacher = [[[2.0, 0.0], [0.0, 1.0]]]
    T = 1.0
    p = [(a + b) / 2 for a, b in zip(_softmax(teacher[0][0]), _softmax(teacher[0][1]))]
    q = _softmax(student[0][0])
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    ce = -math.log(q[1])
    loss, _ = total_loss(torch.tensor(student), torch.tensor([[1]]), teacher_logits=torch.tensor(teacher),
                         temperature=T, alpha=1.0)
    assert abs(float(loss) - (ce + kl)) < 1e-6


def test_kd_vanishes_when_student_matches_teacher():
    logits = torch.randn(4, 4, 5)
    labels = torch.randint(0, 5, (4, 4))
    loss, parts = total_loss(logits, labels, teacher_logits=logits.clone(), temperature=3.0)
    assert abs(parts["kd"]) < 1e-5
    assert abs(float(loss) - parts["ce"]) < 1e-5


def test_fused_rows_distil_every_present_head_from_the_present_teachers_average():
    from wbc_edge.train.losses import fused_targets, teacher_probs

    teacher = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]],
                            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # [B=2, H=3, K=3]
    target = teacher_probs(teacher, 1.0, 3)
    present = torch.tensor([[True, True, False], [True, True, True]])
    rows = torch.tensor([True, False])  # row 0 holds one cell in every slot, row 1 three different cells
    fused = fused_targets(target, present, rows)
    expected = (target[0, 0] + target[0, 1]) / 2  # the dropped head's teacher (it saw a blank) is left out
    for h in range(3):
        assert torch.allclose(fused[0, h], expected)
    assert torch.equal(fused[1], target[1])  # other rows keep each head's own teacher
    student = torch.zeros(2, 3, 3)
    labels = torch.zeros(2, 3, dtype=torch.long)
    plain, _ = total_loss(student, labels, present, teacher_logits=teacher, temperature=1.0, alpha=1.0)
    with_fused, _ = total_loss(student, labels, present, teacher_logits=teacher, temperature=1.0, alpha=1.0, fused_rows=rows)
    assert not torch.isclose(plain, with_fused)  # the option reaches the loss
