"""ReLU SAE with an L1 penalty: the paper's baseline (eqs. 1-3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from saebench_vision_plugins.saes.base import (
    BuiltinSAE,
    DecodeWithL1,
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
    saelens_architecture: ClassVar[str] = "standard"
    saelens_architectures: ClassVar[tuple[str, ...]] = ("standard",)

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    @classmethod
    def group_terms(
        cls, saes: Sequence[BuiltinSAE], params: Params, xn: torch.Tensor, sparsity_scale: float
    ) -> GroupTerms:
        P = params
        z = torch.relu(cls.group_encode(saes, P, xn, P["b_enc"]))
        weighted = saes[0].config.decoder_norm == "weighted-l1"
        x_hat, l1 = DecodeWithL1.apply(z, z, P["W_dec"], P["b_dec"], weighted)
        mse = group_mse(x_hat, xn)
        lam = cls.coefficients(saes, "l1_coefficient", mse) * sparsity_scale
        losses = mse + lam * l1
        return GroupTerms(losses.sum(), dense_items(saes, losses, mse, x_hat, z, {"l1": l1}))
