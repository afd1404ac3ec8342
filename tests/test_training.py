"""The trainer: schedules, determinism, sweeps = separate runs, resume, streaming from the cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from saebench_vision_plugins.saes.configs import (
    BatchTopKConfig,
    GatedConfig,
    ReLUConfig,
    TopKConfig,
)
from saebench_vision_plugins.saes.gated import GatedSAE
from saebench_vision_plugins.saes.relu import ReLUSAE
from saebench_vision_plugins.saes.topk import BatchTopKSAE, TopKSAE

from saebench_vision import training
from saebench_vision.cache import ActivationCache
from saebench_vision.config import TrainingConfig
from saebench_vision.errors import SaebenchError
from saebench_vision.training import _BatchStream, _Rows, lr_factor, sparsity_factor, train_saes


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def data(n: int = 640, d: int = 8, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    return (g.standard_normal((n, d)) * 3 + 1).astype(np.float32)


def make_saes(d: int = 8, seed: int = 0) -> list:
    torch.manual_seed(seed)
    return [
        ReLUSAE(d, ReLUConfig(expansion=2, l1_coefficient=0.5, b_dec_init="mean")),
        TopKSAE(d, TopKConfig(expansion=4, k=2, dead_after=64, b_dec_init="geometric-median")),
        GatedSAE(d, GatedConfig(expansion=2)),
    ]


def state(sae) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in sae.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_paper_schedule():
    cfg = TrainingConfig()
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (1e-4, 3, 64)
    total = 100
    assert lr_factor(0, total, cfg) == pytest.approx(1 / 5)
    assert lr_factor(4, total, cfg) == 1.0
    assert lr_factor(50, total, cfg) == 1.0
    assert lr_factor(80, total, cfg) == pytest.approx(20 / 20)
    assert lr_factor(90, total, cfg) == pytest.approx(10 / 20)
    assert lr_factor(99, total, cfg) == pytest.approx(1 / 20)
    assert sparsity_factor(0, total, cfg) == pytest.approx(1 / 5)
    assert sparsity_factor(4, total, cfg) == 1.0
    assert training.total_steps(640, TrainingConfig(epochs=1.5, batch_size=64)) == 15


def test_training_reduces_loss_and_reports_stats():
    x = data()
    saes = make_saes()
    before = [float(s.loss(torch.from_numpy(x)).metrics["mse"]) for s in saes]
    stats = train_saes(saes, x, TrainingConfig(epochs=3, lr=3e-3), seed=0, progress=False)
    for sae, st, b in zip(saes, stats, before):
        for key in (
            "final_loss",
            "final_mse",
            "final_l0",
            "dead_fraction",
            "dense_fraction",
            "steps",
            "seconds",
        ):
            assert math.isfinite(st[key]), (sae.name, key)
        assert st["steps"] == 30
        assert 0 <= st["dead_fraction"] <= 1 and 0 <= st["dense_fraction"] <= 1
        assert float(sae.loss(torch.from_numpy(x)).metrics["mse"]) < b
        assert sae.W_enc.device.type == "cpu" and not sae.training
    # Inputs are scaled to mean norm sqrt(d); the SAEs undo it on output.
    scale = stats[0]["input_scale"]
    assert float(np.linalg.norm(x[:8192], axis=1).mean()) * scale == pytest.approx(
        math.sqrt(8), rel=1e-4
    )
    assert float(saes[0].input_scale) == pytest.approx(scale)
    assert stats[1]["final_l0"] <= 2.0


def test_deterministic_for_a_seed_and_sweep_equals_separate_runs():
    x = data()
    cfg = TrainingConfig(epochs=2, lr=3e-3)
    a, b = make_saes(), make_saes()
    train_saes(a, x, cfg, seed=3, progress=False)
    train_saes(b, x, cfg, seed=3, progress=False)
    for sa, sb in zip(a, b):
        assert_same(state(sa), state(sb))
    alone = make_saes()
    for sae in alone:
        train_saes([sae], x, cfg, seed=3, progress=False)
    for sa, sb in zip(a, alone):
        assert_same(state(sa), state(sb))
    other = make_saes()
    train_saes(other, x, cfg, seed=4, progress=False)
    assert not torch.equal(other[0].W_enc, a[0].W_enc)


def make_ramped(seed: int = 0) -> list:
    # make_saes() and two SAEs whose k ramp (over 90% of the run) is still climbing at the
    # checkpoint below, one of them in BatchTopK's batch phase by then.
    saes = make_saes(seed=seed)
    ramp = {"expansion": 4, "k": 4, "k_start": 0.25, "k_ramp": 0.9, "dead_after": 64}
    saes.append(TopKSAE(8, TopKConfig(**ramp)))
    saes.append(BatchTopKSAE(8, BatchTopKConfig(**ramp, topk_warmup=0.3)))
    return saes


def test_resume_from_checkpoint_gives_the_uninterrupted_weights(tmp_path, monkeypatch):
    x = data()
    cfg = TrainingConfig(epochs=3, lr=3e-3, checkpoint_every=7)
    reference = make_ramped()
    ref_stats = train_saes(reference, x, cfg, seed=1, progress=False)

    real = training.lr_factor

    def crash_at_17(step, total, config):
        if step == 17:
            raise KeyboardInterrupt
        return real(step, total, config)

    monkeypatch.setattr(training, "lr_factor", crash_at_17)
    with pytest.raises(KeyboardInterrupt):
        train_saes(make_ramped(), x, cfg, seed=1, progress=False, checkpoint_dir=tmp_path)
    assert (tmp_path / training.STATE_FILE).exists()
    saved = torch.load(tmp_path / training.STATE_FILE, weights_only=True)
    assert saved["step"] == 14
    monkeypatch.setattr(training, "lr_factor", real)

    # The two ramped SAEs stopped mid-ramp: 14 steps of 64 samples, of the 0.9 x 30 x 64.
    assert [int(sd["samples_trained"]) for sd in saved["saes"][-2:]] == [14 * 64] * 2
    assert 14 * 64 < 0.9 * 30 * 64
    resumed = make_ramped(seed=99)  # different starting weights: the checkpoint must win
    stats = train_saes(resumed, x, cfg, seed=1, progress=False, checkpoint_dir=tmp_path)
    for sa, sb in zip(reference, resumed):
        assert_same(state(sa), state(sb))
    for a, b in zip(ref_stats, stats):
        for key in ("final_loss", "final_mse", "final_l0", "dead_fraction", "dense_fraction"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    assert not (tmp_path / training.STATE_FILE).exists()


def test_checkpoint_for_other_settings_is_ignored(tmp_path, capsys):
    x = data()
    cfg = TrainingConfig(epochs=1, lr=3e-3, checkpoint_every=3)
    training._save_state(tmp_path / training.STATE_FILE, {"fingerprint": "other", "step": 5})
    fresh = make_saes()
    train_saes(fresh, x, cfg, seed=0, progress=False, checkpoint_dir=tmp_path)
    reference = make_saes()
    train_saes(reference, x, cfg, seed=0, progress=False)
    assert_same(state(fresh[0]), state(reference[0]))
    assert "starting over" in capsys.readouterr().err


def test_streams_from_the_memory_mapped_cache(tmp_path):
    x = data(n=3000, d=8)
    cache = ActivationCache(tmp_path / "cache")
    writer = cache.writer("k" * 64, 8, {})
    writer.append(x, np.arange(len(x)), None)
    acts = writer.commit()
    rows = _Rows(acts, None, seed=0)
    stream = _BatchStream(rows, 64, seed=0, device=torch.device("cpu"), in_memory=False)
    order = stream.epoch_order(0)
    assert sorted(order.tolist()) == list(range(3000))
    assert not np.array_equal(order, np.arange(3000))
    # Batches continue seamlessly across buffers and epochs, and match the epoch orders.
    got = torch.cat([b for _, b in zip(range(100), stream.batches(0))])
    want = np.concatenate(
        [x[stream.epoch_order(0)], x[stream.epoch_order(1)], x[stream.epoch_order(2)]]
    )
    np.testing.assert_array_equal(got.numpy(), want[: len(got)])
    later = next(stream.batches(60))
    np.testing.assert_array_equal(later.numpy(), want[60 * 64 : 61 * 64])

    cfg = TrainingConfig(epochs=1, lr=3e-3, in_memory_limit_gb=0.0, max_samples=2000)
    streamed = make_saes()
    st = train_saes(streamed, acts, cfg, seed=0, progress=False)
    assert st[0]["steps"] == round(2000 / 64)
    again = make_saes()
    train_saes(again, acts, cfg, seed=0, progress=False)
    assert_same(state(streamed[1]), state(again[1]))


def test_streaming_reads_a_fixed_number_of_rows_whatever_the_data_size(tmp_path, monkeypatch):
    # The heap the data takes while streaming is bounded by READ_BYTES (whole batches), not by
    # the number of rows; the batches are still the epoch orders' rows.
    x = data(n=3000, d=8)
    cache = ActivationCache(tmp_path / "cache")
    writer = cache.writer("r" * 64, 8, {})
    writer.append(x, np.arange(len(x)), None)
    acts = writer.commit()
    monkeypatch.setattr(training, "READ_BYTES", 3 * 64 * 8 * 4)  # three batches of 64 x 8
    rows = _Rows(acts, None, seed=0)
    sizes: list[int] = []
    read = rows.read
    monkeypatch.setattr(rows, "read", lambda pos: sizes.append(len(pos)) or read(pos))
    stream = _BatchStream(rows, 64, seed=0, device=torch.device("cpu"), in_memory=False)
    got = torch.cat([b for _, b in zip(range(100), stream.batches(0))])
    want = np.concatenate([x[stream.epoch_order(e)] for e in range(3)])
    np.testing.assert_array_equal(got.numpy(), want[: len(got)])
    assert set(sizes) == {3 * 64} and len(sizes) >= 100 // 3


def test_bad_inputs_raise_one_line_errors(monkeypatch):
    with pytest.raises(SaebenchError, match="width 8"):
        train_saes([ReLUSAE(4, ReLUConfig())], data(), TrainingConfig(), seed=0, progress=False)
    # As on a machine without a GPU, whatever this one has.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SaebenchError, match="device 'cuda': this torch sees no CUDA device"):
        train_saes(make_saes(), data(), TrainingConfig(device="cuda"), seed=0, progress=False)


def sweep(d: int = 8) -> list:
    torch.manual_seed(5)
    return (
        [ReLUSAE(d, ReLUConfig(expansion=2, l1_coefficient=c)) for c in (0.1, 0.5, 2.0)]
        + [
            TopKSAE(d, TopKConfig(expansion=4, k=k, dead_after=64, sparse_backend="sparse"))
            for k in (1, 2, 4)
        ]
        + [GatedSAE(d, GatedConfig(expansion=2, l1_coefficient=c)) for c in (0.3, 1.0)]
    )


def test_fused_groups_match_separate_training_and_resume(tmp_path, monkeypatch):
    x = data()
    fused, plain = sweep(), sweep()
    trainer = training.SweepTrainer(
        fused,
        TrainingConfig(lr=3e-3, fuse="on"),
        total_steps=10,
        input_scale=1.0,
        device=torch.device("cpu"),
    )
    assert sorted(len(g.saes) for g in trainer.groups) == [2, 3, 3]
    trainer.finish()
    cfg = TrainingConfig(epochs=1, lr=3e-3, fuse="on")
    train_saes(fused, x, cfg, seed=2, progress=False)
    train_saes(plain, x, TrainingConfig(epochs=1, lr=3e-3, fuse="off"), seed=2, progress=False)
    for a, b in zip(fused, plain):
        for key, value in state(a).items():
            torch.testing.assert_close(value, state(b)[key], rtol=1e-4, atol=1e-5, msg=key)
    # Members own their storage again after training.
    ptrs = {s.W_enc.untyped_storage().data_ptr() for s in fused}
    assert len(ptrs) == len(fused)

    ckpt = TrainingConfig(epochs=2, lr=3e-3, checkpoint_every=4, fuse="on")
    reference = sweep()
    train_saes(reference, x, ckpt, seed=2, progress=False)
    real = training.lr_factor

    def crash(step, total, config):
        if step == 13:
            raise KeyboardInterrupt
        return real(step, total, config)

    monkeypatch.setattr(training, "lr_factor", crash)
    with pytest.raises(KeyboardInterrupt):
        train_saes(sweep(), x, ckpt, seed=2, progress=False, checkpoint_dir=tmp_path)
    monkeypatch.setattr(training, "lr_factor", real)
    resumed = sweep()
    train_saes(resumed, x, ckpt, seed=2, progress=False, checkpoint_dir=tmp_path)
    for a, b in zip(reference, resumed):
        assert_same(state(a), state(b))


def test_parallel_saes_give_the_sequential_weights():
    x = data()
    threads = torch.get_num_threads()
    side_by_side, one_by_one = sweep(), sweep()
    train_saes(
        side_by_side, x, TrainingConfig(epochs=1, lr=3e-3, parallel_saes=3), seed=1, progress=False
    )
    assert torch.get_num_threads() == threads
    train_saes(
        one_by_one, x, TrainingConfig(epochs=1, lr=3e-3, parallel_saes=1), seed=1, progress=False
    )
    for a, b in zip(side_by_side, one_by_one):
        assert_same(state(a), state(b))
    trainer = training.SweepTrainer(
        sweep(),
        TrainingConfig(parallel_saes=3),
        total_steps=10,
        input_scale=1.0,
        device=torch.device("cpu"),
    )
    assert len(trainer._shares) == 3 and sorted(sum(trainer._shares, [])) == list(range(8))
    trainer.finish()
    assert torch.get_num_threads() == threads


def test_gradient_clipping_is_per_sae_in_fused_and_separate_groups():
    """Each member's gradient is scaled to global norm ``max_norm`` (torch's formula), whether
    its group is stacked or not, and a member whose norm is already small is left alone."""
    x = torch.from_numpy(data(n=64))

    def members() -> list:
        torch.manual_seed(0)
        return [ReLUSAE(8, ReLUConfig(expansion=2, l1_coefficient=c)) for c in (0.0, 0.5, 4.0)]

    # The independent derivation: each SAE alone, its gradient from its own loss.
    expected, norms = [], []
    for sae in members():
        sae.train_terms(x, sparsity_scale=1.0).loss.backward()
        grads = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
        norms.append(math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values())))
        expected.append(grads)
    max_norm = sorted(norms)[1]  # one member under the bound, two above it
    assert min(norms) < max_norm < max(norms)
    for grads, norm in zip(expected, norms):
        for g in grads.values():
            g.mul_(min(1.0, max_norm / (norm + 1e-6)))

    for stack in (True, False):
        group = training._Group(members(), stack=stack)
        group.step(x, x, 1.0)
        group.clip_gradients(max_norm)
        for i, sae in enumerate(group.saes):
            for name, want in expected[i].items():
                got = (
                    group.stacked[name].grad[i]
                    if stack
                    else dict(sae.named_parameters())[name].grad
                )
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=f"{stack} {name}")

    group = training._Group(members(), stack=True)
    group.step(x, x, 1.0)
    before = {n: p.grad.clone() for n, p in group.stacked.items() if p.grad is not None}
    group.clip_gradients(0.0)  # off
    for n, g in before.items():
        assert torch.equal(group.stacked[n].grad, g)


def test_log_progress_lines_show_the_loss_of_the_step_they_report(capsys):
    seen: list[float] = []

    class Recording(ReLUSAE):
        def train_terms(self, xn, *, sparsity_scale=1.0):
            terms = super().train_terms(xn, sparsity_scale=sparsity_scale)
            seen.append(float(terms.metrics["mse"]))
            return terms

    torch.manual_seed(0)
    sae = Recording(8, ReLUConfig(expansion=2, l1_coefficient=0.5))
    cfg = TrainingConfig(epochs=4, batch_size=16, lr=1e-2)
    train_saes([sae], data(), cfg, seed=0, progress="log", desc="train toy")
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("train toy:")]
    assert len(seen) == 160 and len(lines) >= 10
    shown = []
    for line in lines:
        step = int(line.split(": ")[1].split("/")[0])
        mse = line.split("mse=")[1].split(",")[0]
        # The value of the last step done (the loss falls, so a stale one would differ).
        assert mse == f"{seen[step - 1]:.4g}", line
        shown.append(mse)
    assert len(set(shown)) == len(shown)


def test_a_progress_bar_gets_the_latest_loss(monkeypatch):
    seen: list[float] = []
    posted: list[tuple[int, str]] = []

    class Recording(ReLUSAE):
        def train_terms(self, xn, *, sparsity_scale=1.0):
            terms = super().train_terms(xn, sparsity_scale=sparsity_scale)
            seen.append(float(terms.metrics["mse"]))
            return terms

    class Bar:  # what tqdm offers the loop
        n = 0

        def update(self, n):
            self.n += n

        def set_postfix(self, **values):
            posted.append((self.n, values["mse"]))

        def close(self):
            pass

    monkeypatch.setattr(training, "_progress", lambda *a: Bar())
    monkeypatch.setattr(training, "POSTFIX_SECONDS", 0.0)
    torch.manual_seed(0)
    sae = Recording(8, ReLUConfig(expansion=2, l1_coefficient=0.5))
    train_saes([sae], data(), TrainingConfig(epochs=1, batch_size=16, lr=1e-2), seed=0)
    assert [n for n, _ in posted] == list(range(1, 41))
    assert [mse for _, mse in posted] == [f"{v:.4g}" for v in seen]
