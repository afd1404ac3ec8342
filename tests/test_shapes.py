"""The procedural ``shapes`` dataset: determinism, splits, balanced labels, the tree, and that
labels carry signal a linear model can find."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image
from saebench_vision_plugins.datasets.shapes import (
    GEOMETRY,
    NOVEL_GEOMETRY,
    ShapesDataset,
    contact_sheet,
)
from saebench_vision_plugins.datasets.shapes_config import LEAF_CLASSES, SPLITS, ShapesConfig

from saebench_vision.config import build_config
from saebench_vision.errors import ConfigError


def make(**kwargs: object) -> ShapesDataset:
    return ShapesDataset(ShapesConfig(**kwargs))  # type: ignore[arg-type]


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) / 255


def test_every_leaf_has_geometry_and_novel_shapes_are_new() -> None:
    assert set(GEOMETRY) == set(LEAF_CLASSES)
    assert len(LEAF_CLASSES) == 18
    assert not set(NOVEL_GEOMETRY) & set(LEAF_CLASSES)


@pytest.mark.parametrize("split", SPLITS)
def test_items_are_deterministic_and_independent_of_size(split: str) -> None:
    small, large = make(split=split, size=5), make(split=split, size=50)
    again = make(split=split, size=5)
    for i in (0, 3, 4):
        a = np.asarray(small[i])
        assert np.array_equal(a, np.asarray(again[i]))
        assert np.array_equal(a, np.asarray(large[i]))
    assert not np.array_equal(np.asarray(small[0]), np.asarray(small[1]))
    other_seed = make(split=split, size=5, seed=1)
    assert not np.array_equal(np.asarray(small[0]), np.asarray(other_seed[0]))
    img = small[2]
    assert img.mode == "RGB" and img.size == (128, 128)


def test_image_size_and_indexing() -> None:
    ds = make(split="val", size=4, image_size=64)
    assert len(ds) == 4 and ds[0].size == (64, 64)
    assert np.array_equal(np.asarray(ds[-1]), np.asarray(ds[3]))
    with pytest.raises(IndexError):
        ds[4]
    assert [np.asarray(x).shape for x in ds] == [(64, 64, 3)] * 4  # iteration stops


def test_pickles_and_renders_the_same() -> None:
    ds = make(split="rendition", size=3)
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(np.asarray(ds[1]), np.asarray(clone[1]))


def test_train_and_val_differ_and_corruption_is_noisier() -> None:
    train, val = make(split="train", size=4), make(split="val", size=4)
    assert all(not np.array_equal(np.asarray(train[i]), np.asarray(val[i])) for i in range(4))

    def roughness(ds: ShapesDataset) -> float:
        # mean absolute difference of horizontal neighbours: high for noise and JPEG blocks
        return float(np.mean([np.abs(np.diff(pixels(ds[i]), axis=1)).mean() for i in range(12)]))

    clean, mild, severe = (
        make(split="train", size=12),
        make(split="corruption", size=12, severity=1),
        make(split="corruption", size=12, severity=5),
    )
    assert roughness(severe) > roughness(mild) > roughness(clean)


def test_sketch_is_mostly_light_with_dark_strokes() -> None:
    ds = make(split="sketch", size=18)
    for i in range(len(ds)):
        grey = pixels(ds[i]).mean(axis=2)
        assert (grey > 0.75).mean() > 0.8, f"sketch item {i} is not mostly light paper"
        assert grey.min() < 0.5, f"sketch item {i} has no dark stroke"
        assert pixels(ds[i]).std(axis=2).mean() < 0.05  # nearly grey, no colour fill


def test_rendition_fills_are_patterned() -> None:
    # a solid fill has few distinct colours inside the shape; rendition fills mix two or more
    train, rendition = make(split="train", size=18), make(split="rendition", size=18)

    def centre_spread(ds: ShapesDataset) -> float:
        spreads = []
        for i in range(len(ds)):
            px = pixels(ds[i])
            spreads.append(float(px[48:80, 48:80].std(axis=(0, 1)).mean()))
        return float(np.median(spreads))

    assert centre_spread(rendition) > centre_spread(train)


def test_labels_are_balanced_and_match_items() -> None:
    ds = make(split="train", size=18 * 5 + 7)
    labels = ds.labels()
    assert labels is not None and labels.dtype == np.int64 and len(labels) == len(ds)
    counts = np.bincount(labels[: 18 * 5], minlength=18)
    assert (counts == 5).all()
    assert len(set(labels[18 * 5 :].tolist())) == 7
    assert [ds.label(i) for i in range(len(ds))] == labels.tolist()
    # blocks are shuffled: even indices do not hold only even classes
    assert len(set(labels[::2].tolist())) > 9
    assert np.array_equal(make(split="train", size=18).labels(), labels[:18])
    classes = ds.classes()
    assert classes is not None and [c.id for c in classes] == list(LEAF_CLASSES)
    assert classes[0].name == "equilateral triangle"


@pytest.mark.parametrize("split", ["sketch", "rendition", "corruption", "val"])
def test_shifted_splits_keep_the_label_set(split: str) -> None:
    ds = make(split=split, size=36)
    assert ds.classes() == make(split="train", size=1).classes()
    labels = ds.labels()
    assert labels is not None and (np.bincount(labels) == 2).all()


@pytest.mark.parametrize("split", ["ood-near", "ood-far"])
def test_ood_splits_are_unlabelled(split: str) -> None:
    ds = make(split=split, size=3)
    assert ds.labels() is None and ds.classes() is None and ds.hierarchy() is None
    assert ds[0].size == (128, 128)


def _depths(tree: dict[str, list[str]]) -> dict[str, int]:
    def depth(node: str) -> int:
        return 0 if not tree[node] else 1 + depth(tree[node][0])

    return {node: depth(node) for node in tree}


def test_hierarchy_is_a_tree_over_every_leaf() -> None:
    tree = make(size=1).hierarchy()
    assert tree is not None
    roots = [node for node, parents in tree.items() if not parents]
    assert roots == ["shape"]
    assert all(len(parents) <= 1 and all(p in tree for p in parents) for parents in tree.values())
    depths = _depths(tree)  # recursion terminates only if there is no cycle
    children = {p for parents in tree.values() for p in parents}
    assert sorted(set(tree) - children) == sorted(LEAF_CLASSES)
    assert {depths[leaf] for leaf in LEAF_CLASSES} == {1, 2, 3, 4}
    assert depths["square"] == 4 and depths["heart"] == 1 and depths["circle"] == 3


def test_classes_option_restricts_and_prunes() -> None:
    ds = make(split="train", size=6, classes=["circle", "square", "ellipse"])
    assert [c.id for c in ds.classes() or []] == ["square", "circle", "ellipse"]  # fixed order
    tree = ds.hierarchy()
    assert tree is not None
    assert set(tree) == {
        "square", "parallelogram", "quadrilateral", "polygon", "circle", "ellipse", "oval",
        "round", "shape",
    }  # fmt: skip
    labels = ds.labels()
    assert labels is not None and sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_config_validation_messages() -> None:
    with pytest.raises(ConfigError, match="Did you mean: circle"):
        build_config(ShapesConfig, {"classes": ["circel"]}, where="suite.yaml: datasets.train.args")
    with pytest.raises(ConfigError, match="severity"):
        build_config(ShapesConfig, {"severity": 9})
    with pytest.raises(ConfigError, match="split"):
        build_config(ShapesConfig, {"split": "test"})
    cfg = build_config(ShapesConfig, {"split": "sketch", "scale": [0.4, 0.6]})
    assert cfg.scale == (0.4, 0.6)


def test_dataset_registered_by_reference() -> None:
    from saebench_vision_plugins.datasets import hooks

    ref = hooks.register_datasets()["shapes"]
    assert ref.target.endswith("shapes:ShapesDataset")
    assert ref.config is not None and ref.config.endswith("shapes_config:ShapesConfig")
    assert ShapesDataset.name == "shapes"


def test_logistic_regression_on_pixels_beats_chance() -> None:
    """The labels mean something: a linear model on tiny grey thumbnails of edge maps finds
    the class well above chance (1/6) on held-out items."""
    from sklearn.linear_model import LogisticRegression

    picked = ["circle", "square", "star", "plus", "ring", "arrow"]

    def features(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        ds = make(split=split, size=n, image_size=32, classes=picked, scale=(0.7, 0.9))
        feats = []
        for i in range(n):
            grey = pixels(ds[i]).mean(axis=2)
            edges = np.hypot(np.diff(grey, axis=0)[:, :-1], np.diff(grey, axis=1)[:-1])
            hist = np.histogram(edges, bins=8, range=(0, 0.5))[0] / edges.size
            # centred radial profile of the edge energy: invariant to colour and rotation
            yy, xx = np.mgrid[0:31, 0:31]
            cy, cx = np.unravel_index(np.argsort(edges, axis=None)[-40:], edges.shape)
            r = np.hypot(yy - cy.mean(), xx - cx.mean())
            prof = np.bincount(np.minimum(r, 15).astype(int).ravel(), edges.ravel(), 16)
            feats.append(np.concatenate([hist, prof / (prof.sum() + 1e-6), [edges.mean()]]))
        labels = ds.labels()
        assert labels is not None
        return np.array(feats), labels

    x_train, y_train = features("train", 360)
    x_test, y_test = features("val", 120)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    clf = LogisticRegression(max_iter=2000).fit((x_train - mu) / sd, y_train)
    accuracy = clf.score((x_test - mu) / sd, y_test)
    assert accuracy > 0.4, f"held-out accuracy {accuracy:.2f} is near chance (0.17)"


def test_contact_sheet(tmp_path_factory: pytest.TempPathFactory) -> None:
    sheet = contact_sheet(per_split=4, image_size=64)
    assert sheet.size == (4 * 64, len(SPLITS) * 64)
    sheet.save(tmp_path_factory.mktemp("sheet") / "shapes_sheet.png")


def test_shapes_stay_clear_of_the_margin() -> None:
    """With margin 0.1 a 128-of-160 centre crop never cuts a shape that fits inside it."""
    from saebench_vision_plugins.datasets.shapes import _shape_mask

    cfg = ShapesConfig(scale=(0.3, 0.8), margin=0.1, image_size=64, supersample=2)
    edge = round(0.1 * 128) - 1  # one supersampled pixel of slack for rasterisation
    for i in range(60):
        rng = np.random.default_rng(i)
        ops, base, jitter = GEOMETRY[LEAF_CLASSES[i % len(LEAF_CLASSES)]](rng)
        mask = _shape_mask(ops, rng, cfg, base, jitter)
        assert mask.any()
        inner = mask[edge:-edge, edge:-edge]
        assert inner.sum() == mask.sum(), (
            f"{LEAF_CLASSES[i % len(LEAF_CLASSES)]} crosses the margin"
        )
