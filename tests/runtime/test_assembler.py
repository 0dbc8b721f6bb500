"""Four-light assembly: lock from appearance, drops, duplicates, stale and rejected frames, hints."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wbc_edge.errors import DataError
from wbc_edge.runtime.assembler import LightCycleAssembler, field_similarity, frame_features
from wbc_edge.runtime.sources import Frame, FrameValidator, open_source
from wbc_edge.synth.frames import SyntheticCamera

ORDER = ("fluorescent", "color1", "color2", "color3")
POOL_SEED = 11
N_FIELDS = 6


@pytest.fixture(scope="module")
def pool():
    camera = SyntheticCamera(seed=POOL_SEED, width=160, height=120)
    return [camera.render_set(i)[0] for i in range(N_FIELDS)]


def _run(assembler, frames):
    sets = []
    for frame in frames:
        sets += assembler.push(frame)
    return sets + assembler.flush()


def _check_sets(sets, order=ORDER):
    """No set mixes two fields; every light key holds a frame of that light; no frame used twice."""
    used = set()
    for s in sets:
        assert tuple(s.images) == order
        fields = {info["set_index"] for info in s.source_info.values()}
        assert len(fields) == 1, f"set {s.index} pairs fields {fields}"
        for light, info in s.source_info.items():
            assert info["light"] == light
            assert s.images[light] is not None
        for light in order:
            assert (s.images[light] is None) == (f"missing:{light}" in s.flags)
        for idx in s.frame_indices.values():
            assert idx not in used
            used.add(idx)


def test_clean_stream_gives_complete_sets_in_order():
    with open_source("synthetic://?seed=5&sets=6&width=160&height=120") as source:
        assembler = LightCycleAssembler(source.light_order, use_hints=False)
        sets = _run(assembler, source)
    _check_sets(sets)
    assert len(sets) == 6 and all(s.complete and not s.flags for s in sets)
    assert [s.source_info["fluorescent"]["set_index"] for s in sets] == list(range(6))
    assert assembler.stats["sets"] == 6 and assembler.stats["duplicates"] == 0


def test_camera_faults_are_flagged_never_mixed():
    uri = "synthetic://?seed=6&sets=12&width=160&height=120&drop_every=7&duplicate_every=5&corrupt_every=9"
    with open_source(uri) as source:
        assembler = LightCycleAssembler(source.light_order, use_hints=False)
        frames = list(source)
    sets = _run(assembler, frames)
    _check_sets(sets)
    truncated = [f for f in frames if f.flags]
    duplicates = [f for f in frames if f.source_info["kind"] == "duplicate" and not f.flags]
    assert truncated and duplicates and len(frames) - len(duplicates) < 48  # the camera did drop frames
    assert assembler.stats["rejected"] == len(truncated)
    assert assembler.stats["duplicates"] == len(duplicates)
    assert sum(len(s.frame_indices) for s in sets) == len(frames) - len(truncated) - len(duplicates)
    assert any("duplicate_dropped" in s.flags for s in sets)
    assert any(f.startswith("frame_rejected:truncated") for s in sets for f in s.flags)
    assert {s.source_info[next(iter(s.source_info))]["set_index"] for s in sets} == set(range(12))


def test_rotated_light_order_and_lock_through_frequent_drops():
    order = ("color2", "color1", "fluorescent", "color3")
    uri = "synthetic://?seed=7&sets=14&width=160&height=120&drop_every=5&lights=" + ",".join(order)
    with open_source(uri) as source:
        assembler = LightCycleAssembler(order, use_hints=False)
        sets = _run(assembler, source)
    _check_sets(sets, order)
    assert assembler.locked and assembler.stats["unlocked_dropped"] == 0
    # colours learnt per light must match the camera's lights (checked via the truth in source_info)
    assert sum(len(s.frame_indices) for s in sets) == 56 - 56 // 5


def test_lying_hints_are_overruled_by_appearance(pool):
    frames = []
    k = 0
    for field in range(4):
        for light in ORDER:
            wrong = ORDER[(ORDER.index(light) + 2) % 4]
            frames.append(Frame(k, k / 30, pool[field][light], wrong, {"set_index": field, "light": light}))
            k += 1
    assembler = LightCycleAssembler(ORDER, use_hints=True)
    sets = _run(assembler, frames)
    _check_sets(sets)
    assert len(sets) == 4 and all(s.complete for s in sets)
    assert assembler.stats["hint_mismatches"] == 16  # every frame, the lock-on cycle included


@pytest.mark.parametrize("field_match_min", [0.2, None])
def test_lost_fluorescence_frame_does_not_join_two_fields(pool, field_match_min):
    """A whole cycle is lost (c2, c3 of field 1; fluorescence and c1 of field 2) and frame times carry
    no gap (a recorded folder). The cycle order allows c2 of field 2 after c1 of field 1: only the
    red-cell structure tells them apart."""
    lost = {(1, "color2"), (1, "color3"), (2, "fluorescent"), (2, "color1")}
    frames = []
    for field in range(4):
        for light in ORDER:
            if (field, light) not in lost:
                frames.append(Frame(len(frames), len(frames) / 30, pool[field][light], None, {"set_index": field, "light": light}))
    kw = {} if field_match_min is not None else {"field_match_min": -2.0}  # None: the check switched off
    sets = _run(LightCycleAssembler(ORDER, **kw), frames)
    if field_match_min is None:  # proves the test can see a mixed set
        with pytest.raises(AssertionError, match="pairs fields"):
            _check_sets(sets)
        return
    _check_sets(sets)
    assert [sorted(s.frame_indices.values()) for s in sets][1:3] == [[4, 5], [6, 7]]
    assert "field_mismatch" in sets[2].flags


def test_relocks_when_the_lamps_change_colour(pool):
    """After three fields the bright-field lamps change colour (a new lamp, a white-balance change):
    the learnt colours no longer fit, the assembler drops its lock and learns the new ones."""
    tint = np.array([0.75, 1.0, 1.3])
    frames = []
    for field in range(N_FIELDS):
        for light in ORDER:
            image = pool[field][light]
            if field >= 3 and light != "fluorescent":
                image = np.clip(image * tint, 0, 255).astype(np.uint8)
            frames.append(Frame(len(frames), len(frames) / 30, image, None, {"set_index": field, "light": light}))
    assembler = LightCycleAssembler(ORDER)
    sets = _run(assembler, frames)
    _check_sets(sets)
    assert assembler.stats["relocks"] == 1
    assert sum("relocked" in s.flags for s in sets) == 1
    assert all(s.complete for s in sets if s.source_info.get("fluorescent", {}).get("set_index") in (0, 1, 2, 5))
    assert sets[-1].complete and not sets[-1].flags


def test_bright_field_frames_of_two_fields_do_not_match(pool):
    a = frame_features(Frame(0, 0, pool[0]["color1"]), 70)
    b = frame_features(Frame(1, 0, pool[0]["color3"]), 70)
    c = frame_features(Frame(2, 0, pool[1]["color3"]), 70)
    assert field_similarity(a, b) > 0.2 > field_similarity(a, c)


def test_two_captures_of_an_empty_field_are_not_duplicates():
    rng = np.random.default_rng(0)
    empty = [np.clip(rng.normal(8, 2.5, (480, 640, 3)), 0, 255).astype(np.uint8) for _ in range(2)]
    assembler = LightCycleAssembler(ORDER)
    for i, image in enumerate([empty[0], empty[1], empty[1]]):
        assembler.push(Frame(i, i / 30, image, None, {}))
    assert assembler.stats["duplicates"] == 1  # only the true repeat


def test_light_order_without_fluorescence_is_refused():
    with pytest.raises(DataError, match="fluorescent"):
        LightCycleAssembler(("color1", "color2"))
    with pytest.raises(DataError, match="distinct"):
        LightCycleAssembler(("fluorescent", "color1", "color1"))


EVENTS = st.sampled_from(["ok"] * 6 + ["drop", "dup", "stale", "junk"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_sets=st.integers(1, 7), events=st.lists(EVENTS, min_size=28, max_size=28), start=st.integers(0, 3),
       hints=st.booleans(), timed=st.booleans(), data=st.data())
def test_random_drops_duplicates_and_insertions_never_pair_two_fields(pool, n_sets, events, start, hints, timed, data):
    """timed: frames carry their capture time (cameras, synthetic) so lost slots show; otherwise time
    is the delivery count (a recorded folder), and the test keeps to what the frames alone can
    reveal: no stale re-deliveries and never a whole cycle (4 frames in a row) lost (the cycle order
    alone then keeps fields apart; the whole-cycle loss is the deterministic test above)."""
    validator = FrameValidator()
    frames = []
    delivered = 0
    slots = list(range(start, n_sets * 4))
    dropped_run = 0
    for slot in slots:
        field, light = slot // 4, ORDER[slot % 4]
        event = events[slot % len(events)]
        if not timed and (event == "stale" or (event in ("drop", "junk") and dropped_run == 3)):
            event = "ok"
        dropped_run = dropped_run + 1 if event in ("drop", "junk") else 0  # a rejected frame is a loss too
        clock = (lambda s: s / 30) if timed else (lambda s, d=delivered: d / 30)
        image = pool[field % N_FIELDS][light]
        info = {"set_index": field, "light": light}
        if event == "drop":
            continue
        if event == "junk":  # a black, saturated or cut-short frame arrives in its place
            kind = data.draw(st.sampled_from(["black", "white", "cut"]))
            junk = {"black": np.zeros_like(image), "white": np.full_like(image, 255)}.get(kind)
            if junk is None:
                junk = image.copy()
                junk[60:] = 128
            rgb, flags = validator.check(junk[:, :, ::-1].copy(), f"slot {slot}")
            frames.append(Frame(delivered, clock(slot), rgb, None, {"set_index": -1 - slot, "light": None}, flags))
            delivered += 1
            continue
        frames.append(Frame(delivered, clock(slot), image, light if hints else None, info))
        delivered += 1
        if event == "dup":
            frames.append(Frame(delivered, clock(slot), image.copy(), light if hints else None, info))
            delivered += 1
        if event == "stale" and slot >= 2:
            old = data.draw(st.integers(max(0, slot - 6), slot - 1))
            f_old, l_old = old // 4, ORDER[old % 4]
            frames.append(Frame(delivered, old / 30, pool[f_old % N_FIELDS][l_old], None, {"set_index": f_old, "light": l_old}))
            delivered += 1
    assembler = LightCycleAssembler(ORDER, use_hints=hints)
    sets = _run(assembler, frames)
    _check_sets(sets)
    assert assembler.stats["sets"] == len(sets)
