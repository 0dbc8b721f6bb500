"""Four-light fields composed for the front-end tests (no test functions here).

Independent of wbc_edge.synth on purpose: the front end is tested on frames whose truth is drawn
here. Fluorescence: dark field, one to four bright green nuclear lobes per white cell inside a faint
red cytoplasm glow, tiny bright debris. Bright field: a light-coloured background with pink/grey red
cells and purple white cells, per-light colour, noise and a small shift per light.
Other test modules load this file by path (tests are imported in importlib mode).
"""
from __future__ import annotations

import cv2
import numpy as np

LIGHTS = ("fluorescent", "color1", "color2", "color3")
BACKGROUND = {"color1": (215, 210, 200), "color2": (164, 191, 223), "color3": (233, 195, 163)}
RBC_TINT = {"color1": (0.92, 0.62, 0.72), "color2": (0.62, 0.64, 0.68), "color3": (0.93, 0.9, 0.88)}
WBC_TINT = {"color1": (0.45, 0.3, 0.6), "color2": (0.4, 0.4, 0.45), "color3": (0.7, 0.62, 0.6)}


def compose_field(seed: int, width: int = 320, height: int = 240, n_cells: int = 4, n_debris: int = 6,
                  shift: int = 2) -> tuple[dict[str, np.ndarray], list[tuple[float, float, float, float]]]:
    """Return ({light: RGB uint8 image}, truth boxes of white cells (x0, y0, x1, y1), frame-clipped or not)."""
    rng = np.random.default_rng(seed)
    cells: list[tuple[float, float, float]] = []
    for _ in range(200):
        if len(cells) == n_cells:
            break
        r = float(rng.uniform(11, 17))
        cx, cy = float(rng.uniform(-5, width + 5)), float(rng.uniform(-5, height + 5))
        if all((cx - a) ** 2 + (cy - b) ** 2 > (r + rr + 6) ** 2 for a, b, rr in cells):
            cells.append((cx, cy, r))
    pad = 8
    H, W = height + 2 * pad, width + 2 * pad
    nucleus = np.zeros((H, W), np.float32)
    body = np.zeros((H, W), np.float32)
    rbc = np.zeros((H, W), np.float32)
    debris = np.zeros((H, W), np.float32)
    for _ in range(int(0.3 * H * W / (np.pi * 8.5**2))):
        x, y = rng.uniform(0, W), rng.uniform(0, H)
        if any((x - a - pad) ** 2 + (y - b - pad) ** 2 < (rr + 6) ** 2 for a, b, rr in cells):
            continue
        cv2.circle(rbc, (int(x), int(y)), int(rng.integers(7, 10)), 1.0, -1, cv2.LINE_AA)
    for cx, cy, r in cells:
        c = (int(round(cx + pad)), int(round(cy + pad)))
        cv2.circle(body, c, int(r), 1.0, -1, cv2.LINE_AA)
        n_lobes = int(rng.integers(1, 5))
        if n_lobes == 1:
            cv2.circle(nucleus, c, int(r * rng.uniform(0.55, 0.75)), 1.0, -1, cv2.LINE_AA)
        else:
            start = rng.uniform(0, 2 * np.pi)
            for k in range(n_lobes):
                a = start + k * rng.uniform(0.9, 1.4)
                p = (int(c[0] + 0.45 * r * np.cos(a)), int(c[1] + 0.45 * r * np.sin(a)))
                cv2.circle(nucleus, p, int(r * rng.uniform(0.28, 0.34)), 1.0, -1, cv2.LINE_AA)
    for _ in range(n_debris):
        x, y = int(rng.uniform(0, W)), int(rng.uniform(0, H))
        cv2.circle(debris, (x, y), 1, float(rng.uniform(0.5, 1.0)), -1, cv2.LINE_AA)

    images: dict[str, np.ndarray] = {}
    for i, light in enumerate(LIGHTS):
        dx, dy = (0, 0) if i == 0 else (int(rng.integers(-shift, shift + 1)), int(rng.integers(-shift, shift + 1)))
        win = np.s_[pad + dy : pad + dy + height, pad + dx : pad + dx + width]
        n, b, rb, d = nucleus[win], body[win], rbc[win], debris[win]
        if light == "fluorescent":
            gain = rng.uniform(0.7, 1.2)
            img = np.stack([8 + 40 * b + 60 * n + 120 * d, 9 + 8 * b + 170 * n * gain + 200 * d, 8 + 50 * n + 60 * d], -1)
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.6, 1.6))
            noise = 2.5
        else:
            bg = np.asarray(BACKGROUND[light], np.float32) * rng.uniform(0.95, 1.03)
            rt, wt = np.asarray(RBC_TINT[light], np.float32), np.asarray(WBC_TINT[light], np.float32)
            trans = (1 - rb[..., None] * (1 - rt)) * (1 - b[..., None] * 0.15) * (1 - n[..., None] * (1 - wt))
            img = cv2.GaussianBlur(bg * trans, (0, 0), rng.uniform(0.8, 1.6))
            noise = 2.0
        img = img + rng.normal(0, noise, img.shape)
        images[light] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    truth = [(cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1) for cx, cy, r in cells]
    return images, truth


def inside(box: tuple[float, float, float, float], width: int, height: int) -> bool:
    return box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height
