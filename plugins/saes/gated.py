"""Gated SAE (paper eq. 5; Rajamanoharan et al. 2024), parameterised as in SAELens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from saebench_vision_plugins.saes.base import (
    BuiltinSAE,
    DecodeWithL1,
    GroupTerms,
    Params,
    dense_items,
    group_mse,
)
from saebench_vision_plugins.saes.configs import GatedConfig
from torch import nn


class GatedSAE(BuiltinSAE):
    """Gate and magnitude paths share ``W_enc``; the magnitude path rescales it by ``exp(r_mag)``.

    ``π_gate = W_enc (x - b_dec) + b_gate``, ``π_mag = exp(r_mag) ⊙ W_enc (x - b_dec) + b_mag``,
    ``z = 1[π_gate > 0] ⊙ ReLU(π_mag)``. The loss adds ``λ ‖ReLU(π_gate)‖₁`` (weighted by decoder
    row norms in ``weighted-l1`` mode, so that shrinking the gate cannot dodge the penalty) and
    ``aux_coefficient`` times the auxiliary reconstruction ``‖x - (W_dec ReLU(π_gate) + b_dec)‖²``,
    which gives the gate its gradient, through the shared decoder (SAELens) or a frozen copy of
    it (the paper; ``aux_decoder="frozen"``): see :mod:`..configs` for the default. ``b_enc``
    is unused (kept at zero).

    With ``l1_convention="relu"`` (default) the L1 term is weighted by ``λ (1 +
    aux_coefficient)`` instead of ``λ``: the shared encoder receives the reconstruction gradient
    through both paths against one L1 term, so at initialisation (``r_mag = b_mag = b_gate =
    0``, both codes ``ReLU(W_enc (x - b_dec))``) the gradients of the SAELens loss at λ on
    ``W_enc``, ``W_dec`` and ``b_dec`` are ``1 + aux_coefficient`` times a ReLU SAE's at ``λ /
    (1 + aux_coefficient)`` (and ``b_gate`` + ``b_mag`` get its ``b_enc``'s), and Adam, blind
    to the scale, trains it as that more weakly penalised ReLU SAE.
    ``l1_convention="saelens"`` keeps SAELens's (and the Gated SAE paper's) ``λ``.
    """

    name: ClassVar[str] = "gated"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = GatedConfig
    per_sae_fields: ClassVar[frozenset[str]] = frozenset({"b_dec_init", "l1_coefficient"})
    saelens_architecture: ClassVar[str] = "gated"
    saelens_architectures: ClassVar[tuple[str, ...]] = ("gated",)
    saelens_tensors: ClassVar[tuple[str, ...]] = ("b_gate", "r_mag", "b_mag")

    @classmethod
    def saelens_config_args(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        # A checkpoint SAELens wrote was trained with SAELens's weighting of λ; one exported
        # here says which weighting it was trained with (SAELens 6's loader keeps only the
        # keys its config class declares, so the extra key loads there too).
        return {"l1_convention": cfg.get("l1_convention", "saelens")}

    def to_saelens(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        cfg, tensors = super().to_saelens()
        cfg["l1_convention"] = self.config.l1_convention
        return cfg, tensors

    def _init_extra(self) -> None:
        n = self.d_sae
        self.b_gate = nn.Parameter(torch.zeros(n))
        self.r_mag = nn.Parameter(torch.zeros(n))
        self.b_mag = nn.Parameter(torch.zeros(n))
        self.b_enc.requires_grad_(False)

    @torch.no_grad()
    def _reset_extra(self) -> None:
        self.b_gate.fill_(float(self.config.gate_bias_init))
        self.r_mag.zero_()
        self.b_mag.zero_()

    @classmethod
    def _paths(
        cls, saes: Sequence[BuiltinSAE], P: Params, xn: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = cls.group_encode(saes, P, xn, None)
        gate = h + P["b_gate"].unsqueeze(1)
        mag = torch.addcmul(P["b_mag"].unsqueeze(1), h, P["r_mag"].exp().unsqueeze(1))
        return gate, mag

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """The magnitude path's pre-activation (SAELens's ``hidden_pre``)."""
        return self._paths([self], self.stacked_params(), x * self.input_scale)[1][0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        gate, mag = self._paths([self], self.stacked_params(), x * self.input_scale)
        return ((gate > 0) * torch.relu(mag))[0]

    @classmethod
    def group_terms(
        cls, saes: Sequence[BuiltinSAE], params: Params, xn: torch.Tensor, sparsity_scale: float
    ) -> GroupTerms:
        P = params
        gate, mag = cls._paths(saes, P, xn)
        z = (gate > 0) * torch.relu(mag)
        gate_act = torch.relu(gate)
        weighted = saes[0].config.decoder_norm == "weighted-l1"
        x_hat, l1 = DecodeWithL1.apply(z, gate_act, P["W_dec"], P["b_dec"], weighted)
        mse = group_mse(x_hat, xn)
        if saes[0].config.aux_decoder == "frozen":
            dec = {"W_dec": P["W_dec"].detach(), "b_dec": P["b_dec"].detach()}
        else:
            dec = {"W_dec": P["W_dec"], "b_dec": P["b_dec"]}
        aux = group_mse(cls.group_decode(gate_act, dec), xn)
        aux_coef = cls.coefficients(saes, "aux_coefficient", mse)
        lam = cls.coefficients(saes, "l1_coefficient", mse) * sparsity_scale
        if saes[0].config.l1_convention == "relu":
            lam = lam * (1.0 + aux_coef)
        losses = mse + lam * l1 + aux_coef * aux
        extra = {"l1": l1, "aux_reconstruction": aux}
        return GroupTerms(losses.sum(), dense_items(saes, losses, mse, x_hat, z, extra))
