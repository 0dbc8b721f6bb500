"""RandAugment shares one draw between the lights of a row, and rows draw independently."""
from __future__ import annotations

import numpy as np
import torch

from wbc_edge.train.augment import RowAugment


def _structured_rows(n: int, size: int = 32) -> torch.Tensor:
    rng = np.random.default_rng(0)
    light = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
    light[:, :, 8:20, 10:14] = 255  # an asymmetric bar so rotations and shears change pixels
    return torch.from_numpy(np.tile(light, (1, 4, 1, 1)))  # four identical lights per row


def test_lights_of_a_row_get_the_same_transform():
    torch.manual_seed(0)
    rows = _structured_rows(24)
    out = RowAugment(num_ops=2, magnitude=18)(rows)
    assert out.shape == rows.shape and out.dtype == torch.uint8
    lights = out.reshape(24, 4, 3, 32, 32)
    assert (lights == lights[:, :1]).all()
    changed = (out != rows).flatten(1).any(1)
    assert changed.float().mean() > 0.5


def test_rows_draw_different_transforms_and_seed_replays():
    rows = _structured_rows(1).repeat(16, 1, 1, 1)
    torch.manual_seed(1)
    a = RowAugment()(rows)
    torch.manual_seed(1)
    b = RowAugment()(rows)
    assert torch.equal(a, b)
    assert len({bytes(r.numpy()) for r in a}) > 8


def test_zero_ops_is_identity():
    rows = _structured_rows(3)
    assert torch.equal(RowAugment(num_ops=0)(rows), rows)


def _dihedral(row: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(r, k, dims=(-2, -1)) for r in (row, row.flip(-1)) for k in range(4)]


def test_flip_rotate_applies_one_of_the_eight_symmetries_per_row_to_all_its_lights():
    # Four different lights, so a symmetry applied to one light only would show.
    rng = np.random.default_rng(3)
    rows = torch.from_numpy(rng.integers(0, 256, size=(32, 12, 16, 16), dtype=np.uint8))
    torch.manual_seed(0)
    out = RowAugment(num_ops=0, flip_rotate=True)(rows)
    assert out.shape == rows.shape and out.dtype == torch.uint8
    used = set()
    for row, got in zip(rows, out):
        matches = [i for i, t in enumerate(_dihedral(row)) if torch.equal(t, got)]
        assert len(matches) == 1  # the whole [12, S, S] row moved as one image
        used.add(matches[0])
    assert len(used) >= 6  # rows draw independently (32 draws over 8 symmetries)


def test_flip_rotate_off_with_zero_ops_is_identity_and_on_replays_with_the_seed():
    rows = _structured_rows(8)
    assert torch.equal(RowAugment(num_ops=0, flip_rotate=False)(rows), rows)
    torch.manual_seed(5)
    a = RowAugment(num_ops=1, magnitude=5, flip_rotate=True)(rows)
    torch.manual_seed(5)
    b = RowAugment(num_ops=1, magnitude=5, flip_rotate=True)(rows)
    assert torch.equal(a, b) and not torch.equal(a, rows)
