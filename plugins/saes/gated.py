"""Gated SAE (paper eq. 5; Rajamanoharan et al. 2024), parameterised as in SAELens."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from saebench_vision_plugins.saes.base import BuiltinSAE, TrainTerms, dense_fired, mse_sum
from saebench_vision_plugins.saes.configs import GatedConfig
from torch import nn


class GatedSAE(BuiltinSAE):
    """Gate and magnitude paths share ``W_enc``; the magnitude path rescales it by ``exp(r_mag)``.

    ``π_gate = W_enc (x - b_dec) + b_gate``, ``π_mag = exp(r_mag) ⊙ W_enc (x - b_dec) + b_mag``,
    ``z = 1[π_gate > 0] ⊙ ReLU(π_mag)``. The loss adds ``λ ‖ReLU(π_gate)‖₁`` (weighted by decoder
    row norms in ``weighted-l1`` mode, so that shrinking the gate cannot dodge the penalty) and
    the auxiliary reconstruction ``‖x - (W_dec ReLU(π_gate) + b_dec)‖²`` through a frozen copy of
    the decoder, which gives the gate its gradient. ``b_enc`` is unused (kept at zero).
    """

    name: ClassVar[str] = "gated"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = GatedConfig

    def _init_extra(self) -> None:
        n = self.d_sae
        self.b_gate = nn.Parameter(torch.zeros(n))
        self.r_mag = nn.Parameter(torch.zeros(n))
        self.b_mag = nn.Parameter(torch.zeros(n))
        self.b_enc.requires_grad_(False)

    @torch.no_grad()
    def _reset_extra(self) -> None:
        self.b_gate.zero_()
        self.r_mag.zero_()
        self.b_mag.zero_()

    def _paths(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.linear(xn, self.W_enc)
        shift = self.W_enc @ self.b_dec if self.config.apply_b_dec_to_input else None
        gate_bias = self.b_gate - shift if shift is not None else self.b_gate
        scale = self.r_mag.exp()
        mag_bias = self.b_mag - scale * shift if shift is not None else self.b_mag
        return h + gate_bias, torch.addcmul(mag_bias, h, scale)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """The magnitude path's pre-activation (SAELens's ``hidden_pre``)."""
        return self._paths(x * self.input_scale)[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        gate, mag = self._paths(x * self.input_scale)
        return (gate > 0) * torch.relu(mag)

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:  # pragma: no cover - unused
        raise NotImplementedError("GatedSAE encodes through two paths; use encode()")

    def train_terms(self, xn: torch.Tensor, *, sparsity_scale: float = 1.0) -> TrainTerms:
        gate, mag = self._paths(xn)
        z = (gate > 0) * torch.relu(mag)
        x_hat = self._decode_n(z)
        mse = mse_sum(x_hat, xn)
        gate_act = torch.relu(gate)
        weights = self._l1_weights()
        batch = xn.shape[0]
        l1 = (gate_act.sum(0) @ weights if weights is not None else gate_act.sum()) / batch
        via_gate = torch.addmm(self.b_dec.detach(), gate_act, self.W_dec.detach())
        aux = mse_sum(via_gate, xn)
        loss = mse + (self.config.l1_coefficient * sparsity_scale) * l1 + aux
        fired, l0 = dense_fired(z.detach())
        metrics = {
            "loss": loss.detach(),
            "mse": mse.detach(),
            "l0": l0,
            "l1": l1.detach(),
            "aux_reconstruction": aux.detach(),
        }
        return TrainTerms(loss, x_hat, fired, lambda: z.detach(), metrics)
