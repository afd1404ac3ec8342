"""Built-in SAE architectures: planted dictionaries, hand-computed losses, sparse = dense paths."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from saebench_vision_plugins.saes.base import geometric_median
from saebench_vision_plugins.saes.configs import (
    BatchTopKConfig,
    GatedConfig,
    JumpReLUConfig,
    MatryoshkaConfig,
    ReLUConfig,
    TopKConfig,
)
from saebench_vision_plugins.saes.gated import GatedSAE
from saebench_vision_plugins.saes.jumprelu import JumpReLUSAE
from saebench_vision_plugins.saes.relu import ReLUSAE
from saebench_vision_plugins.saes.sparse import (
    SparseCode,
    SparseDecode,
    sampled_dot,
    sampled_dot_gather,
)
from saebench_vision_plugins.saes.topk import BatchTopKSAE, MatryoshkaSAE, TopKSAE

from saebench_vision.config import TrainingConfig, build_config
from saebench_vision.errors import ConfigError
from saebench_vision.training import train_saes


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors run fastest (and least disturbed by other processes) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def planted(seed: int = 0, d: int = 32, atoms: int = 48, n: int = 8192):
    """Activations that are sparse non-negative combinations of known unit atoms."""
    g = np.random.default_rng(seed)
    dictionary = g.standard_normal((atoms, d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    codes = (g.random((n, atoms)) < 3 / atoms) * g.uniform(1, 2, (n, atoms))
    x = codes @ dictionary + 0.01 * g.standard_normal((n, d))
    return x.astype(np.float32), dictionary


def recovered(sae, dictionary: np.ndarray) -> float:
    directions = sae.decoder_directions().numpy()
    return float((np.abs(dictionary @ directions.T).max(1) >= 0.9).mean())


def test_every_architecture_learns_a_planted_dictionary():
    x, dictionary = planted()
    d = x.shape[1]
    torch.manual_seed(0)
    saes = [
        ReLUSAE(d, ReLUConfig(expansion=2, l1_coefficient=3.0)),
        TopKSAE(d, TopKConfig(expansion=2, k=3, dead_after=4096)),
        # λ 3 weighted by 1 + aux_coefficient: the loss SAELens's λ = 6 gives.
        GatedSAE(d, GatedConfig(expansion=2, l1_coefficient=3.0)),
        # topk_warmup 0: batch selection itself, which the warm-up would hide for half the run.
        BatchTopKSAE(d, BatchTopKConfig(expansion=2, k=3, dead_after=4096, topk_warmup=0)),
        JumpReLUSAE(d, JumpReLUConfig(expansion=2, l0_coefficient=1.0)),
        MatryoshkaSAE(
            d,
            MatryoshkaConfig(
                expansion=2, k=3, dead_after=4096, prefix_fractions=(0.75, 1.0), topk_warmup=0
            ),
        ),
    ]
    config = TrainingConfig(epochs=8, batch_size=64, lr=5e-3)
    stats = train_saes(saes, x, config, seed=0, progress=False)
    mean_sq_norm = float((x**2).sum(1).mean()) * stats[0]["input_scale"] ** 2
    for sae, st in zip(saes, stats):
        assert recovered(sae, dictionary) >= 0.75, (sae.name, recovered(sae, dictionary), st)
        # Reconstruction explains most of the signal, at a sparsity near the planted 3 atoms.
        assert st["final_mse"] < 0.25 * mean_sq_norm, (sae.name, st)
        assert 1.0 <= st["final_l0"] <= 8.0, (sae.name, st)
    topk = saes[1]
    xt = torch.from_numpy(x[:512])
    z = topk.encode(xt)
    positive = (topk.pre_activations(xt) > 0).sum(1)
    assert torch.equal((z != 0).sum(1), positive.clamp(max=3))
    assert (z >= 0).all()
    assert stats[1]["final_l0"] <= 3.0


def _tiny(cls, config, d=3):
    torch.manual_seed(0)
    sae = cls(d, config)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return sae


def assert_same_gradients(sae, loss, reference):
    """The SAE's (hand-written) backward pass equals autograd on the reference formula."""
    params = [p for p in sae.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(reference, params, retain_graph=True, allow_unused=True)
    for p, g, w in zip(params, got, want):
        g = torch.zeros_like(p) if g is None else g
        w = torch.zeros_like(p) if w is None else w
        torch.testing.assert_close(g, w)


def test_relu_loss_matches_hand_computation():
    sae = _tiny(ReLUSAE, ReLUConfig(expansion=2, l1_coefficient=0.7))
    with torch.no_grad():
        sae.input_scale.fill_(2.0)
    x = torch.randn(5, 3)
    out = sae.loss(x, sparsity_scale=0.5)
    xn = 2.0 * x
    z = torch.relu((xn - sae.b_dec) @ sae.W_enc.T + sae.b_enc)
    x_hat = z @ sae.W_dec + sae.b_dec
    norms = sae.W_dec.norm(dim=1)
    expected = ((xn - x_hat) ** 2).sum(1).mean() + 0.7 * 0.5 * (z * norms).sum(1).mean()
    torch.testing.assert_close(out.loss, expected)
    assert_same_gradients(sae, out.loss, expected)
    torch.testing.assert_close(out.x_hat, x_hat / 2.0)
    torch.testing.assert_close(out.z, z)
    torch.testing.assert_close(sae.decode(sae.encode(x)), x_hat / 2.0)
    torch.testing.assert_close(out.metrics["l0"], (z > 0).sum(1).float().mean())

    plain = _tiny(ReLUSAE, ReLUConfig(expansion=2, l1_coefficient=0.7, decoder_norm="free"))
    out = plain.loss(x)
    z = torch.relu((x - plain.b_dec) @ plain.W_enc.T + plain.b_enc)
    x_hat = z @ plain.W_dec + plain.b_dec
    expected = ((x - x_hat) ** 2).sum(1).mean() + 0.7 * z.sum(1).mean()
    torch.testing.assert_close(out.loss, expected)
    assert_same_gradients(plain, out.loss, expected)


@pytest.mark.parametrize("convention", ["relu", "saelens"])
@pytest.mark.parametrize("aux_decoder", ["shared", "frozen"])
def test_gated_loss_matches_hand_computation(aux_decoder, convention):
    config = GatedConfig(
        expansion=2,
        l1_coefficient=0.3,
        aux_coefficient=0.7,
        aux_decoder=aux_decoder,
        l1_convention=convention,
    )
    sae = _tiny(GatedSAE, config)
    # relu: the L1 weighted by λ (1 + aux_coefficient); saelens: by λ.
    lam = 0.3 * 1.7 if convention == "relu" else 0.3
    x = torch.randn(6, 3)
    out = sae.loss(x)
    xc = x - sae.b_dec
    gate = xc @ sae.W_enc.T + sae.b_gate
    mag = (xc @ sae.W_enc.T) * sae.r_mag.exp() + sae.b_mag
    z = (gate > 0).float() * torch.relu(mag)
    x_hat = z @ sae.W_dec + sae.b_dec
    l1 = (torch.relu(gate) * sae.W_dec.norm(dim=1)).sum(1).mean()
    aux = ((torch.relu(gate) @ sae.W_dec + sae.b_dec - x) ** 2).sum(1).mean()
    main = ((x - x_hat) ** 2).sum(1).mean() + lam * l1
    expected = main + 0.7 * aux
    torch.testing.assert_close(out.loss, expected)
    # frozen: the decoder is detached in the auxiliary term, as the Gated SAE paper does;
    # shared: gradients of the auxiliary term reach the decoder too, as in SAELens.
    frozen_aux = ((torch.relu(gate) @ sae.W_dec.detach() + sae.b_dec.detach() - x) ** 2).sum(1)
    reference = main + 0.7 * frozen_aux.mean() if aux_decoder == "frozen" else expected
    assert_same_gradients(sae, out.loss, reference)
    torch.testing.assert_close(out.z, z)
    torch.testing.assert_close(sae.encode(x), z)
    (total,) = torch.autograd.grad(out.loss, [sae.W_dec])
    (without_aux,) = torch.autograd.grad(main, [sae.W_dec])
    if aux_decoder == "frozen":
        torch.testing.assert_close(total, without_aux)
    else:
        assert not torch.allclose(total, without_aux)


@pytest.mark.parametrize("aux_decoder", ["shared", "frozen"])
def test_gated_at_initialisation_trains_as_a_relu_sae(aux_decoder):
    # With r_mag = b_mag = b_gate = 0 both Gated codes equal ReLU(W_enc (x - b_dec)), so the
    # main and auxiliary reconstructions send the same gradient into the shared encoder: with
    # aux_coefficient a, SAELens's Gated loss at λ has (1 + a) times the gradients of a ReLU
    # SAE at λ / (1 + a) on W_enc, W_dec (shared) and b_dec, and b_gate + b_mag get its b_enc's.
    # The `relu` convention weights the L1 by λ (1 + a), which makes that ReLU SAE's λ the
    # Gated SAE's own. Checked against the ReLU SAE's own loss, a separate code path.
    a, lam = 0.7, 0.4
    relu = _tiny(ReLUSAE, ReLUConfig(expansion=2, l1_coefficient=lam))
    with torch.no_grad():
        relu.b_enc.zero_()
    x = torch.randn(9, 3) + 0.3

    def grads(sae):
        sae.zero_grad()
        sae.loss(x).loss.backward()
        return {k: p.grad.clone() for k, p in sae.named_parameters() if p.grad is not None}

    for convention, relu_lam in (("relu", lam), ("saelens", lam / (1 + a))):
        config = GatedConfig(
            expansion=2,
            l1_coefficient=lam,
            aux_coefficient=a,
            aux_decoder=aux_decoder,
            l1_convention=convention,
        )
        gated = GatedSAE(3, config)
        with torch.no_grad():
            for name in ("W_enc", "W_dec", "b_dec"):
                getattr(gated, name).copy_(getattr(relu, name))
        relu.config = ReLUConfig(expansion=2, l1_coefficient=relu_lam)
        want, got = grads(relu), grads(gated)
        torch.testing.assert_close(gated.encode(x), relu.encode(x))
        torch.testing.assert_close(got["W_enc"], (1 + a) * want["W_enc"])
        torch.testing.assert_close(got["b_gate"] + got["b_mag"], (1 + a) * want["b_enc"])
        if aux_decoder == "shared":
            torch.testing.assert_close(got["W_dec"], (1 + a) * want["W_dec"])
            torch.testing.assert_close(got["b_dec"], (1 + a) * want["b_dec"])


def test_jumprelu_loss_and_threshold_gradient():
    # The parameter holds θ / threshold_lr_scale: θ = 3 t, so dL/dt = 3 dL/dθ.
    config = JumpReLUConfig(expansion=2, l0_coefficient=0.2, bandwidth=0.5, threshold_lr_scale=3.0)
    torch.testing.assert_close(JumpReLUSAE(3, config).threshold * 3.0, torch.full((6,), 0.01))
    sae = _tiny(JumpReLUSAE, config)
    with torch.no_grad():
        sae.threshold.copy_(torch.linspace(-0.05, 0.2, 6))
    x = torch.randn(7, 3)
    out = sae.loss(x)
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    theta = torch.relu(3.0 * sae.threshold)
    z = pre * (pre > theta)
    x_hat = z @ sae.W_dec + sae.b_dec
    expected = ((x - x_hat) ** 2).sum(1).mean() + 0.2 * (pre > theta).float().sum(1).mean()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(sae.encode(x), torch.relu(pre) * (pre > theta))
    out.loss.backward()
    # Straight-through estimate: dL0/dθ = -(1/ε) Σ rect((pre-θ)/ε) / B per latent (θ > 0 here).
    inside = (((pre - theta) / 0.5).abs() < 0.5).float()
    d_l0 = -(1 / 0.5) * inside.sum(0) / 7 * 0.2
    err = 2 * (x_hat - x) / 7
    d_mse = -(theta / 0.5) * (inside * (err @ sae.W_dec.T)).sum(0)
    expected_grad = 3.0 * (d_l0 + d_mse) * (sae.threshold > 0)
    torch.testing.assert_close(sae.threshold.grad, expected_grad.detach())
    # SAELens sees θ itself, both ways.
    _, tensors = sae.to_saelens()
    torch.testing.assert_close(tensors["threshold"], 3.0 * sae.threshold.detach())
    back = JumpReLUSAE.from_saelens({"d_in": 3, "d_sae": 6, "architecture": "jumprelu"}, tensors)
    torch.testing.assert_close(back.thresholds(), 3.0 * sae.threshold.detach())


def test_topk_loss_matches_hand_computation():
    sae = _tiny(TopKSAE, TopKConfig(expansion=8, k=2, aux_k_coefficient=0.0))
    assert sae.use_sparse(2.0)
    x = torch.randn(4, 3)
    out = sae.loss(x)
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    top = pre.topk(2, dim=1)
    z = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
    x_hat = z @ sae.W_dec + sae.b_dec
    torch.testing.assert_close(out.loss, ((x - x_hat) ** 2).sum(1).mean())
    torch.testing.assert_close(out.z, z)
    assert_same_gradients(sae, out.loss, ((x - x_hat) ** 2).sum(1).mean())
    dense = _tiny(
        TopKSAE, TopKConfig(expansion=8, k=2, aux_k_coefficient=0.0, sparse_backend="dense")
    )
    pre = (x - dense.b_dec) @ dense.W_enc.T + dense.b_enc
    top = pre.topk(2, dim=1)
    z = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
    reference = ((x - (z @ dense.W_dec + dense.b_dec)) ** 2).sum(1).mean()
    assert_same_gradients(dense, dense.loss(x).loss, reference)


def _grads(sae, x):
    sae.zero_grad(set_to_none=True)
    terms = sae.train_terms(x)
    terms.loss.backward()
    return terms, {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "cls,config",
    [
        (TopKSAE, TopKConfig(expansion=4, k=3)),
        (TopKSAE, TopKConfig(expansion=4, k=3, apply_b_dec_to_input=False)),
        # The default topk_warmup, over a run announced as 1,000 samples: per-sample selection
        # (the first step); 0: batch selection.
        (BatchTopKSAE, BatchTopKConfig(expansion=4, k=3)),
        (BatchTopKSAE, BatchTopKConfig(expansion=4, k=3, topk_warmup=0)),
        (MatryoshkaSAE, MatryoshkaConfig(expansion=4, k=3, prefix_fractions=(0.25, 0.5, 1.0))),
        (
            MatryoshkaSAE,
            MatryoshkaConfig(expansion=4, k=3, prefix_fractions=(0.25, 0.5, 1.0), topk_warmup=0),
        ),
        *(
            (MatryoshkaSAE, MatryoshkaConfig(expansion=4, k=3, nesting=nesting, topk_warmup=w))
            for nesting in ("latents", "rank")
            for w in (0.0, 0.5)
        ),
    ],
)
def test_sparse_path_gives_the_dense_gradients(cls, config):
    d = 6
    torch.manual_seed(1)
    sparse = cls(d, type(config)(**{**config.__dict__, "sparse_backend": "sparse", "aux_k": 4}))
    dense = cls(d, type(config)(**{**config.__dict__, "sparse_backend": "dense", "aux_k": 4}))
    dense.load_state_dict(sparse.state_dict())
    with torch.no_grad():
        for p in sparse.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        dense.load_state_dict(sparse.state_dict())
        # Half the latents dead, so AuxK takes part too.
        for m in (sparse, dense):
            m.samples_since_fired[::2] = 10**9
            m.begin_training(1000)
    x = torch.randn(9, d)
    t_sparse, g_sparse = _grads(sparse, x)
    t_dense, g_dense = _grads(dense, x)
    assert "auxk" in t_sparse.metrics and "auxk" in t_dense.metrics
    torch.testing.assert_close(t_sparse.loss, t_dense.loss)
    torch.testing.assert_close(t_sparse.x_hat, t_dense.x_hat)
    assert g_sparse.keys() == g_dense.keys() == {"W_enc", "b_enc", "W_dec", "b_dec"}
    for name in g_dense:
        torch.testing.assert_close(g_sparse[name], g_dense[name], msg=name)
    torch.testing.assert_close(t_sparse.fired, t_dense.fired)


@pytest.mark.parametrize("nesting", ["latents", "rank", "both"])
@pytest.mark.parametrize("backend", ["sparse", "dense"])
@pytest.mark.parametrize("warmup", [0.0, 0.5])
def test_matryoshka_loss_is_the_mean_of_its_nested_reconstructions(nesting, backend, warmup):
    # By hand, row by row: select (the batch's top k·B, or each row's top k while warming
    # up), then reconstruct from the latents below each dictionary prefix end (latents) or
    # from the row's ⌈f·c⌉ largest activations (rank), c the number the row kept.
    d, k, fractions = 6, 3, (0.25, 0.5, 1.0)
    torch.manual_seed(4)
    config = MatryoshkaConfig(
        expansion=4,
        k=k,
        prefix_fractions=fractions,
        nesting=nesting,
        topk_warmup=warmup,
        k_ramp=0.0,  # k from the first step (the ramp has a test of its own)
        aux_k_coefficient=0.0,
        sparse_backend=backend,
    )
    sae = MatryoshkaSAE(d, config)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    sae.train()
    sae.begin_training(1000)
    x = torch.randn(7, d)
    loss = float(sae.train_terms(x).loss.detach())

    W_enc, b_enc = sae.W_enc.detach().double(), sae.b_enc.detach().double()
    W_dec, b_dec = sae.W_dec.detach().double(), sae.b_dec.detach().double()
    xn = x.double() * sae.input_scale
    pre = (xn - b_dec) @ W_enc.T + b_enc
    n = pre.shape[1]
    if warmup:
        keep = [set(row.topk(k).indices.tolist()) for row in pre]
    else:
        flat = pre.reshape(-1).topk(k * len(x)).indices.tolist()
        keep = [{f % n for f in flat if f // n == r} for r in range(len(x))]
    ends = [round(f * n) for f in fractions]
    errors: dict[str, list[list[float]]] = {"latents": [], "rank": []}
    for r, row in enumerate(pre):
        kept = sorted(keep[r], key=lambda c: -float(row[c]))  # largest activation first
        parts = {
            "latents": [[c for c in kept if c < end] for end in ends],
            "rank": [kept[: max(1, math.ceil(f * len(kept)))] for f in fractions],
        }
        for kind, subsets in parts.items():
            errors[kind].append(
                [
                    float(
                        (xn[r] - b_dec - sum(torch.relu(row[c]) * W_dec[c] for c in sub))
                        .pow(2)
                        .sum()
                    )
                    for sub in subsets
                ]
            )
    per_part = {kind: np.mean(e, axis=0) for kind, e in errors.items()}
    if nesting == "both":  # the full reconstruction ends both kinds: counted once
        want = np.mean([*per_part["latents"], *per_part["rank"][:-1]])
    else:
        want = np.mean(per_part[nesting])
    assert loss == pytest.approx(want, rel=1e-5)


def test_sparse_decode_handles_empty_rows_and_matches_dense():
    torch.manual_seed(0)
    w = torch.randn(7, 5, requires_grad=True)
    flat = torch.tensor([3 * 7 + 1, 0 * 7 + 6, 3 * 7 + 2, 0 * 7 + 0])  # rows 1, 2 and 4 empty
    code, order = SparseCode.from_flat(flat, 5, 7)
    values = torch.tensor([0.5, -1.0, 2.0, 1.5])[order].requires_grad_()
    out = SparseDecode.apply(values, w, code)
    grad = torch.randn(5, 5)
    (out * grad).sum().backward()
    dense_values = values.detach().clone().requires_grad_()
    w2 = w.detach().clone().requires_grad_()
    ref = code.dense(dense_values) @ w2
    (ref * grad).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(values.grad, dense_values.grad)
    torch.testing.assert_close(w.grad, w2.grad)
    want = (grad[code.rows] * w[code.cols]).sum(1).detach()
    torch.testing.assert_close(sampled_dot(grad, w.detach(), code), want)
    torch.testing.assert_close(sampled_dot_gather(grad, w.detach(), code), want)


def test_batch_topk_keeps_k_per_sample_on_average_and_thresholds_at_inference():
    torch.manual_seed(0)
    sae = BatchTopKSAE(8, BatchTopKConfig(expansion=4, k=2, topk_warmup=0))
    x = torch.randn(16, 8)
    terms = sae.train_terms(x)
    assert float(terms.metrics["l0"]) <= 2.0
    assert int((terms.dense_z() > 0).sum()) == int(terms.fired.sum())
    # The first estimate is the batch's smallest kept positive activation itself ...
    kept = terms.dense_z()
    first = kept[kept > 0].min()
    torch.testing.assert_close(sae.threshold, first)
    # ... later ones a running mean with the configured momentum.
    x2 = torch.randn(16, 8)
    kept2 = sae.train_terms(x2).dense_z()
    m = 16 / sae.config.threshold_window  # momentum 0: batch size / window
    torch.testing.assert_close(sae.threshold, (1 - m) * first + m * kept2[kept2 > 0].min())
    sae.eval()
    pre = sae.pre_activations(x)
    torch.testing.assert_close(sae.encode(x), pre * (pre > sae.threshold))


def test_batch_topk_warmup_keeps_each_samples_top_k_then_the_batchs():
    torch.manual_seed(0)
    k, batch = 2, 16
    config = BatchTopKConfig(expansion=4, k=k, topk_warmup=0.25, k_ramp=0, aux_k_coefficient=0.0)
    sae = BatchTopKSAE(8, config)
    assert "samples_trained" in sae.state_dict()
    # Not told how long the run is (a loop of its own), the SAE selects per batch.
    assert sae.train() and not sae.warming_up()
    sae.begin_training(4 * batch)  # the warm-up: a quarter of 64 samples, one batch
    unwarmed = BatchTopKConfig(expansion=4, topk_warmup=0, k_ramp=0)
    assert "samples_trained" not in BatchTopKSAE(8, unwarmed).state_dict()

    def batch_kept(pre: np.ndarray) -> tuple[np.ndarray, float]:
        # By hand: the k·B largest entries of the batch, and the smallest positive one.
        cut = np.sort(pre.ravel())[::-1][k * batch - 1]
        kept = np.where(pre >= cut, np.maximum(pre, 0), 0)
        return kept, float(kept[kept > 0].min())

    x1, x2 = torch.randn(batch, 8), torch.randn(batch, 8)
    pre1 = sae.pre_activations(x1).detach().numpy()
    want = np.zeros_like(pre1)
    for r in range(batch):  # the warm-up: each row's own k largest
        top = np.argsort(-pre1[r])[:k]
        want[r, top] = np.maximum(pre1[r, top], 0)
    np.testing.assert_allclose(sae.train_terms(x1).dense_z().numpy(), want, rtol=1e-6)
    assert int(sae.samples_trained) == batch
    # The threshold estimate is the batch selection's even while the warm-up selects per row.
    _, first = batch_kept(pre1)
    assert float(sae.threshold) == pytest.approx(first, rel=1e-6)
    pre2 = sae.pre_activations(x2).detach().numpy()
    kept2, smallest = batch_kept(pre2)
    np.testing.assert_allclose(sae.train_terms(x2).dense_z().numpy(), kept2, rtol=1e-6)
    m = batch / config.threshold_window
    assert float(sae.threshold) == pytest.approx((1 - m) * first + m * smallest, rel=1e-6)
    # Inference never warms up: a fresh SAE in eval mode encodes with its threshold.
    fresh = BatchTopKSAE(8, config).eval()
    fresh.threshold.fill_(0.05)
    pre = fresh.pre_activations(x1)
    torch.testing.assert_close(fresh.encode(x1), pre * (pre > 0.05))
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="topk_warmup"):
            BatchTopKConfig(topk_warmup=bad)


def _ramp_k(k: int, start: float, ramp: float, total: int, done: int) -> int:
    # By hand: start·k rounded half up (at least 1) at the first sample, k after ramp·total
    # samples, linear (rounded half up) in between.
    first = max(1, int(start * k + 0.5))
    return first + int((k - first) * min(1.0, done / (ramp * total)) + 0.5)


def test_k_ramp_grows_the_latents_kept_per_sample_from_k_start_to_k():
    torch.manual_seed(2)
    k, batch, steps = 8, 5, 8
    config = TopKConfig(expansion=4, k=k, k_start=0.25, k_ramp=0.5, aux_k_coefficient=0.0)
    sae = TopKSAE(6, config)
    assert "samples_trained" in sae.state_dict()
    sae.train()
    assert sae.training_k() == k  # not told how long the run is: k from the first step
    sae.begin_training(steps * batch)
    seen = []
    for step in range(steps):
        x = torch.randn(batch, 6)
        pre = sae.pre_activations(x).detach().numpy()
        z = sae.train_terms(x).dense_z().numpy()
        want = _ramp_k(k, 0.25, 0.5, steps * batch, step * batch)
        seen.append(want)
        for r in range(batch):  # each row keeps its own `want` largest pre-activations
            top = np.argsort(-pre[r])[:want]
            expected = np.zeros(sae.d_sae, dtype=np.float32)
            expected[top] = np.maximum(pre[r, top], 0)
            np.testing.assert_allclose(z[r], expected, rtol=1e-6)
    assert seen == [2, 4, 5, 7, 8, 8, 8, 8] and int(sae.samples_trained) == steps * batch
    # Inference always keeps k, whatever the point of training.
    x = torch.randn(batch, 6)
    assert int((sae.eval().encode(x) != 0).sum(1).max()) <= k == sae.training_k()
    assert bool(((sae.encode(x) != 0).sum(1) == k).all())
    # A new run starts its ramp afresh, whatever was computed before it; a loaded state (a
    # resumed run) sets where it stands.
    sae.train()
    sae.loss(torch.randn(30, 6)).loss.backward()
    sae.begin_training(steps * batch)
    assert int(sae.samples_trained) == 0 and sae.training_k() == 2
    state = {**sae.state_dict(), "samples_trained": torch.tensor(15)}
    sae.load_state_dict(state)
    assert sae.training_k() == _ramp_k(k, 0.25, 0.5, steps * batch, 15) == 7


def test_batch_topk_follows_the_k_ramp_after_its_warm_up_and_estimates_at_k():
    torch.manual_seed(3)
    k, batch = 4, 8
    config = BatchTopKConfig(
        expansion=4, k=k, topk_warmup=0.25, k_ramp=0.75, k_start=0.5, aux_k_coefficient=0.0
    )
    sae = BatchTopKSAE(6, config).train()
    sae.begin_training(4 * batch)  # warm-up: the first batch; ramp: the first three
    m, threshold = batch / config.threshold_window, None
    for step in range(4):
        x = torch.randn(batch, 6)
        pre = sae.pre_activations(x).detach().numpy()
        z = sae.train_terms(x).dense_z().numpy()
        want = _ramp_k(k, 0.5, 0.75, 4 * batch, step * batch)
        if step == 0:  # per sample
            assert ((z != 0).sum(1) <= want).all() and want == 2
        else:
            # The batch's want·B largest (ties aside), positive ones kept.
            cut = np.sort(pre.ravel())[::-1][want * batch - 1]
            kept = np.where(pre >= cut, np.maximum(pre, 0), 0)
            np.testing.assert_allclose(z, kept, rtol=1e-6)
        # The threshold is estimated at k all along: the smallest positive of the top k·B.
        at_k = np.sort(pre.ravel())[::-1][: k * batch]
        smallest = float(at_k[at_k > 0].min())
        threshold = smallest if threshold is None else (1 - m) * threshold + m * smallest
        assert float(sae.threshold) == pytest.approx(threshold, rel=1e-5)
    assert [_ramp_k(k, 0.5, 0.75, 32, s * batch) for s in range(4)] == [2, 3, 3, 4]


@pytest.mark.parametrize(
    "args,ramp,start",
    [
        ({"k_ramp": 0, "k_start": 0.25}, 0.0, 1.0),
        ({"k_ramp": 0.5, "k_start": 1}, 0.0, 1.0),
        ({"k_ramp": 0.5, "k_start": 0.95}, 0.0, 1.0),  # starts at round(7.6) = 8 = k
        ({"k_ramp": 0.5, "k_start": 0.9}, 0.5, 0.9),  # starts at round(7.2) = 7
    ],
)
def test_a_flat_k_ramp_is_recorded_as_constant_k(args, ramp, start):
    # Each way k is constant: one setting, recorded (and so identified) one way.
    config = TopKConfig(k=8, **args)
    assert (config.k_ramp, config.k_start) == (ramp, start)
    assert (config == TopKConfig(k=8, k_ramp=0)) == (ramp == 0)
    assert TopKConfig(k=1).k_ramp == 0  # k = 1 has nothing to ramp
    for bad in ({"k_ramp": 1.0}, {"k_ramp": -0.1}, {"k_start": 0}, {"k_start": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TopKConfig(**bad)


def test_unit_norm_decoder_is_kept_and_gradient_projected():
    torch.manual_seed(0)
    sae = TopKSAE(4, TopKConfig(expansion=2, k=2, decoder_norm="unit"))
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(8))
    sae.train_terms(torch.randn(5, 4)).loss.backward()
    sae.before_optimizer_step()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-6
    relu = ReLUSAE(4, ReLUConfig(expansion=2))
    torch.testing.assert_close(relu.W_dec.norm(dim=1), torch.full((8,), 0.1))
    torch.testing.assert_close(relu.W_enc, relu.W_dec)


def test_geometric_median_resists_outliers():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]])
    med = geometric_median(pts)
    assert float(med.norm()) < 2.0
    assert float(pts.mean(0).norm()) > 20


def test_configs_validate_with_one_line_messages():
    with pytest.raises(ConfigError, match="prefix_fractions"):
        build_config(
            MatryoshkaConfig, {"prefix_fractions": [0.5, 0.25, 1.0]}, where="s.yaml: saes[0].args"
        )
    with pytest.raises(ConfigError, match="k"):
        build_config(TopKConfig, {"k": 0}, where="s.yaml")
    with pytest.raises(ConfigError, match="unknown key `kk`"):
        build_config(TopKConfig, {"kk": 3}, where="s.yaml")
    cfg = build_config(MatryoshkaConfig, {"prefix_fractions": [0.5, 1]}, where="s.yaml")
    assert cfg.prefix_fractions == (0.5, 1.0)


def test_registered_names_and_light_hooks(manager):
    registry = manager.registry()
    assert set(registry.names("sae")) >= {
        "relu",
        "topk",
        "gated",
        "batch-topk",
        "jumprelu",
        "matryoshka",
    }
    for entry in registry.entries("sae"):
        if entry.plugin == "saes" or entry.ref.target.startswith("saebench_vision_plugins.saes"):
            cls = entry.load()
            assert cls.name == entry.name
            assert entry.config_class() is cls.Config
    code = (
        "import sys; import saebench_vision_plugins.saes.hooks as h, "
        "saebench_vision_plugins.saes.configs; h.register_saes(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "cls,configs",
    [
        (ReLUSAE, [ReLUConfig(expansion=2, l1_coefficient=c) for c in (0.1, 1.0, 3.0)]),
        (
            ReLUSAE,
            [ReLUConfig(expansion=2, l1_coefficient=c, decoder_norm="unit") for c in (0.1, 1.0)],
        ),
        (GatedSAE, [GatedConfig(expansion=2, l1_coefficient=c) for c in (0.1, 1.0, 3.0)]),
        (
            JumpReLUSAE,
            [JumpReLUConfig(expansion=2, l0_coefficient=c, bandwidth=1.0) for c in (0.1, 2.0)],
        ),
        (TopKSAE, [TopKConfig(expansion=4, k=k, aux_k=3) for k in (1, 2, 4)]),
        (TopKSAE, [TopKConfig(expansion=4, k=k, sparse_backend="dense") for k in (1, 3)]),
        (BatchTopKSAE, [BatchTopKConfig(expansion=4, k=k, aux_k=3) for k in (1, 2)]),
        (
            MatryoshkaSAE,
            [MatryoshkaConfig(expansion=4, k=k, prefix_fractions=(0.5, 1.0)) for k in (1, 2)],
        ),
        (
            MatryoshkaSAE,
            [MatryoshkaConfig(expansion=4, k=k, nesting="rank", topk_warmup=0) for k in (2, 3)],
        ),
    ],
)
def test_a_fused_group_gives_each_member_its_own_gradients(cls, configs):
    d = 6
    torch.manual_seed(3)
    members = [cls(d, c) for c in configs]
    with torch.no_grad():
        for i, m in enumerate(members):
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.3)
            if hasattr(m, "samples_since_fired"):
                m.samples_since_fired[i :: 2 + i] = 10**9
    alone = []
    for m in members:
        twin = cls(d, m.config)
        twin.load_state_dict(m.state_dict())
        alone.append(twin)
    x = torch.randn(10, d)
    names = [n for n, _ in members[0].named_parameters()]
    stacked = {
        n: torch.stack([dict(m.named_parameters())[n].detach() for m in members]).requires_grad_()
        for n in names
    }
    group = cls.group_terms(members, stacked, x, 0.7)
    group.loss.backward()
    for i, twin in enumerate(alone):
        terms = twin.train_terms(x, sparsity_scale=0.7)
        terms.loss.backward()
        torch.testing.assert_close(group.items[i].loss, terms.loss)
        for n, p in twin.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(stacked[n].grad[i], p.grad, msg=f"{n} of member {i}")


def test_auxk_counts_a_latent_dead_after_both_the_sample_and_the_step_window():
    """Dead for AuxK = no firing for ``dead_after`` samples and ``dead_after_steps`` batches."""
    d, batch = 6, 32
    torch.manual_seed(0)
    x = torch.randn(batch, d)

    def auxk_on(quiet: int, steps: int) -> bool:
        sae = TopKSAE(d, TopKConfig(expansion=2, k=2, dead_after=100, dead_after_steps=steps))
        sae.train()
        with torch.no_grad():
            sae.samples_since_fired.fill_(quiet)
        return "auxk" in sae.train_terms(x, sparsity_scale=1.0).metrics

    # The window is max(100 samples, steps x 32): 320 with 10 steps, 100 with none.
    assert not auxk_on(99, 0)
    assert auxk_on(100, 0)
    assert not auxk_on(200, 10)
    assert auxk_on(320, 10)
