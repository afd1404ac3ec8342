"""ReLU SAE with an L1 penalty: the paper's baseline (eqs. 1-3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from saebench_vision_plugins.saes.base import (
    BuiltinSAE,
    GroupTerms,
    Params,
    dense_items,
    group_mse,
)
from saebench_vision_plugins.saes.configs import ReLUConfig


class ReLUSAE(BuiltinSAE):
    """``z = ReLU(W_enc (x - b_dec) + b_enc)``, ``x̂ = W_dec z + b_dec``, loss ``‖x - x̂‖² + λ‖z‖₁``.

    With ``decoder_norm="weighted-l1"`` (default) the L1 term weights each latent by its decoder
    row's norm, as SAELens (which the paper used) does; see :mod:`..configs` for why.
    """

    name: ClassVar[str] = "relu"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = ReLUConfig
    per_sae_fields: ClassVar[frozenset[str]] = frozenset({"b_dec_init", "l1_coefficient"})

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    @classmethod
    def group_terms(
        cls, saes: Sequence[BuiltinSAE], params: Params, xn: torch.Tensor, sparsity_scale: float
    ) -> GroupTerms:
        P = params
        batch = xn.shape[0]
        z = torch.relu(cls.group_linear(xn, P["W_enc"], cls.group_bias(saes, P, P["b_enc"])))
        x_hat = cls.group_decode(z, P)
        mse = group_mse(x_hat, xn)
        weights = cls.l1_weights(saes, P)
        z_sum = z.sum(1)
        l1 = (z_sum * weights if weights is not None else z_sum).sum(-1) / batch
        lam = cls.coefficients(saes, "l1_coefficient", mse) * sparsity_scale
        losses = mse + lam * l1
        return GroupTerms(losses.sum(), dense_items(saes, losses, mse, x_hat, z, {"l1": l1}))
