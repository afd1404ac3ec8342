"""TopK-family SAEs: TopK (paper eq. 4), BatchTopK and Matryoshka BatchTopK, with AuxK.

Training steps exploit sparsity: the encoder's forward product is dense (it chooses the top
k), everything after it touches only the kept entries (see :mod:`.sparse`). The ``dense``
backend computes the same step with dense matrices; tests check both give the same gradients.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from saebench_vision_plugins.saes.base import BuiltinSAE, TrainTerms, default_aux_k, mse_sum
from saebench_vision_plugins.saes.configs import BatchTopKConfig, MatryoshkaConfig, TopKConfig
from saebench_vision_plugins.saes.sparse import SampledLinear, SparseCode, SparseDecode


class TopKSAE(BuiltinSAE):
    """``z = ReLU(TopK(W_enc (x - b_dec) + b_enc))``; loss ``‖x - x̂‖² + α · AuxK``.

    AuxK (Gao et al. 2024): the ``k_aux`` largest pre-activations among dead latents must
    reconstruct the residual ``x - x̂``; it is scaled by ``min(1, dead / k_aux)`` as in SAELens.
    TopK has no sparsity coefficient to warm up, so ``sparsity_scale`` is ignored.
    """

    name: ClassVar[str] = "topk"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = TopKConfig

    def _init_extra(self) -> None:
        self.register_buffer("samples_since_fired", torch.zeros(self.d_sae, dtype=torch.int64))

    @torch.no_grad()
    def _reset_extra(self) -> None:
        self.samples_since_fired.zero_()

    # -- selection -----------------------------------------------------------------------------

    def _select(self, pre: torch.Tensor) -> tuple[SparseCode, torch.Tensor]:
        """Kept entries of a (detached) pre-activation matrix and their pre-activation values."""
        top, idx = pre.topk(min(self.config.k, self.d_sae), dim=1)
        return SparseCode.from_topk(idx, self.d_sae), top.reshape(-1)

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        code, top = self._select(pre)
        return code.dense(torch.relu(top))

    def use_sparse(self, entries_per_row: float) -> bool:
        backend = self.config.sparse_backend
        if backend != "auto":
            return backend == "sparse"
        return entries_per_row * 8 <= self.d_sae

    # -- training ------------------------------------------------------------------------------

    def _values(
        self,
        sparse: bool,
        pre: torch.Tensor,
        code: SparseCode,
        top: torch.Tensor,
        xn: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        """Pre-activations of the kept entries, differentiable w.r.t. the encoder."""
        if sparse:
            return SampledLinear.apply(top, xn, self.W_enc, bias, code)
        return pre.reshape(-1)[code.rows * self.d_sae + code.cols]

    def _decode_entries(self, sparse: bool, values: torch.Tensor, code: SparseCode) -> torch.Tensor:
        """``Z W_dec`` (no bias) for the code's entries."""
        if sparse:
            return SparseDecode.apply(values, self.W_dec, code)
        return code.dense(values) @ self.W_dec

    def _reconstruct(
        self, sparse: bool, values: torch.Tensor, code: SparseCode, xn: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x̂, reconstruction loss)``; Matryoshka overrides this with nested prefixes."""
        x_hat = self._decode_entries(sparse, values, code) + self.b_dec
        mse = mse_sum(x_hat, xn)
        return x_hat, mse

    def train_terms(self, xn: torch.Tensor, *, sparsity_scale: float = 1.0) -> TrainTerms:
        batch = xn.shape[0]
        bias = self._enc_bias(self.b_enc)
        sparse = self.use_sparse(float(self.config.k))
        if sparse:
            with torch.no_grad():
                pre = F.linear(xn, self.W_enc, bias)
        else:
            pre = F.linear(xn, self.W_enc, bias)
        code, top = self._select(pre.detach())
        values = torch.relu(self._values(sparse, pre, code, top, xn, bias))
        x_hat, recon = self._reconstruct(sparse, values, code, xn)
        mse = recon if not isinstance(self, MatryoshkaSAE) else mse_sum(x_hat, xn).detach()
        loss = recon
        metrics: dict[str, torch.Tensor] = {}
        training = self.training and torch.is_grad_enabled()
        if training and self.config.aux_k_coefficient > 0:
            aux = self._auxk(pre, xn, x_hat, bias)
            if aux is not None:
                loss = loss + self.config.aux_k_coefficient * aux
                metrics["auxk"] = aux.detach()
        with torch.no_grad():
            fired = code.fired(values)
            if training:
                self.samples_since_fired.add_(batch).masked_fill_(fired > 0, 0)
                self._after_select(code, values)
        metrics.update(loss=loss.detach(), mse=mse.detach(), l0=(fired.sum() / batch).float())
        return TrainTerms(loss, x_hat, fired, lambda: code.dense(values.detach()), metrics)

    def _after_select(self, code: SparseCode, values: torch.Tensor) -> None:
        """Hook for BatchTopK's threshold estimate."""

    def _auxk(
        self, pre: torch.Tensor, xn: torch.Tensor, x_hat: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor | None:
        dead = self.samples_since_fired >= self.config.dead_after
        n_dead = int(dead.sum())
        if n_dead == 0:
            return None
        k_aux = default_aux_k(self.d_in, self.config.aux_k)
        kk = min(k_aux, n_dead)
        dead_idx = dead.nonzero().squeeze(1)
        sub = pre.detach().index_select(1, dead_idx)
        top, pos = sub.topk(kk, dim=1)
        code = SparseCode.from_topk(dead_idx[pos], self.d_sae)
        sparse = self.use_sparse(float(kk))
        values = torch.relu(self._values(sparse, pre, code, top.reshape(-1), xn, bias))
        e_hat = self._decode_entries(sparse, values, code)
        residual = (xn - x_hat).detach()
        return mse_sum(e_hat, residual) * min(1.0, n_dead / k_aux)


class BatchTopKSAE(TopKSAE):
    """BatchTopK (Bussmann et al. 2024): the ``k · B`` largest activations of a batch are kept.

    A running mean of the smallest kept activation becomes the inference threshold
    (``inference="threshold"``, the default), which makes it a JumpReLU SAE at inference: one
    sample's code never depends on its batch. Saved to SAELens as ``jumprelu``.
    """

    name: ClassVar[str] = "batch-topk"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = BatchTopKConfig

    def _init_extra(self) -> None:
        super()._init_extra()
        self.register_buffer("threshold", torch.zeros(()))

    @torch.no_grad()
    def _reset_extra(self) -> None:
        super()._reset_extra()
        self.threshold.zero_()

    def _select(self, pre: torch.Tensor) -> tuple[SparseCode, torch.Tensor]:
        batch, n = pre.shape
        keep = min(pre.numel(), max(1, int(self.config.k * batch)))
        top, flat = pre.reshape(-1).topk(keep, sorted=False)
        code, order = SparseCode.from_flat(flat, batch, n)
        return code, top[order]

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.config.inference == "threshold":
            return pre * (pre > self.threshold) * (pre > 0)
        return super()._activate(pre)

    def _after_select(self, code: SparseCode, values: torch.Tensor) -> None:
        positive = values[values > 0]
        if positive.numel():
            m = self.config.threshold_momentum
            self.threshold.mul_(1 - m).add_(m * positive.min())


class MatryoshkaSAE(BatchTopKSAE):
    """Matryoshka BatchTopK: nested prefixes of the latents each reconstruct the input.

    The loss is the mean over prefixes of ``‖x - x̂_prefix‖²`` (plus AuxK on the full
    reconstruction's residual); ``mse`` in the metrics is the full reconstruction's.
    """

    name: ClassVar[str] = "matryoshka"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = MatryoshkaConfig

    def prefix_ends(self) -> list[int]:
        ends = sorted({max(1, round(f * self.d_sae)) for f in self.config.prefix_fractions})
        ends[-1] = self.d_sae
        return ends

    def _reconstruct(
        self, sparse: bool, values: torch.Tensor, code: SparseCode, xn: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ends = self.prefix_ends()
        groups = len(ends)
        batch = xn.shape[0]
        if sparse:
            bounds = torch.tensor(ends, device=code.cols.device)
            group = torch.searchsorted(bounds, code.cols, right=True)
            vrows = code.rows * groups + group
            counts = torch.bincount(vrows, minlength=batch * groups)
            grouped = SparseCode(
                vrows, code.cols, torch.cumsum(counts, 0) - counts, batch * groups, self.d_sae
            )
            parts = SparseDecode.apply(values, self.W_dec, grouped).view(batch, groups, -1)
        else:
            z = code.dense(values)
            starts = [0, *ends[:-1]]
            parts = torch.stack([z[:, a:b] @ self.W_dec[a:b] for a, b in zip(starts, ends)], dim=1)
        recons = parts.cumsum(1) + self.b_dec
        losses = (recons - xn.unsqueeze(1)).pow(2).sum(-1).mean(0)
        return recons[:, -1], losses.mean()
