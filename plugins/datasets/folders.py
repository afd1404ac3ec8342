"""Unlabelled image folders: OpenOOD's near-OOD (SSB-hard, NINCO) and far-OOD (iNaturalist,
Textures, OpenImage-O) sets, or any folder of images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from saebench_vision_plugins.datasets.configs import ImageFolderConfig
from saebench_vision_plugins.datasets.imagenet import (
    check_distinct,
    check_pixel_limit,
    drop_bad_files,
    list_images,
    load_rgb,
    view_settings,
)
from saebench_vision_plugins.datasets.views import make_view

from saebench_vision.errors import DatasetError
from saebench_vision.interfaces import Dataset, files_fingerprint


class ImageFolderDataset(Dataset):
    """Every image under ``root`` (sorted), or those an OpenOOD-style image list names."""

    name: ClassVar[str] = "image-folder"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = ImageFolderConfig

    def __init__(self, config: ImageFolderConfig) -> None:
        super().__init__(config)
        root = Path(config.root).expanduser()
        if not root.is_dir():
            raise DatasetError(
                f"image-folder: root {str(root)!r} is not a folder; set args.root to the image folder"
            )
        if config.image_list is not None:
            files = self._from_list(root, Path(config.image_list).expanduser(), config.strip_prefix)
        else:
            files = list_images(root, config.extensions)
        check_pixel_limit("image-folder", config.max_image_pixels)
        check_distinct(files)
        self.skipped: list[Path] = []
        if config.on_bad_file == "skip":
            files, self.skipped = drop_bad_files("image-folder", files, config.max_image_pixels)
        if not files:
            raise DatasetError(
                f"image-folder: no images with suffixes {', '.join(config.extensions)} under {root}"
                + (f" ({len(self.skipped)} unreadable skipped)" if self.skipped else "")
            )
        if config.max_images is not None and len(files) > config.max_images:
            keep = np.linspace(0, len(files) - 1, config.max_images).round().astype(int)
            files = [files[i] for i in keep]
        self.root = root
        self.files = files
        self.views = view_settings(config)

    def metadata(self) -> dict[str, Any]:
        """How many listed images were skipped as unreadable (``on_bad_file: skip``)."""
        return {"skipped_files": len(self.skipped)}

    def fingerprint(self) -> str:
        """The listed files' paths, sizes and mtimes (see ``files_fingerprint``)."""
        return files_fingerprint(self.files)

    @staticmethod
    def _from_list(root: Path, listing: Path, strip: str) -> list[Path]:
        if not listing.is_file():
            raise DatasetError(
                f"image-folder: image_list {str(listing)!r} does not exist; fix args.image_list"
            )
        files = []
        for number, line in enumerate(listing.read_text().splitlines(), 1):
            if not line.strip():
                continue
            rel = line.split()[0]
            if strip and rel.startswith(strip):
                rel = rel[len(strip) :]
            path = root / rel
            if not path.is_file():
                raise DatasetError(
                    f"{listing}:{number}: {path} does not exist; check args.root and args.strip_prefix"
                )
            files.append(path)
        return files

    def __len__(self) -> int:
        return len(self.files) * self.views.views

    def __getitem__(self, index: int) -> Image.Image:
        image, view = divmod(index, self.views.views)
        path = self.files[image]
        return make_view(
            load_rgb(path, self.config.max_image_pixels, self.config.on_bad_file == "skip"),
            path.relative_to(self.root).as_posix(),
            view,
            self.views,
        )

    def groups(self) -> np.ndarray:
        """The source image of each item: the views of one image share a group."""
        return np.repeat(np.arange(len(self.files)), self.views.views)
