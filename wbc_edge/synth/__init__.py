"""Synthetic four-light white-blood-cell data: cells, camera fields and a simulated camera.

Never imports torch. Deterministic from a seed: every cell and every field has its own generator
derived from (seed, index), so the order of generation does not matter.
"""
from wbc_edge.synth.cells import PAPER_MIX, class_counts, parse_class_mix, render_cell, write_cells
from wbc_edge.synth.frames import SynthFrame, SyntheticCamera, TruthCell, render_field, write_frames
from wbc_edge.synth.scene import CROP_PX, LIGHTS, PX_PER_UM

__all__ = [
    "CROP_PX", "LIGHTS", "PAPER_MIX", "PX_PER_UM", "SynthFrame", "SyntheticCamera", "TruthCell", "class_counts",
    "parse_class_mix", "render_cell", "render_field", "write_cells", "write_frames",
]
