"""imagenet-folder on flat folders and the official validation layout; deterministic views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from saebench_vision_plugins.datasets.configs import ImageFolderConfig, ImageNetFolderConfig
from saebench_vision_plugins.datasets.folders import ImageFolderDataset
from saebench_vision_plugins.datasets.imagenet import ImageNetFolderDataset, imagenet_class_list

from saebench_vision.errors import DatasetError

STANDARD = imagenet_class_list("imagenet-1k")
TENCH, GOLDFISH, SHARK = STANDARD[0], STANDARD[1], STANDARD[2]


def _image(path: Path, seed: int, size: tuple[int, int] = (48, 36)) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _ds(root: Path, **kwargs: object) -> ImageNetFolderDataset:
    return ImageNetFolderDataset(ImageNetFolderConfig(root=str(root), **kwargs))  # type: ignore[arg-type]


def test_flat_wnid_named_files(tmp_path: Path) -> None:
    for i, name in enumerate(
        [f"{GOLDFISH}_goldfish.JPEG", f"{TENCH}_10026.JPEG", f"{TENCH}_tench.JPEG"]
    ):
        _image(tmp_path / name, i)
    ds = _ds(tmp_path)
    assert [c.id for c in ds.classes()] == [TENCH, GOLDFISH]  # standard order
    assert [p.name for p in ds.files] == [
        f"{TENCH}_10026.JPEG",
        f"{TENCH}_tench.JPEG",
        f"{GOLDFISH}_goldfish.JPEG",
    ]
    assert ds.labels().tolist() == [0, 0, 1]
    _image(tmp_path / "holiday.jpg", 9)
    with pytest.raises(DatasetError, match="holiday.jpg does not start with a WordNet id"):
        _ds(tmp_path)


def _val_folder(root: Path, n: int = 4) -> list[str]:
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, n + 1)]
    for i, name in enumerate(names):
        _image(root / name, i)
    return names


def test_official_val_with_loc_solution_csv(tmp_path: Path) -> None:
    names = _val_folder(tmp_path / "val")
    truth = [SHARK, TENCH, SHARK, GOLDFISH]
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text(
        "ImageId,PredictionString\n"
        + "".join(
            f"{Path(n).stem},{w} 1 2 3 4 {w} 5 6 7 8\n" for n, w in zip(names, truth, strict=True)
        )
        + "ILSVRC2012_val_00049999,n01440764 1 2 3 4\n"  # the full list covers more images
    )
    ds = _ds(tmp_path / "val", ground_truth=str(csv))
    got = {p.name: ds.classes()[label].id for p, label in zip(ds.files, ds.labels(), strict=True)}
    assert got == dict(zip(names, truth, strict=True))


def test_val_txt_with_standard_indices_and_missing_labels(tmp_path: Path) -> None:
    names = _val_folder(tmp_path / "val", 3)
    listing = tmp_path / "val.txt"
    listing.write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    ds = _ds(tmp_path / "val", ground_truth=str(listing))
    assert [c.id for c in ds.classes()] == [TENCH, GOLDFISH, SHARK]
    listing.write_text(f"{names[0]} 0\n")
    with pytest.raises(DatasetError, match="no label for ILSVRC2012_val_00000002.JPEG"):
        _ds(tmp_path / "val", ground_truth=str(listing))


def test_devkit_ground_truth_uses_meta_mat_ids(tmp_path: Path) -> None:
    from scipy.io import savemat

    names = _val_folder(tmp_path / "val", 3)
    # The devkit numbers classes in its own order: 1 is not the standard first class.
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    synsets = np.array(
        [
            (1, SHARK, "shark", 0),
            (2, TENCH, "tench", 0),
            (3, GOLDFISH, "goldfish", 0),
            (4, "n00001740", "entity", 3),
        ],
        dtype=dtype,
    )
    meta = tmp_path / "meta.mat"
    savemat(meta, {"synsets": synsets})
    truth = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text("2\n1\n3\n")
    with pytest.raises(DatasetError, match="set devkit_meta"):
        _ds(tmp_path / "val", ground_truth=str(truth))
    ds = _ds(tmp_path / "val", ground_truth=str(truth), devkit_meta=str(meta))
    got = {p.name: ds.classes()[label].id for p, label in zip(ds.files, ds.labels(), strict=True)}
    assert got == {names[0]: TENCH, names[1]: SHARK, names[2]: GOLDFISH}


def test_views_are_deterministic_crops_kept_together(tmp_path: Path) -> None:
    for i in range(3):
        _image(tmp_path / TENCH / f"{i}.png", i, size=(64, 40))
    _image(tmp_path / GOLDFISH / "0.png", 7, size=(64, 40))
    plain = _ds(tmp_path)
    ds = _ds(tmp_path, views=3)
    assert len(ds) == 3 * len(plain) == 12
    assert ds.labels().tolist() == np.repeat(plain.labels(), 3).tolist()
    assert ds.groups().tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert ds.identity() != plain.identity()
    for i in range(len(plain)):
        assert np.array_equal(np.asarray(ds[3 * i]), np.asarray(plain[i]))  # view 0: the image
        for v in (1, 2):
            view = ds[3 * i + v]
            share = view.width * view.height / (64 * 40)
            assert 0.3 <= share <= 1.0 and 3 / 4 - 0.1 <= view.width / view.height <= 4 / 3 + 0.1
    views = [np.asarray(ds[j]) for j in range(len(ds))]
    assert not any(np.array_equal(views[0], v) for v in views[1:3])
    # The same image gets the same views whatever else the folder holds.
    _image(tmp_path / TENCH / "00-new.png", 11, size=(64, 40))
    grown = _ds(tmp_path, views=3)
    j = [p.name for p in grown.files].index("0.png")
    for v in range(3):
        assert np.array_equal(np.asarray(grown[3 * j + v]), views[v])
    reseeded = _ds(tmp_path, views=3, view_seed=1)
    assert not np.array_equal(np.asarray(reseeded[3 * j + 1]), views[1])


def test_image_folder_views(tmp_path: Path) -> None:
    for i in range(2):
        _image(tmp_path / f"{i}.png", i)
    ds = ImageFolderDataset(ImageFolderConfig(root=str(tmp_path), views=2))
    assert len(ds) == 4 and ds.groups().tolist() == [0, 0, 1, 1]
    assert np.array_equal(np.asarray(ds[2]), np.asarray(Image.open(tmp_path / "1.png")))
    assert ds[3].size != (48, 36) or not np.array_equal(np.asarray(ds[3]), np.asarray(ds[2]))
