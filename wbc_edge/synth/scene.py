"""The appearance model shared by synthetic cells and synthetic camera fields.

A scene is a stack of physical component maps (haemoglobin, cytoplasm, RNA-rich cytoplasm,
chromatin, three granule kinds, debris) drawn once at native scale. Each light then turns the same
maps into an RGB image with its own optics: bright-field lights by absorbance (Beer-Lambert) with
per-light absorbance spectra, focus and relief; the fluorescence light by emission on a dark field.
Cell crops (`render_cell`) and camera fields (`render_field`) both go through `Scene`, so a crop the
runtime cuts from a field looks like a training cell.

Why the lights differ (the class evidence each carries, see docs/synthetic-data.md):
    fluorescent  nucleus shape sharp (lobes), cytoplasm dim, granules faint, low signal, noisy
    color1       white LED: granule and cytoplasm colour clear, but soft focus blurs nucleus detail
    color2       blue LED: sharp chromatin and haemoglobin contrast, colours lost (near monochrome)
    color3       red LED, oblique: RNA-rich cytoplasm and cell relief/texture, nucleus faint
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from wbc_edge.spec import CLASSES, MODALITIES

# Native scale: ~2.3 px per micrometre (red cell 7.5 um ~ 17 px, neutrophil 12-15 um ~ 28-34 px).
PX_PER_UM = 2.3
CROP_PX = 64
LIGHTS = MODALITIES
BRIGHT_FIELD = ("color1", "color2", "color3")

COMPONENTS = ("rbc", "cyto", "rna", "nucleus", "gran_neu", "gran_eos", "gran_bas", "debris")
K_RBC, K_CYTO, K_RNA, K_NUC, K_GNEU, K_GEOS, K_GBAS, K_DEBRIS = range(len(COMPONENTS))

RBC_RADIUS_PX = 8.5
RBC_COVERAGE = 0.33  # fraction of the field covered by red cells (thin monolayer)
MAX_SHIFT_PX = 3  # misregistration between lights
COMPONENT_JITTER = 0.3  # log-sd of each component's contrast per light and capture

# Bright-field optical density per unit component density, RGB, per light.
# Rows follow COMPONENTS. color1 keeps stain colours; color2 (blue LED) is nearly grey and sees
# haemoglobin and chromatin; color3 (red LED) sees methylene-blue stained RNA and dark granules.
_ABSORBANCE = {
    "color1": np.array(
        [
            [0.06, 0.30, 0.24],  # rbc: pale pink
            [0.03, 0.07, 0.05],  # cyto: faint pink
            [0.20, 0.11, 0.02],  # rna: sky blue
            [0.55, 0.80, 0.30],  # nucleus: purple
            [0.12, 0.20, 0.10],  # neutrophil granules: lilac-pink
            [0.05, 0.75, 0.95],  # eosinophil granules: orange-red
            [1.00, 1.20, 0.55],  # basophil granules: dark purple
            [0.05, 0.05, 0.05],  # debris
        ],
        dtype=np.float32,
    ),
    "color2": np.array(
        [
            [0.22, 0.25, 0.32],
            [0.12, 0.13, 0.15],
            [0.14, 0.15, 0.17],
            [0.90, 1.00, 1.15],
            [0.16, 0.17, 0.19],
            [0.45, 0.50, 0.56],
            [1.30, 1.40, 1.50],
            [0.10, 0.10, 0.10],
        ],
        dtype=np.float32,
    ),
    "color3": np.array(
        [
            [0.05, 0.04, 0.03],
            [0.04, 0.03, 0.03],
            [0.55, 0.42, 0.30],
            [0.30, 0.24, 0.18],
            [0.03, 0.03, 0.02],
            [0.06, 0.05, 0.04],
            [0.80, 0.65, 0.50],
            [0.04, 0.04, 0.04],
        ],
        dtype=np.float32,
    ),
}
# Illuminant colour (camera white balance) per bright-field light.
_ILLUMINANT = {
    "color1": np.array([0.93, 0.91, 0.88], np.float32),
    "color2": np.array([0.70, 0.80, 0.95], np.float32),
    "color3": np.array([0.95, 0.78, 0.66], np.float32),
}
# Acridine Orange: DNA green-yellow, RNA orange-red, basophil granules metachromatic orange.
_EMISSION = np.array(
    [
        [0.00, 0.00, 0.00],  # rbc (absorbs background instead, see below)
        [0.04, 0.02, 0.01],
        [0.08, 0.03, 0.01],
        [0.45, 1.70, 0.45],
        [0.02, 0.03, 0.01],
        [0.04, 0.04, 0.01],
        [0.05, 0.03, 0.01],
        [0.90, 2.40, 0.70],
    ],
    dtype=np.float32,
)
_FLUO_BACKGROUND = np.array([7.0, 9.0, 8.0], np.float32)

# Per-light optics: (blur sigma range px, noise sigma at mid-grey, illumination falloff range)
_OPTICS = {
    "fluorescent": ((1.5, 4.0), 6.0, (0.15, 0.45)),
    "color1": ((1.2, 2.8), 3.0, (0.05, 0.18)),
    "color2": ((0.5, 1.8), 3.0, (0.05, 0.15)),
    "color3": ((0.8, 2.8), 3.0, (0.05, 0.18)),
}


@dataclass(frozen=True)
class Stain:
    """Donor/slide-level staining and imaging variation (multipliers around 1)."""

    nucleus: float = 1.0
    eosin: float = 1.0
    azure: float = 1.0
    haemoglobin: float = 1.0
    acridine: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @classmethod
    def sample(cls, rng: np.random.Generator, spread: float = 1.0) -> "Stain":
        def g(s: float) -> float:
            return float(np.exp(rng.normal(0.0, s * spread)))

        tint = tuple(float(x) for x in np.exp(rng.normal(0.0, 0.03 * spread, 3)))
        return cls(nucleus=g(0.15), eosin=g(0.18), azure=g(0.18), haemoglobin=g(0.15), acridine=g(0.25), tint=tint)

    def jitter(self, rng: np.random.Generator) -> "Stain":
        """A cell's own variation around its donor's stain."""
        j = Stain.sample(rng, spread=0.4)
        return Stain(
            self.nucleus * j.nucleus, self.eosin * j.eosin, self.azure * j.azure,
            self.haemoglobin * j.haemoglobin, self.acridine * j.acridine,
            tuple(a * b for a, b in zip(self.tint, j.tint)),
        )


# ---- white cell morphology --------------------------------------------------------------------
@dataclass
class WbcShape:
    """One white cell's geometry, in pixels relative to its centre."""

    label: str
    radius: float
    aspect: float
    angle: float
    # nucleus: list of (dx, dy, rx, ry, angle) ellipses; notch: (dx, dy, r) cut out (monocyte kidney)
    lobes: list[tuple[float, float, float, float, float]]
    notch: tuple[float, float, float] | None
    bridges: list[tuple[int, int]]
    nucleus_density: float
    chromatin_texture: float
    cyto_density: float
    rna_density: float
    granule_kind: int | None
    granule_count: int
    granule_size: float
    granule_over_nucleus: bool
    vacuoles: int = 0
    extras: dict = field(default_factory=dict)

    def box_radius(self) -> float:
        return self.radius * max(self.aspect, 1.0 / self.aspect) + 2.0


def _lobe_chain(n: int, rng: np.random.Generator, arc_r: float, lobe_r: float, span_deg: float) -> list:
    """n nuclear lobes strung along an arc (a segmented nucleus)."""
    start = rng.uniform(0, 2 * math.pi)
    step = math.radians(span_deg) / max(n - 1, 1)
    lobes = []
    for i in range(n):
        a = start + i * step + rng.normal(0, 0.12)
        r = arc_r * rng.uniform(0.85, 1.15)
        rx = lobe_r * rng.uniform(0.85, 1.15)
        lobes.append((r * math.cos(a), r * math.sin(a), rx, rx * rng.uniform(0.7, 0.95), rng.uniform(0, math.pi)))
    # centre the chain on the cell
    mx = float(np.mean([l[0] for l in lobes]))
    my = float(np.mean([l[1] for l in lobes]))
    return [(x - mx, y - my, rx, ry, a) for x, y, rx, ry, a in lobes]


# Atypical cells: a few cells of each class have the size and nucleus of a look-alike class
# (band neutrophil vs monocyte, large lymphocyte vs monocyte, trilobed eosinophil, ...), while their
# cytoplasm and granules stay true to class. Only lights that see cytoplasm/granules resolve them.
LOOKALIKE = {"neutrophil": "monocyte", "lymphocyte": "monocyte", "eosinophil": "neutrophil",
             "basophil": "eosinophil", "monocyte": "neutrophil"}
ATYPICAL_RATE = 0.08


def sample_wbc(label: str, rng: np.random.Generator) -> WbcShape:
    """Draw one white cell's morphology as haematology describes its class (with some atypical cells)."""
    shape = _sample_typical(label, rng)
    if rng.random() < ATYPICAL_RATE:
        other = _sample_typical(LOOKALIKE[label], rng)
        scale = (other.radius / shape.radius) ** 2
        shape.radius, shape.aspect = other.radius, other.aspect
        shape.lobes, shape.notch, shape.bridges = other.lobes, other.notch, other.bridges
        shape.nucleus_density = other.nucleus_density
        shape.granule_count = int(shape.granule_count * scale)
        shape.extras["atypical"] = other.label
    return shape


def _sample_typical(label: str, rng: np.random.Generator) -> WbcShape:
    um = PX_PER_UM
    aspect = float(rng.uniform(0.88, 1.0))
    angle = float(rng.uniform(0, math.pi))
    if label == "neutrophil":
        radius = rng.uniform(12.0, 15.0) * um / 2
        n = int(rng.choice([2, 3, 4, 5], p=[0.12, 0.45, 0.33, 0.10]))
        lobes = _lobe_chain(n, rng, arc_r=radius * rng.uniform(0.38, 0.5), lobe_r=radius * rng.uniform(0.24, 0.3), span_deg=rng.uniform(150, 260))
        return WbcShape(label, radius, aspect, angle, lobes, None, [(i, i + 1) for i in range(n - 1)],
                        nucleus_density=1.0, chromatin_texture=0.2, cyto_density=1.0, rna_density=0.05,
                        granule_kind=K_GNEU, granule_count=int(radius * radius * 0.9), granule_size=0.6,
                        granule_over_nucleus=False)
    if label == "eosinophil":
        radius = rng.uniform(12.0, 16.0) * um / 2
        n = 2 if rng.random() < 0.85 else 3
        lobes = _lobe_chain(n, rng, arc_r=radius * rng.uniform(0.38, 0.48), lobe_r=radius * rng.uniform(0.28, 0.34), span_deg=rng.uniform(120, 200))
        return WbcShape(label, radius, aspect, angle, lobes, None, [(i, i + 1) for i in range(n - 1)],
                        nucleus_density=0.95, chromatin_texture=0.2, cyto_density=1.0, rna_density=0.03,
                        granule_kind=K_GEOS, granule_count=int(radius * radius * rng.uniform(0.35, 0.5)),
                        granule_size=rng.uniform(0.9, 1.2), granule_over_nucleus=False)
    if label == "basophil":
        radius = rng.uniform(11.0, 14.0) * um / 2
        n = 2 if rng.random() < 0.7 else 1
        if n == 2:
            lobes = _lobe_chain(2, rng, arc_r=radius * 0.4, lobe_r=radius * rng.uniform(0.3, 0.36), span_deg=rng.uniform(110, 180))
        else:
            lobes = [(rng.normal(0, 1), rng.normal(0, 1), radius * 0.5, radius * 0.42, rng.uniform(0, math.pi))]
        return WbcShape(label, radius, aspect, angle, lobes, None, [(0, 1)] if n == 2 else [],
                        nucleus_density=0.7, chromatin_texture=0.15, cyto_density=1.0, rna_density=0.2,
                        granule_kind=K_GBAS, granule_count=int(radius * radius * rng.uniform(0.15, 0.28)),
                        granule_size=rng.uniform(1.0, 1.5), granule_over_nucleus=True)
    if label == "lymphocyte":
        large = rng.random() < 0.25
        radius = (rng.uniform(11.0, 14.0) if large else rng.uniform(7.0, 10.0)) * um / 2
        nr = radius * (rng.uniform(0.66, 0.78) if large else rng.uniform(0.76, 0.87))
        off = radius - nr
        lobes = [(rng.uniform(-0.6, 0.6) * off, rng.uniform(-0.6, 0.6) * off, nr, nr * rng.uniform(0.88, 1.0), rng.uniform(0, math.pi))]
        notch = None
        if rng.random() < 0.15:  # reactive/cleaved lymphocyte: slight indentation
            a = rng.uniform(0, 2 * math.pi)
            notch = (nr * 1.05 * math.cos(a), nr * 1.05 * math.sin(a), nr * 0.35)
        return WbcShape(label, radius, aspect, angle, lobes, notch, [],
                        nucleus_density=1.15, chromatin_texture=0.12, cyto_density=0.8, rna_density=1.0,
                        granule_kind=K_GNEU if large and rng.random() < 0.5 else None,
                        granule_count=int(rng.integers(3, 10)), granule_size=0.8, granule_over_nucleus=False)
    if label == "monocyte":
        radius = rng.uniform(15.0, 20.0) * um / 2
        nr = radius * rng.uniform(0.5, 0.6)
        cx, cy = rng.normal(0, radius * 0.12, 2)
        lobes = [(float(cx), float(cy), nr * 1.1, nr * rng.uniform(0.75, 0.9), rng.uniform(0, math.pi))]
        a = rng.uniform(0, 2 * math.pi)
        notch = (float(cx + nr * 0.95 * math.cos(a)), float(cy + nr * 0.95 * math.sin(a)), nr * rng.uniform(0.45, 0.65))
        return WbcShape(label, radius, aspect, angle, lobes, notch, [],
                        nucleus_density=0.75, chromatin_texture=0.35, cyto_density=1.0, rna_density=0.45,
                        granule_kind=K_GNEU, granule_count=int(radius * radius * 0.3), granule_size=0.5,
                        granule_over_nucleus=False, vacuoles=int(rng.integers(0, 5)))
    raise ValueError(f"unknown class {label!r}; expected one of {list(CLASSES)}")


def _soft_ellipse(xx, yy, cx, cy, rx, ry, angle, edge=0.8):
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    d = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    return np.clip((1.0 - d) * min(rx, ry) / edge + 0.5, 0.0, 1.0)


def _segment_mask(xx, yy, p, q, width):
    px, py = p
    qx, qy = q
    vx, vy = qx - px, qy - py
    L2 = vx * vx + vy * vy + 1e-6
    t = np.clip(((xx - px) * vx + (yy - py) * vy) / L2, 0, 1)
    d = np.hypot(xx - (px + t * vx), yy - (py + t * vy))
    return np.clip((width - d) / 0.8 + 0.5, 0, 1)


@lru_cache(maxsize=4)
def _rbc_sprites(count: int = 24) -> tuple[np.ndarray, ...]:
    """Red cell density sprites (biconcave disks: thick rim, central pallor), fixed set, cached."""
    rng = np.random.default_rng(20260)
    sprites = []
    for _ in range(count):
        r = RBC_RADIUS_PX * rng.uniform(0.85, 1.15)
        half = int(math.ceil(r)) + 2
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
        aspect = rng.uniform(0.85, 1.0)
        ang = rng.uniform(0, math.pi)
        disk = _soft_ellipse(xx, yy, 0, 0, r, r * aspect, ang)
        rho = np.sqrt((xx / r) ** 2 + (yy / (r * aspect)) ** 2)
        pallor = 1.0 - rng.uniform(0.35, 0.55) * np.exp(-((rho / rng.uniform(0.38, 0.5)) ** 2))
        sprites.append((disk * pallor).astype(np.float32))
    return tuple(sprites)


def _noise_blob(rng, shape, sigma):
    n = rng.standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma)
    return n / (n.std() + 1e-6)


RBC_QUANT = 100.0  # red-cell density -> uint8 level for the per-light lookup tables


class Scene:
    """Component maps on a canvas with a `pad` margin so every light can be shifted by up to pad px.

    Red cells cover the whole canvas and are rendered through per-light lookup tables (fast); white
    cells and debris live in small rectangles (`rects`) rendered with the full component model.
    """

    def __init__(self, width: int, height: int, pad: int = MAX_SHIFT_PX + 1):
        self.width, self.height, self.pad = width, height, pad
        self.maps = np.zeros((len(COMPONENTS), height + 2 * pad, width + 2 * pad), np.float32)
        self.rects: list[tuple[int, int, int, int]] = []  # canvas (y0, y1, x0, x1)

    # -- drawing (arguments are frame pixels; the pad is added here) --
    def add_rbcs(self, rng: np.random.Generator, coverage: float = RBC_COVERAGE, haemoglobin: float = 1.0) -> None:
        """Red cells as a Poisson process over the canvas (they may overlap each other and white cells)."""
        sprites = _rbc_sprites()
        h, w = self.maps.shape[1:]
        n = rng.poisson(coverage * h * w / (math.pi * RBC_RADIUS_PX**2))
        xs = np.round(rng.uniform(-RBC_RADIUS_PX, w + RBC_RADIUS_PX, n)).astype(int)
        ys = np.round(rng.uniform(-RBC_RADIUS_PX, h + RBC_RADIUS_PX, n)).astype(int)
        idx = rng.integers(0, len(sprites), n)
        gains = rng.uniform(0.85, 1.1, n).astype(np.float32) * np.float32(haemoglobin)
        target = self.maps[K_RBC]
        for x, y, k, g in zip(xs.tolist(), ys.tolist(), idx.tolist(), gains.tolist()):
            _paste_add(target, sprites[k], x, y, g)

    def set_rbc_layer(self, layer: np.ndarray) -> None:
        """Use a precomputed red-cell density layer (canvas sized), e.g. a window of a camera's tile."""
        self.maps[K_RBC] = layer

    def add_debris(self, rng: np.random.Generator, n: int) -> list[tuple[float, float]]:
        """Small bright fluorescent specks that are not cells (platelet clumps, stain precipitate)."""
        h, w = self.maps.shape[1:]
        spots = []
        half = 4
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
        for _ in range(n):
            x, y = int(rng.integers(half + 2, w - half - 2)), int(rng.integers(half + 2, h - half - 2))
            r = rng.uniform(0.8, 1.8)
            blob = np.exp(-(xx**2 + yy**2) / (2 * r * r)).astype(np.float32)
            _paste_add(self.maps[K_DEBRIS], blob, x, y, float(rng.uniform(0.6, 1.2)))
            self.rects.append((y - half - 2, y + half + 3, x - half - 2, x + half + 3))
            spots.append((x - self.pad, y - self.pad))
        return spots

    def add_wbc(self, shape: WbcShape, cx: float, cy: float, rng: np.random.Generator, stain: Stain) -> None:
        pc, pr = cx + self.pad, cy + self.pad
        half = int(math.ceil(shape.box_radius())) + 3
        x0, y0 = int(math.floor(pc)) - half, int(math.floor(pr)) - half
        size = 2 * half + 1
        canvas_h, canvas_w = self.maps.shape[1:]
        cy0, cx0 = max(y0, 0), max(x0, 0)
        cy1, cx1 = min(y0 + size, canvas_h), min(x0 + size, canvas_w)
        if cy0 >= cy1 or cx0 >= cx1:
            return
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        xx += x0 - pc
        yy += y0 - pr
        c, s = math.cos(shape.angle), math.sin(shape.angle)
        u, v = xx * c + yy * s, -xx * s + yy * c  # cell frame: rotated by shape.angle
        cell = _soft_ellipse(u, v, 0, 0, shape.radius, shape.radius * shape.aspect, 0.0, edge=1.0)
        nucleus = np.zeros_like(cell)
        for dx, dy, rx, ry, a in shape.lobes:
            nucleus = np.maximum(nucleus, _soft_ellipse(u, v, dx, dy, rx, ry, a))
        for i, j in shape.bridges:  # thin chromatin strands between lobes
            nucleus = np.maximum(nucleus, 0.85 * _segment_mask(u, v, shape.lobes[i][:2], shape.lobes[j][:2], width=rng.uniform(0.7, 1.4)))
        if shape.notch is not None:
            nx, ny, nr = shape.notch
            nucleus = nucleus * (1.0 - _soft_ellipse(u, v, nx, ny, nr, nr, 0.0))
        nucleus *= cell
        chrom = np.clip(1.0 + shape.chromatin_texture * _noise_blob(rng, cell.shape, 0.9), 0.3, 2.0)
        cyto = cell * (1.0 - 0.8 * nucleus)
        for _ in range(shape.vacuoles):
            a, r = rng.uniform(0, 2 * math.pi), shape.radius * rng.uniform(0.55, 0.85)
            vr = rng.uniform(1.0, 2.2)
            cyto = cyto * (1.0 - 0.8 * _soft_ellipse(u, v, r * math.cos(a), r * math.sin(a), vr, vr, 0.0))
        win = np.s_[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        dst = np.s_[cy0:cy1, cx0:cx1]
        maps = self.maps
        # the white cell lies over red cells and hides most of them
        maps[K_RBC][dst] *= 1.0 - 0.85 * cell[win]
        maps[K_CYTO][dst] += (shape.cyto_density * cyto)[win]
        maps[K_RNA][dst] += (shape.rna_density * stain.azure * cyto)[win]
        maps[K_NUC][dst] += (shape.nucleus_density * stain.nucleus * nucleus * chrom)[win]
        if shape.granule_kind is not None and shape.granule_count > 0:
            gran = np.zeros_like(cell)
            n = shape.granule_count
            r = shape.radius * np.sqrt(rng.uniform(0, 1, n)) * 0.95
            a = rng.uniform(0, 2 * math.pi, n)
            gu, gv = r * np.cos(a), r * np.sin(a) * shape.aspect
            gx = np.clip(np.round(gu * c - gv * s + pc - x0), 0, size - 1).astype(int)
            gy = np.clip(np.round(gu * s + gv * c + pr - y0), 0, size - 1).astype(int)
            np.add.at(gran, (gy, gx), 1.0)
            sig = shape.granule_size
            gran = np.clip(cv2.GaussianBlur(gran, (0, 0), sig) * (2 * math.pi * sig * sig), 0, 1.6) * cell
            if not shape.granule_over_nucleus:
                gran *= 1.0 - 0.85 * nucleus
            gain = stain.eosin if shape.granule_kind == K_GEOS else stain.azure
            maps[shape.granule_kind][dst] += (gain * gran)[win]
        self.rects.append((cy0, cy1, cx0, cx1))

    # -- light rendering --
    def render(self, rng: np.random.Generator, lights, stain: Stain, shifts: dict[str, tuple[int, int]],
               illumination: dict[str, np.ndarray] | None = None, origin: tuple[float, float] = (0.0, 0.0),
               field_size: tuple[int, int] | None = None, optics: dict[str, dict] | None = None,
               noise: dict[str, "NoiseBank"] | None = None) -> dict[str, np.ndarray]:
        """Every light as RGB uint8 (height x width x 3).

        `illumination` holds per-light uneven-illumination maps (uint8, 255 = full); if None they are
        drawn from `optics` for a window at `origin` in a virtual field of `field_size`. `shifts` are
        per-light misregistrations (dx, dy) in pixels.
        """
        optics = optics if optics is not None else {light: sample_optics(rng, light) for light in lights}
        field_size = field_size or (self.width, self.height)
        q = np.clip(self.maps[K_RBC] * RBC_QUANT + 0.5, 0, 255).astype(np.uint8)
        out = {}
        for light in lights:
            opt = optics[light]
            illum = illumination[light] if illumination is not None else illumination_map(opt, origin, field_size, self.height, self.width)
            bank = noise[light] if noise is not None else None
            out[light] = self._render_light(light, q, shifts.get(light, (0, 0)), opt, stain, illum, rng, bank)
        return out

    def _render_light(self, light, q, shift, opt, stain, illum, rng, bank) -> np.ndarray:
        h, w, p = self.height, self.width, self.pad
        dx, dy = shift
        oy, ox = p + dy, p + dx  # canvas position of the frame's top-left for this light
        qw = q[oy : oy + h, ox : ox + w]
        lut = _rbc_lut(light, opt, stain)
        img = cv2.LUT(cv2.merge([qw, qw, qw]), lut)
        if light == "color3":
            rel = cv2.Sobel(qw, cv2.CV_8U, 1, 0, ksize=3, scale=RELIEF * 0.5 * 200.0 / RBC_QUANT, delta=128)
            img = cv2.addWeighted(img, 1.0, cv2.merge([rel, rel, rel]), 1.0, -128.0)
        for y0, y1, x0, x1 in self.rects:
            fy0, fy1 = max(y0 - oy, 0), min(y1 - oy, h)
            fx0, fx1 = max(x0 - ox, 0), min(x1 - ox, w)
            if fy0 >= fy1 or fx0 >= fx1:
                continue
            maps = self.maps[:, fy0 + oy : fy1 + oy, fx0 + ox : fx1 + ox]
            img[fy0:fy1, fx0:fx1] = _model_light(light, maps, opt, stain)
        img = cv2.multiply(img, illum, scale=1.0 / 255.0)
        img = cv2.GaussianBlur(img, (0, 0), opt["blur"])
        if bank is not None:
            pos, neg = bank.take(rng, h, w)
        else:
            pos, neg = _noise_pair(rng, (h, w, 3), opt["noise"])
        return cv2.subtract(cv2.add(img, pos), neg)


RELIEF = 0.18  # color3 oblique-illumination relief gain


def sample_optics(rng: np.random.Generator, light: str) -> dict:
    (b0, b1), noise, (f0, f1) = _OPTICS[light]
    return {
        "blur": float(rng.uniform(b0, b1)),
        "noise": float(noise * rng.uniform(0.8, 1.3)),
        "falloff": float(rng.uniform(f0, f1)),
        "centre": (float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))),
        "gain": float(rng.uniform(0.88, 1.0)),
        # per-capture exposure / LED spectrum / stain uptake seen by this light, per component
        "contrast": np.exp(rng.normal(0.0, COMPONENT_JITTER, len(COMPONENTS))).astype(np.float32),
    }


def sample_shifts(rng: np.random.Generator, lights) -> dict[str, tuple[int, int]]:
    """Misregistration of each light relative to the fluorescence light (up to MAX_SHIFT_PX px)."""
    reference = "fluorescent" if "fluorescent" in lights else lights[0]
    shifts = {}
    for light in lights:
        shift = tuple(int(v) for v in rng.integers(-MAX_SHIFT_PX, MAX_SHIFT_PX + 1, 2))
        shifts[light] = (0, 0) if light == reference else shift
    return shifts


def illumination_map(opt: dict, origin, field_size, h: int, w: int) -> np.ndarray:
    """Uneven illumination (vignetting around an off-centre optical axis), uint8 HxWx3, 255 = full."""
    fw, fh = field_size
    cx, cy = opt["centre"]
    xs = (np.arange(w, dtype=np.float32) + origin[0]) / fw - cx
    ys = (np.arange(h, dtype=np.float32) + origin[1]) / fh - cy
    r2 = ys[:, None] ** 2 + xs[None, :] ** 2
    m = np.clip(255.0 * opt["gain"] * (1.0 - opt["falloff"] * r2 / 0.5) + 0.5, 0, 255).astype(np.uint8)
    return cv2.merge([m, m, m])


def _rbc_lut(light: str, opt: dict, stain: Stain) -> np.ndarray:
    """Colour of a pixel that holds only red-cell density level i / RBC_QUANT, for i in 0..255."""
    d = (np.arange(256, dtype=np.float32) / RBC_QUANT)[:, None]
    if light == "fluorescent":
        vals = _FLUO_BACKGROUND[None, :] * (1.0 - 0.5 * np.minimum(d, 1.0))
    else:
        a = _ABSORBANCE[light][K_RBC] * opt["contrast"][K_RBC] * stain.haemoglobin
        colour = _ILLUMINANT[light] * np.asarray(stain.tint, np.float32)
        vals = 250.0 * colour[None, :] * np.exp(-d * a[None, :])
    return np.clip(vals + 0.5, 0, 255).astype(np.uint8).reshape(1, 256, 3)


def _model_light(light: str, maps: np.ndarray, opt: dict, stain: Stain) -> np.ndarray:
    """The full component model of one light on a small window of maps [K, h, w] -> uint8 h x w x 3."""
    k, h, w = maps.shape
    flat = maps.reshape(k, h * w)
    if light == "fluorescent":
        em = _EMISSION * (stain.acridine * opt["contrast"][:, None])
        signal = (em.T @ flat).reshape(3, h, w)
        # saturating detector; red cells block a little of the background glow
        img = 255.0 * (1.0 - np.exp(-signal))
        img += _FLUO_BACKGROUND[:, None, None] * (1.0 - 0.5 * np.minimum(maps[K_RBC], 1.0))[None]
    else:
        a = _ABSORBANCE[light] * opt["contrast"][:, None]
        a[K_RBC] *= stain.haemoglobin
        od = (a.T @ flat).reshape(3, h, w)
        colour = _ILLUMINANT[light] * np.asarray(stain.tint, np.float32)
        img = 250.0 * colour[:, None, None] * np.exp(-od)
        if light == "color3":
            # oblique illumination: relief from the optical thickness gradient
            thick = maps[K_RBC] * 0.5 + maps[K_CYTO] + maps[K_NUC] * 0.5 + maps[K_GEOS] * 0.8 + maps[K_GNEU] * 0.8
            img *= (1.0 + RELIEF * cv2.Sobel(thick, cv2.CV_32F, 1, 0, ksize=3))[None]
    return np.clip(img.transpose(1, 2, 0) + 0.5, 0, 255).astype(np.uint8)


def _noise_pair(rng: np.random.Generator, shape, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian noise split into its positive and negative parts (uint8), for saturating add/subtract."""
    n = rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
    return (np.clip(n + 0.5, 0, 255).astype(np.uint8), np.clip(-n + 0.5, 0, 255).astype(np.uint8))


class NoiseBank:
    """A precomputed block of sensor noise; each frame takes a random window (streaming speed)."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, sigma: float, margin: int = 64):
        self.pos, self.neg = _noise_pair(rng, (height + margin, width + margin, 3), sigma)

    def take(self, rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        bh, bw = self.pos.shape[:2]
        y, x = int(rng.integers(0, bh - h + 1)), int(rng.integers(0, bw - w + 1))
        pos, neg = self.pos[y : y + h, x : x + w], self.neg[y : y + h, x : x + w]
        return (pos, neg) if rng.random() < 0.5 else (neg, pos)


def _paste_add(target: np.ndarray, sprite: np.ndarray, cx: int, cy: int, gain: float = 1.0) -> None:
    sh, sw = sprite.shape
    y0, x0 = cy - sh // 2, cx - sw // 2
    H, W = target.shape
    ty0, tx0, ty1, tx1 = max(y0, 0), max(x0, 0), min(y0 + sh, H), min(x0 + sw, W)
    if ty0 >= ty1 or tx0 >= tx1:
        return
    target[ty0:ty1, tx0:tx1] += sprite[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] * gain
