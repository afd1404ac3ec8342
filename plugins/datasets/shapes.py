"""The built-in procedural ``shapes`` dataset: geometric shapes in a known class tree.

It exists so that the quickstart runs offline with a real ImageNet CNN and still exercises
every evaluator: the labels form a tree (:data:`SHAPE_TREE`) for the ontology metrics, and
shifted splits keep the labels for out-of-distribution probing (the paper's ImageNet-Sketch /
ImageNet-R / ImageNet-C idea), while ``ood-near`` and ``ood-far`` play OpenOOD's unlabelled
near and far sets.

Rendering is pure numpy and PIL. Item ``i`` is drawn from
``numpy.random.default_rng([seed, split_id, i])``, so it does not depend on ``size`` or on any
other item: random access is free and DataLoader workers agree.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from saebench_vision_plugins.datasets.shapes_config import (
    LEAF_CLASSES,
    SHAPE_TREE,
    SPLITS,
    ShapesConfig,
)

from saebench_vision.errors import DatasetError
from saebench_vision.interfaces import ClassInfo, Dataset

Rng = np.random.Generator
Op = tuple[str, np.ndarray, float, int]
"""A drawing step in unit coordinates: (``poly`` or ``line``, points (k, 2), line width, fill).
Fill 255 adds to the shape's mask, fill 0 cuts a hole."""

_LABEL_STREAM = 7919  # extra entropy word that keeps label permutations apart from image draws


# --------------------------------------------------------------------------------------------
# Geometry: each function returns drawing steps for a shape that fits the unit disc, and the
# rotation range (degrees) it may take without turning into another class (a square turned
# 45 degrees would read as a diamond, a plus as a cross).


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _fit(pts: np.ndarray) -> np.ndarray:
    """Centre a polygon on its bounding box and scale it into the unit disc."""
    pts = pts - (pts.max(0) + pts.min(0)) / 2
    return pts / np.linalg.norm(pts, axis=1).max()


def _poly(pts: np.ndarray, fill: int = 255) -> Op:
    return ("poly", pts, 0.0, fill)


_CIRCLE = _regular(96)


def _equilateral_triangle(rng: Rng) -> tuple[list[Op], float, float]:
    return [_poly(_fit(_regular(3, -np.pi / 2)))], 0.0, 180.0


def _right_triangle(rng: Rng) -> tuple[list[Op], float, float]:
    b = rng.uniform(0.55, 1.0)
    return [_poly(_fit(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, -b]])))], 0.0, 180.0


def _square(rng: Rng) -> tuple[list[Op], float, float]:
    return [_poly(_regular(4, np.pi / 4))], 0.0, 15.0


def _rectangle(rng: Rng) -> tuple[list[Op], float, float]:
    h = rng.uniform(0.4, 0.6)
    return [_poly(_fit(np.array([[-1, -h], [1, -h], [1, h], [-1, h]])))], 0.0, 90.0


def _diamond(rng: Rng) -> tuple[list[Op], float, float]:
    w = rng.uniform(0.5, 0.7)
    return [_poly(np.array([[0, -1], [w, 0], [0, 1], [-w, 0]]))], 0.0, 20.0


def _trapezoid(rng: Rng) -> tuple[list[Op], float, float]:
    top, h = rng.uniform(0.35, 0.6), rng.uniform(0.5, 0.7)
    return [_poly(_fit(np.array([[-1, h], [1, h], [top, -h], [-top, -h]])))], 0.0, 25.0


def _pentagon(rng: Rng) -> tuple[list[Op], float, float]:
    return [_poly(_regular(5, -np.pi / 2))], 0.0, 180.0


def _hexagon(rng: Rng) -> tuple[list[Op], float, float]:
    return [_poly(_regular(6))], 0.0, 180.0


def _star(rng: Rng) -> tuple[list[Op], float, float]:
    inner = rng.uniform(0.38, 0.5)
    pts = _regular(10, -np.pi / 2) * np.where(np.arange(10) % 2 == 0, 1.0, inner)[:, None]
    return [_poly(pts)], 0.0, 180.0


def _circle(rng: Rng) -> tuple[list[Op], float, float]:
    return [_poly(_CIRCLE)], 0.0, 180.0


def _ellipse(rng: Rng) -> tuple[list[Op], float, float]:
    return [_poly(_CIRCLE * [1.0, rng.uniform(0.45, 0.65)])], 0.0, 180.0


def _ring(rng: Rng) -> tuple[list[Op], float, float]:
    return [_poly(_CIRCLE), _poly(_CIRCLE * rng.uniform(0.5, 0.68), 0)], 0.0, 180.0


def _crescent(rng: Rng) -> tuple[list[Op], float, float]:
    cut = _CIRCLE * rng.uniform(0.8, 0.95) + [rng.uniform(0.4, 0.6), 0.0]
    return [_poly(_CIRCLE), _poly(cut, 0)], 0.0, 180.0


def _plus_shape(t: float) -> np.ndarray:
    return np.array(
        [[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t],
         [t, 1], [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t]]
    )  # fmt: skip


def _plus(rng: Rng) -> tuple[list[Op], float, float]:
    return [_poly(_plus_shape(rng.uniform(0.16, 0.26)))], 0.0, 12.0


def _cross(rng: Rng) -> tuple[list[Op], float, float]:
    return [_poly(_plus_shape(rng.uniform(0.16, 0.26)))], 45.0, 12.0


def _arrow(rng: Rng) -> tuple[list[Op], float, float]:
    s, head, neck = rng.uniform(0.12, 0.2), rng.uniform(0.45, 0.6), rng.uniform(0.1, 0.3)
    pts = np.array([[-1, -s], [neck, -s], [neck, -head], [1, 0], [neck, head], [neck, s], [-1, s]])
    return [_poly(pts)], 0.0, 180.0


def _zigzag(rng: Rng) -> tuple[list[Op], float, float]:
    n = int(rng.integers(3, 5))
    amp = rng.uniform(0.3, 0.5)
    x = np.linspace(-0.85, 0.85, n + 1)
    y = amp * np.where(np.arange(n + 1) % 2 == 0, -1.0, 1.0)
    return [("line", np.stack([x, y], 1), rng.uniform(0.2, 0.3), 255)], 0.0, 30.0


def _heart(rng: Rng) -> tuple[list[Op], float, float]:
    t = np.linspace(0, 2 * np.pi, 80, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [_poly(_fit(np.stack([x, y], 1)))], 0.0, 20.0


GEOMETRY: dict[str, Callable[[Rng], tuple[list[Op], float, float]]] = {
    "equilateral-triangle": _equilateral_triangle,
    "right-triangle": _right_triangle,
    "square": _square,
    "rectangle": _rectangle,
    "diamond": _diamond,
    "trapezoid": _trapezoid,
    "pentagon": _pentagon,
    "hexagon": _hexagon,
    "star": _star,
    "circle": _circle,
    "ellipse": _ellipse,
    "ring": _ring,
    "crescent": _crescent,
    "plus": _plus,
    "cross": _cross,
    "arrow": _arrow,
    "zigzag": _zigzag,
    "heart": _heart,
}
"""Leaf class -> geometry sampler (returns steps, base rotation, rotation jitter in degrees)."""


def _octagon(rng: Rng) -> tuple[list[Op], float, float]:
    return [_poly(_regular(8, np.pi / 8))], 0.0, 180.0


def _semicircle(rng: Rng) -> tuple[list[Op], float, float]:
    t = np.linspace(0, np.pi, 48)
    return [_poly(_fit(np.stack([np.cos(t), -np.sin(t)], 1)))], 0.0, 180.0


def _kite(rng: Rng) -> tuple[list[Op], float, float]:
    w = rng.uniform(0.55, 0.75)
    return [_poly(_fit(np.array([[0, -1], [w, -0.35], [0, 1], [-w, -0.35]])))], 0.0, 180.0


def _l_shape(rng: Rng) -> tuple[list[Op], float, float]:
    t = rng.uniform(0.35, 0.5)
    pts = np.array(
        [[-1, -1], [-1 + 2 * t, -1], [-1 + 2 * t, 1 - 2 * t], [1, 1 - 2 * t], [1, 1], [-1, 1]]
    )
    return [_poly(_fit(pts))], 0.0, 180.0


def _t_shape(rng: Rng) -> tuple[list[Op], float, float]:
    t = rng.uniform(0.18, 0.28)
    pts = np.array([[-1, -1], [1, -1], [1, -1 + 2 * t], [t, -1 + 2 * t], [t, 1], [-t, 1],
                    [-t, -1 + 2 * t], [-1, -1 + 2 * t]])  # fmt: skip
    return [_poly(_fit(pts))], 0.0, 180.0


def _trefoil(rng: Rng) -> tuple[list[Op], float, float]:
    r = rng.uniform(0.42, 0.5)
    lobes = _regular(3, -np.pi / 2) * (1 - r)
    return [_poly(_CIRCLE * r + c) for c in lobes] + [_poly(_CIRCLE * r * 0.8)], 0.0, 180.0


def _teardrop(rng: Rng) -> tuple[list[Op], float, float]:
    t = np.linspace(0, 2 * np.pi, 80, endpoint=False)
    x, y = np.cos(t), np.sin(t) * np.sin(t / 2) ** rng.uniform(1.0, 1.6)
    return [_poly(_fit(np.stack([x, y], 1)))], 0.0, 180.0


def _lightning(rng: Rng) -> tuple[list[Op], float, float]:
    pts = np.array(
        [[0.2, -1], [-0.55, 0.15], [-0.05, 0.15], [-0.3, 1], [0.55, -0.2], [0.05, -0.2], [0.35, -1]]
    )
    return [_poly(_fit(pts))], 0.0, 30.0


NOVEL_GEOMETRY: dict[str, Callable[[Rng], tuple[list[Op], float, float]]] = {
    "octagon": _octagon,
    "semicircle": _semicircle,
    "kite": _kite,
    "l-shape": _l_shape,
    "t-shape": _t_shape,
    "trefoil": _trefoil,
    "teardrop": _teardrop,
    "lightning": _lightning,
}
"""Shapes outside the class tree, drawn in the in-distribution style for ``ood-near``."""


# --------------------------------------------------------------------------------------------
# Rendering helpers (float32 images in [0, 1], shape (S, S, 3))


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return xx, yy


def _shape_mask(
    ops: list[Op], rng: Rng, cfg: ShapesConfig, base: float, jitter: float
) -> np.ndarray:
    """Place, rotate and rasterise a shape; returns a bool mask at ``supersample`` x the size."""
    size, ss = cfg.image_size, cfg.supersample
    diameter = rng.uniform(*cfg.scale) * size
    radius = diameter / 2
    lo = radius + min(cfg.margin * size, max(size - diameter, 0.0) / 2)
    centre = rng.uniform(lo, max(lo, size - lo), size=2)
    angle = np.deg2rad(base + rng.uniform(-jitter, jitter))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    big = size * ss
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for kind, pts, width, fill in ops:
        xy = (pts @ rot.T * radius + centre) * ss
        coords = [tuple(p) for p in xy.tolist()]
        if kind == "poly":
            draw.polygon(coords, fill=fill)
        else:
            draw.line(coords, fill=fill, width=max(1, round(width * radius * ss)), joint="curve")
    return np.asarray(canvas) > 127


def _downsample(mask: np.ndarray, ss: int) -> np.ndarray:
    """Box-filter a supersampled bool mask to coverage in [0, 1] (anti-aliasing)."""
    out = mask[::ss, ::ss].astype(np.float32)
    for dy in range(ss):
        for dx in range(ss):
            if dy or dx:  # strided sums: several times faster than a reshaped mean
                out += mask[dy::ss, dx::ss]
    return out / (ss * ss) if ss > 1 else out


def _erode(mask: np.ndarray, width: int) -> np.ndarray:
    """Square erosion by ``width`` pixels (separable min over shifts)."""
    out = mask.copy()
    for axis in (0, 1):
        padded = np.pad(out, [(width, width) if a == axis else (0, 0) for a in (0, 1)])
        n = out.shape[axis]
        acc = out.copy()
        for shift in range(2 * width + 1):
            acc &= padded[shift : shift + n] if axis == 0 else padded[:, shift : shift + n]
        out = acc
    return out


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    return mask & ~_erode(mask, width)


def _gauss(rng: Rng, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def _colour(rng: Rng) -> np.ndarray:
    return rng.random(3).astype(np.float32)


def _contrasting(rng: Rng, against: np.ndarray, min_dist: float = 0.5) -> np.ndarray:
    """A random colour at least ``min_dist`` (RGB Euclidean) from ``against``."""
    for _ in range(32):
        c = _colour(rng)
        if np.linalg.norm(c - against) >= min_dist:
            return c
    return (1.0 - against).astype(np.float32)


def _lowfreq(rng: Rng, size: int, cells: int, channels: int = 3) -> np.ndarray:
    """Smooth random field in [0, 1]: a coarse grid upsampled bicubically."""
    coarse = (rng.random((cells, cells, channels)) * 255).astype(np.uint8)
    img = Image.fromarray(coarse.squeeze(-1) if channels == 1 else coarse)
    field = np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    return field.reshape(size, size, channels)


def _gradient(rng: Rng, size: int) -> np.ndarray:
    xx, yy = _grid(size)
    theta = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(theta) + yy * np.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return t[..., None]


def _background(rng: Rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """In-distribution background (plain, gradient or smooth noise) and its mean colour."""
    kind = rng.integers(3)
    base = _colour(rng)
    if kind == 0:
        bg = np.broadcast_to(base, (size, size, 3))
    elif kind == 1:
        other = np.clip(base + rng.normal(0, 0.25, 3), 0, 1).astype(np.float32)
        t = _gradient(rng, size)
        bg = base * (1 - t) + other * t
    else:
        amp = rng.uniform(0.15, 0.35)
        field = _lowfreq(rng, size, int(rng.integers(3, 9)))
        bg = np.clip(base + amp * (field - 0.5), 0, 1)
        bg = bg + _gauss(rng, rng.uniform(0.01, 0.05), (size, size, 1))
    return bg, base


def _pattern(rng: Rng, size: int) -> np.ndarray:
    """A fill texture in [0, 1] never used in train: stripes, checks, dots, rings, hatch, camo."""
    xx, yy = _grid(size)
    kind = rng.integers(6)
    theta = rng.uniform(0, np.pi)
    u = (xx * np.cos(theta) + yy * np.sin(theta)) * size
    v = (-xx * np.sin(theta) + yy * np.cos(theta)) * size
    period = rng.uniform(6, 14) * size / 128
    if kind == 0:
        p = np.sin(2 * np.pi * u / period) > 0
    elif kind == 1:
        p = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    elif kind == 2:
        du = (u / period) % 1 - 0.5
        dv = (v / period) % 1 - 0.5
        p = du**2 + dv**2 < rng.uniform(0.06, 0.16)
    elif kind == 3:
        cx, cy = rng.uniform(0.2, 0.8, 2)
        p = np.sin(2 * np.pi * np.hypot(xx - cx, yy - cy) * size / period) > 0
    elif kind == 4:
        p = (np.sin(2 * np.pi * u / period) > 0.6) | (np.sin(2 * np.pi * v / period) > 0.6)
    else:
        p = _lowfreq(rng, size, int(rng.integers(5, 10)), 1)[..., 0] > 0.5
    return p.astype(np.float32)[..., None]


# --------------------------------------------------------------------------------------------
# Split renderers


def _render_solid(
    rng: Rng, cfg: ShapesConfig, ops: list[Op], base: float, jitter: float
) -> np.ndarray:
    size, ss = cfg.image_size, cfg.supersample
    bg, bg_mean = _background(rng, size)
    fg = _contrasting(rng, bg_mean)
    alpha = _downsample(_shape_mask(ops, rng, cfg, base, jitter), ss)[..., None]
    return bg * (1 - alpha) + fg * alpha


def _render_sketch(
    rng: Rng, cfg: ShapesConfig, ops: list[Op], base: float, jitter: float
) -> np.ndarray:
    size, ss = cfg.image_size, cfg.supersample
    paper = (
        np.float32(rng.uniform(0.86, 1.0)) - np.array([0, 0.01, 0.03], np.float32) * rng.random()
    )
    img = np.broadcast_to(paper, (size, size, 3)) + _gauss(rng, 0.015, (size, size, 1))
    mask = _shape_mask(ops, rng, cfg, base, jitter)
    width = max(1, round(rng.uniform(1.2, 2.6) * ss * size / 128))
    ink = np.float32(rng.uniform(0.05, 0.35))
    stroke = _downsample(_outline(mask, width), ss)
    if rng.random() < 0.6:  # a second, fainter pass slightly off the first, as a pencil does
        dy, dx = rng.integers(-3, 4, 2) * ss
        second = _outline(np.roll(mask, (int(dy), int(dx)), axis=(0, 1)), max(1, width // 2))
        stroke = np.maximum(stroke, 0.5 * _downsample(second, ss))
    if rng.random() < 0.5:  # hatched shading inside the outline
        xx, yy = _grid(size)
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(4, 8) * size / 128
        hatch = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) * size / period) > 0.7
        stroke = np.maximum(stroke, 0.35 * hatch * _downsample(mask, ss))
    alpha = stroke[..., None]
    return img * (1 - alpha) + ink * alpha


def _render_rendition(
    rng: Rng, cfg: ShapesConfig, ops: list[Op], base: float, jitter: float
) -> np.ndarray:
    size, ss = cfg.image_size, cfg.supersample
    bg_mean = _colour(rng)
    if rng.random() < 0.5:
        other = np.clip(bg_mean + rng.normal(0, 0.15, 3), 0, 1).astype(np.float32)
        t = _gradient(rng, size)
        bg = bg_mean * (1 - t) + other * t
    else:
        bg = np.broadcast_to(bg_mean, (size, size, 3))
    c1 = _contrasting(rng, bg_mean, 0.45)
    c2 = _contrasting(rng, c1, 0.45)
    fill = c1 * (1 - (p := _pattern(rng, size))) + c2 * p
    mask = _shape_mask(ops, rng, cfg, base, jitter)
    alpha = _downsample(mask, ss)[..., None]
    img = bg * (1 - alpha) + fill * alpha
    if rng.random() < 0.5:  # cartoon contour
        width = max(1, round(rng.uniform(1.5, 3.0) * ss * size / 128))
        line = _downsample(_outline(mask, width), ss)[..., None]
        img = img * (1 - line) + np.float32(rng.uniform(0.0, 0.2)) * line
    return img


_NOISE = (0.04, 0.08, 0.12, 0.17, 0.22)
_BLUR = (0.5, 0.8, 1.1, 1.5, 2.0)
_JPEG = (40, 28, 18, 12, 8)


def _corrupt(rng: Rng, img: np.ndarray, cfg: ShapesConfig) -> Image.Image:
    """ImageNet-C-like: blur, then gaussian noise, then a real JPEG round trip."""
    level = cfg.severity - 1
    jitter = rng.uniform(0.8, 1.2, 3)
    pil = _to_pil(img).filter(
        ImageFilter.GaussianBlur(float(_BLUR[level] * jitter[0] * cfg.image_size / 128))
    )
    sigma = _NOISE[level] * jitter[1]
    noisy = np.asarray(pil, np.float32) / 255 + _gauss(rng, sigma, (cfg.image_size,) * 2 + (3,))
    buf = io.BytesIO()
    _to_pil(noisy).save(buf, format="JPEG", quality=max(2, round(_JPEG[level] * jitter[2])))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _render_texture(rng: Rng, cfg: ShapesConfig) -> np.ndarray:
    """Far OOD: full-frame textures with no shape in them."""
    size = cfg.image_size
    kind = rng.integers(5)
    if kind == 0:  # multi-octave colour noise
        img = sum(_lowfreq(rng, size, cells) * w for cells, w in ((4, 0.5), (12, 0.3), (32, 0.2)))
    elif kind == 1:  # plaid of coloured sinusoids
        xx, yy = _grid(size)
        img = np.zeros((size, size, 3), np.float32)
        for _ in range(3):
            theta, freq = rng.uniform(0, np.pi), rng.uniform(3, 20)
            wave = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)))
            img += 0.5 * (wave[..., None] * _colour(rng)) / 3
        img = img + 0.5
    elif kind == 2:  # gradient with grain
        c1, c2 = _colour(rng), _colour(rng)
        t = _gradient(rng, size)
        img = c1 * (1 - t) + c2 * t + _gauss(rng, 0.08, (size, size, 1))
    elif kind == 3:  # coloured white noise around a tint
        img = _colour(rng) * 0.5 + 0.5 * rng.random((size, size, 3), dtype=np.float32)
    else:  # full-frame pattern
        img = _colour(rng) * (1 - (p := _pattern(rng, size))) + _colour(rng) * p
    return np.asarray(img, np.float32)


def _to_pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------------------------


class ShapesDataset(Dataset):
    """Procedural shapes under a known tree; one configured instance is one split.

    18 leaf classes (``shapes_config.SHAPE_TREE``) at depths 1 to 4 under the root ``shape``,
    so LCH heights and ontological coverage (paper section 3.2) can be checked against a tree
    whose answer is known. Nuisance factors, drawn per item: colour, size (``scale``, 30-80%
    of the side by default, large enough for a frozen ImageNet CNN), position, a class-safe
    rotation, and the background (plain, gradient or smooth noise).

    Splits: ``train`` and ``val`` are in-distribution with disjoint random streams. ``sketch``
    (dark pencil outlines, sometimes hatched, on light paper; cf. ImageNet-Sketch),
    ``rendition`` (striped, checked, dotted, ringed, hatched or camouflage fills with cartoon
    contours; cf. ImageNet-R) and ``corruption`` (in-distribution images with blur, gaussian
    noise and JPEG at ``severity``; cf. ImageNet-C) keep the labels. ``ood-near`` draws eight
    shapes outside the tree (octagon, kite, trefoil ...) in the in-distribution style;
    ``ood-far`` draws textures with no shape. Both are unlabelled.

    Labels are balanced: each block of ``n_classes`` consecutive items holds every class once,
    in an order shuffled per block (so no class lines up with index parity or stride).
    """

    name: ClassVar[str] = "shapes"
    version: ClassVar[str] = "3"
    Config: ClassVar[type] = ShapesConfig

    def __init__(self, config: ShapesConfig) -> None:
        super().__init__(config)
        if config.split not in SPLITS:
            raise DatasetError(
                f"shapes: unknown split {config.split!r}; use one of {', '.join(SPLITS)}"
            )
        self._split_id = SPLITS.index(config.split)
        self._labelled = config.split not in ("ood-near", "ood-far")
        wanted = set(config.classes) if config.classes is not None else set(LEAF_CLASSES)
        self._leaves = tuple(c for c in LEAF_CLASSES if c in wanted)
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return self.config.size

    def _rng(self, index: int) -> Rng:
        return np.random.default_rng([self.config.seed, self._split_id, index])

    def label(self, index: int) -> int:
        """Class index of item ``index`` (balanced per block of ``n_classes`` items)."""
        n = len(self._leaves)
        block, offset = divmod(index, n)
        perm = np.random.default_rng(
            [self.config.seed, self._split_id, block, _LABEL_STREAM]
        ).permutation(n)
        return int(perm[offset])

    def __getitem__(self, index: int) -> Image.Image:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(
                f"shapes[{self.config.split}]: index {index} out of range 0..{len(self) - 1}"
            )
        return self.render(index)

    def render(self, index: int) -> Image.Image:
        """Item ``index`` of this split; valid for any non-negative index, even past ``size``."""
        rng = self._rng(index)
        cfg = self.config
        if cfg.split == "ood-far":
            return _to_pil(_render_texture(rng, cfg))
        if cfg.split == "ood-near":
            names = sorted(NOVEL_GEOMETRY)
            ops, base, jitter = NOVEL_GEOMETRY[names[index % len(names)]](rng)
        else:
            ops, base, jitter = GEOMETRY[self._leaves[self.label(index)]](rng)
        if cfg.split == "sketch":
            return _to_pil(_render_sketch(rng, cfg, ops, base, jitter))
        if cfg.split == "rendition":
            return _to_pil(_render_rendition(rng, cfg, ops, base, jitter))
        img = _render_solid(rng, cfg, ops, base, jitter)
        if cfg.split == "corruption":
            return _corrupt(rng, img, cfg)
        return _to_pil(img)

    def labels(self) -> np.ndarray | None:
        if not self._labelled:
            return None
        if self._labels is None:
            self._labels = np.array([self.label(i) for i in range(len(self))], dtype=np.int64)
        return self._labels

    def classes(self) -> list[ClassInfo] | None:
        if not self._labelled:
            return None
        return [ClassInfo(id=leaf, name=leaf.replace("-", " ")) for leaf in self._leaves]

    def hierarchy(self) -> dict[str, list[str]] | None:
        """``{node: [parent]}`` for the selected leaves and all their ancestors; the root maps
        to ``[]``. Inner nodes with no selected leaf below them are left out, as the paper's
        set S holds only ancestors of the leaves in use."""
        if not self._labelled:
            return None
        parents = dict(SHAPE_TREE)
        out: dict[str, list[str]] = {}
        for leaf in self._leaves:
            node: str | None = leaf
            while node is not None and node not in out:
                parent = parents[node]
                out[node] = [] if parent is None else [parent]
                node = parent
        return out

    def __repr__(self) -> str:
        return f"ShapesDataset(split={self.config.split!r}, size={self.config.size})"


def contact_sheet(per_split: int = 6, image_size: int = 128, seed: int = 0) -> Any:
    """One row per split, ``per_split`` images each: a quick visual check of the renderer."""
    rows = []
    for split in SPLITS:
        ds = ShapesDataset(
            ShapesConfig(split=split, size=per_split, image_size=image_size, seed=seed)
        )
        rows.append(np.concatenate([np.asarray(ds[i]) for i in range(per_split)], axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))
