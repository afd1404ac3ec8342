"""The planted-dictionary generator of ``benchmarks/quality.py``: what it plants is what its
docstring says (the benchmark's ground truth must not depend on the trainer)."""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


def _quality():
    spec = importlib.util.spec_from_file_location("quality_benchmark", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through it
    spec.loader.exec_module(module)
    return module


def test_planted_data_follows_its_definition():
    q = _quality()
    n, d, features, alpha = 20_000, 48, 40, 0.5  # d > features: codes are identifiable
    data = q.planted_data(
        n=n, d=d, features=features, mean_active=4.0, alpha=alpha, noise=0.0, held_out=1_000, seed=3
    )
    assert data.train.shape == (n - 1_000, d) and data.test.shape == (1_000, d)
    np.testing.assert_allclose(np.linalg.norm(data.directions, axis=1), 1.0, rtol=1e-12)
    # p_i ∝ (i + 1)^-alpha, summing to the mean number of active features (none clipped here).
    w = (np.arange(features) + 1.0) ** -alpha
    np.testing.assert_allclose(data.probabilities, 4.0 * w / w.sum(), rtol=1e-12)
    x = np.concatenate([data.train, data.test]).astype(np.float64)
    # Rescaled so that E‖x‖² = d.
    assert math.isclose(float((x**2).sum(1).mean()), d, rel_tol=1e-4)
    # Without noise each row is a non-negative combination of the planted directions: recover
    # the codes by least squares and compare firing rates and magnitudes with the definition.
    codes, *_ = np.linalg.lstsq(data.directions.T, x.T, rcond=None)
    codes = codes.T
    active = codes > 1e-3
    assert (codes > -1e-3).all()
    rate = active.mean(0)
    sd = np.sqrt(data.probabilities * (1 - data.probabilities) / n)
    assert (np.abs(rate - data.probabilities) < 5 * sd).all()
    # Exponential(1) magnitudes up to the global scale: mean equals standard deviation.
    values = codes[active]
    assert math.isclose(values.mean(), values.std(), rel_tol=0.03)


def test_planted_data_clips_probabilities_at_one_and_keeps_the_mean():
    q = _quality()
    data = q.planted_data(
        n=2_000, d=8, features=10, mean_active=4.0, alpha=3.0, noise=0.01, held_out=100, seed=0
    )
    p = data.probabilities
    assert p.max() == 1.0 and math.isclose(float(p.sum()), 4.0, rel_tol=1e-6)


def test_saelens_is_given_the_gated_penalty_ours_trains_with():
    # Our Gated default weights the L1 by λ (1 + aux_coefficient); SAELens's Gated by λ (its
    # auxiliary loss has weight 1), so the same penalty is SAELens's λ (1 + aux_coefficient).
    from saebench_vision_plugins.saes.configs import GatedConfig, ReLUConfig
    from saebench_vision_plugins.saes.gated import GatedSAE
    from saebench_vision_plugins.saes.relu import ReLUSAE

    q = _quality()
    assert q.saelens_coefficient(GatedSAE(4, GatedConfig()), 6.0) == 12.0
    assert q.saelens_coefficient(GatedSAE(4, GatedConfig(aux_coefficient=0.5)), 6.0) == 9.0
    assert q.saelens_coefficient(GatedSAE(4, GatedConfig(l1_convention="saelens")), 6.0) == 6.0
    assert q.saelens_coefficient(ReLUSAE(4, ReLUConfig()), 6.0) == 6.0


def test_seed_summary_gives_each_rows_mean_and_range_over_the_seeds():
    q = _quality()
    row = {"fvu": 0.5, "l0": 32.0, "dead": 0.0, "mmcs": 0.4}
    runs = [
        [("topk k=32", row), ("relu l1=6", {**row, "l0": 80.0})],
        [("topk k=32", {**row, "fvu": 0.4, "mmcs": 0.6})],  # a row missing from a run
        [("topk k=32", {**row, "fvu": 0.6, "dead": 0.3})],
    ]
    summary = dict(q.seed_summary(runs))
    assert list(summary) == ["topk k=32", "relu l1=6"]
    topk = summary["topk k=32"]
    assert topk["runs"] == 3
    assert topk["fvu"] == (np.mean([0.5, 0.4, 0.6]), 0.4, 0.6)
    assert topk["mmcs"] == (np.mean([0.4, 0.6, 0.4]), 0.4, 0.6)
    assert topk["dead"] == (np.mean([0.0, 0.0, 0.3]), 0.0, 0.3)
    assert summary["relu l1=6"]["runs"] == 1 and summary["relu l1=6"]["l0"] == (80.0, 80.0, 80.0)


def test_bad_set_and_training_values_are_refused_before_any_data_is_generated(monkeypatch, capsys):
    import pytest

    q = _quality()

    def generate(**kwargs):
        raise AssertionError("planted data generated before the arguments were checked")

    monkeypatch.setattr(q, "planted_data", generate)
    for argv, words in [
        (["--arch", "topk", "--set", "topk:k_ramp=1.5"], ["k_ramp", "1.5"]),
        (
            ["--arch", "matryoshka", "--set", "matryoshka:prefix_fractions=[0.5,0.25,1.0]"],
            ["prefix_fractions"],
        ),
        (["--training", "batch_size=0"], ["batch_size", "0"]),
        (["--children", "5"], ["--children 5", "1024", "multiple of 1 + c"]),  # 4 x 256 features
        (["--children", "3", "--child-probability", "0"], ["--child-probability 0"]),
    ]:
        with pytest.raises(SystemExit) as exc:
            q.main(["--quick", "--no-sweep", *argv])
        message = str(exc.value.code)
        assert "\n" not in message and all(w in message for w in words), message


def test_mmcs_by_frequency_averages_each_run_of_planted_directions_most_common_first():
    q = _quality()
    data = q.planted_data(
        n=600, d=16, features=32, mean_active=3.0, alpha=0.5, noise=0.01, held_out=100, seed=1
    )
    # The generator orders the directions by firing probability: common first.
    assert (np.diff(data.probabilities) <= 0).all()
    sae = q.build("topk", 16, {"expansion": 1, "k": 4})
    with torch.no_grad():  # the decoder holds the 16 most common directions, scaled
        sae.W_dec.copy_(torch.from_numpy(3.0 * data.directions[:16]).float())
    r = q.measure(sae, data)
    # By hand, in numpy: each direction's best cosine with a decoder row, averaged in runs of 4.
    rows = data.directions[:16] / np.linalg.norm(data.directions[:16], axis=1, keepdims=True)
    best = (data.directions @ rows.T).max(1)
    expected = [best[i : i + 4].mean() for i in range(0, 32, 4)]
    np.testing.assert_allclose(r["mmcs_by_frequency"], expected, atol=1e-6)
    np.testing.assert_allclose(r["mmcs_by_frequency"][:4], 1.0, atol=1e-6)
    assert max(r["mmcs_by_frequency"][4:]) < 0.9
    assert math.isclose(r["mmcs"], float(best.mean()), abs_tol=1e-6)


def test_planted_hierarchy_children_fire_only_with_their_parent():
    q = _quality()
    n, d, children, prob = 20_000, 48, 3, 0.4
    data = q.planted_data(
        n=n, d=d, features=40, mean_active=6.0, alpha=0.5, noise=0.0, held_out=1_000, seed=5,
        children=children, child_probability=prob,
    )  # fmt: skip
    parents = 10
    assert data.parents == parents and len(data.probabilities) == 40
    # Parents follow the power law; a child's marginal rate is its parent's times prob.
    w = (np.arange(parents) + 1.0) ** -0.5
    p = 6.0 / (1 + children * prob) * w / w.sum()
    np.testing.assert_allclose(data.probabilities[:parents], p, rtol=1e-12)
    np.testing.assert_allclose(data.probabilities[parents:], np.repeat(p, children) * prob)
    assert math.isclose(float(data.probabilities.sum()), 6.0, rel_tol=1e-9)
    # Recover the codes (noise-free, d > features) and check the hierarchy row by row.
    x = np.concatenate([data.train, data.test]).astype(np.float64)
    codes, *_ = np.linalg.lstsq(data.directions.T, x.T, rcond=None)
    active = codes.T > 1e-3
    parent_of = np.repeat(np.arange(parents), children)
    child_active = active[:, parents:]
    # Never without the parent: exactly, in the held-out rows' codes.
    held = data.test_codes.toarray() > 0
    assert held[:, parents:].any() and not (held[:, parents:] & ~held[:, parent_of]).any()
    given = child_active[active[:, parent_of]].mean()  # pooled P(child | parent)
    assert abs(given - prob) < 5 * math.sqrt(prob * (1 - prob) / active[:, parent_of].sum())
    rate = active.mean(0)
    sd = np.sqrt(data.probabilities * (1 - data.probabilities) / n)
    assert (np.abs(rate - data.probabilities) < 5 * sd).all()


def test_without_children_the_planted_data_are_those_of_before():
    # The hierarchy's code path must not move the default data (published figures are made
    # on them): the generator's random draws, replayed here in their documented order, give
    # the same directions and the same codes (recovered from noise-free rows, up to the
    # global rescaling).
    q = _quality()
    n, features = 3_000, 12
    data = q.planted_data(
        n=n, d=16, features=features, mean_active=3.0, alpha=0.5, noise=0.0, held_out=100, seed=2
    )
    rng = np.random.default_rng(2)
    directions = rng.standard_normal((features, 16))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    w = (np.arange(features) + 1.0) ** -0.5
    rows = [rng.choice(n, size=int(c), replace=False) for c in rng.binomial(n, 3.0 * w / w.sum())]
    codes = np.zeros((n, features))
    cols = np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)])
    codes[np.concatenate(rows), cols] = rng.exponential(1.0, len(cols))
    assert data.parents == 0
    np.testing.assert_array_equal(data.directions, directions)
    x = np.concatenate([data.train, data.test]).astype(np.float64)
    recovered, *_ = np.linalg.lstsq(directions.T, x.T, rcond=None)
    scale = float(np.median(recovered.T[codes > 0] / codes[codes > 0]))
    np.testing.assert_allclose(recovered.T, scale * codes, atol=1e-4 * scale)


def test_mmcs_over_parents_and_children_apart():
    q = _quality()
    data = q.planted_data(
        n=600, d=16, features=16, mean_active=3.0, alpha=0.5, noise=0.01, held_out=100, seed=1,
        children=3,
    )  # fmt: skip
    sae = q.build("topk", 16, {"expansion": 1, "k": 4})
    with torch.no_grad():  # the 4 parents, and 12 rows that are the children mixed with them
        mixed = data.directions[4:] + data.directions[np.repeat(np.arange(4), 3)]
        sae.W_dec.copy_(torch.from_numpy(np.concatenate([data.directions[:4], mixed[:12]])).float())
    r = q.measure(sae, data)
    rows = sae.decoder_directions().double().numpy()
    best = (data.directions @ rows.T).max(1)
    assert math.isclose(r["mmcs_parents"], 1.0, abs_tol=1e-6)
    assert math.isclose(r["mmcs_children"], float(best[4:].mean()), abs_tol=1e-6)
    assert r["mmcs_children"] < 0.9


def test_absorption_counts_how_often_a_parents_latent_fires_alone_and_with_a_child():
    q = _quality()
    data = q.planted_data(
        n=4_000, d=32, features=16, mean_active=3.0, alpha=0.5, noise=0.01, held_out=1_000,
        seed=4, children=3, child_probability=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    sae = q.build("topk", 32, {"expansion": 1, "k": 3, "k_ramp": 0})
    r = q.measure(sae, data)
    # By hand: each parent's nearest decoder row, whether it fires on each held-out row, and
    # which rows hold the parent with or without one of its children.
    rows = sae.decoder_directions().double().numpy()
    fires = sae.encode(torch.from_numpy(data.test)).detach().numpy() != 0
    codes = data.test_codes.toarray()
    alone, together = [], []
    for i in range(4):
        latent = int(np.argmax(data.directions[i] @ rows.T))
        for row in range(len(data.test)):
            if codes[row, i] > 0:
                child = (codes[row, 4 + 3 * i : 7 + 3 * i] > 0).any()
                (together if child else alone).append(fires[row, latent])
    assert alone and together and abs(np.mean(alone) - np.mean(together)) > 0.01  # telling
    assert math.isclose(r["parent_fires_alone"], float(np.mean(alone)), abs_tol=1e-12)
    assert math.isclose(r["parent_fires_with_child"], float(np.mean(together)), abs_tol=1e-12)


def test_by_frequency_orders_by_probability_with_a_hierarchy_and_all_alone_is_not_a_number():
    q = _quality()
    # Parents come first in the directions, yet a common child fires more often than a rare
    # parent: the octiles follow the probabilities, not the index.
    best = np.arange(8.0)
    probabilities = np.array([0.9, 0.1, 0.05, 0.01, 0.5, 0.4, 0.3, 0.2])
    assert q.by_frequency(best, probabilities) == [0, 4, 5, 6, 7, 1, 2, 3]
    assert q.by_frequency(best[:3]) == [0.0, 1.0, 2.0]  # fewer directions than octiles
    data = q.planted_data(
        n=1_500, d=16, features=16, mean_active=3.0, alpha=0.5, noise=0.01, held_out=300, seed=3,
        children=3, child_probability=1.0,
    )  # fmt: skip
    torch.manual_seed(0)
    sae = q.build("topk", 16, {"expansion": 1, "k": 4, "k_ramp": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        r = q.measure(sae, data)
    assert math.isnan(r["parent_fires_alone"]) and 0 <= r["parent_fires_with_child"] <= 1
    assert q._shown(r["parent_fires_alone"]) == "n/a"
