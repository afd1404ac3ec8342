"""Deterministic test-time views of an image: random-resized crops and horizontal flips,
seeded per image (by its path, not its position in a listing) and per view.

With ``views: N`` a dataset yields N items per image, kept together: items ``i*N`` ...
``i*N + N-1`` are the views of image ``i`` and share its label and its ``groups()`` entry, so
a class with few images still gives N times as many rows, and anything that splits items
(train/test folds, per-class subsets) can keep the views of one image on one side. View 0 is
the image itself; views 1 .. N-1 are augmented.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ViewSettings:
    """The augmentation: torchvision's ``RandomResizedCrop`` sampling (area ``scale``, aspect
    ``ratio`` log-uniform, 10 tries then the centre crop) and a flip with probability 0.5."""

    views: int = 1
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ValueError(f"views: {self.views} must be >= 1")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"view_scale: {list(self.scale)} must satisfy 0 < min <= max <= 1")


def crop_box(
    width: int, height: int, rng: np.random.Generator, settings: ViewSettings
) -> tuple[int, int, int, int]:
    """A random-resized-crop box (left, top, right, bottom) inside a ``width`` x ``height`` image."""
    area = width * height
    log_lo, log_hi = math.log(settings.ratio[0]), math.log(settings.ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*settings.scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    # Fall back to the largest centre crop within the ratio range, as torchvision does.
    in_ratio = width / height
    if in_ratio < settings.ratio[0]:
        w, h = width, round(width / settings.ratio[0])
    elif in_ratio > settings.ratio[1]:
        w, h = round(height * settings.ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def make_view(img: Image.Image, key: str, view: int, settings: ViewSettings) -> Image.Image:
    """View ``view`` of ``img`` (view 0: the image itself); ``key`` names the image stably
    (its path relative to the dataset root), so a view does not depend on what else is listed."""
    if view == 0:
        return img
    rng = np.random.default_rng([settings.seed, zlib.crc32(key.encode("utf-8")), view])
    out = img.crop(crop_box(img.width, img.height, rng, settings))
    if settings.flip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out
