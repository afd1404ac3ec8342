"""Config of the built-in procedural ``shapes`` dataset, and its class tree. Light: stdlib only.

The tree lives here (not in the implementation module) so that ``saebench validate`` can check
a suite's ``classes`` list without importing numpy, PIL or torch.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import ClassVar, Literal

from saebench_vision.config import FieldValueError, option

SHAPE_TREE: tuple[tuple[str, str | None], ...] = (
    ("shape", None),
    ("polygon", "shape"),
    ("triangle", "polygon"),
    ("equilateral-triangle", "triangle"),
    ("right-triangle", "triangle"),
    ("quadrilateral", "polygon"),
    ("parallelogram", "quadrilateral"),
    ("square", "parallelogram"),
    ("rectangle", "parallelogram"),
    ("diamond", "parallelogram"),
    ("trapezoid", "quadrilateral"),
    ("pentagon", "polygon"),
    ("hexagon", "polygon"),
    ("star", "polygon"),
    ("round", "shape"),
    ("oval", "round"),
    ("circle", "oval"),
    ("ellipse", "oval"),
    ("ring", "round"),
    ("crescent", "round"),
    ("line-figure", "shape"),
    ("crossing", "line-figure"),
    ("plus", "crossing"),
    ("cross", "crossing"),
    ("arrow", "line-figure"),
    ("zigzag", "line-figure"),
    ("heart", "shape"),
)
"""``(node, parent)`` for every node, parents before children. Leaves sit at depths 1 to 4
(``heart`` 1; ``pentagon``, ``ring``, ``arrow`` ... 2; ``circle``, ``plus``, ``trapezoid`` ... 3;
``square``, ``rectangle``, ``diamond`` 4) so that, as in WordNet, LCH heights vary."""

_PARENTS = {node: parent for node, parent in SHAPE_TREE}
LEAF_CLASSES: tuple[str, ...] = tuple(
    node for node, _ in SHAPE_TREE if node not in set(_PARENTS.values())
)
"""The leaf classes in their fixed order (the order of ``classes()`` and of label indices)."""

SPLITS: tuple[str, ...] = (
    "train",
    "val",
    "sketch",
    "rendition",
    "corruption",
    "ood-near",
    "ood-far",
)


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """One split of the procedural shapes dataset (see :class:`ShapesDataset`)."""

    modality: ClassVar[str] = "image"

    split: Literal["train", "val", "sketch", "rendition", "corruption", "ood-near", "ood-far"] = (
        option(
            "train",
            "train/val: in-distribution (solid fills on plain, gradient or noise backgrounds); "
            "sketch: dark outlines on light paper; rendition: patterned fills unseen in train; "
            "corruption: in-distribution images with noise, blur and JPEG artefacts (these three "
            "keep the labels); ood-near: novel shapes, unlabelled; ood-far: textures, no shapes",
        )
    )
    size: int = option(1000, "number of images in the split (classes stay balanced)")
    image_size: int = option(128, "side of the square RGB images, in pixels")
    seed: int = option(0, "base seed; item i depends only on (seed, split, i)")
    classes: list[str] | None = option(
        None, "restrict to these leaf classes (default: all 18); the hierarchy is pruned to match"
    )
    scale: tuple[float, float] = option(
        (0.35, 0.85), "range of a shape's diameter as a fraction of the image side"
    )
    margin: float = option(
        0.1,
        "keep this fraction of the side free around a shape when it fits, so a model's centre "
        "crop (e.g. 128 of 160 px cuts 10% per side) does not cut the shape",
    )
    severity: int = option(3, "corruption split only: strength of noise, blur and JPEG, 1 to 5")
    supersample: int = option(2, "draw masks at this multiple of image_size, then box-downsample")

    def __post_init__(self) -> None:
        if self.size < 1:
            raise FieldValueError("size", self.size, "at least 1")
        if self.image_size < 16:
            raise FieldValueError("image_size", self.image_size, "at least 16 pixels")
        lo, hi = self.scale
        if not 0.05 <= lo <= hi <= 1.0:
            raise FieldValueError("scale", self.scale, "[min, max] with 0.05 <= min <= max <= 1")
        if not 0.0 <= self.margin < 0.5:
            raise FieldValueError("margin", self.margin, "at least 0 and below 0.5")
        if not 1 <= self.severity <= 5:
            raise FieldValueError("severity", self.severity, "between 1 and 5")
        if not 1 <= self.supersample <= 4:
            raise FieldValueError("supersample", self.supersample, "between 1 and 4")
        if self.classes is not None:
            if len(self.classes) < 1:
                raise FieldValueError(
                    "classes", self.classes, "a non-empty list (leave it out to use all classes)"
                )
            for name in self.classes:
                if name not in LEAF_CLASSES:
                    close = difflib.get_close_matches(str(name), LEAF_CLASSES, n=1)
                    hint = f" Did you mean: {close[0]}?" if close else ""
                    raise FieldValueError(
                        "classes",
                        self.classes,
                        f"a list of leaf classes of `shapes` ({name!r} is not one.{hint} "
                        f"Leaves: {', '.join(LEAF_CLASSES)})",
                    )
            if len(set(self.classes)) != len(self.classes):
                raise FieldValueError("classes", self.classes, "a list naming each class once")
