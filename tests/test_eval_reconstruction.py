"""The reconstruction evaluator against hand computation (paper eqs. 6-8)."""

from __future__ import annotations

import numpy as np
import pytest
from saebench_vision_plugins.evaluators.configs import ReconstructionConfig
from saebench_vision_plugins.evaluators.reconstruction import ReconstructionEvaluator
from test_eval_support import LinearReluSAE, by_key, make_ctx


def _toy_sae() -> LinearReluSAE:
    # Latent 0 reads +x0, latent 1 reads -x0, latent 2 never fires, latent 3 fires on x1 > 0.5.
    w_enc = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    b_enc = np.array([0.0, 0.0, -10.0, -0.5])
    w_dec = np.array([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    return LinearReluSAE(w_enc, b_enc, w_dec, np.zeros(2))


def _hand(x: np.ndarray) -> dict[str, float]:
    z = np.maximum(x @ _toy_sae().w_enc.detach().numpy().T + _toy_sae().b_enc.detach().numpy(), 0)
    x_hat = z @ _toy_sae().w_dec.detach().numpy().T
    sq = ((x - x_hat) ** 2).sum(1)
    fire = (z != 0).mean(0)
    return {
        "mse": float((sq / 2).mean()),
        "l1": float(np.abs(z).sum(1).mean()),
        "l0": float((z != 0).sum(1).mean()),
        "explained_variance": float(1 - sq.sum() / ((x - x.mean(0)) ** 2).sum()),
        "relative_mse": float(sq.sum() / (x**2).sum()),
        "dead_fraction": float((fire == 0).mean()),
        "dense_fraction": float((fire > 0.1).mean()),
    }


def test_metrics_match_hand_computation(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(50, 2)).astype(np.float32)
    x_far = (rng.normal(size=(23, 2)) * 3).astype(np.float32)
    ctx = make_ctx(
        tmp_path,
        {"train": ("train", x_train, None), "far": ("far-ood", x_far, None)},
        sae=_toy_sae(),
    )
    records = ReconstructionEvaluator(ReconstructionConfig(batch_size=8, device="cpu")).evaluate(
        ctx
    )
    got = by_key(records)
    for split, x in (("train", x_train), ("far", x_far)):
        for metric, value in _hand(x).items():
            assert got[(metric, split)].value == pytest.approx(value, rel=1e-5, abs=1e-6), (
                metric,
                split,
            )
        assert got[("mse", split)].n == len(x)
    assert got[("dead_fraction", "train")].value == pytest.approx(0.25)
    assert got[("mse", "ood-mean")].value == pytest.approx(got[("mse", "far")].value)
    assert got[("mse", "train")].stderr > 0


def test_perfect_reconstruction_and_subsampling(tmp_path):
    # An identity-like SAE on non-negative data reconstructs exactly: mse 0, explained variance 1.
    x = np.abs(np.random.default_rng(1).normal(size=(40, 3))).astype(np.float32)
    eye = np.eye(3)
    sae = LinearReluSAE(eye, np.zeros(3), eye, np.zeros(3))
    ctx = make_ctx(tmp_path, {"val": ("eval", x, None)}, sae=sae)
    cfg = ReconstructionConfig(max_rows=10, device="cpu")
    got = by_key(ReconstructionEvaluator(cfg).evaluate(ctx))
    assert got[("mse", "val")].value == pytest.approx(0, abs=1e-10)
    assert got[("explained_variance", "val")].value == pytest.approx(1.0)
    assert got[("l0", "val")].n == 10
    assert got[("dense_fraction", "val")].value == 1.0


def test_thresholds_are_validated():
    with pytest.raises(ValueError, match="dense_threshold"):
        ReconstructionConfig(dense_threshold=2.0)


def test_per_row_values_go_to_one_buffer_allocated_up_front():
    # With a capacity the per-row values land in arrays allocated once (no small array per
    # chunk left between the chunks' temporaries); the numbers are those of the plain lists.
    import torch
    from saebench_vision_plugins.evaluators.reconstruction import ReconstructionStats

    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(30, 2)).astype(np.float32))
    z = torch.relu(torch.from_numpy(rng.normal(size=(30, 4)).astype(np.float32)))
    x_hat = x + 0.1
    plain, held, short = (ReconstructionStats(d=2, d_sae=4, capacity=c) for c in (0, 30, 20))
    for stats in (plain, held, short):
        for lo in range(0, 30, 8):
            stats.update(x[lo : lo + 8], x_hat[lo : lo + 8], z[lo : lo + 8])
    for m in ("mse", "l1", "l0"):
        want = np.concatenate(getattr(plain, f"per_row_{m}"))
        for stats in (held, short):
            np.testing.assert_array_equal(np.concatenate(getattr(stats, f"per_row_{m}")), want)
        parts = getattr(held, f"per_row_{m}")
        assert all(np.shares_memory(p, parts[0].base) for p in parts)
    assert held.values(0.0, 0.1) == plain.values(0.0, 0.1)
