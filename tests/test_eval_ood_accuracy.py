"""Linear probes and OOD accuracy: exactness against scikit-learn, separable data, class subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from saebench_vision_plugins.evaluators.configs import OODAccuracyConfig, ProbeConfig
from saebench_vision_plugins.evaluators.ood_accuracy import (
    OODAccuracyEvaluator,
    class_mapping,
    restricted_accuracy,
)
from saebench_vision_plugins.evaluators.probes import fit_probe
from test_eval_support import LinearReluSAE, by_key, make_ctx, write_acts

from saebench_vision.errors import DatasetError
from saebench_vision.interfaces import ClassInfo


def _blobs(rng, n_per: int, centers: np.ndarray, scale: float):
    labels = np.repeat(np.arange(len(centers)), n_per)
    x = centers[labels] + scale * rng.normal(size=(len(labels), centers.shape[1]))
    return x.astype(np.float32), labels


def test_lbfgs_matches_scikit_learn(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 40, rng.normal(size=(3, 5)), 1.0)
    acts = write_acts(tmp_path, "a" * 64, x, y)
    cfg = ProbeConfig(solver="lbfgs", l2=1e-2)
    probe = fit_probe(acts, y, 3, cfg)
    xs = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(C=1 / (cfg.l2 * len(x)), tol=1e-10, max_iter=5000).fit(xs, y)
    np.testing.assert_allclose(
        probe.weight.numpy() - probe.weight.numpy().mean(0),
        ref.coef_ - ref.coef_.mean(0),
        atol=2e-3,
    )
    logits = probe.predict_logits(acts, torch.device("cpu"))
    np.testing.assert_array_equal(logits.argmax(1), ref.predict(xs))


def test_minibatch_probe_separable_data(tmp_path):
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, 100, 4 * np.eye(8)[:6], 0.3)
    acts = write_acts(tmp_path, "b" * 64, x, y, chunk=64)
    probe = fit_probe(
        acts, y, 6, ProbeConfig(solver="minibatch", epochs=20, batch_size=64, lr=1e-2), seed=3
    )
    assert probe.solver == "minibatch"
    acc = (probe.predict_logits(acts, torch.device("cpu")).argmax(1) == y).mean()
    assert acc > 0.99


def test_restricted_class_evaluation_by_hand():
    # Four training classes; the shifted split covers classes "c" and "a" (in that order).
    mapping = class_mapping(["a", "b", "c", "d"], ["c", "a"], "shifted")
    np.testing.assert_array_equal(mapping, [2, 0])
    logits = np.array(
        [
            [0.0, 9.0, 1.0, 0.0],  # best overall is b; among {c, a} it is c
            [3.0, 9.0, 1.0, 8.0],  # among {c, a}: a
            [0.0, 0.0, 0.0, 5.0],
        ]
    )  # tie between c and a: the first listed (c)
    labels = np.array([0, 1, 1])  # indices into the split's classes: c, a, a
    np.testing.assert_array_equal(restricted_accuracy(logits, labels, mapping), [True, True, False])
    np.testing.assert_array_equal(
        restricted_accuracy(logits, np.array([1, 1, 3]), None), [True, True, True]
    )
    with pytest.raises(DatasetError, match="'z' is not among"):
        class_mapping(["a", "b"], ["z"], "shifted")


def test_evaluator_records_for_raw_latents_and_pre_activations(tmp_path):
    rng = np.random.default_rng(2)
    centers = 3 * np.eye(4)
    x_tr, y_tr = _blobs(rng, 50, centers, 0.3)
    x_val, y_val = _blobs(rng, 20, centers, 0.3)
    # The shifted split holds only classes 3 and 1, shifted a little, labelled 0 and 1.
    x_sh, y_sh = _blobs(rng, 20, centers[[3, 1]] + 0.5, 0.3)
    classes = [ClassInfo(f"c{i}", f"class {i}") for i in range(4)]
    sae = LinearReluSAE(
        np.vstack([np.eye(4), -np.eye(4)]),
        np.zeros(8),
        np.hstack([np.eye(4), -np.eye(4)]),
        np.zeros(4),
    )
    ctx = make_ctx(
        tmp_path,
        {
            "train": ("train", x_tr, y_tr),
            "val": ("eval", x_val, y_val),
            "shift": ("shifted", x_sh, y_sh),
        },
        sae=sae,
        classes={"train": classes, "val": classes, "shift": [classes[3], classes[1]]},
    )
    ev = OODAccuracyEvaluator(OODAccuracyConfig(device="cpu"))
    base = by_key(ev.baseline(ctx.with_sae(None, "")))
    got = by_key(ev.evaluate(ctx))
    for records in (base, got):
        assert records[("acc", "val")].value > 0.95
        assert records[("acc", "shift")].value > 0.95
        assert records[("acc", "shift")].extra["classes"] == 2
        assert records[("acc", "shift")].n == 40
    assert got[("acc_pre", "val")].value > 0.95 and ("acc_pre", "val") not in base
    assert got[("train_acc", "train")].value > 0.95


def test_solvers_reach_the_same_objective(tmp_path):
    # Held-in-memory L-BFGS, streamed L-BFGS (features over full_batch_limit) and minibatch Adam
    # minimise one objective; the first two agree exactly, Adam comes close.
    rng = np.random.default_rng(4)
    centers = 0.4 * rng.normal(size=(10, 32))
    y = rng.integers(0, 10, 2000)
    x = (centers[y] + rng.normal(size=(2000, 32))).astype(np.float32)
    acts = write_acts(tmp_path, "d" * 64, x, y, chunk=500)
    held = fit_probe(acts, y, 10, ProbeConfig(solver="lbfgs", l2=1e-3))
    streamed = fit_probe(
        acts, y, 10, ProbeConfig(solver="lbfgs", l2=1e-3, full_batch_limit=100, batch_size=300)
    )
    adam = fit_probe(
        acts, y, 10, ProbeConfig(solver="minibatch", l2=1e-3, batch_size=128, epochs=20, lr=5e-2)
    )
    assert streamed.train_loss == pytest.approx(held.train_loss, rel=1e-5)
    assert held.train_loss <= adam.train_loss < held.train_loss * 1.03


def test_streamed_prediction_matches_restricted_accuracy(tmp_path):
    rng = np.random.default_rng(5)
    x, y = _blobs(rng, 30, 2 * np.eye(6), 1.0)
    acts = write_acts(tmp_path, "e" * 64, x, y, chunk=40)
    probe = fit_probe(acts, y, 6, ProbeConfig(solver="lbfgs"))
    mapping = np.array([4, 1, 5])
    logits = probe.predict_logits(acts, torch.device("cpu"))
    np.testing.assert_array_equal(
        probe.predict(acts, torch.device("cpu"), mapping, batch_size=7),
        logits[:, mapping].argmax(1),
    )
    labels = rng.integers(0, 3, len(y))
    expected = restricted_accuracy(logits, labels, mapping)
    np.testing.assert_array_equal(
        probe.predict(acts, torch.device("cpu"), mapping) == labels, expected
    )


@pytest.mark.parametrize("solver", ["lbfgs", "minibatch"])
def test_memory_budget_never_changes_the_probe(tmp_path, solver):
    # Held on the device (budget large) or streamed from the memory map (budget 0): same rows,
    # same order, so bit-identical weights; latents from the shared encoding equal sae.encode.
    rng = np.random.default_rng(6)
    x, y = _blobs(rng, 40, 2 * np.eye(5), 1.0)
    acts = write_acts(tmp_path, "f" * 64, x, y, chunk=33)
    cfg = dict(solver=solver, epochs=3, batch_size=32, full_batch_limit=10)
    held = fit_probe(acts, y, 5, ProbeConfig(**cfg, memory_budget_gb=1.0), seed=1)
    streamed = fit_probe(acts, y, 5, ProbeConfig(**cfg, memory_budget_gb=0.0), seed=1)
    torch.testing.assert_close(held.weight, streamed.weight, rtol=0, atol=0)
    assert held.train_loss == streamed.train_loss
    sae = LinearReluSAE(
        np.vstack([np.eye(5), -np.eye(5)]), np.zeros(10), np.zeros((5, 10)), np.zeros(5)
    )
    ctx = make_ctx(tmp_path / "ctx", {"train": ("train", x, y)}, sae=sae)
    by_fn = fit_probe(acts, y, 5, ProbeConfig(**cfg), feature_fn=sae.encode, seed=1)
    by_enc = fit_probe(acts, y, 5, ProbeConfig(**cfg), latents=ctx.latents("train"), seed=1)
    if solver == "lbfgs":  # the same dense chunks
        torch.testing.assert_close(by_fn.weight, by_enc.weight, rtol=0, atol=0)
    else:  # minibatch steps on sparse latents: the same objective, other float rounding
        torch.testing.assert_close(by_fn.weight, by_enc.weight, rtol=1e-4, atol=1e-5)
        assert by_enc.train_loss == pytest.approx(by_fn.train_loss, rel=1e-5)


def test_sparse_minibatch_steps_match_dense_ones(tmp_path, monkeypatch):
    # Steps that sum over the latents' non-zeros (forced here, whatever the density) minimise
    # the same objective as dense steps on sae.encode.
    from saebench_vision_plugins.evaluators import probes

    monkeypatch.setattr(probes, "SPARSE_STEP_DENSITY", 1.0)
    rng = np.random.default_rng(7)
    x, y = _blobs(rng, 60, 3 * np.eye(4), 0.5)
    w_enc = rng.normal(size=(200, 4))
    sae = LinearReluSAE(w_enc, -2.5 * np.ones(200), np.zeros((4, 200)), np.zeros(4))
    ctx = make_ctx(tmp_path, {"train": ("train", x, y)}, sae=sae)
    latents = ctx.latents("train")
    assert 0 < latents.nnz < latents.n * 200
    acts = ctx.activations("train")
    cfg = ProbeConfig(solver="minibatch", epochs=5, batch_size=32, lr=5e-2)
    dense = fit_probe(acts, y, 4, cfg, feature_fn=sae.encode, seed=2)
    sparse = fit_probe(acts, y, 4, cfg, latents=latents, seed=2)
    torch.testing.assert_close(sparse.weight, dense.weight, rtol=1e-4, atol=1e-5)
    assert sparse.train_loss == pytest.approx(dense.train_loss, rel=1e-5)


def _toy_encoding(rng, n: int = 50, width: int = 40, density: float = 0.1):
    from saebench_vision.encodings import Encoding

    z = np.where(rng.random((n, width)) < density, rng.random((n, width)), 0).astype(np.float32)
    rows, cols = np.nonzero(z)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    return z, Encoding(indptr, cols.astype(np.int32), z[rows, cols], width)


@pytest.mark.parametrize("use_scipy", [True, False])
def test_sparse_blocks_multiply_like_dense_latents(monkeypatch, use_scipy):
    # scipy's CSR kernels (CPU) and the torch kernels (other devices) against numpy on the
    # dense latents, for contiguous and scattered rows.
    from saebench_vision_plugins.evaluators import probes

    monkeypatch.setattr(probes, "SCIPY_ON_CPU", use_scipy)
    rng = np.random.default_rng(8)
    z, enc = _toy_encoding(rng)
    w = rng.normal(size=(3, z.shape[1])).astype(np.float32)
    g = rng.normal(size=(7, 3)).astype(np.float32)
    for rows in (np.arange(10, 17), np.array([0, 3, 4, 20, 33, 41, 49])):
        block = probes.SparseBlock.of_rows(enc, rows, torch.device("cpu"))
        np.testing.assert_allclose(block.matmul_t(torch.from_numpy(w)), z[rows] @ w.T, rtol=1e-5)
        np.testing.assert_allclose(block.t_matmul(torch.from_numpy(g)), g.T @ z[rows], rtol=1e-5)


def test_closed_form_gradients_match_autograd():
    # The minibatch step's gradients, dense and sparse, against torch autograd of the objective.
    from saebench_vision_plugins.evaluators.probes import SparseBlock, softmax_regression_grads

    rng = np.random.default_rng(9)
    z, enc = _toy_encoding(rng, width=30, density=0.2)
    rows = np.array([1, 2, 5, 8, 13, 21, 34])
    f = torch.from_numpy(z[rows])
    y = torch.from_numpy(rng.integers(0, 4, len(rows)))
    mean = torch.from_numpy(z.mean(0)) + 0.1
    std = torch.from_numpy(z.std(0)) + 0.5
    weight = torch.randn(4, 30, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(((f - mean) / std) @ weight.T + bias, y)
    (loss + 0.5 * 0.3 * weight.pow(2).sum()).backward()
    sparse = SparseBlock.of_rows(enc, rows, torch.device("cpu"))
    for block in (f, sparse):
        gw, gb = softmax_regression_grads(block, y, weight, bias, mean, std, 0.3)
        torch.testing.assert_close(gw, weight.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gb, bias.grad, rtol=1e-5, atol=1e-6)


def test_scipy_and_torch_sparse_paths_fit_the_same_probe(tmp_path, monkeypatch):
    from saebench_vision_plugins.evaluators import probes

    rng = np.random.default_rng(10)
    x, y = _blobs(rng, 60, 3 * np.eye(4), 0.5)
    sae = LinearReluSAE(
        rng.normal(size=(200, 4)), -2.5 * np.ones(200), np.zeros((4, 200)), np.zeros(4)
    )
    ctx = make_ctx(tmp_path, {"train": ("train", x, y)}, sae=sae)
    latents, acts = ctx.latents("train"), ctx.activations("train")
    monkeypatch.setattr(probes, "SPARSE_STEP_DENSITY", 1.0)
    cfg = ProbeConfig(solver="minibatch", epochs=3, batch_size=32, lr=5e-2)
    fits = []
    for use_scipy in (True, False):
        monkeypatch.setattr(probes, "SCIPY_ON_CPU", use_scipy)
        fits.append(fit_probe(acts, y, 4, cfg, latents=latents, seed=2))
    torch.testing.assert_close(fits[0].weight, fits[1].weight, rtol=1e-4, atol=1e-6)
    # Moments from the non-zeros equal the dense ones.
    dense = sae.encode(torch.from_numpy(x)).detach().double()
    torch.testing.assert_close(fits[0].mean, dense.mean(0).float(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(
        fits[0].predict(acts, torch.device("cpu"), latents=latents),
        fits[1].predict(acts, torch.device("cpu"), latents=latents),
    )
