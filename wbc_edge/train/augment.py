"""RandAugment on preloaded uint8 cell stacks, one draw per row shared by all its lights.

A row [3M, S, S] is viewed as M RGB images [M, 3, S, S] and passed through torchvision's
`transforms.v2.RandAugment` in one call: the lights entering a network together get the same
geometric transform (rotate, shear, translate) and the same photometric one. Draws come from torch's
global RNG, which the engine seeds per epoch, so an epoch's augmentation is reproducible.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2


class RowAugment:
    """RandAugment(N, M) per row of a uint8 batch [B, 3M, S, S]; identity when num_ops == 0."""

    def __init__(self, num_ops: int = 2, magnitude: int = 18) -> None:
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.rand_augment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude) if num_ops > 0 else None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.rand_augment is None:
            return batch
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] % 3:
            raise ValueError(f"expected a uint8 [B, 3M, S, S] batch, got {batch.dtype} {tuple(batch.shape)}")
        b, c, h, w = batch.shape
        out = torch.empty_like(batch)
        for row in range(b):
            out[row] = self.rand_augment(batch[row].reshape(c // 3, 3, h, w)).reshape(c, h, w)
        return out
