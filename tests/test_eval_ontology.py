"""The ontology evaluator on planted structure: a procedural tree with features planted on subtrees."""

from __future__ import annotations

import json

import numpy as np
import pytest
from saebench_vision_plugins.evaluators.configs import OntologyConfig
from saebench_vision_plugins.evaluators.ontology import OntologyEvaluator, class_sets
from test_eval_support import LinearReluSAE, by_key, make_ctx

from saebench_vision.interfaces import ClassInfo

# root -> 3 groups -> 2 subgroups each -> 3 leaves each: 18 classes.
GROUPS = [f"g{i}" for i in range(3)]
SUBS = [f"{g}s{j}" for g in GROUPS for j in range(2)]
LEAVES = [f"{s}l{k}" for s in SUBS for k in range(3)]
TREE = {
    **{g: ["root"] for g in GROUPS},
    **{s: [s[:2]] for s in SUBS},
    **{leaf: [leaf[:4]] for leaf in LEAVES},
}


def _setup(tmp_path, *, rule: str = "relative-mean", per_class: int = 6):
    rng = np.random.default_rng(0)
    n_cls = len(LEAVES)
    d = n_cls  # raw activations: a one-hot class code plus noise
    labels = np.repeat(np.arange(n_cls), per_class)
    x = (np.eye(n_cls)[labels] + 0.05 * rng.normal(size=(len(labels), d))).astype(np.float32)
    # Planted latents: one per group (6 leaves, height 2), per subgroup (3 leaves, height 1),
    # and one single-class latent; each reads the sum of its leaves' codes, thresholded at 0.5.
    planted = [
        [i for i, leaf in enumerate(LEAVES) if leaf.startswith(node)] for node in GROUPS + SUBS
    ]
    planted.append([0])
    w_enc = np.zeros((len(planted), d))
    for k, members in enumerate(planted):
        w_enc[k, members] = 1.0
    sae = LinearReluSAE(
        w_enc, -0.5 * np.ones(len(planted)), np.zeros((d, len(planted))), np.zeros(d)
    )
    classes = [ClassInfo(leaf, leaf) for leaf in LEAVES]
    ctx = make_ctx(
        tmp_path, {"val": ("eval", x, labels)}, sae=sae, classes={"val": classes}, hierarchy=TREE
    )
    return ctx, planted


def test_planted_subtree_features_score_full_coverage(tmp_path):
    ctx, planted = _setup(tmp_path)
    evaluator = OntologyEvaluator(OntologyConfig(device="cpu"))
    got = by_key(evaluator.evaluate(ctx))
    # 3 group latents + 6 subgroup latents are multi-class with coverage 1; the single-class
    # latent is left out of the counts.
    assert got[("n_features", "val")].value == len(planted)
    assert got[("n_multiclass", "val")].value == 9
    assert got[("coverage_gt_0.99", "val")].value == 9
    assert got[("mean_coverage", "val")].value == pytest.approx(1.0)
    assert got[("mean_lch_height", "val")].value == pytest.approx((3 * 2 + 6 * 1) / 9)
    # Random directions in a space where every class is its own axis rarely cover a subtree.
    assert got[("random_n_features", "val")].value == len(planted)
    assert got[("random_coverage_gt_0.99", "val")].value <= 2
    fig = json.loads((ctx.output_dir / got[("n_features", "val")].extra["figure_data"]).read_text())
    counts = np.array(fig["counts"])
    assert counts.sum() == len(planted) and np.array(fig["counts_multiclass"]).sum() == 9
    top = got[("n_features", "val")].extra["top_concepts"]
    assert top[0]["lch"] in GROUPS and top[0]["classes"] == 6


def test_features_per_row_in_npz(tmp_path):
    ctx, planted = _setup(tmp_path)
    OntologyEvaluator(OntologyConfig(device="cpu", random_features=False)).evaluate(ctx)
    (npz,) = ctx.output_dir.glob("ontology_sae_*_features.npz")
    data = np.load(npz)
    assert list(data["lch"][:3]) == GROUPS and list(data["size"][:3]) == [6, 6, 6]
    np.testing.assert_allclose(data["height"][3:9], 1.0)
    assert data["lch"][-1] == LEAVES[0] and data["height"][-1] == 0


def test_firing_rate_rule_agrees_on_planted_features(tmp_path):
    ctx, _ = _setup(tmp_path)
    got = by_key(
        OntologyEvaluator(
            OntologyConfig(device="cpu", class_rule="firing-rate", random_features=False)
        ).evaluate(ctx)
    )
    assert got[("coverage_gt_0.99", "val")].value == 9


def test_encoder_neuron_baseline(tmp_path):
    # Each raw dimension is one class's code: every neuron is a single-class feature.
    ctx, _ = _setup(tmp_path)
    got = by_key(OntologyEvaluator(OntologyConfig(device="cpu")).baseline(ctx.with_sae(None, "")))
    assert got[("n_features", "val")].value == len(LEAVES)
    assert got[("n_with_classes", "val")].value == len(LEAVES)
    assert got[("n_multiclass", "val")].value == 0


def test_relative_mean_rule_by_hand():
    means = np.array(
        [
            [0, 0, 0, 0, 1.0, 0.6, 0.4],  # median 0: classes >= 0.5
            [5, 5, 5, 5, 5.0, 7.0, 6.0],  # median 5: centred 0,...,2,1 -> >= 1
            [0, 0, 0, 0, 0.0, 0.0, 0.0],
        ]
    )  # dead: empty set
    sets, pivot = class_sets(means, threshold=0.5)
    np.testing.assert_array_equal(sets, [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1], [0] * 7])
    np.testing.assert_array_equal(pivot, [4, 5, -1])


def test_class_sums_match_a_dense_groupby(tmp_path):
    from saebench_vision_plugins.evaluators.ontology import class_stats

    ctx, _ = _setup(tmp_path)
    stats = class_stats(ctx, "val", len(LEAVES), with_sae=True, batch_size=5, device="cpu")
    acts = ctx.activations("val")
    x, y = acts.read(np.arange(acts.n)).astype(np.float64), acts.labels
    import torch

    with torch.no_grad():
        z = ctx.sae.encode(torch.from_numpy(x).float()).double().numpy()
    onehot = np.eye(len(LEAVES))[y]
    np.testing.assert_allclose(stats.x_sum, onehot.T @ x, rtol=1e-12)
    np.testing.assert_allclose(stats.z_sum, onehot.T @ z, rtol=1e-6)
    np.testing.assert_array_equal(stats.z_fire, onehot.T @ (z > 0))


def test_near_root_features_are_counted_apart():
    from saebench_vision_plugins.datasets.hierarchy import HierarchyIndex
    from saebench_vision_plugins.evaluators.ontology import score_class_sets, summary

    index = HierarchyIndex.build(TREE, LEAVES)
    sets = np.zeros((3, len(LEAVES)), dtype=bool)
    sets[0] = True  # every class: LCH root, coverage 1
    sets[1, :17] = True  # all but one: LCH root, coverage 17/18
    sets[2, :6] = True  # group g0: coverage 1, a real concept
    scores = score_class_sets(sets, np.array([0, 0, 0]), index, near_root_fraction=0.9)
    assert [index.nodes[i] for i in scores.lch] == ["root", "root", "g0"]
    got = summary(scores, OntologyConfig(near_root_fraction=0.9))
    assert got["n_multiclass"][0] == 3 and got["n_near_root"][0] == 2
    assert got["coverage_gt_0.99"][0] == 1 and got["coverage_gt_0.75"][0] == 1
    assert got["near_root_coverage_gt_0.99"][0] == 1 and got["near_root_coverage_gt_0.75"][0] == 2
    assert got["mean_coverage"][0] == 1.0 and got["mean_lch_height"][0] == 2.0


def test_firing_rate_baselines_are_centred(tmp_path):
    # Non-negative activations (an offset of 5 plus a class code): raw x_j > 0 fires on every
    # class, so without centring every neuron is a root-level "concept"; centred on the split
    # mean, neuron j fires on class j only.
    rng = np.random.default_rng(1)
    n_cls = len(LEAVES)
    labels = np.repeat(np.arange(n_cls), 4)
    x = (5 + np.eye(n_cls)[labels] + 0.01 * rng.random((len(labels), n_cls))).astype(np.float32)
    classes = [ClassInfo(leaf, leaf) for leaf in LEAVES]
    ctx = make_ctx(tmp_path, {"val": ("eval", x, labels)}, classes={"val": classes}, hierarchy=TREE)
    raw = by_key(
        OntologyEvaluator(
            OntologyConfig(device="cpu", class_rule="firing-rate", baseline_centre="none")
        ).baseline(ctx)
    )
    assert raw[("n_multiclass", "val")].value == n_cls
    assert raw[("n_near_root", "val")].value == n_cls
    assert raw[("coverage_gt_0.99", "val")].value == 0  # not won by firing on everything
    centred = by_key(
        OntologyEvaluator(OntologyConfig(device="cpu", class_rule="firing-rate")).baseline(ctx)
    )
    assert centred[("n_with_classes", "val")].value == n_cls
    assert centred[("n_multiclass", "val")].value == 0


def testprojection_rates_by_hand(tmp_path):
    from saebench_vision_plugins.evaluators.ontology import projection_rates

    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 7)
    x = rng.random((21, 4)).astype(np.float32)
    ctx = make_ctx(tmp_path, {"val": ("eval", x, labels)})
    dirs = rng.normal(size=(5, 4))
    offsets = dirs @ x.mean(0)
    got = projection_rates(ctx, "val", dirs, offsets, 3, 4, "cpu")
    fires = (x.astype(np.float64) @ dirs.T) > offsets
    want = np.stack([fires[labels == c].mean(0) for c in range(3)], axis=1)
    np.testing.assert_allclose(got, want)
