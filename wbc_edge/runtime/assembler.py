"""Four-light assembly: single-light camera frames -> one `LightSet` per field of view.

The camera cycles its lights in a configured order (default fluorescent, color1, color2, color3)
and delivers one frame per light. The assembler works out which light lit each frame from the frame
itself: fluorescence is dark-field (dark background, sparse bright nuclei), the bright-field lights
are told apart by their background colour (chromaticity), learnt when the assembler locks onto the
cycle. Lock-on takes the first run of bright frames that follows a fluorescence frame and holds
exactly the configured number of bright lights (colours by position); while frames keep getting lost
it clusters the bright frames by colour and orders the clusters by which comes first whenever two
share a run of one field, provided every pair was seen together and never disagreed.

Frames of two fields are never paired: a light that repeats or comes out of order starts a new set
(with the fluorescent light first, every fluorescence frame starts one), a frame captured a whole
cycle after the set's last frame (by index or capture time) or before it (re-delivered) starts one,
and a bright-field frame whose red-cell outlines do not match the set's other bright-field frames
starts over. A duplicated frame (nearly identical to the previous one) is dropped. Light hints from
the source are checked against appearance, never trusted blindly. See docs/runtime-frontend.md.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

from wbc_edge.errors import DataError
from wbc_edge.spec import LOCATOR_LIGHT, MODALITIES

log = logging.getLogger(__name__)

FLUORESCENT = LOCATOR_LIGHT
# Frame flags (from the source's validation) that make a frame unusable for classification.
REJECT_FRAME_FLAGS = frozenset({"black", "saturated", "truncated", "size_mismatch", "non_finite"})
FEATURE_WIDTH = 160  # frames are compared at this width: fast, and tolerant of small shifts


@dataclass
class LightSet:
    """One field of view under every light; a light whose frame is missing maps to None.

    Flags: `missing:<light>`, `relocked` (first set after the assembler lost and regained the cycle),
    `duplicate_dropped`, `field_mismatch` (the set was started because a frame did not match the
    previous set's field), `hint_mismatch`, `unrecognised_frame`, `frame_rejected:<flag>`,
    `unverified_lights` (lights told apart by position only, their colours being indistinguishable).
    """

    index: int
    images: dict[str, np.ndarray | None]
    frame_indices: dict[str, int]
    flags: set[str] = field(default_factory=set)
    time: float | None = None
    source_info: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        return [light for light, img in self.images.items() if img is None]

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class _Observation:
    """A frame plus the cheap appearance features the assembler decides on."""

    frame: Any
    small: np.ndarray  # RGB uint8 at FEATURE_WIDTH
    dark: bool
    signature: np.ndarray  # background chromaticity: per-channel median as percent of their sum
    structure: np.ndarray  # high-pass of the grey image (dark spots negative), unit norm
    edges: np.ndarray  # high-passed edge strength, unit norm: the field's red-cell outlines under any light


@dataclass
class _Building:
    lights: dict[str, _Observation] = field(default_factory=dict)
    last_pos: int = -1
    flags: set[str] = field(default_factory=set)


def frame_features(frame: Any, dark_max_median: float) -> _Observation:
    image = frame.image
    h, w = image.shape[:2]
    scale = min(1.0, FEATURE_WIDTH / max(w, 1))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = image
    k = int(w // FEATURE_WIDTH)
    if k >= 2:  # whole-pixel block averaging first: OpenCV's fast path, 3x quicker on a 5-megapixel frame
        small = cv2.resize(image[: h // k * k, : w // k * k], (w // k, h // k), interpolation=cv2.INTER_AREA)
    if scale < 1.0 and small.shape[1::-1] != size:
        small = cv2.resize(small, size, interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    background = np.median(small.reshape(-1, 3), axis=0).astype(np.float32)
    # chromaticity (percent of R+G+B): the light's colour, indifferent to exposure and lamp power
    signature = 100.0 * background / max(float(background.sum()), 1.0)
    # Smoothing scales follow the native resolution: a few native px of misregistration must blur away.
    edge_sigma = max(1.5, 3.0 * scale)
    structure = _unit(grey - cv2.GaussianBlur(grey, (0, 0), 2 * edge_sigma))
    # Edge strength, not intensity: the oblique light (relief) and the absorbance lights show the
    # same red-cell outlines with different signs, and a light blur tolerates the small shifts.
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    edges = cv2.GaussianBlur(cv2.magnitude(gx, gy), (0, 0), edge_sigma)
    edges = _unit(edges - cv2.GaussianBlur(edges, (0, 0), 4 * edge_sigma))
    return _Observation(frame, small, bool(np.median(grey) <= dark_max_median), signature, structure, edges)


def _unit(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    norm = float(np.linalg.norm(a))
    return a / norm if norm > 1e-6 else np.zeros_like(a)


def field_similarity(a: _Observation, b: _Observation) -> float:
    """Normalised correlation of two bright-field frames' red-cell outlines (1 = same field, ~0 = another)."""
    if a.edges.shape != b.edges.shape:
        return -1.0
    return float((a.edges * b.edges).sum())


_NULL_SHIFTS = [(dx, dy) for dx in (-24, -12, 0, 12, 24) for dy in (-24, -12, 0, 12, 24) if (dx, dy) != (0, 0)]


def nuclei_contrast(fluorescent: _Observation, bright: _Observation) -> float | None:
    """Evidence that a bright-field frame shows the fluorescence frame's field, as a z-score.

    White cells sit under the stained nuclei: there the bright-field frame is darker and/or full
    of edges (the oblique light shows them as relief, not darkness). The score of the nuclei's own
    positions is compared with the same nuclei mask shifted elsewhere: about 0 (within +-2) for
    another field, well above for the same field. None when there are no nuclei to compare."""
    if fluorescent.structure.shape != bright.structure.shape:
        return -10.0
    grey = cv2.cvtColor(fluorescent.small, cv2.COLOR_RGB2GRAY)
    background = float(np.median(grey))
    nuclei = grey > background + max(40.0, 0.5 * (float(grey.max()) - background))
    if nuclei.sum() < 4 or nuclei.mean() > 0.3:
        return None
    around = cv2.dilate(nuclei.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    evidence = -bright.structure / max(float(bright.structure.std()), 1e-9) + bright.edges / max(float(bright.edges.std()), 1e-9)
    own = float(evidence[around].mean())
    null = np.array([evidence[np.roll(around, shift, axis=(1, 0))].mean() for shift in _NULL_SHIFTS])
    return float((own - null.mean()) / max(float(null.std()), 1e-6))


class LightCycleAssembler:
    """Turns a stream of single-light frames into `LightSet`s (see the module docstring).

    push(frame) -> the sets completed by this frame; flush() -> the rest at the end of the stream.
    `stats` counts what happened (sets, duplicates, rejected frames, relocks, hint mismatches, ...).
    """

    def __init__(
        self,
        light_order: Sequence[str] = MODALITIES,
        *,
        fluorescent_light: str = FLUORESCENT,
        dark_max_median: float = 70.0,
        duplicate_max_diff: float = 0.25,
        field_match_min: float = 0.2,
        nuclei_match_min: float | None = None,  # experimental fluorescence-vs-bright check, see nuclei_contrast
        min_signature_separation: float = 1.5,
        max_pending: int | None = None,
        use_hints: bool = True,
    ) -> None:
        self.light_order = tuple(light_order)
        if len(set(self.light_order)) != len(self.light_order) or not self.light_order:
            raise DataError(f"light order {list(self.light_order)}: need one or more distinct light names")
        if fluorescent_light not in self.light_order:
            raise DataError(f"light order {list(self.light_order)}: the fluorescent light '{fluorescent_light}' is needed to lock onto the cycle")
        self.fluorescent = fluorescent_light
        self.bright_lights = tuple(light for light in self.light_order if light != fluorescent_light)
        self.dark_max_median = dark_max_median
        self.duplicate_max_diff = duplicate_max_diff
        self.field_match_min = field_match_min
        self.nuclei_match_min = nuclei_match_min
        self.min_signature_separation = min_signature_separation
        self.max_pending = max_pending or 8 * len(self.light_order)
        self.use_hints = use_hints

        self.locked = not self.bright_lights  # nothing to learn with fluorescence alone
        self.signatures: dict[str, np.ndarray] = {}
        self.by_position = False  # bright lights indistinguishable by colour: assign by order
        self.stats: dict[str, int] = dict(
            frames=0, sets=0, incomplete_sets=0, duplicates=0, rejected=0, unlocked_dropped=0, relocks=0,
            hint_mismatches=0, unrecognised=0, field_mismatches=0, unrecognised_skipped=0,
        )
        self.rejected_by: dict[str, int] = {}  # the frames counted in stats["rejected"], by their flags
        self._overflow_warned = False
        self._pending: list[_Observation] = []
        self._current: _Building | None = None
        self._previous: _Observation | None = None
        self._carry_flags: set[str] = set()
        self._unknown_run = 0
        self._doubtful: list[_Observation] = []  # skipped as unrecognised, judged again after a re-lock
        self._replaying = False
        self._next_index = 0
        self._was_locked = False
        self._deltas: list[float] = []

    # ---- public ---------------------------------------------------------------------------------
    def push(self, frame: Any) -> list[LightSet]:
        self.stats["frames"] += 1
        bad = REJECT_FRAME_FLAGS & set(getattr(frame, "flags", ()) or ())
        if bad:
            self.stats["rejected"] += 1
            reason = ",".join(sorted(bad))
            self.rejected_by[reason] = self.rejected_by.get(reason, 0) + 1
            self._note({f"frame_rejected:{b}" for b in bad})
            log.warning("frame %s rejected (%s); its light will be missing from its set", frame.index, ",".join(sorted(bad)))
            return []
        obs = frame_features(frame, self.dark_max_median)
        if self._is_duplicate(obs):
            self.stats["duplicates"] += 1
            self._note({"duplicate_dropped"})
            log.info("frame %s duplicates the previous frame; dropped", frame.index)
            return []
        self._note_period(self._previous, obs)
        self._previous = obs
        if not self.locked:
            self._pending.append(obs)
            return self._try_lock(at_end=False)
        return self._place(obs)

    def flush(self) -> list[LightSet]:
        """Emit whatever is still being assembled (end of stream)."""
        self._skip_doubtful()
        out: list[LightSet] = []
        if not self.locked and self._pending:
            out += self._try_lock(at_end=True)
            if not self.locked:
                self.stats["unlocked_dropped"] += len(self._pending)
                log.warning("stream ended before the light cycle could be locked; %d frame(s) not assembled", len(self._pending))
                self._pending.clear()
        if self._current is not None:
            out.append(self._finish(self._current))
            self._current = None
        return out

    def _skip_doubtful(self) -> None:
        """The frames that matched no learnt light and will not be judged again: one warning and one count
        each, here where they are given up (a re-lock judges them again instead)."""
        for obs in self._doubtful:
            self.stats["unrecognised_skipped"] += 1
            log.warning("frame %s rejected (matches no learnt light); skipped", obs.frame.index)
        self._doubtful = []

    # ---- duplicates, flags ----------------------------------------------------------------------
    def _is_duplicate(self, obs: _Observation) -> bool:
        prev = self._previous
        if prev is None or prev.small.shape != obs.small.shape:
            return False
        diff = cv2.absdiff(prev.small, obs.small)
        return float(diff.mean()) <= self.duplicate_max_diff

    def _note_period(self, prev: _Observation | None, obs: _Observation) -> None:
        """Learn the frame period from capture times, so a gap in time reveals lost frames."""
        if prev is None:
            return
        dt = float(obs.frame.time) - float(prev.frame.time)
        if dt > 0:
            self._deltas = (self._deltas + [dt])[-32:]

    def _slots_between(self, a: _Observation, b: _Observation) -> int:
        """Capture slots from a to b: by frame index, or by time when the period is known."""
        slots = _index_of(b) - _index_of(a)
        if len(self._deltas) >= 3:
            period = min(self._deltas)
            slots = max(slots, int(round((float(b.frame.time) - float(a.frame.time)) / period)))
        return slots

    def _note(self, flags: set[str]) -> None:
        if self._current is not None:
            self._current.flags |= flags
        else:
            self._carry_flags |= flags

    # ---- lock -----------------------------------------------------------------------------------
    def _try_lock(self, at_end: bool) -> list[LightSet]:
        """Learn the colours from the pending frames; once locked, place those frames (replay).
        Iterative: a replay that loses the lock again leaves a strictly shorter pending list."""
        out: list[LightSet] = []
        while not self.locked and self._pending:
            pending = self._pending
            signatures = self._learn_signatures(pending, at_end)
            if signatures is None:
                if len(pending) > self.max_pending:
                    drop = len(pending) - self.max_pending
                    self.stats["unlocked_dropped"] += drop
                    if not self._overflow_warned:  # once per search; the summary counts every frame
                        log.warning("frame %s: the light cycle is not locked after %d frames; the oldest frames "
                                    "are not assembled until it is", pending[-1].frame.index, len(pending))
                        self._overflow_warned = True
                    del pending[:drop]
                break
            self.signatures = signatures
            self.by_position = self._min_separation() < self.min_signature_separation
            if self.by_position:
                log.warning("bright-field lights are not distinguishable by colour (separation %.1f); assigning them by cycle position", self._min_separation())
            self.locked = True
            self._overflow_warned = False
            if self._was_locked:
                self.stats["relocks"] += 1
                self._carry_flags.add("relocked")
            self._was_locked = True
            log.info("locked onto the light cycle after %d frame(s): %s", len(pending),
                     ", ".join(f"{k}={[round(float(x), 1) for x in v]}" for k, v in self.signatures.items()))
            replay, self._pending = pending, []
            self._replaying = True
            try:
                for obs in replay:
                    if self.locked:
                        out += self._place(obs)
                    else:
                        self._pending.append(obs)
            finally:
                self._replaying = False
        return out

    def _windows(self, pending: list[_Observation], at_end: bool) -> list[tuple[bool, list[_Observation]]]:
        """Runs of bright frames whose order is the cycle's, each with whether a fluorescence frame
        opened it: the bright frames that follow a fluorescence frame (closed by the next one, or by
        the end). When the fluorescent light comes first, a field's frames never span two fields, so
        any run of same-field bright frames counts and a run also ends where the field changes. A
        frame captured earlier than the one before it (re-delivered) always ends a run."""
        first = self.light_order.index(self.fluorescent) == 0
        runs: list[tuple[bool, list[_Observation]]] = []
        run: list[_Observation] = []
        opened = False
        previous: _Observation | None = None
        for obs in pending:
            backwards = previous is not None and float(obs.frame.time) < float(previous.frame.time)
            new_field = first and run and field_similarity(run[0], obs) < self.field_match_min
            if obs.dark or backwards or new_field:
                if run and (first or opened):
                    runs.append((opened, run))
                run = []
                opened = obs.dark
            if not obs.dark:
                run.append(obs)
            previous = obs
        if run and at_end and (first or opened):
            runs.append((opened, run))
        return runs

    def _signatures_from_hints(self, pending: list[_Observation]) -> dict[str, np.ndarray] | None:
        """Colours from the source's light hints, when the frames alone cannot settle them: accepted only
        if the hints agree with appearance (hinted bright lights are bright, each hint's frames share one
        colour, and the colours are well apart)."""
        if not self.use_hints or len(pending) < 2 * len(self.light_order):
            return None
        groups: dict[str, list[np.ndarray]] = {}
        for obs in pending:
            hint = getattr(obs.frame, "light_hint", None)
            if hint not in self.light_order or (hint == self.fluorescent) != obs.dark:
                return None
            if hint != self.fluorescent:
                groups.setdefault(hint, []).append(obs.signature)
        if set(groups) != set(self.bright_lights):
            return None
        centres = {light: np.mean(v, axis=0) for light, v in groups.items()}
        spread = max(float(np.linalg.norm(np.stack(v) - centres[k], axis=1).max()) for k, v in groups.items())
        lights = list(centres)
        gaps = [float(np.linalg.norm(centres[a] - centres[b])) for i, a in enumerate(lights) for b in lights[i + 1 :]]
        if min(gaps) < max(3.0 * spread, self.min_signature_separation):
            return None
        log.info("light colours taken from the source's hints (they agree with the frames)")
        return {light: centres[light].astype(np.float32) for light in self.bright_lights}

    def _learn_signatures(self, pending: list[_Observation], at_end: bool) -> dict[str, np.ndarray] | None:
        """Each bright light's colour, learnt from the frames alone, or None while the evidence is short.

        A window (the bright frames between two fluorescence frames) that holds exactly the configured
        number of frames gives the colours by position. Otherwise (frames keep getting dropped) the
        bright frames are clustered by colour and the clusters ordered by which comes first whenever
        two share a window: the cycle order, provided every pair was seen together and never disagreed.
        """
        pos_f = self.light_order.index(self.fluorescent)
        after_f = self.light_order[pos_f + 1 :] + self.light_order[:pos_f]  # bright lights as they follow F
        n = len(after_f)
        runs = [(opened, w) for opened, w in self._windows(pending, at_end) if len({o.signature.shape for o in w}) == 1]
        for opened, w in runs:
            if opened and len(w) == n:
                return {light: obs.signature.copy() for light, obs in zip(after_f, w)}
        windows = [w for _, w in runs]
        members = [o for w in windows for o in w]
        if len(windows) < 2 or len(members) < n or n < 2:
            return self._signatures_from_hints(pending)
        points = np.stack([o.signature for o in members])
        labels, centres = _cluster(points, n)
        if labels is None:
            return self._signatures_from_hints(pending)
        spread = max(float(np.linalg.norm(points[labels == k] - centres[k], axis=1).max()) for k in range(n))
        gaps = [float(np.linalg.norm(centres[i] - centres[j])) for i in range(n) for j in range(i + 1, n)]
        if min(gaps) < max(3.0 * spread, self.min_signature_separation):
            return None
        if not at_end and min(np.bincount(labels, minlength=n)) < 2:
            return None
        label_of = {id(o): int(k) for o, k in zip(members, labels)}
        before = np.zeros((n, n), int)
        for w in windows:
            ks = [label_of[id(o)] for o in w]
            if len(set(ks)) != len(ks):
                continue  # a light twice after one fluorescence frame: that one was lost, no order evidence
            for i in range(len(ks)):
                for j in range(i + 1, len(ks)):
                    before[ks[i], ks[j]] += 1
        for i in range(n):
            for j in range(i + 1, n):
                if (before[i, j] == 0) == (before[j, i] == 0):
                    return self._signatures_from_hints(pending)  # never seen together, or in both orders
        order = sorted(range(n), key=lambda k: -int((before[k] > 0).sum()))
        return {light: centres[k].astype(np.float32) for light, k in zip(after_f, order)}

    def _min_separation(self) -> float:
        sigs = list(self.signatures.values())
        if len(sigs) < 2:
            return float("inf")
        return min(float(np.linalg.norm(a - b)) for k, a in enumerate(sigs) for b in sigs[k + 1 :])

    def _lose_lock(self, obs: _Observation) -> list[LightSet]:
        log.warning("frame %s: the learnt light colours no longer fit; re-locking onto the cycle", obs.frame.index)
        # The set being built and the frames just skipped were judged with the old colours: they go
        # back to be judged again once the cycle is learnt anew.
        out: list[LightSet] = []
        doubtful = list(self._doubtful)
        if self._replaying:  # judged with colours learnt from these very frames: judging again changes nothing
            if self._current is not None:  # emit it as it is
                out.append(self._finish(self._current))
                self._current = None
            self._skip_doubtful()  # given up, so the next lock's pending list is strictly shorter (it ends)
            doubtful = []
        if self._current is not None:
            doubtful += list(self._current.lights.values())
            self._carry_flags |= self._current.flags
        self._current = None
        self.locked = False
        self._unknown_run = 0
        self._doubtful = []
        self._pending = sorted(doubtful, key=_index_of) + [obs]
        return out

    # ---- classification -------------------------------------------------------------------------
    def _classify(self, obs: _Observation) -> str | None:
        if obs.dark:
            return self.fluorescent
        if len(self.bright_lights) == 1:
            return self.bright_lights[0]
        if self.by_position:
            return self._next_bright_by_position()
        distances = {light: float(np.linalg.norm(obs.signature - sig)) for light, sig in self.signatures.items()}
        ranked = sorted(distances, key=distances.get)
        best, second = distances[ranked[0]], distances[ranked[1]]
        if best <= 0.5 * self._min_separation() or best <= 0.5 * second:
            return ranked[0]
        # unclear colour (stain tint, lamp drift): the light the cycle expects next, if it is a close candidate
        expected = self._next_bright_by_position()
        if expected in ranked[:2] and distances[expected] <= self._min_separation():
            return expected
        return None

    def _next_bright_by_position(self) -> str:
        last = self._current.last_pos if self._current is not None else -1
        for pos in range(last + 1, len(self.light_order)):
            if self.light_order[pos] != self.fluorescent:
                return self.light_order[pos]
        return next(light for light in self.light_order if light != self.fluorescent)

    def _check_hint(self, obs: _Observation, light: str | None) -> str | None:
        hint = getattr(obs.frame, "light_hint", None)
        if not self.use_hints or hint is None or hint not in self.light_order:
            return light
        hint_dark = hint == self.fluorescent
        if light is None:
            return hint if hint_dark == obs.dark else None  # a hint may settle an unclear colour, never dark vs bright
        if hint != light:
            self.stats["hint_mismatches"] += 1
            self._note({"hint_mismatch"})
            log.warning("frame %s: source says '%s' but it looks like '%s'; using '%s'", obs.frame.index, hint, light, light)
        return light

    # ---- placement ------------------------------------------------------------------------------
    def _place(self, obs: _Observation) -> list[LightSet]:
        light = self._check_hint(obs, self._classify(obs))
        if light is None:
            self.stats["unrecognised"] += 1
            self._unknown_run += 1
            if self._unknown_run >= 2:
                return self._lose_lock(obs)
            self._doubtful.append(obs)  # judged again if the cycle is re-learnt; else skipped (_skip_doubtful)
            self._note({"unrecognised_frame"})
            return []
        self._unknown_run = 0
        cur = self._current
        if (cur is not None and light != self.fluorescent and light in cur.lights and not self.by_position
                and float(obs.frame.time) >= float(cur.lights[light].frame.time)
                and field_similarity(cur.lights[light], obs) >= self.field_match_min):
            # one field never shows one light twice (duplicates are gone): the learnt colours are wrong
            self.stats["unrecognised"] += 1
            return self._lose_lock(obs)
        if light != self.fluorescent and not self.by_position:
            if float(np.linalg.norm(obs.signature - self.signatures[light])) <= 0.5 * self._min_separation():
                self.signatures[light] = 0.9 * self.signatures[light] + 0.1 * obs.signature  # follow slow drift
        out: list[LightSet] = []
        pos = self.light_order.index(light)
        if cur is not None:
            reason = self._new_set_reason(cur, obs, light, pos)
            if reason is not None:
                out.append(self._finish(cur))
                cur = self._current = None
                if reason == "field_mismatch":
                    self.stats["field_mismatches"] += 1
                    self._carry_flags.add("field_mismatch")
        if cur is None:
            cur = self._current = _Building(flags=set(self._carry_flags))
            self._carry_flags.clear()
        cur.lights[light] = obs
        cur.last_pos = pos
        self._skip_doubtful()
        if len(cur.lights) == len(self.light_order):
            out.append(self._finish(cur))
            self._current = None
        return out

    def _new_set_reason(self, cur: _Building, obs: _Observation, light: str, pos: int) -> str | None:
        if light in cur.lights or pos <= cur.last_pos:
            return "cycle"
        last = cur.lights[self.light_order[cur.last_pos]]
        if float(obs.frame.time) < float(last.frame.time):
            return "field_mismatch"  # captured before the set's last frame: a stale frame re-delivered
        if self._slots_between(last, obs) >= (pos - cur.last_pos) + len(self.light_order):  # a whole cycle lost between
            return "field_mismatch"
        if obs.frame.image.shape != last.frame.image.shape:
            return "field_mismatch"
        others = {k: v for k, v in cur.lights.items() if k != self.fluorescent}
        if light != self.fluorescent and others:
            # bright vs bright: red-cell outlines are a strong, light-independent test
            if min(field_similarity(other, obs) for other in others.values()) < self.field_match_min:
                return "field_mismatch"
        elif self.nuclei_match_min is not None:
            # fluorescence vs bright-field is weaker evidence: only the first pairing relies on it
            pair = (cur.lights.get(self.fluorescent), obs) if light != self.fluorescent else (obs, next(iter(others.values())))
            if pair[0] is not None:
                contrast = nuclei_contrast(*pair)
                if contrast is not None and contrast < self.nuclei_match_min:
                    return "field_mismatch"
        return None

    def _finish(self, cur: _Building) -> LightSet:
        images: dict[str, np.ndarray | None] = {}
        flags = set(cur.flags)
        for light in self.light_order:
            obs = cur.lights.get(light)
            images[light] = obs.frame.image if obs is not None else None
            if obs is None:
                flags.add(f"missing:{light}")
        if self.by_position and len(self.bright_lights) > 1:
            flags.add("unverified_lights")
        first = min(cur.lights.values(), key=_index_of)
        light_set = LightSet(
            index=self._next_index,
            images=images,
            frame_indices={light: obs.frame.index for light, obs in cur.lights.items()},
            flags=flags,
            time=float(first.frame.time),
            source_info={light: dict(getattr(obs.frame, "source_info", {}) or {}) for light, obs in cur.lights.items()},
        )
        self._next_index += 1
        self.stats["sets"] += 1
        if not light_set.complete:
            self.stats["incomplete_sets"] += 1
        return light_set


def _cluster(points: np.ndarray, k: int, iterations: int = 10) -> tuple[np.ndarray | None, np.ndarray]:
    """k-means with farthest-point start (small k, well separated colours); labels None if a cluster empties."""
    centres = [points[0]]
    for _ in range(1, k):
        distance = np.min([np.linalg.norm(points - c, axis=1) for c in centres], axis=0)
        centres.append(points[int(distance.argmax())])
    centres_arr = np.stack(centres).astype(np.float64)
    labels = np.zeros(len(points), int)
    for _ in range(iterations):
        labels = np.argmin(np.linalg.norm(points[:, None, :] - centres_arr[None], axis=2), axis=1)
        if len(np.unique(labels)) < k:
            return None, centres_arr
        centres_arr = np.stack([points[labels == j].mean(axis=0) for j in range(k)])
    return labels, centres_arr


def _index_of(obs: _Observation) -> int:
    return int(obs.frame.index)
