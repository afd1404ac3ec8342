"""Reference column of ``benchmarks/quality.py``: the same planted data trained by SAELens.

Runs in a separate interpreter that has ``sae-lens`` installed (never a dependency of this
project; ``quality.py --saelens-python PATH`` calls it), so SAELens's dependencies cannot
disturb the project's environment::

    python -m venv /path/to/saelens && /path/to/saelens/bin/pip install sae-lens
    /path/to/saelens/bin/python benchmarks/quality_saelens.py --data DIR --arch topk ...

``DIR`` holds ``train.npy``, ``test.npy`` and ``directions.npy`` as ``quality.py`` saves them.
The SAE is trained by SAELens's own public training API (``SAETrainer`` fed by an iterator of
batches, the way SAELens's runners feed it) at the budget given on the command line (d_sae, k or
the sparsity coefficient, lr, batch size, steps, and optionally the paper's warm-up and decay
through SAELens's own ``lr_warm_up_steps`` / ``lr_decay_steps`` / ``l1_warm_up_steps``) with
SAELens's defaults otherwise (constant learning rate, Adam betas (0.9, 0.999), gradient-norm
clipping at 1, decoder rows at norm 0.1 with ``W_enc = W_decᵀ``, zero ``b_dec``,
``rescale_acts_by_decoder_norm`` for the TopK family, no activation normalisation: the planted
data already have E‖x‖² = d).

It prints one JSON line per SAE with the held-out figures computed by the same formulas as
``quality.py`` (FVU, L0, dead fraction on the held-out rows, MMCS against the planted
directions) and the training throughput. BatchTopK-family SAEs are measured per sample with
their learnt threshold, as SAELens saves them for inference (a JumpReLU at ``topk_threshold``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def batches(x: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Shuffled batches, a new permutation every pass (endless: the trainer stops itself)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=g)
        for lo in range(0, len(x) - batch + 1, batch):
            yield x[order[lo : lo + batch]]


def build(arch: str, d_in: int, d_sae: int, a: argparse.Namespace) -> Any:
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    common: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "device": a.device}
    extra = json.loads(a.extra) if a.extra else {}
    if a.sparsity_warmup_steps and arch in ("relu", "gated"):
        extra.setdefault("l1_warm_up_steps", a.sparsity_warmup_steps)
    if a.sparsity_warmup_steps and arch == "jumprelu":
        extra.setdefault("l0_warm_up_steps", a.sparsity_warmup_steps)
    if arch == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=a.k, **common, **extra))
    if arch == "batch-topk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=a.k, **common, **extra))
    if arch == "matryoshka":
        widths = [max(1, round(f * d_sae)) for f in a.prefix_fractions]
        return MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(k=a.k, matryoshka_widths=widths, **common, **extra)
        )
    if arch == "relu":
        return StandardTrainingSAE(
            StandardTrainingSAEConfig(l1_coefficient=a.coefficient, **common, **extra)
        )
    if arch == "gated":
        return GatedTrainingSAE(
            GatedTrainingSAEConfig(l1_coefficient=a.coefficient, **common, **extra)
        )
    if arch == "jumprelu":
        return JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(l0_coefficient=a.coefficient, **common, **extra)
        )
    raise SystemExit(f"quality_saelens.py: no SAELens counterpart for {arch!r}")


@torch.no_grad()
def encode(sae: Any, x: torch.Tensor, arch: str) -> torch.Tensor:
    if arch in ("batch-topk", "matryoshka"):
        _, hidden_pre = sae.encode_with_hidden_pre(x)
        return hidden_pre * (hidden_pre > sae.topk_threshold.to(hidden_pre.dtype))
    return sae.encode(x)


@torch.no_grad()
def measure(sae: Any, arch: str, test: np.ndarray, directions: np.ndarray) -> dict[str, float]:
    """The formulas of ``quality.measure``: FVU, L0, dead, MMCS on the held-out rows."""
    sae.eval()
    device = sae.W_dec.device
    x_all = torch.from_numpy(test)
    mean = x_all.double().mean(0)
    err = total = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for lo in range(0, len(test), 2048):
        x = x_all[lo : lo + 2048]
        z = encode(sae, x.to(device), arch)
        x_hat = sae.decode(z).cpu()
        z = z.cpu()
        err += float((x - x_hat).double().pow(2).sum())
        total += float((x.double() - mean).pow(2).sum())
        active = z != 0
        l0 += float(active.sum())
        fired |= active.any(0)
    rows = sae.W_dec.detach().double().cpu()
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = torch.from_numpy(directions) @ rows.T
    return {
        "fvu": err / total,
        "l0": l0 / len(test),
        "dead": float((~fired).double().mean()),
        "mmcs": float(cos.max(1).values.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--d-sae", type=int, required=True)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--coefficient", type=float, action="append", default=[])
    ap.add_argument(
        "--prefix-fractions", type=float, nargs="+", default=[0.0625, 0.125, 0.25, 0.5, 1.0]
    )
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--extra", default="", help="JSON of further SAELens config fields")
    ap.add_argument("--warmup-steps", type=int, default=0, help="linear lr warm-up steps")
    ap.add_argument("--decay-steps", type=int, default=0, help="final steps of decay to 0")
    ap.add_argument(
        "--sparsity-warmup-steps", type=int, default=0, help="L1 / L0 coefficient warm-up steps"
    )
    a = ap.parse_args()

    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    train = torch.from_numpy(np.load(a.data / "train.npy")).to(a.device)
    test = np.load(a.data / "test.npy")
    directions = np.load(a.data / "directions.npy")
    coefficients = a.coefficient or [0.0]
    for coefficient in coefficients:
        torch.manual_seed(a.seed)
        a.coefficient = coefficient
        sae = build(a.arch, train.shape[1], a.d_sae, a)
        cfg = SAETrainerConfig(
            total_training_samples=a.steps * a.batch,
            train_batch_size_samples=a.batch,
            lr=a.lr,
            lr_end=a.lr / 10,  # what SAELens's runner config sets (unused: constant schedule)
            lr_warm_up_steps=a.warmup_steps,
            lr_decay_steps=a.decay_steps,
            device=a.device,
        )
        trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches(train, a.batch, a.seed))
        t0 = time.perf_counter()
        trainer.fit()
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        row = measure(sae, a.arch, test, directions)
        row.update(
            arch=a.arch,
            coefficient=coefficient,
            seconds=seconds,
            samples_per_s=a.steps * a.batch / seconds,
        )
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
