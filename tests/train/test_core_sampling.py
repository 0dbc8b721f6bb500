"""The MM-MIMO slot sampler: independent slots in training, identical at evaluation, the knobs."""
from __future__ import annotations

import numpy as np
import pytest

from wbc_edge.train.sampling import MimoBatchSampler, eval_batches

N_CLASSES = 5


def _labels(n: int = 500, seed: int = 1) -> np.ndarray:
    # Imbalanced like the paper so the class-prior agreement is clearly below 1.
    return np.random.default_rng(seed).choice(N_CLASSES, size=n, p=[0.5, 0.3, 0.1, 0.06, 0.04])


def test_training_slots_are_independent_cells():
    labels = _labels()
    sampler = MimoBatchSampler(np.arange(len(labels)), n_slots=4, batch_size=50, seed=0)
    index = np.concatenate([b.index for b in sampler])
    same_cell = (index[:, 0] == index[:, 1]).mean()
    agree = (labels[index[:, 0]] == labels[index[:, 1]]).mean()
    prior = np.bincount(labels, minlength=N_CLASSES) / len(labels)
    expected = float((prior ** 2).sum())
    assert same_cell < 0.1
    assert abs(agree - expected) < 0.08, (agree, expected)
    # Every cell is drawn once per slot per epoch (a permutation per slot).
    for slot in range(4):
        assert sorted(index[:, slot]) == sorted(np.arange(len(labels)))


def test_evaluation_rows_hold_one_cell_in_every_slot():
    batches = eval_batches(np.arange(23), n_slots=4, batch_size=8)
    index = np.concatenate([b.index for b in batches])
    assert (index == index[:, :1]).all()
    assert list(index[:, 0]) == list(range(23))
    assert not np.concatenate([b.dropped for b in batches]).any()


def test_full_input_repetition_gives_identical_slots():
    sampler = MimoBatchSampler(np.arange(100), n_slots=4, batch_size=20, input_repetition=1.0, seed=0)
    index = np.concatenate([b.index for b in sampler])
    assert (index == index[:, :1]).all()


def test_partial_input_repetition_fraction():
    sampler = MimoBatchSampler(np.arange(400), n_slots=4, batch_size=40, input_repetition=0.25, seed=0)
    index = np.concatenate([b.index for b in sampler])
    same = (index == index[:, :1]).all(axis=1).mean()
    assert 0.22 <= same <= 0.32  # 25% forced plus the rare accidental coincidence


def test_batch_repetition_repeats_each_cell_in_other_combinations():
    sampler = MimoBatchSampler(np.arange(64), n_slots=4, batch_size=16, batch_repetition=4, seed=0)
    batches = sampler.batches()
    assert len(batches) == 64 // 4 == len(sampler)
    for b in batches:
        for slot in range(4):
            _, counts = np.unique(b.index[:, slot], return_counts=True)
            assert (counts == 4).all() and len(counts) == 4
        # The four copies of a cell do not all sit in the same row combination.
        assert len({tuple(r) for r in b.index}) > 4


def test_light_dropout_rate_and_never_a_blank_row():
    sampler = MimoBatchSampler(np.arange(2000), n_slots=4, batch_size=50, light_dropout=0.3, seed=0)
    dropped = np.concatenate([b.dropped for b in sampler])
    assert not dropped.all(axis=1).any()
    assert 0.25 < dropped.mean() < 0.32


def test_seeded_epochs_replay_and_differ():
    def epoch_index(seed: int, epoch: int) -> np.ndarray:
        s = MimoBatchSampler(np.arange(60), n_slots=4, batch_size=12, input_repetition=0.3,
                             batch_repetition=2, light_dropout=0.2, seed=seed)
        s.set_epoch(epoch)
        return np.concatenate([b.index for b in s])

    assert np.array_equal(epoch_index(5, 2), epoch_index(5, 2))
    assert not np.array_equal(epoch_index(5, 2), epoch_index(5, 3))
    assert not np.array_equal(epoch_index(5, 2), epoch_index(6, 2))


def test_ranks_share_the_epoch_without_overlap():
    pool = np.arange(80)
    whole = MimoBatchSampler(pool, n_slots=4, batch_size=10, seed=1)._global_batches()
    shards = [MimoBatchSampler(pool, n_slots=4, batch_size=10, seed=1, rank=r, world_size=2).batches() for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(whole) // 2
    got = sorted(tuple(b.index.ravel()) for shard in shards for b in shard)
    assert got == sorted(tuple(b.index.ravel()) for b in whole)


@pytest.mark.parametrize("kw", [{"input_repetition": 1.5}, {"batch_repetition": 0}, {"light_dropout": 1.0}])
def test_bad_knobs_are_refused(kw):
    with pytest.raises(ValueError):
        MimoBatchSampler(np.arange(10), n_slots=4, batch_size=4, **kw)


def test_solo_rows_keep_one_light_each_and_leave_other_draws_alone():
    def batches(solo: float):
        return MimoBatchSampler(np.arange(400), n_slots=4, batch_size=40, input_repetition=0.5, batch_repetition=2,
                                light_dropout=0.1, solo_rows=solo, seed=3).batches()

    plain, solo = batches(0.0), batches(0.25)
    for a, b in zip(plain, solo):
        assert np.array_equal(a.index, b.index)  # cell draws are the same; only blanking is added
        kept = (~b.dropped).sum(axis=1)
        assert (kept >= 1).all()
        one_light = kept == 1
        assert one_light.sum() >= round(0.25 * len(kept))  # the solo rows (and dropout's rare 1-light rows)
        changed = (a.dropped != b.dropped).any(axis=1)
        assert one_light[changed].all()  # only rows made solo differ
    kept_slot = np.concatenate([np.argmin(b.dropped, axis=1)[(~b.dropped).sum(axis=1) == 1] for b in solo])
    assert (np.bincount(kept_slot, minlength=4) > 20).all()  # every light gets solo rows
