"""Linear (softmax-regression) probes on features computed on the fly from cached activations.

One recipe for every feature kind (the paper fits raw embeddings and SAE features "with
identical training hyper-parameters"): features are a function of the raw activation rows
(identity, SAE pre-activations) computed per chunk on the device, or rows of the run's shared
sparse SAE encoding (latents), so SAE features of 1.28M rows x 12,288 latents are never
materialised and no split is ever copied whole into host memory.

* Features are standardised with the train split's mean and standard deviation (streamed in
  float64), because SAE latents and raw embeddings differ in scale by orders of magnitude and one
  learning rate and penalty must suit both; constant features (dead latents) get unit scale.
* The objective is mean cross-entropy + (l2/2)||W||^2 (bias unpenalised): scikit-learn's
  ``LogisticRegression(C=1/(l2*n))`` objective up to a constant factor.
* ``lbfgs`` solves it full-batch to convergence (exact; beyond ``full_batch_limit`` each
  objective evaluation streams the rows, so it stays exact at any size, one pass per
  evaluation); ``minibatch`` runs Adam over shuffled minibatches with cosine learning-rate decay.
* Memory: raw rows of a split up to ``memory_budget_gb`` are copied once onto the probe's device
  (chunk by chunk from the memory map); larger splits stream from the memory-mapped cache. Both
  paths feed the same rows in the same order (minibatches are read in sorted row order), so the
  budget never changes a number.
* Speed: a minibatch step computes the softmax-regression gradient in closed form (no autograd
  graph) and Adam runs fused. On SAE latents every product sums over the non-zeros only (CSR
  products; scipy's on the CPU, ``embedding_bag`` / ``index_add_`` elsewhere), and so do the
  feature moments, the final objective and the predictions: a pass costs O(non-zeros x
  classes), never O(rows x d_sae x classes), and no dense latent chunk is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from saebench_vision_plugins.evaluators.configs import ProbeConfig

from saebench_vision.cache import ActivationSet
from saebench_vision.encodings import Encoding

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
SPARSE_STEP_DENSITY = 0.02
"""A minibatch step on SAE latents sums over non-zeros when at most this fraction of the
batch's latents is non-zero; beyond it a dense product is faster on the CPU."""
SCIPY_ON_CPU = True
"""Sparse products on the CPU through scipy's CSR kernels (else the torch kernels used on
other devices; both give the same numbers up to float rounding, and a test compares them)."""


@dataclass
class SparseBlock:
    """Rows of SAE latents in CSR form: row ``i``'s non-zeros are ``cols[indptr[i]:indptr[i+1]]``
    with ``vals`` of the same slice (unstandardised)."""

    indptr: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    width: int
    device: torch.device

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def of_rows(cls, latents: Encoding, rows: np.ndarray, device: torch.device) -> SparseBlock:
        return cls(*latents.csr(rows), latents.d_sae, device)

    def _scipy(self) -> bool:
        return SCIPY_ON_CPU and self.device.type == "cpu"

    def _csr(self) -> Any:
        import scipy.sparse

        return scipy.sparse.csr_matrix(
            (self.vals, self.cols, self.indptr), shape=(len(self), self.width)
        )

    def _torch_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        counts = np.diff(self.indptr)
        local = torch.from_numpy(np.repeat(np.arange(len(self)), counts)).to(self.device)
        cols = torch.from_numpy(self.cols.astype(np.int64)).to(self.device)
        vals = torch.from_numpy(np.asarray(self.vals, dtype=np.float32)).to(self.device)
        offsets = torch.from_numpy(self.indptr[:-1]).to(self.device)
        return local, cols, vals, offsets

    def matmul_t(self, weight: torch.Tensor) -> torch.Tensor:
        """``Z @ weight.T`` for ``weight`` (classes, width): (rows, classes)."""
        if self._scipy():
            wt = weight.detach().T.contiguous().numpy()
            return torch.from_numpy(np.ascontiguousarray(self._csr() @ wt, dtype=np.float32))
        _, cols, vals, offsets = self._torch_parts()
        return F.embedding_bag(
            cols, weight.detach().T.contiguous(), offsets, mode="sum", per_sample_weights=vals
        )

    def t_matmul(self, g: torch.Tensor) -> torch.Tensor:
        """``g.T @ Z`` for ``g`` (rows, classes): (classes, width)."""
        if self._scipy():
            out = self._csr().T @ g.detach().numpy()
            return torch.from_numpy(np.ascontiguousarray(out.T, dtype=np.float32))
        local, cols, vals, _ = self._torch_parts()
        out = torch.zeros(self.width, g.shape[1], dtype=g.dtype, device=g.device)
        out.index_add_(0, cols, g[local] * vals[:, None])
        return out.T.contiguous()


Block = torch.Tensor | SparseBlock
"""Features of some rows: dense (rows, features), or SAE latents in CSR form."""


def block_logits(
    block: Block, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """``((f - mean) / std) @ weight.T + bias``; on sparse latents as
    ``z @ (weight / std).T + (bias - (weight / std) @ mean)``, over the non-zeros only."""
    if isinstance(block, SparseBlock):
        scaled = weight / std
        return block.matmul_t(scaled) + (bias - scaled @ mean)
    return ((block - mean) / std) @ weight.T + bias


def block_weight_grad(
    block: Block, g: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """``g.T @ ((f - mean) / std)`` (classes, features): the weight gradient of a linear layer
    on standardised features, ``(g.T @ z - outer(g.sum(0), mean)) / std`` on sparse latents."""
    if isinstance(block, SparseBlock):
        return (block.t_matmul(g) - torch.outer(g.sum(0), mean)) / std
    return g.T @ ((block - mean) / std)


class FeatureRows:
    """The probe's view of one split: features ``fn(x)`` of its rows, or rows of ``latents``.

    Raw rows are held on ``device`` when they fit ``hold_bytes`` (copied chunk by chunk, never
    through a whole-split host array); otherwise every read streams from the memory map."""

    def __init__(
        self,
        acts: ActivationSet,
        fn: FeatureFn,
        device: torch.device,
        *,
        latents: Encoding | None = None,
        hold_bytes: int = 0,
    ) -> None:
        if latents is not None and latents.n != acts.n:
            raise ValueError(f"an encoding of {latents.n} rows for {acts.n} activation rows")
        self.acts, self.fn, self.device, self.latents = acts, fn, device, latents
        self.n = acts.n
        self.rows: torch.Tensor | None = None
        if latents is None and acts.n * acts.d * 4 <= hold_bytes:
            self.rows = torch.empty((acts.n, acts.d), dtype=torch.float32, device=device)
            for start, chunk in acts.iter_chunks(65536):
                self.rows[start : start + len(chunk)] = torch.from_numpy(
                    np.array(chunk, dtype=np.float32)
                )

    def chunks(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start row, features)`` of consecutive chunks of at most ``batch_size`` rows
        (computed without gradients; no grad mode is held across a ``yield``)."""
        if self.latents is not None:
            for start, z in self.latents.iter_dense(batch_size):
                yield start, torch.from_numpy(z).to(self.device)
            return
        # The memory map's chunk boundaries also for held rows, so both sums round alike.
        for start, chunk in self.acts.iter_chunks(batch_size):
            with torch.no_grad():
                if self.rows is not None:
                    x = self.rows[start : start + len(chunk)]
                else:
                    x = torch.from_numpy(np.array(chunk, dtype=np.float32)).to(self.device)
                f = self.fn(x)
            yield start, f

    def blocks(self, batch_size: int) -> Iterator[tuple[int, Block]]:
        """Like :meth:`chunks`, but SAE latents come as :class:`SparseBlock` (no dense chunk)."""
        if self.latents is None:
            yield from self.chunks(batch_size)
            return
        for start in range(0, self.n, batch_size):
            rows = np.arange(start, min(start + batch_size, self.n))
            yield start, SparseBlock.of_rows(self.latents, rows, self.device)

    def take_block(self, idx: np.ndarray) -> Block:
        """Features of the rows ``idx`` (sorted ascending); latents sparse unless the rows are
        dense enough (``SPARSE_STEP_DENSITY``) that a dense product is faster."""
        if self.latents is not None:
            block = SparseBlock.of_rows(self.latents, idx, self.device)
            if len(block.cols) <= SPARSE_STEP_DENSITY * len(idx) * self.latents.d_sae:
                return block
        return self.take(idx)

    def take(self, idx: np.ndarray) -> torch.Tensor:
        """Features of the rows ``idx`` (sorted ascending)."""
        with torch.no_grad():
            if self.latents is not None:
                return torch.from_numpy(self.latents.read(idx)).to(self.device)
            if self.rows is not None:
                return self.fn(self.rows[torch.from_numpy(idx).to(self.device)])
            return self.fn(torch.from_numpy(self.acts.read(idx)).to(self.device))

    def width(self) -> int:
        if self.latents is not None:
            return self.latents.d_sae
        return int(self.take(np.arange(1)).shape[1])


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
        return self.logits_of_features(self.feature_fn(x))

    def logits_of_features(self, f: Block) -> torch.Tensor:
        return block_logits(f, self.weight, self.bias, self.mean, self.std)

    def _rows(
        self, acts: ActivationSet, device: torch.device, latents: Encoding | None
    ) -> FeatureRows:
        return FeatureRows(acts, self.feature_fn, device, latents=latents)

    def predict(
        self,
        acts: ActivationSet,
        device: torch.device,
        columns: np.ndarray | None = None,
        batch_size: int = 8192,
        *,
        latents: Encoding | None = None,
    ) -> np.ndarray:
        """Arg-max class of every row, over ``columns`` of the logits only when given (then the
        result indexes ``columns``). Streams, so no (N, classes) array is held. ``latents``:
        the split's shared encoding, used instead of ``feature_fn`` on the rows."""
        cols = None if columns is None else torch.from_numpy(np.asarray(columns)).to(device)
        out = np.empty(acts.n, dtype=np.int64)
        with torch.no_grad():
            for start, f in self._rows(acts, device, latents).blocks(batch_size):
                logits = self.logits_of_features(f)
                if cols is not None:
                    logits = logits[:, cols]
                out[start : start + len(f)] = logits.argmax(1).cpu().numpy()
        return out

    def predict_logits(
        self,
        acts: ActivationSet,
        device: torch.device,
        batch_size: int = 8192,
        *,
        latents: Encoding | None = None,
    ) -> np.ndarray:
        """Logits of every row of ``acts`` (N, n_classes) as float32 (small splits: N x classes)."""
        out = np.empty((acts.n, self.weight.shape[0]), dtype=np.float32)
        with torch.no_grad():
            for start, f in self._rows(acts, device, latents).blocks(batch_size):
                out[start : start + len(f)] = self.logits_of_features(f).float().cpu().numpy()
        return out


def _feature_moments(rows: FeatureRows, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and standard deviation of every feature over the split, summed in float64."""
    if rows.latents is not None:
        # Sums over the non-zeros only (zeros add nothing).
        enc = rows.latents
        sums = np.zeros(enc.d_sae, dtype=np.float64)
        sq = np.zeros(enc.d_sae, dtype=np.float64)
        step = 1 << 22
        for lo in range(0, enc.nnz, step):
            cols = np.asarray(enc.indices[lo : lo + step])
            vals = np.asarray(enc.values[lo : lo + step], dtype=np.float64)
            sums += np.bincount(cols, weights=vals, minlength=enc.d_sae)
            sq += np.bincount(cols, weights=vals * vals, minlength=enc.d_sae)
        total, total_sq = torch.from_numpy(sums), torch.from_numpy(sq)
    else:
        total = total_sq = None
        with torch.no_grad():
            for _, chunk in rows.chunks(batch_size):
                f = chunk.double()
                s, sq_t = f.sum(0), f.pow(2).sum(0)
                total = s if total is None else total + s
                total_sq = sq_t if total_sq is None else total_sq + sq_t
        assert total is not None and total_sq is not None
    mean = total / rows.n
    var = (total_sq / rows.n - mean.pow(2)).clamp_min(0)
    std = var.sqrt()
    std = torch.where(std > 1e-8 * (1 + mean.abs()), std, torch.ones_like(std))
    return mean.float().to(rows.device), std.float().to(rows.device), int(mean.numel())


def softmax_regression_grads(
    block: Block,
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    l2: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of mean cross-entropy of ``((f - mean) / std) @ weight.T + bias`` against
    ``y`` plus ``(l2/2)||weight||^2``, in closed form: with ``G = (softmax(logits) - onehot(y))
    / B``, ``dW = G.T @ f_std + l2 W`` and ``db = G.sum(0)`` (no autograd graph)."""
    with torch.no_grad():
        if isinstance(block, SparseBlock):
            logits = block_logits(block, weight, bias, mean, std)
        else:
            block = (block - mean) / std  # once for both products
            logits = torch.addmm(bias, block, weight.T)
        g = torch.softmax(logits, dim=1)
        g[torch.arange(len(y), device=g.device), y] -= 1.0
        g /= len(y)
        if isinstance(block, SparseBlock):
            grad_w = block_weight_grad(block, g, mean, std)
        else:
            grad_w = g.T @ block
        # Contiguous like the parameters: the fused Adam kernels assume the same layout.
        return grad_w.contiguous().add_(weight, alpha=l2), g.sum(0)


def fit_probe(
    acts: ActivationSet,
    labels: np.ndarray,
    n_classes: int,
    cfg: ProbeConfig,
    *,
    feature_fn: FeatureFn | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    latents: Encoding | None = None,
) -> Probe:
    """Fit a softmax-regression probe on ``feature_fn(rows of acts)`` (or on the rows of
    ``latents``, the split's shared SAE encoding) to ``labels`` (int, one per row)."""
    device = torch.device(device)
    fn: FeatureFn = feature_fn if feature_fn is not None else (lambda x: x)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != acts.n:
        raise ValueError(f"{len(labels)} labels for {acts.n} activation rows")
    rows = FeatureRows(
        acts, fn, device, latents=latents, hold_bytes=int(cfg.memory_budget_gb * 2**30)
    )
    if cfg.standardize:
        mean, std, p = _feature_moments(rows, cfg.batch_size)
    else:
        p = rows.width()
        mean, std = torch.zeros(p, device=device), torch.ones(p, device=device)
    weight = torch.zeros(n_classes, p, device=device, requires_grad=True)
    bias = torch.zeros(n_classes, device=device, requires_grad=True)
    solver = cfg.solver
    if solver == "auto":
        solver = "lbfgs" if acts.n * p <= cfg.full_batch_limit else "minibatch"
    y_all = torch.from_numpy(labels).to(device)

    def standard(f: torch.Tensor) -> torch.Tensor:
        return (f - mean) / std

    def batch_grads(idx: np.ndarray, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return softmax_regression_grads(rows.take_block(idx), y, weight, bias, mean, std, cfg.l2)

    if solver == "lbfgs":
        final = _lbfgs(rows, y_all, standard, [weight, bias], cfg, device, p)
    else:
        _minibatch(rows.n, y_all, batch_grads, [weight, bias], cfg, seed)
        # The exact full-batch objective, so both solvers report the same quantity.
        with torch.no_grad():
            final = 0.5 * cfg.l2 * float(weight.pow(2).sum())
            for start, block in rows.blocks(cfg.batch_size):
                y = y_all[start : start + len(block)]
                logits = block_logits(block, weight, bias, mean, std)
                final += float(F.cross_entropy(logits, y, reduction="sum")) / acts.n
    return Probe(weight.detach(), bias.detach(), mean, std, fn, solver, final)


def _lbfgs(
    rows: FeatureRows,
    y_all: torch.Tensor,
    standard: FeatureFn,
    params: list[torch.Tensor],
    cfg: ProbeConfig,
    device: torch.device,
    p: int,
) -> float:
    """Full-batch L-BFGS. Features are held in memory when rows x features fit
    ``full_batch_limit``; otherwise every objective evaluation streams the rows in chunks and
    accumulates the exact full-batch gradient (slow, one pass per evaluation, but exact)."""
    weight, bias = params
    n = rows.n
    held = None
    if n * p <= cfg.full_batch_limit:
        held = torch.empty((n, p), dtype=torch.float32, device=device)
        for start, chunk in rows.chunks(cfg.batch_size):
            held[start : start + len(chunk)] = standard(chunk)
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
            loss = (
                F.cross_entropy(held @ weight.T + bias, y_all) + 0.5 * cfg.l2 * weight.pow(2).sum()
            )
            if backward:
                loss.backward()
            return loss.detach()
        total = torch.zeros((), device=device)
        for start, chunk in rows.chunks(cfg.batch_size):
            f = standard(chunk)
            part = (
                F.cross_entropy(
                    f @ weight.T + bias, y_all[start : start + len(chunk)], reduction="sum"
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
    n: int,
    y_all: torch.Tensor,
    batch_grads: Callable[[np.ndarray, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    params: list[torch.Tensor],
    cfg: ProbeConfig,
    seed: int,
) -> None:
    """Adam (fused where torch has it) over shuffled minibatches, cosine-decayed learning rate."""
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(cfg.epochs * steps_per_epoch, 1)
    fused = params[0].device.type in ("cpu", "cuda")
    opt = torch.optim.Adam(params, lr=cfg.lr, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for lo in range(0, n, cfg.batch_size):
            # Sorted reads keep memory-mapped access mostly sequential; held rows are read in
            # the same order, so the memory budget does not change the numbers.
            idx, _ = order[lo : lo + cfg.batch_size].sort()
            grads = batch_grads(idx.numpy(), y_all[idx.to(y_all.device)])
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad
            opt.step()
            sched.step()
