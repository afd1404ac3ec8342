"""Linear (softmax-regression) probes on features computed on the fly from cached activations.

One recipe for every feature kind (the paper fits raw embeddings and SAE features "with
identical training hyper-parameters"): features are a function of the raw activation rows
(identity, SAE latents, SAE pre-activations), so SAE features of 1.28M rows x 12,288 latents are
never materialised; each minibatch is encoded on the device when it is needed.

* Features are standardised with the train split's mean and standard deviation (streamed in
  float64), because SAE latents and raw embeddings differ in scale by orders of magnitude and one
  learning rate and penalty must suit both; constant features (dead latents) get unit scale.
* The objective is mean cross-entropy + (l2/2)||W||^2 (bias unpenalised): scikit-learn's
  ``LogisticRegression(C=1/(l2*n))`` objective up to a constant factor.
* ``lbfgs`` solves it full-batch to convergence (exact; beyond ``full_batch_limit`` each
  objective evaluation streams the rows, so it stays exact at any size, one pass per
  evaluation); ``minibatch`` runs Adam over shuffled minibatches with cosine learning-rate decay
  (ImageNet scale on one GPU in minutes: the raw rows are moved to the device once when they fit
  in ``DEVICE_ROWS_BYTES`` and SAE features are computed per minibatch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from saebench_vision_plugins.evaluators.configs import ProbeConfig

from saebench_vision.cache import ActivationSet

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
DEVICE_ROWS_BYTES = 16 * 2**30
"""Raw training rows up to this size are moved to the device once instead of streamed."""


@dataclass
class Probe:
    """A fitted probe: ``logits = ((f(x) - mean) / std) @ weight.T + bias``."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    feature_fn: FeatureFn
    solver: str
    train_loss: float
    """The final full-batch objective (mean cross-entropy + L2 term) on the train split."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.feature_fn(x) - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(
        self,
        acts: ActivationSet,
        device: torch.device,
        columns: np.ndarray | None = None,
        batch_size: int = 8192,
    ) -> np.ndarray:
        """Arg-max class of every row, over ``columns`` of the logits only when given (then the
        result indexes ``columns``). Streams, so no (N, classes) array is held."""
        cols = None if columns is None else torch.from_numpy(np.asarray(columns)).to(device)
        out = np.empty(acts.n, dtype=np.int64)
        with torch.no_grad():
            for start, chunk in acts.iter_chunks(batch_size):
                logits = self.logits(torch.from_numpy(np.array(chunk, dtype=np.float32)).to(device))
                if cols is not None:
                    logits = logits[:, cols]
                out[start : start + len(chunk)] = logits.argmax(1).cpu().numpy()
        return out

    def predict_logits(
        self, acts: ActivationSet, device: torch.device, batch_size: int = 8192
    ) -> np.ndarray:
        """Logits of every row of ``acts`` (N, n_classes) as float32."""
        out = np.empty((acts.n, self.weight.shape[0]), dtype=np.float32)
        with torch.no_grad():
            for start, chunk in acts.iter_chunks(batch_size):
                x = torch.from_numpy(np.array(chunk, dtype=np.float32)).to(device)
                out[start : start + len(chunk)] = self.logits(x).float().cpu().numpy()
        return out


def _feature_moments(
    acts: ActivationSet, fn: FeatureFn, device: torch.device, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    total = total_sq = None
    with torch.no_grad():
        for _, chunk in acts.iter_chunks(batch_size):
            f = fn(torch.from_numpy(np.array(chunk, dtype=np.float32)).to(device)).double()
            s, sq = f.sum(0), f.pow(2).sum(0)
            total = s if total is None else total + s
            total_sq = sq if total_sq is None else total_sq + sq
    assert total is not None and total_sq is not None
    mean = total / acts.n
    var = (total_sq / acts.n - mean.pow(2)).clamp_min(0)
    std = var.sqrt()
    std = torch.where(std > 1e-8 * (1 + mean.abs()), std, torch.ones_like(std))
    return mean.float(), std.float(), int(mean.numel())


def fit_probe(
    acts: ActivationSet,
    labels: np.ndarray,
    n_classes: int,
    cfg: ProbeConfig,
    *,
    feature_fn: FeatureFn | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Probe:
    """Fit a softmax-regression probe on ``feature_fn(rows of acts)`` to ``labels`` (int, one per row)."""
    device = torch.device(device)
    fn: FeatureFn = feature_fn if feature_fn is not None else (lambda x: x)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != acts.n:
        raise ValueError(f"{len(labels)} labels for {acts.n} activation rows")
    if cfg.standardize:
        mean, std, p = _feature_moments(acts, fn, device, cfg.batch_size)
    else:
        with torch.no_grad():
            p = int(fn(torch.from_numpy(acts.read(np.arange(1))).to(device)).shape[1])
        mean, std = torch.zeros(p, device=device), torch.ones(p, device=device)
    weight = torch.zeros(n_classes, p, device=device, requires_grad=True)
    bias = torch.zeros(n_classes, device=device, requires_grad=True)
    solver = cfg.solver
    if solver == "auto":
        solver = "lbfgs" if acts.n * p <= cfg.full_batch_limit else "minibatch"
    y_all = torch.from_numpy(labels).to(device)

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (fn(x) - mean) / std

    def objective(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(f @ weight.T + bias, y) + 0.5 * cfg.l2 * weight.pow(2).sum()

    if solver == "lbfgs":
        final = _lbfgs(acts, y_all, features, objective, [weight, bias], cfg, device, p)
    else:
        _minibatch(acts, y_all, features, objective, [weight, bias], cfg, device, seed)
        # The exact full-batch objective, so both solvers report the same quantity.
        with torch.no_grad():
            final = 0.5 * cfg.l2 * float(weight.pow(2).sum())
            for start, chunk in acts.iter_chunks(cfg.batch_size):
                f = features(torch.from_numpy(np.array(chunk, dtype=np.float32)).to(device))
                y = y_all[start : start + len(chunk)]
                final += float(F.cross_entropy(f @ weight.T + bias, y, reduction="sum")) / acts.n
    return Probe(weight.detach(), bias.detach(), mean, std, fn, solver, final)


def _lbfgs(
    acts: ActivationSet,
    y_all: torch.Tensor,
    features: FeatureFn,
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    params: list[torch.Tensor],
    cfg: ProbeConfig,
    device: torch.device,
    p: int,
) -> float:
    """Full-batch L-BFGS. Features are held in memory when rows x features fit
    ``full_batch_limit``; otherwise every objective evaluation streams the rows in chunks and
    accumulates the exact full-batch gradient (slow, one pass per evaluation, but exact)."""
    weight = params[0]
    n = acts.n
    held = (
        features(torch.from_numpy(acts.to_numpy()).to(device))
        if n * p <= cfg.full_batch_limit
        else None
    )
    on_device = held is None and n * acts.d * 4 <= DEVICE_ROWS_BYTES
    rows = torch.from_numpy(acts.to_numpy()).to(device) if on_device else None
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=cfg.lbfgs_max_iter,
        tolerance_grad=cfg.lbfgs_tol,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def full_objective(backward: bool) -> torch.Tensor:
        if held is not None:
            loss = objective(held, y_all)
            if backward:
                loss.backward()
            return loss.detach()
        total = torch.zeros((), device=device)
        for start, chunk in acts.iter_chunks(cfg.batch_size):
            x = (
                rows[start : start + len(chunk)]
                if rows is not None
                else torch.from_numpy(np.array(chunk, dtype=np.float32)).to(device)
            )
            f = features(x)
            part = (
                F.cross_entropy(
                    f @ weight.T + params[1], y_all[start : start + len(chunk)], reduction="sum"
                )
                / n
            )
            if backward:
                part.backward()
            total += part.detach()
        penalty = 0.5 * cfg.l2 * weight.pow(2).sum()
        if backward:
            penalty.backward()
        return total + penalty.detach()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        return full_objective(backward=True)

    opt.step(closure)
    with torch.no_grad():
        return float(full_objective(backward=False))


def _minibatch(
    acts: ActivationSet,
    y_all: torch.Tensor,
    features: FeatureFn,
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    params: list[torch.Tensor],
    cfg: ProbeConfig,
    device: torch.device,
    seed: int,
) -> float:
    gen = torch.Generator().manual_seed(seed)
    n = acts.n
    on_device = n * acts.d * 4 <= DEVICE_ROWS_BYTES
    rows = torch.from_numpy(acts.to_numpy()).to(device) if on_device else None
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(cfg.epochs * steps_per_epoch, 1)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    running = float("nan")
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for lo in range(0, n, cfg.batch_size):
            idx = order[lo : lo + cfg.batch_size]
            if rows is not None:
                x = rows[idx.to(device)]
            else:
                # Sorted reads keep memory-mapped access mostly sequential.
                idx, _ = idx.sort()
                x = torch.from_numpy(acts.read(idx.numpy())).to(device)
            loss = objective(features(x), y_all[idx.to(device)])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            value = float(loss.detach())
            running = value if math.isnan(running) else 0.98 * running + 0.02 * value
    return running
