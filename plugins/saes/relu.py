"""ReLU SAE with an L1 penalty: the paper's baseline (eqs. 1-3)."""

from __future__ import annotations

from typing import ClassVar

import torch
from saebench_vision_plugins.saes.base import BuiltinSAE, TrainTerms, dense_fired, mse_sum
from saebench_vision_plugins.saes.configs import ReLUConfig


class ReLUSAE(BuiltinSAE):
    """``z = ReLU(W_enc (x - b_dec) + b_enc)``, ``x̂ = W_dec z + b_dec``, loss ``‖x - x̂‖² + λ‖z‖₁``.

    With ``decoder_norm="weighted-l1"`` (default) the L1 term weights each latent by its decoder
    row's norm, as SAELens (which the paper used) does; see :mod:`..configs` for why.
    """

    name: ClassVar[str] = "relu"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = ReLUConfig

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def train_terms(self, xn: torch.Tensor, *, sparsity_scale: float = 1.0) -> TrainTerms:
        z = torch.relu(self._pre(xn))
        x_hat = self._decode_n(z)
        mse = mse_sum(x_hat, xn)
        weights = self._l1_weights()
        l1 = (z.sum(0) @ weights if weights is not None else z.sum()) / xn.shape[0]
        loss = mse + (self.config.l1_coefficient * sparsity_scale) * l1
        fired, l0 = dense_fired(z.detach())
        metrics = {"loss": loss.detach(), "mse": mse.detach(), "l0": l0, "l1": l1.detach()}
        return TrainTerms(loss, x_hat, fired, lambda: z.detach(), metrics)
