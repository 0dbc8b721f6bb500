"""RandAugment on preloaded uint8 cell stacks, one draw per row shared by all its lights.

A row [3M, S, S] is viewed as M RGB images [M, 3, S, S] and passed through torchvision's
`transforms.v2.RandAugment` in one call: the lights entering a network together get the same
geometric transform (rotate, shear, translate) and the same photometric one. Draws come from torch's
global RNG, which the engine seeds per epoch, so an epoch's augmentation is reproducible.

`flip_rotate` adds one of the eight flips / 90-degree rotations per row (again shared by its lights),
applied before RandAugment: a cell on a slide has no up or left, and these lose no pixels.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2


class RowAugment:
    """Optional flip/rot90, then RandAugment(N, M), per row of a uint8 batch [B, 3M, S, S].

    Identity when num_ops == 0 and not flip_rotate.
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 18, flip_rotate: bool = False) -> None:
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.flip_rotate = flip_rotate
        self.rand_augment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude) if num_ops > 0 else None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.rand_augment is None and not self.flip_rotate:
            return batch
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] % 3:
            raise ValueError(f"expected a uint8 [B, 3M, S, S] batch, got {batch.dtype} {tuple(batch.shape)}")
        b, c, h, w = batch.shape
        if self.flip_rotate:
            if h != w:
                raise ValueError(f"flip_rotate needs square rows, got {h}x{w}")
            turns = torch.randint(0, 4, (b,)).tolist()
            flips = torch.randint(0, 2, (b,)).tolist()
            batch = torch.stack([torch.rot90(row.flip(-1) if f else row, k, dims=(-2, -1))
                                 for row, k, f in zip(batch, turns, flips)])
        if self.rand_augment is None:
            return batch.contiguous()
        out = torch.empty_like(batch)
        for row in range(b):
            out[row] = self.rand_augment(batch[row].reshape(c // 3, 3, h, w)).reshape(c, h, w)
        return out
