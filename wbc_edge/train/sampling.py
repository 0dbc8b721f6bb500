"""Which cell fills which light slot of each training row: the MM-MIMO batch sampler.

A batch is an index matrix [B, M]: row b, slot i holds light i of cell `index[b, i]` (with that cell's
label), plus a boolean `dropped` [B, M] for slots blanked by light dropout. Knobs (MIMO recipe of
Havasi et al., plus light dropout):
- `input_repetition` rho: this fraction of the rows holds one cell in every slot (rho = 1 is early
  fusion with several heads, rho = 0 the paper's independent slots);
- `batch_repetition` r: each cell of a batch appears r times, in different slot combinations; an epoch
  still visits every training cell once as a "unique" cell, so it has r times more rows;
- `light_dropout` p: each slot is blanked with probability p (at least one slot per row stays);
- `solo_rows` s: this fraction of the rows keeps exactly one slot (drawn uniformly), the others blanked:
  head k then learns from light k alone, which is what it has to do when the other lights are missing.
Everything derives from (seed, epoch), so an epoch's batches are the same after a resume, and every
DDP rank computes the same global list and takes its own share.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SlotBatch:
    index: np.ndarray    # int64 [B, M]: cell (position in the sampler's pool) per row and slot
    dropped: np.ndarray  # bool [B, M]: slot blanked (input at the missing fill, head loss masked)


class MimoBatchSampler:
    """Seeded training batches of slot assignments over `pool` (positions into the preloaded stack)."""

    def __init__(self, pool: np.ndarray, n_slots: int, batch_size: int, *, input_repetition: float = 0.0,
                 batch_repetition: int = 1, light_dropout: float = 0.0, solo_rows: float = 0.0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True) -> None:
        if not 0.0 <= input_repetition <= 1.0:
            raise ValueError(f"input_repetition must be in [0, 1], got {input_repetition}")
        if batch_repetition < 1 or batch_size < batch_repetition:
            raise ValueError(f"batch_repetition must be in 1..batch_size, got {batch_repetition}")
        if not 0.0 <= light_dropout < 1.0:
            raise ValueError(f"light_dropout must be in [0, 1), got {light_dropout}")
        if not 0.0 <= solo_rows <= 1.0:
            raise ValueError(f"solo_rows must be in [0, 1], got {solo_rows}")
        self.pool = np.asarray(pool, dtype=np.int64)
        self.n_slots = n_slots
        self.batch_size = batch_size
        self.input_repetition = input_repetition
        self.batch_repetition = batch_repetition
        self.light_dropout = light_dropout
        self.solo_rows = solo_rows
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def unique_per_batch(self) -> int:
        return self.batch_size // self.batch_repetition

    def _global_batches(self) -> list[SlotBatch]:
        rng = np.random.default_rng([self.seed, self.epoch])
        solo_rng = np.random.default_rng([self.seed, self.epoch, 1])  # its own stream: rng's draws stay the same
        order = self.pool[rng.permutation(len(self.pool))]
        u = self.unique_per_batch
        n = len(order) // u if self.drop_last else -(-len(order) // u)
        batches = []
        for b in range(max(n, 1 if len(order) else 0)):
            chunk = order[b * u : (b + 1) * u]
            base = np.tile(chunk, self.batch_repetition)
            rows = len(base)
            # Independent shuffles per slot: slot i of a row takes light i of an unrelated cell.
            index = np.stack([base[rng.permutation(rows)] for _ in range(self.n_slots)], axis=1)
            n_same = int(round(self.input_repetition * rows))
            if n_same:
                same_rows = rng.choice(rows, n_same, replace=False)
                index[same_rows] = base[same_rows, None]
            dropped = np.zeros((rows, self.n_slots), dtype=bool)
            if self.light_dropout > 0 and self.n_slots > 1:
                dropped = rng.random((rows, self.n_slots)) < self.light_dropout
                all_gone = dropped.all(axis=1)
                keep = rng.integers(0, self.n_slots, size=rows)
                dropped[all_gone, keep[all_gone]] = False
            n_solo = int(round(self.solo_rows * rows)) if self.n_slots > 1 else 0
            if n_solo:
                solo = solo_rng.choice(rows, n_solo, replace=False)
                dropped[solo] = True
                dropped[solo, solo_rng.integers(0, self.n_slots, size=n_solo)] = False
            batches.append(SlotBatch(index, dropped))
        return batches

    def batches(self) -> list[SlotBatch]:
        """This rank's batches for the current epoch (equal count on every rank)."""
        allb = self._global_batches()
        per_rank = len(allb) // self.world_size if self.world_size > 1 else len(allb)
        return allb[self.rank :: self.world_size][:per_rank]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        u = self.unique_per_batch
        n = len(self.pool) // u if self.drop_last else -(-len(self.pool) // u)
        n = max(n, 1 if len(self.pool) else 0)
        return n // self.world_size if self.world_size > 1 else n


def eval_batches(pool: np.ndarray, n_slots: int, batch_size: int) -> list[SlotBatch]:
    """Evaluation: every slot of a row holds the same cell, in order, nothing dropped."""
    pool = np.asarray(pool, dtype=np.int64)
    out = []
    for start in range(0, len(pool), batch_size):
        cells = pool[start : start + batch_size]
        out.append(SlotBatch(np.repeat(cells[:, None], n_slots, axis=1), np.zeros((len(cells), n_slots), bool)))
    return out
