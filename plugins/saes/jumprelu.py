"""JumpReLU SAE (Rajamanoharan et al. 2024) with straight-through threshold estimates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from saebench_vision_plugins.saes.base import (
    BuiltinSAE,
    GroupTerms,
    Params,
    dense_items,
    group_mse,
)
from saebench_vision_plugins.saes.configs import JumpReLUConfig
from torch import nn


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """``pre · 1[pre > θ]``; θ's pseudo-derivative uses a rectangle kernel of width ε."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        g_pre = (pre > theta) * grad
        g_theta = (-(theta / eps) * _rectangle((pre - theta) / eps) * grad).sum(-2, keepdim=True)
        return g_pre, g_theta, None


class _Step(torch.autograd.Function):
    """``1[pre > θ]`` with the same pseudo-derivative for θ (the L0 penalty's gradient)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        g_theta = (-(1.0 / eps) * _rectangle((pre - theta) / eps) * grad).sum(-2, keepdim=True)
        return None, g_theta, None


class JumpReLUSAE(BuiltinSAE):
    """``z = pre · 1[pre > θ]`` with a learnt threshold θ per latent; loss ``‖x - x̂‖² + λ L0``.

    θ is a parameter used through ``ReLU(θ)`` (SAELens v6 stores it directly, not as a log:
    under Adam a log threshold barely moves). The L0 penalty and the jump get gradients to θ
    through a rectangle-kernel straight-through estimator of bandwidth ``config.bandwidth``.
    """

    name: ClassVar[str] = "jumprelu"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = JumpReLUConfig
    per_sae_fields: ClassVar[frozenset[str]] = frozenset({"b_dec_init", "l0_coefficient"})

    def _init_extra(self) -> None:
        self.threshold = nn.Parameter(torch.full((self.d_sae,), float(self.config.init_threshold)))

    @torch.no_grad()
    def _reset_extra(self) -> None:
        self.threshold.fill_(float(self.config.init_threshold))

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre) * (pre > torch.relu(self.threshold))

    @classmethod
    def group_terms(
        cls, saes: Sequence[BuiltinSAE], params: Params, xn: torch.Tensor, sparsity_scale: float
    ) -> GroupTerms:
        P = params
        pre = cls.group_encode(saes, P, xn, P["b_enc"])
        theta = torch.relu(P["threshold"]).unsqueeze(1)
        eps = float(saes[0].config.bandwidth)
        z = _JumpReLU.apply(pre, theta, eps)
        x_hat = cls.group_decode(z, P)
        mse = group_mse(x_hat, xn)
        l0_soft = _Step.apply(pre, theta, eps).sum(-1).mean(-1)
        lam = cls.coefficients(saes, "l0_coefficient", mse) * sparsity_scale
        losses = mse + lam * l0_soft
        return GroupTerms(losses.sum(), dense_items(saes, losses, mse, x_hat, z, {}))
