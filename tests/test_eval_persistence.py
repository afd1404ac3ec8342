"""The persistence evaluator (paper Fig. 7) on hand-made patch maps and planted features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from multimodal_helpers import LabelledSplit, context, entry, relu_identity_sae
from PIL import Image
from saebench_vision_plugins.evaluators.multimodal_configs import PersistenceConfig
from saebench_vision_plugins.evaluators.persistence import (
    CorrelationAccumulator,
    PersistenceEvaluator,
    grid_shape,
    overlay_png,
    patch_set_scores,
    sign_flip_p_value,
)

from saebench_vision.checkpoint import save_sae
from saebench_vision.errors import ConfigError
from saebench_vision.interfaces import EvalContext

P, D = 16, 8  # a 4 x 4 patch grid, 8 features per SAE


def test_patch_set_scores_on_hand_maps() -> None:
    # 2 x 2 grids, two feature pairs: (A = top row, B = right column) and (A = B = all).
    a = np.array([[1, 1], [1, 1], [0, 1], [0, 1]], dtype=bool)
    b = np.array([[0, 1], [1, 1], [0, 1], [1, 1]], dtype=bool)
    scores = patch_set_scores(a, b)
    assert scores["iou"].tolist() == pytest.approx([1 / 3, 1.0])  # {1} of {0, 1, 3}
    assert scores["persistence"].tolist() == pytest.approx([1 / 2, 1.0])
    assert scores["added"].tolist() == pytest.approx([1 / 2, 0.0])  # patch 3 is new at B
    none = patch_set_scores(np.zeros((4, 1), bool), np.zeros((4, 1), bool))
    assert np.isnan(none["iou"][0]) and np.isnan(none["persistence"][0])


def test_streaming_correlation_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.normal(size=(60, 4))
    y[:, 0] = 2 * x[:, 1] + 0.1 * y[:, 0]
    acc = CorrelationAccumulator(3, 4)
    acc.update(x[:25], y[:25])
    acc.update(x[25:], y[25:])
    reference = np.corrcoef(x.T, y.T)[:3, 3:]
    np.testing.assert_allclose(acc.correlation(), reference, atol=1e-10)
    constant = CorrelationAccumulator(1, 1)
    constant.update(np.ones((5, 1)), rng.normal(size=(5, 1)))
    assert constant.correlation()[0, 0] == 0.0


def test_sign_flip_p_value() -> None:
    rng = np.random.default_rng(1)
    assert sign_flip_p_value(np.full(12, 0.3), rng, 2000) == pytest.approx(1 / 2001)
    centred = rng.normal(size=40)
    centred -= centred.mean()
    assert 0.3 < sign_flip_p_value(centred, rng, 2000) < 0.7


def _planted(rng: np.random.Generator, perm: np.ndarray, images: int, extra: bool):
    """Projector latents with random active patches; layer-6 latents carry each projector
    feature f as feature perm[f] on the same patches, plus (``extra``) one added patch."""
    rows_a, rows_b, items, sets = [], [], [], []
    for image in range(images):
        a = np.full((P, D), -1.0)
        b = np.full((P, D), -1.0)
        per_feature = []
        for f in range(D):
            patches = set(rng.choice(P, int(rng.integers(2, 6)), replace=False).tolist())
            if rng.random() < 0.25:
                patches = set()  # some features stay silent on some images
            later = set(patches)
            if extra and patches:
                later.add(int(rng.choice(sorted(set(range(P)) - patches))))
            for p in patches:
                a[p, f] = 1.0 + rng.random()
            for p in later:
                b[p, perm[f]] = 1.0 + rng.random()
            per_feature.append((patches, later))
        rows_a.append(a)
        rows_b.append(b)
        items += [image] * P
        sets.append(per_feature)
    return np.concatenate(rows_a), np.concatenate(rows_b), np.array(items), sets


def _context(tmp_path: Path, *, extra: bool = True, layers=("projector", "lm.6")):
    rng = np.random.default_rng(4)
    perm = rng.permutation(D)
    train = _planted(rng, perm, 12, extra)
    val = _planted(rng, perm, 6, extra)
    acts = {
        ("train", "projector"): entry(tmp_path, "ta", train[0], train[2]),
        ("train", "lm.6"): entry(tmp_path, "tb", train[1], train[2]),
        ("val", "projector"): entry(tmp_path, "va", val[0], val[2]),
        ("val", "lm.6"): entry(tmp_path, "vb", val[1], val[2]),
    }
    pictures = [{"image": Image.new("RGB", (60, 40), (30 * i, 80, 160))} for i in range(6)]
    datasets = {
        "train": LabelledSplit([0] * 12, ["x"], "image-text"),
        "val": LabelledSplit([0] * 6, ["x"], "image-text", items=pictures),
        "questions": LabelledSplit([0], ["x"], "text"),
    }
    ctx = context(
        tmp_path,
        acts=acts,
        datasets=datasets,
        splits={"train": "train", "val": "eval", "questions": "eval"},
        sae=relu_identity_sae(D),
        layer="projector",
        layers=layers,
        partners={"lm.6": relu_identity_sae(D)},
    )
    return ctx, perm, val[3]


def test_matching_recovers_planted_features_and_scores_by_hand(tmp_path: Path) -> None:
    ctx, perm, sets = _context(tmp_path)
    cfg = PersistenceConfig(min_correlation=0.5, figures=2, device="cpu")
    records = {r.metric: r for r in PersistenceEvaluator(cfg).evaluate(ctx)}
    figure = json.loads((ctx.output_dir / "fig7.json").read_text())
    assert sorted((a, b) for a, b, _ in figure["pairs"]) == [(f, int(perm[f])) for f in range(D)]
    # By hand: per image, the mean over features active at the projector of |A|/|A ∪ B| etc.
    iou, added = [], []
    for per_feature in sets:
        active = [(a, b) for a, b in per_feature if a]
        iou.append(np.mean([len(a & b) / len(a | b) for a, b in active]))
        added.append(np.mean([len(b - a) / len(b) for a, b in active]))
    assert records["iou"].value == pytest.approx(np.mean(iou))
    assert records["persistence"].value == pytest.approx(1.0)
    assert records["added_patch_fraction"].value == pytest.approx(np.mean(added))
    assert records["iou_null"].value < records["iou"].value - 0.2
    assert records["n_images"].value == 6 and records["matched_features"].value == D
    pngs = sorted((ctx.output_dir / "fig7").glob("*.png"))
    assert len(pngs) == 2
    with Image.open(pngs[0]) as png:
        assert png.size[1] == 4 * 14 and png.size[0] > 4 * 4 * 14


def test_overlay_colours() -> None:
    a = np.zeros(P)
    b = np.zeros(P)
    a[[0, 1]] = 1.0  # patch 0 in both, patch 1 only at the projector, patch 2 only at layer 6
    b[[0, 2]] = 1.0
    png = np.asarray(overlay_png(Image.new("RGB", (40, 40), (0, 0, 0)), a, b, 0.0, 10))
    rows, cols = grid_shape(P)
    assert (rows, cols) == (4, 4)
    overlay = png[:, -40:]
    assert overlay[5, 5].tolist() == pytest.approx([175, 154, 21], abs=1)  # yellow: both
    assert overlay[5, 15, 0] > 150 and overlay[5, 15, 2] < 40  # red: projector only
    assert overlay[5, 25, 2] > 150 and overlay[5, 25, 0] < 40  # blue: layer 6 only
    assert overlay[35, 35].tolist() == [0, 0, 0]  # neither (black image, dimmed)


def test_layers_images_and_foreign_partner(tmp_path: Path) -> None:
    ctx, _, _ = _context(tmp_path)
    with pytest.raises(ConfigError, match="no SAE is trained on it") as err:
        PersistenceEvaluator(PersistenceConfig(to_layer="lm.7")).evaluate(ctx)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="is text-only"):
        PersistenceEvaluator(PersistenceConfig(split="questions")).evaluate(ctx)
    generated = ctx.with_sae(ctx.sae, ctx.sae_id)
    generated.tokens = "generated"
    with pytest.raises(ConfigError, match="need tokens: patch"):
        PersistenceEvaluator(PersistenceConfig()).evaluate(generated)
    later = ctx.with_sae(relu_identity_sae(D), "x")
    later.layer = "lm.6"
    assert PersistenceEvaluator(PersistenceConfig()).evaluate(later) == []
    foreign = tmp_path / "foreign"
    save_sae(relu_identity_sae(D), foreign, {"model": "dinov2", "layer": "lm.6", "sae_id": "f"})
    with pytest.raises(ConfigError, match="an SAE from another model or layer"):
        PersistenceEvaluator(PersistenceConfig(partner_sae=str(foreign))).evaluate(ctx)
    wide = ctx.with_sae(relu_identity_sae(D * 2), "wide")
    with pytest.raises(ConfigError, match="takes width 16"):
        PersistenceEvaluator(PersistenceConfig()).evaluate(wide)


def test_null_partners_are_uniform_over_the_other_active_features() -> None:
    from saebench_vision_plugins.evaluators.persistence import null_partners

    rng = np.random.default_rng(5)
    active = np.array([2, 5, 7, 9])
    matched = np.repeat(np.array([5, 3]), 4000)  # 5 is active, 3 is not
    out = null_partners(active, matched, rng)
    first, second = out[:4000], out[4000:]
    assert set(first.tolist()) == {2, 7, 9}  # never the matched feature itself
    assert np.allclose(np.bincount(first, minlength=10)[[2, 7, 9]] / 4000, 1 / 3, atol=0.03)
    assert np.allclose(np.bincount(second, minlength=10)[active] / 4000, 1 / 4, atol=0.03)
    assert null_partners(np.array([5]), np.array([5]), rng).tolist() == [-1]
    assert null_partners(np.array([], dtype=np.int64), np.array([5]), rng).tolist() == [-1]


def test_context_refuses_layers_outside_the_suite(tmp_path: Path) -> None:
    ctx, _, _ = _context(tmp_path)
    assert ctx.suite_sae("lm.6")[1] == "sae-lm.6"
    with pytest.raises(ConfigError, match="no SAE of this suite is trained on layer 'lm.9'"):
        ctx.suite_sae("lm.9")
    with pytest.raises(ConfigError, match="layer 'lm.9'"):
        ctx.layer_activations("val", "lm.9")
    bare = EvalContext(
        model_name="m", layer="a", tokens="patch", seed=0, device="cpu", splits={},
        activation_loader=None, dataset_loader=None, adapter_loader=None, output_dir=tmp_path,
        layers=("a", "b"),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="gives evaluators no SAE"):
        bare.suite_sae("b")
