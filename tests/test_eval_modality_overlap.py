"""The modality-overlap evaluator (paper Fig. 6) against hand computations and planted sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from multimodal_helpers import LabelledSplit, context, entry, relu_identity_sae
from PIL import Image
from saebench_vision_plugins.evaluators.modality_overlap import (
    ModalityOverlapEvaluator,
    class_sums,
    derangements,
    mean_overlap_p_value,
    modality_ratio,
    overlap_matrices,
    per_class_p_values,
    top_sets,
)
from saebench_vision_plugins.evaluators.multimodal_configs import ModalityOverlapConfig
from scipy import stats

from saebench_vision.errors import ConfigError, DatasetError
from saebench_vision.interfaces import ClassInfo


def test_overlap_with_itself_is_one_and_with_disjoint_set_zero() -> None:
    a = np.zeros((2, 10), dtype=bool)
    a[0, [1, 2, 3]] = True
    a[1, [6, 7]] = True
    jaccard, coefficient = overlap_matrices(a, a)
    assert jaccard[0, 0] == 1 and jaccard[1, 1] == 1 and coefficient[0, 0] == 1
    assert jaccard[0, 1] == 0 and coefficient[1, 0] == 0  # disjoint planted sets


def test_overlap_by_hand() -> None:
    a = np.zeros((1, 8), dtype=bool)
    b = np.zeros((1, 8), dtype=bool)
    a[0, [0, 1, 2, 3]] = True
    b[0, [2, 3, 4]] = True
    jaccard, coefficient = overlap_matrices(a, b)
    assert jaccard[0, 0] == pytest.approx(2 / 5)  # |{2,3}| / |{0..4}|
    assert coefficient[0, 0] == pytest.approx(2 / 3)  # / min(4, 3)
    empty = np.zeros((1, 8), dtype=bool)
    assert overlap_matrices(empty, empty)[0][0, 0] == 0


def test_top_sets_keep_the_k_highest_positive_scores() -> None:
    scores = np.array([[0.1, 0.9, 0.0, 0.5, 0.3], [0.0, 0.0, 0.2, 0.0, 0.0]])
    chosen = top_sets(scores, 2)
    assert np.nonzero(chosen[0])[0].tolist() == [1, 3]
    assert np.nonzero(chosen[1])[0].tolist() == [2]  # zeros never count as "activated"


def test_per_class_p_value_by_hand() -> None:
    overlap = np.array([[0.5, 0.1, 0.6], [0.2, 0.3, 0.3], [0.0, 0.0, 0.0]])
    # class 0: one other text side reaches 0.5; class 1: one ties 0.3; class 2: all tie at 0.
    assert per_class_p_values(overlap).tolist() == pytest.approx([2 / 3, 2 / 3, 1.0])


def _random_sets(rng: np.random.Generator, c: int, d: int, k: int) -> np.ndarray:
    out = np.zeros((c, d), dtype=bool)
    for row in out:
        row[rng.choice(d, k, replace=False)] = True
    return out


def test_p_values_small_on_planted_shared_sets_and_uniform_on_independent_ones() -> None:
    rng = np.random.default_rng(0)
    c, d, k = 40, 400, 12
    image = _random_sets(rng, c, d, k)
    # Planted: each class's text side shares half its features with its own image side.
    text = _random_sets(rng, c, d, k)
    for i in range(c):
        own = np.nonzero(image[i])[0][: k // 2]
        text[i, np.nonzero(text[i])[0][: k // 2]] = False
        text[i, own] = True
    planted, _ = overlap_matrices(image, text)
    assert per_class_p_values(planted).max() <= 2 / c
    p_mean, _ = mean_overlap_p_value(planted, 500, rng)
    assert p_mean == pytest.approx(1 / 501)
    # Independent sides: per-class p-values are roughly uniform on {1/C, ..., 1} (ties among
    # integer intersection sizes make them conservative: never too small); the mean-overlap
    # p-value averages over classes, so it is nearly continuous and uniform.
    pooled, means = [], []
    for _ in range(30):
        independent, _ = overlap_matrices(
            _random_sets(rng, c, 1000, 100), _random_sets(rng, c, 1000, 100)
        )
        pooled.append(per_class_p_values(independent))
        means.append(mean_overlap_p_value(independent, 200, rng)[0])
    pooled_p = np.concatenate(pooled)
    assert 0.45 < pooled_p.mean() < 0.62
    grid = np.linspace(0.05, 0.95, 19)
    ecdf = (pooled_p[:, None] <= grid[None, :]).mean(0)
    assert np.all(ecdf <= grid + 0.02) and np.all(ecdf >= grid - 0.15)
    assert stats.kstest(means, "uniform").pvalue > 0.001
    assert 0.3 < float(np.mean(means)) < 0.7


def test_derangements_have_no_fixed_points() -> None:
    perms = derangements(5, 300, np.random.default_rng(1))
    assert not (perms == np.arange(5)).any()
    assert all(sorted(p) == list(range(5)) for p in perms.tolist())
    assert len({tuple(p) for p in perms.tolist()}) == 44  # all derangements of 5 occur


def test_modality_ratio_by_hand() -> None:
    ratio, active = modality_ratio(np.array([0.3, 0.0, 0.1, 0.0]), np.array([0.1, 0.2, 0.1, 0.0]))
    assert active.tolist() == [True, True, True, False]
    assert ratio[:3].tolist() == pytest.approx([0.75, 0.0, 0.5])
    assert np.isnan(ratio[3])


def test_class_sums_match_a_numpy_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 6))
    labels = rng.integers(0, 3, 50)
    acts = entry(tmp_path, "a", x, np.arange(50), labels)
    sums = class_sums(acts, relu_identity_sae(6), 3, batch_size=7, device="cpu")
    z = np.maximum(x.astype(np.float32), 0)
    for c in range(3):
        np.testing.assert_allclose(sums.sums[c], z[labels == c].sum(0), rtol=1e-5)
        np.testing.assert_array_equal(sums.fires[c], (z[labels == c] > 0).sum(0))
        assert sums.tokens[c] == (labels == c).sum()


def _planted_context(tmp_path: Path, *, drop_text_class: bool = False):
    """Three classes over 30 features; class c fires features 10c..10c+3 on both sides, plus
    side-specific noise; image responses are twice as long as text answers."""
    rng = np.random.default_rng(3)
    d, classes = 30, ["cat", "dog", "owl"]

    def side(tokens_per_item: int, items_per_class: int, offset: int, n_classes: int):
        rows, items, labels = [], [], []
        for c in range(n_classes):
            for j in range(items_per_class):
                item = c * items_per_class + j
                for _ in range(tokens_per_item):
                    x = np.full(d, -1.0)
                    x[10 * c : 10 * c + 4] = 2.0 + rng.random(4)
                    x[10 * c + offset + rng.integers(0, 2)] = 0.5
                    rows.append(x)
                    items.append(item)
                    labels.append(c)
        return np.array(rows), np.array(items), np.array(labels)

    img = side(6, 2, 4, 3)
    txt = side(3, 1, 6, 2 if drop_text_class else 3)
    acts = {
        ("val", "lm.1"): entry(tmp_path, "img", *img, responses={0: "a furry animal"}),
        ("questions", "lm.1"): entry(tmp_path, "txt", *txt, responses={0: "A cat is a pet."}),
    }
    datasets = {
        "val": LabelledSplit([0, 0, 1, 1, 2, 2], classes, "image-text"),
        "questions": LabelledSplit([0, 1, 2], classes, "text"),
    }
    splits = {"train": "train", "val": "eval", "questions": "eval"}
    return context(
        tmp_path,
        acts=acts,
        datasets=datasets,
        splits=splits,
        sae=relu_identity_sae(d),
        layer="lm.1",
    )


def test_evaluator_on_planted_classes(tmp_path: Path) -> None:
    ctx = _planted_context(tmp_path)
    cfg = ModalityOverlapConfig(top_fraction=4 / 30, permutations=100, device="cpu")
    records = {r.metric: r for r in ModalityOverlapEvaluator(cfg).evaluate(ctx)}
    assert records["top_k"].value == 4
    assert records["jaccard"].value == 1.0 and records["overlap_coefficient"].value == 1.0
    assert records["null_jaccard"].value == 0.0
    assert records["n_classes"].value == 3
    # 3 classes have 2 derangements, both with mean overlap 0 < 1.
    assert records["p_value"].value == pytest.approx(1 / 101)
    # Per class p = 1/3 (nothing else reaches the own overlap): none beats alpha = 0.05 with
    # only three classes, which is what an exact null says.
    assert records["beats_null_fraction"].value == 0.0
    # Shared features: 12 class features fire on every token of their class on both sides
    # (ratio 0.5 after normalising by token counts); 6 image-only and 6 text-only noise ones.
    assert records["shared_feature_fraction"].value == pytest.approx(12 / 24)
    assert records["image_only_fraction"].value == pytest.approx(6 / 24)
    assert records["text_only_fraction"].value == pytest.approx(6 / 24)
    figure = json.loads((ctx.output_dir / "fig6.json").read_text())
    cat = figure["classes"][0]
    assert cat["id"] == "cat" and cat["shared"] == [0, 1, 2, 3]
    assert cat["image_response"] == "a furry animal" and cat["text_response"] == "A cat is a pet."
    assert cat["image_tokens"] == 12 and cat["text_tokens"] == 3
    with Image.open(ctx.output_dir / "fig6.png") as png:
        pixels = np.asarray(png.convert("RGB"))
    label_width = 8 * len("cat") + 8
    assert pixels[2 + 5, label_width + 3 * 12 + 5].tolist() == [250, 220, 30]  # 4th: shared
    assert pixels.shape == (3 * 12 + 4, label_width + 4 * 12 + 4, 3)  # 3 classes, 4 features
    lines = (ctx.output_dir / "responses-questions.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        {"item": 0, "class": "cat", "text": "A cat is a pet."}
    ]


def test_baseline_scores_the_raw_neurons(tmp_path: Path) -> None:
    ctx = _planted_context(tmp_path).with_sae(None, "")
    cfg = ModalityOverlapConfig(top_fraction=4 / 30, permutations=100, device="cpu")
    records = {r.metric: r.value for r in ModalityOverlapEvaluator(cfg).baseline(ctx)}
    # The planted neurons are the features themselves (negative values never count as active).
    assert records["jaccard"] == 1.0 and records["null_jaccard"] == 0.0
    assert records["shared_feature_fraction"] == pytest.approx(12 / 24)


def test_class_without_items_on_one_side(tmp_path: Path) -> None:
    ctx = _planted_context(tmp_path, drop_text_class=True)
    cfg = ModalityOverlapConfig(top_fraction=4 / 30, permutations=10, device="cpu")
    with pytest.raises(DatasetError, match=r"class 'owl' \(owl\) has no text items") as err:
        ModalityOverlapEvaluator(cfg).evaluate(ctx)
    assert "\n" not in str(err.value)
    image_side = _planted_context(tmp_path / "image")
    image_side.dataset("val")._classes.append(ClassInfo("emu", "emu"))  # no images of emus
    image_side.dataset("questions")._classes.append(ClassInfo("emu", "emu"))
    with pytest.raises(DatasetError, match=r"class 'emu' \(emu\) has no image items"):
        ModalityOverlapEvaluator(cfg).evaluate(image_side)
    skip = ModalityOverlapConfig(top_fraction=4 / 30, permutations=10, missing_classes="skip")
    records = {r.metric: r.value for r in ModalityOverlapEvaluator(skip).evaluate(ctx)}
    assert records["n_classes"] == 2 and records["skipped_classes"] == 1


def test_bad_splits_and_foreign_sae(tmp_path: Path) -> None:
    ctx = _planted_context(tmp_path)
    with pytest.raises(ConfigError, match="is text-only"):
        ModalityOverlapEvaluator(
            ModalityOverlapConfig(image_split="questions", text_split="questions")
        ).evaluate(ctx)
    with pytest.raises(ConfigError, match="has images"):
        ModalityOverlapEvaluator(ModalityOverlapConfig(text_split="val")).evaluate(ctx)
    with pytest.raises(ConfigError, match="no split 'nope'"):
        ModalityOverlapEvaluator(ModalityOverlapConfig(image_split="nope")).evaluate(ctx)
    foreign = ctx.with_sae(relu_identity_sae(16), "other")
    with pytest.raises(ConfigError, match="an SAE from another model or layer"):
        ModalityOverlapEvaluator(ModalityOverlapConfig()).evaluate(foreign)
