"""Calibration sets from frames captured on the device: the deployed optics are what INT8 ranges must fit.

The same path as the runtime: frame source -> light-cycle assembly -> cells located in the
fluorescence frame -> the same window cut from every light -> `cell_to_input`. Torch-free.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from wbc_edge.calibration.sets import RECOMMENDED_MIN, CalibrationSet
from wbc_edge.errors import CalibrationError
from wbc_edge.spec import LOCATOR_LIGHT, ModelSpec

LOGGER = logging.getLogger(__name__)


def default_crop_px(bundle: Any | None, spec: ModelSpec) -> int:
    """The crop window the runtime would cut for this bundle (so calibration sees what inference sees)."""
    if bundle is not None:
        try:
            from wbc_edge.runtime.pipeline import _default_crop_px

            return int(_default_crop_px(bundle))
        except ImportError:
            pass
    return int(spec.input_size)


def capture_calibration_set(
    source_uri: str,
    sets: int,
    spec: ModelSpec,
    *,
    max_cells: int = 512,
    crop_px: int | None = None,
    light_order: Sequence[str] | None = None,
    seed: int = 0,
    source: Any | None = None,
    um_per_px: float | None = None,
) -> CalibrationSet:
    """Read up to `sets` complete four-light sets from `source_uri` and keep the cells found in them.

    Incomplete sets are skipped (a calibration input must look like a real one). When more than
    `max_cells` cells are found, an even random subset is kept. `source` replaces opening the URI (tests).
    um_per_px: the camera's scale (a device profile's) for the locator; default the simulator's.
    """
    from wbc_edge.runtime.assembler import LightCycleAssembler
    from wbc_edge.runtime.locator import crop_cells, locate_cells
    from wbc_edge.runtime.sources import open_source, run_light_order

    if sets < 1:
        raise CalibrationError(f"--sets {sets}: need at least one four-light set")
    crop = int(crop_px or spec.input_size)
    locator_light = LOCATOR_LIGHT if LOCATOR_LIGHT in spec.modalities else spec.modalities[0]
    chunks: list[np.ndarray] = []
    ids: list[str] = []
    read = skipped = 0
    # the user's order, else the frames' meta.json, else the model's; compared like a run's (run_light_order)
    src = source if source is not None else open_source(source_uri, light_order=light_order,
                                                        default_light_order=spec.modalities)
    try:
        order = run_light_order(src, spec.modalities, light_order, default=spec.modalities)
        assembler = LightCycleAssembler(order)
    except BaseException:
        src.close()
        raise

    def take(light_set: Any) -> None:
        nonlocal read, skipped
        if read >= sets:
            return
        if not light_set.complete:
            skipped += 1
            return
        read += 1
        boxes = locate_cells(light_set.images[locator_light], um_per_px=um_per_px)
        if boxes:
            batch, kept = crop_cells(light_set, boxes, crop, spec, edge="drop")
            chunks.append(batch)
            ids.extend(f"set{light_set.index}-cell{k}" for k in range(len(kept)))

    try:
        for frame in src:
            for light_set in assembler.push(frame):
                take(light_set)
            if read >= sets:
                break
        else:
            for light_set in assembler.flush():
                take(light_set)
    finally:
        src.close()
    if not ids:
        raise CalibrationError(f"{source_uri}: no cells found in {read} complete light sets ({skipped} incomplete skipped)")
    inputs = np.concatenate(chunks)
    if len(inputs) > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(len(inputs), size=max_cells, replace=False))
        inputs, ids = inputs[keep], [ids[i] for i in keep]
    if len(inputs) < RECOMMENDED_MIN:
        LOGGER.warning("calibration set has %d cells; %d or more give steadier INT8 ranges (read more --sets)", len(inputs), RECOMMENDED_MIN)
    return CalibrationSet(
        inputs=np.ascontiguousarray(inputs), input_name=spec.input_name, cell_ids=ids, labels=[None] * len(ids),
        source={"kind": "capture", "uri": source_uri, "sets_read": read, "incomplete_sets_skipped": skipped,
                "crop_px": crop, "light_order": list(order), "input_size": spec.input_size, "seed": seed,
                "modalities": list(spec.modalities)},
    )
