"""ImageNet-layout folders: ImageNet-1k train/val, ImageNet-V2, -Sketch, -A and -R.

Class folders are named by WordNet id (``n01440764``; ImageNet, -Sketch, -A, -R) or by class
index in the standard ImageNet-1k order (``0`` .. ``999``; ImageNet-V2's layout). Class ids are
always WordNet ids, so splits with different class subsets (ImageNet-A/-R cover 200 classes)
map onto one another by id, and ``hierarchy()`` is None: WordNet applies.

The standard class order, the class names and the ImageNet-A/-R subsets come from the lists
shipped in the ``timm`` package (``timm/data/_info``), read as plain files.
"""

from __future__ import annotations

import os
from functools import cache, lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image
from saebench_vision_plugins.datasets.configs import ImageNetFolderConfig
from saebench_vision_plugins.datasets.hierarchy import is_wordnet_id

from saebench_vision.errors import DatasetError
from saebench_vision.interfaces import ClassInfo, Dataset, files_fingerprint

CLASS_LISTS = {
    "imagenet-1k": "imagenet_synsets.txt",
    "imagenet-a": "imagenet_a_synsets.txt",
    "imagenet-r": "imagenet_r_synsets.txt",
}


def _info_dir() -> Path:
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm comes with open_clip_torch
        raise DatasetError(
            "ImageNet class lists: the `timm` package is missing; pip install timm"
        ) from exc
    return Path(timm.__file__).parent / "data" / "_info"


@cache
def imagenet_class_list(name: str = "imagenet-1k") -> tuple[str, ...]:
    """WordNet ids of ``imagenet-1k`` (standard order), ``imagenet-a`` or ``imagenet-r``."""
    path = _info_dir() / CLASS_LISTS[name]
    if not path.is_file():
        raise DatasetError(
            f"{path}: ImageNet class list missing; reinstall timm (pip install -U timm)"
        )
    return tuple(path.read_text().split())


@lru_cache(maxsize=1)
def imagenet_class_names() -> dict[str, str]:
    """WordNet id -> the first lemma of its ImageNet class name (``n01440764`` -> ``tench``)."""
    path = _info_dir() / "imagenet_synset_to_lemma.txt"
    names = {}
    for line in path.read_text().splitlines():
        wnid, _, lemmas = line.partition("\t")
        names[wnid.strip()] = lemmas.split(",")[0].strip()
    return names


def list_images(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted by path."""
    exts = tuple(e.lower() for e in extensions)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found.extend(
            Path(dirpath) / f
            for f in filenames
            if f.lower().endswith(exts) and not f.startswith(".")
        )
    return sorted(found)


def load_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as RGB; unreadable files raise a one-line DatasetError."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"{path}: cannot read image ({exc}); remove or replace the file"
        ) from exc


class ImageNetFolderDataset(Dataset):
    """One ImageNet-style split read from class folders; items are PIL RGB images."""

    name: ClassVar[str] = "imagenet-folder"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = ImageNetFolderConfig

    def __init__(self, config: ImageNetFolderConfig) -> None:
        super().__init__(config)
        root = Path(config.root).expanduser()
        if not root.is_dir():
            raise DatasetError(
                f"imagenet-folder: root {str(root)!r} is not a folder; set args.root to the split's folder"
            )
        folders = sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not folders:
            raise DatasetError(
                f"imagenet-folder: {root} has no class folders; expected n01440764/... or 0/... sub-folders"
            )
        layout = config.layout
        if layout == "auto":
            layout = "index" if all(f.isdigit() for f in folders) else "wnid"
        standard = imagenet_class_list("imagenet-1k")
        if layout == "index":
            bad = [f for f in folders if not f.isdigit() or int(f) >= len(standard)]
            if bad:
                raise DatasetError(
                    f"imagenet-folder: {root / bad[0]} is not a class index 0..{len(standard) - 1} (layout: index)"
                )
            by_id = {standard[int(f)]: root / f for f in folders}
        else:
            bad = [f for f in folders if not is_wordnet_id(f)]
            if bad:
                raise DatasetError(
                    f"imagenet-folder: {root / bad[0]} is not named by a WordNet id like n01440764 (layout: wnid)"
                )
            by_id = {f: root / f for f in folders}
        if config.classes == "found":
            order = {wnid: i for i, wnid in enumerate(standard)}
            ids = sorted(by_id, key=lambda w: (order.get(w, len(order)), w))
        else:
            ids = list(imagenet_class_list(config.classes))
            missing = [w for w in ids if w not in by_id]
            if missing and not config.allow_missing_classes:
                raise DatasetError(
                    f"imagenet-folder: {root} lacks class folder {missing[0]} of {config.classes} "
                    f"({len(missing)} missing); add it or set allow_missing_classes: true"
                )
        names = imagenet_class_names()
        self._classes = [ClassInfo(w, names.get(w, w)) for w in ids]
        files: list[Path] = []
        labels: list[int] = []
        for index, wnid in enumerate(ids):
            if wnid not in by_id:
                continue
            images = list_images(by_id[wnid], config.extensions)[: config.max_per_class]
            files.extend(images)
            labels.extend([index] * len(images))
        if not files:
            raise DatasetError(
                f"imagenet-folder: no images with suffixes {', '.join(config.extensions)} under {root}"
            )
        self.root = root
        self.files = files
        self._labels = np.asarray(labels, dtype=np.int64)

    def fingerprint(self) -> str:
        """The listed files' paths, sizes and mtimes (see ``files_fingerprint``)."""
        return files_fingerprint(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Image.Image:
        return load_rgb(self.files[index])

    def labels(self) -> np.ndarray:
        return self._labels

    def classes(self) -> list[ClassInfo]:
        return list(self._classes)
