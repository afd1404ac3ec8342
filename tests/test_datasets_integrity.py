"""Folder datasets: symlink loops and duplicates, decompression bombs, unreadable files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from saebench_vision_plugins.datasets.configs import ImageFolderConfig, ImageNetFolderConfig
from saebench_vision_plugins.datasets.folders import ImageFolderDataset
from saebench_vision_plugins.datasets.imagenet import ImageNetFolderDataset

from saebench_vision.config import build_config
from saebench_vision.errors import DatasetError

WNIDS = ("n01440764", "n01443537")


def _png(path: Path, value: int, size: tuple[int, int] = (4, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def _classes(root: Path, per_class: int = 3) -> None:
    for c, wnid in enumerate(WNIDS):
        for i in range(per_class):
            _png(root / wnid / f"{i}.png", 40 * c + i)


def _imagenet(root: Path, **args: object) -> ImageNetFolderDataset:
    return ImageNetFolderDataset(build_config(ImageNetFolderConfig, {"root": str(root), **args}))


def test_symlink_loop_in_class_folder_is_an_error_naming_the_link(tmp_path: Path) -> None:
    _classes(tmp_path)
    os.symlink(tmp_path / WNIDS[0], tmp_path / WNIDS[0] / "again")
    with pytest.raises(DatasetError, match=r"again: a link back to .*symlink loop"):
        _imagenet(tmp_path)


def test_linked_class_folder_elsewhere_is_followed_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _classes(store)
    root = tmp_path / "root"
    root.mkdir()
    for wnid in WNIDS:
        os.symlink(store / wnid, root / wnid)
    ds = _imagenet(root)
    assert len(ds) == 6
    assert np.bincount(ds.labels()).tolist() == [3, 3]


def test_file_linked_into_two_classes_is_an_error(tmp_path: Path) -> None:
    _classes(tmp_path)
    os.symlink(tmp_path / WNIDS[0] / "0.png", tmp_path / WNIDS[1] / "x.png")
    with pytest.raises(DatasetError, match="same file"):
        _imagenet(tmp_path)


def test_folder_reached_twice_in_image_folder_is_an_error(tmp_path: Path) -> None:
    _classes(tmp_path)
    os.symlink(tmp_path / WNIDS[0], tmp_path / "copy")
    with pytest.raises(DatasetError, match="same folder"):
        ImageFolderDataset(build_config(ImageFolderConfig, {"root": str(tmp_path)}))


def test_decompression_bomb_names_file_and_option(tmp_path: Path) -> None:
    _png(tmp_path / "big.png", 0, size=(300, 300))
    ds = ImageFolderDataset(
        build_config(ImageFolderConfig, {"root": str(tmp_path), "max_image_pixels": 1000})
    )
    with pytest.raises(DatasetError, match=r"big\.png: image too large.*max_image_pixels"):
        ds[0]
    # Raised, the same file loads; and skipping never hides a too-large file.
    big = ImageFolderDataset(
        build_config(ImageFolderConfig, {"root": str(tmp_path), "max_image_pixels": 10**6})
    )
    assert big[0].size == (300, 300)
    with pytest.raises(DatasetError, match="max_image_pixels"):
        ImageFolderDataset(
            build_config(
                ImageFolderConfig,
                {"root": str(tmp_path), "max_image_pixels": 1000, "on_bad_file": "skip"},
            )
        )


def test_corrupt_file_errors_by_default_and_skip_counts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _classes(tmp_path)
    (tmp_path / WNIDS[1] / "1.png").write_bytes(b"not an image at all")
    good = tmp_path / WNIDS[0] / "2.png"
    good.write_bytes(good.read_bytes()[:40])  # truncated inside the image data
    strict = _imagenet(tmp_path)
    with pytest.raises(DatasetError, match=r"2\.png: cannot read image.*on_bad_file: skip"):
        [strict[i] for i in range(len(strict))]
    # A JPEG cut short passes PIL's verify; the end-of-image check finds it.
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    jpeg = tmp_path / WNIDS[1] / "3.jpg"
    Image.fromarray(noise).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:-200])
    ds = _imagenet(tmp_path, on_bad_file="skip")
    assert "skipped 3 unreadable image(s) of 7" in capsys.readouterr().err
    assert len(ds) == 4
    assert ds.labels().tolist() == [0, 0, 1, 1]
    assert [p.name for p in ds.files] == ["0.png", "1.png", "0.png", "2.png"]
    assert ds.metadata() == {"skipped_files": 3}
    assert all(ds[i].size == (4, 4) for i in range(len(ds)))


def test_skipped_count_is_kept_with_the_cache_entry(manager, tmp_path: Path) -> None:
    from saebench_vision.plan import ExtractStep
    from saebench_vision.steps import Workspace, extract_split
    from saebench_vision.suite import parse_suite

    images = tmp_path / "images"
    for i in range(3):
        _png(images / f"{i}.png", 60 * i, size=(32, 32))
    (images / "3.png").write_bytes(b"\x89PNG garbage")
    folder = {"plugin": "image-folder", "args": {"root": str(images), "on_bad_file": "skip"}}
    doc = {
        "output": str(tmp_path / "out"),
        "models": [
            {"plugin": "efficientnet-lite", "args": {"image_size": 32}, "layers": ["final"]}
        ],
        "datasets": {"train": folder, "val": folder | {"role": "eval"}},
        "saes": [{"plugin": "relu"}],
        "evaluators": [{"plugin": "reconstruction"}],
    }
    suite = parse_suite(doc, tmp_path / "s.yaml", manager.registry())
    ws = Workspace(suite, manager, cache_dir=tmp_path / "cache")
    keys = extract_split(ws, ExtractStep(suite.models[0], "train", ("final",)))
    entry = ws.cache.lookup(keys["final"])
    assert entry is not None and entry.n == 3
    assert entry.meta["dataset_meta"] == {"skipped_files": 1}
