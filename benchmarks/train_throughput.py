"""Training throughput of the built-in SAEs against a plain PyTorch step and the GEMM roofline.

For each batch size (default 64, the paper's, and 4096) at d = 768, expansion 8, fp32:

* **roofline**: the five dense products a dense SAE step cannot avoid (encoder forward, decoder
  forward, decoder-input gradient, decoder and encoder weight gradients), timed with
  ``torch.matmul`` on the same shapes: ``10 · B · d · n`` FLOPs per step, converted to samples/s;
* **plain**: the same step written as simply as PyTorch allows (``nn.Linear``, autograd,
  ``torch.optim.Adam`` with its defaults), for ReLU and for TopK;
* **ours**: one :class:`saebench_vision.training.SweepTrainer` step per architecture.

Then a 21-SAE sweep (ReLU, TopK and Gated at 7 sparsities each, the paper's grid) trained in
one pass against the same 21 SAEs trained one run at a time, both through ``train_saes`` on a
cached activation set. Every time is the best of a few repeats (the least disturbed by other
processes); medians are printed next to them.

    python benchmarks/train_throughput.py --quick          # < 2 minutes on 2 CPU cores
    python benchmarks/train_throughput.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
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
from saebench_vision_plugins.saes.topk import BatchTopKSAE, MatryoshkaSAE, TopKSAE
from torch import nn

from saebench_vision.cache import ActivationCache
from saebench_vision.config import TrainingConfig
from saebench_vision.training import SweepTrainer, train_saes, tune_cpu_allocator

LAMBDAS = (0.1, 0.5, 1.0, 5.0, 10.0, 50.0, 100.0)
KS = (4, 8, 16, 32, 64, 128, 256)


def build(arch: str, d: int, expansion: int, k: int):
    return {
        "relu": lambda: ReLUSAE(d, ReLUConfig(expansion=expansion)),
        "gated": lambda: GatedSAE(d, GatedConfig(expansion=expansion)),
        "jumprelu": lambda: JumpReLUSAE(d, JumpReLUConfig(expansion=expansion)),
        "topk": lambda: TopKSAE(d, TopKConfig(expansion=expansion, k=k)),
        "batch-topk": lambda: BatchTopKSAE(d, BatchTopKConfig(expansion=expansion, k=k)),
        "matryoshka": lambda: MatryoshkaSAE(d, MatryoshkaConfig(expansion=expansion, k=k)),
    }[arch]()


class PlainReLU(nn.Module):
    """A ReLU SAE step as most people would write it."""

    def __init__(self, d: int, n: int, l1: float = 1.0) -> None:
        super().__init__()
        self.enc, self.dec, self.l1 = nn.Linear(d, n), nn.Linear(n, d), l1

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.enc(x - self.dec.bias))
        x_hat = self.dec(z)
        l1 = (z * self.dec.weight.norm(dim=0)).sum(-1).mean()
        return ((x_hat - x) ** 2).sum(-1).mean() + self.l1 * l1


class PlainTopK(PlainReLU):
    def __init__(self, d: int, n: int, k: int) -> None:
        super().__init__(d, n)
        self.k = k

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.enc(x - self.dec.bias)
        top = pre.topk(self.k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        return ((self.dec(z) - x) ** 2).sum(-1).mean()


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, float]:
    """``(best, median)`` seconds of ``fn`` after one warm-up call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def roofline(B: int, d: int, n: int, repeats: int, device: torch.device) -> tuple[float, float]:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(B, d, generator=g).to(device)
    W = torch.randn(n, d, generator=g).to(device)
    z = torch.randn(B, n, generator=g).to(device)
    e = torch.randn(B, d, generator=g).to(device)
    products = [
        lambda: torch.matmul(x, W.T),  # encoder forward
        lambda: torch.matmul(z, W),  # decoder forward
        lambda: torch.matmul(e, W.T),  # gradient w.r.t. the code
        lambda: torch.matmul(z.T, e),  # decoder weight gradient
        lambda: torch.matmul(z.T, x),  # encoder weight gradient
    ]
    best = median = 0.0
    for product in products:
        b, m = timed(product, repeats, device)
        best, median = best + b, median + m
    return best, median


def plain_step(model: PlainReLU, x: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad()
        model.loss(x).backward()
        opt.step()

    return step


def our_step(sae, x: torch.Tensor, device: torch.device) -> Callable[[], None]:
    sae.to(device)
    trainer = SweepTrainer(
        [sae], TrainingConfig(device=str(device)), total_steps=10**6, input_scale=1.0, device=device
    )
    counter = iter(range(10**6))
    return lambda: trainer.step(x, 1000 + next(counter))


def per_batch(args: argparse.Namespace, B: int, device: torch.device, archs: list[str]) -> None:
    d, n = args.d, args.d * args.expansion
    flops = 10 * B * d * n
    repeats = args.repeats
    x = torch.randn(B, d, generator=torch.Generator().manual_seed(1)).to(device)
    roof_best, roof_med = roofline(B, d, n, repeats, device)
    roof = B / roof_best
    print(f"\n== batch {B}: d={d}, n={n}, dense step = 5 GEMMs x 2*B*d*n = {flops / 1e9:.1f} GFLOP")
    print(f"{'step':<22}{'samples/s':>12}{'(median)':>11}{'/ roofline':>12}{'/ plain':>10}")
    print(
        f"{'GEMM roofline':<22}{roof:>12.0f}{B / roof_med:>11.0f}{1.0:>12.2f}{'':>10}"
        f"   ({flops / roof_best / 1e9:.0f} GFLOP/s)"
    )
    torch.manual_seed(0)
    plain = {}
    for name, model in (("plain relu", PlainReLU(d, n)), ("plain topk", PlainTopK(d, n, args.k))):
        best, med = timed(plain_step(model.to(device), x), repeats, device)
        plain[name.split()[1]] = B / best
        print(f"{name:<22}{B / best:>12.0f}{B / med:>11.0f}{B / best / roof:>12.2f}{1.0:>10.2f}")
        del model
    for arch in archs:
        torch.manual_seed(0)
        best, med = timed(
            our_step(build(arch, d, args.expansion, args.k), x, device), repeats, device
        )
        ref = plain["topk"] if arch in ("topk", "batch-topk", "matryoshka") else plain["relu"]
        print(
            f"{arch:<22}{B / best:>12.0f}{B / med:>11.0f}{B / best / roof:>12.2f}"
            f"{B / best / ref:>10.2f}"
        )


def sweep(args: argparse.Namespace, device: torch.device) -> None:
    d, B, steps = args.d, 64, args.sweep_steps
    g = np.random.default_rng(0)
    acts = (g.standard_normal((B * steps, d)) * 2 + 0.5).astype(np.float32)
    config = TrainingConfig(epochs=1, batch_size=B, device=str(device))

    def grid() -> list:
        torch.manual_seed(0)
        e = args.expansion
        return (
            [ReLUSAE(d, ReLUConfig(expansion=e, l1_coefficient=c)) for c in LAMBDAS]
            + [TopKSAE(d, TopKConfig(expansion=e, k=k)) for k in KS]
            + [GatedSAE(d, GatedConfig(expansion=e, l1_coefficient=c)) for c in LAMBDAS]
        )

    with tempfile.TemporaryDirectory() as tmp:
        writer = ActivationCache(Path(tmp)).writer("b" * 64, d, {})
        writer.append(acts, np.arange(len(acts)), None)
        data = writer.commit()
        saes = grid()
        start = time.perf_counter()
        train_saes(saes, data, config, seed=0, progress=False)
        together = time.perf_counter() - start
        del saes
        separate = 0.0
        for sae in grid():
            start = time.perf_counter()
            train_saes([sae], data, config, seed=0, progress=False)
            separate += time.perf_counter() - start
    print(
        f"\n== 21-SAE sweep (relu/topk/gated x 7 sparsities, expansion {args.expansion}), "
        f"batch {B}, {steps} steps"
    )
    print(f"one pass      {together:8.1f} s  ({21 * B * steps / together:7.0f} SAE-samples/s)")
    print(f"21 runs       {separate:8.1f} s  ({21 * B * steps / separate:7.0f} SAE-samples/s)")
    print(f"one pass / 21 runs = {together / separate:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats and architectures at batch 4096, a shorter sweep",
    )
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32, help="k of the TopK-family SAEs")
    parser.add_argument("--batches", default="64,4096")
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats (default 2 quick, 5)")
    parser.add_argument("--sweep-steps", type=int, default=0, help="default 6 quick, 40")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads")
    parser.add_argument(
        "--malloc-defaults",
        action="store_true",
        help="keep glibc's default malloc thresholds (see tune_cpu_allocator)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu" and not args.malloc_defaults:
        # The trainer does this on the CPU; do it first so every column uses the same allocator.
        tune_cpu_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.sweep_steps = args.sweep_steps or (6 if args.quick else 40)
    every = ["relu", "gated", "jumprelu", "topk", "batch-topk", "matryoshka"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
        f"tuned malloc: {device.type == 'cpu' and not args.malloc_defaults}"
    )
    for B in (int(b) for b in args.batches.split(",")):
        archs = ["relu", "topk"] if args.quick and B > 1024 else every
        per_batch(args, B, device, archs)
    if not args.no_sweep:
        sweep(args, device)


if __name__ == "__main__":
    main()
