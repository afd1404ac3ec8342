"""Unlabelled image folders: OpenOOD's near-OOD (SSB-hard, NINCO) and far-OOD (iNaturalist,
Textures, OpenImage-O) sets, or any folder of images."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from saebench_vision_plugins.datasets.configs import ImageFolderConfig
from saebench_vision_plugins.datasets.imagenet import (
    ImageFiles,
    check_distinct,
    check_pixel_limit,
    drop_bad_files,
    list_images,
    view_settings,
)

from saebench_vision.errors import DatasetError
from saebench_vision.interfaces import files_fingerprint


class ImageFolderDataset(ImageFiles):
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
