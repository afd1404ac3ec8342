"""Shared machinery of the built-in SAEs: parameters, normalisation, decoder-norm handling.

Every built-in SAE keeps its weights in latent-major layout: ``W_enc`` and ``W_dec`` are both
``(d_sae, d_in)``, one row per latent, so that sparse steps touch contiguous rows. (SAELens
stores ``W_enc`` as ``(d_in, d_sae)``; :mod:`saebench_vision.checkpoint` transposes on export.)

Training runs in normalised space: the trainer sets the ``input_scale`` buffer (inputs are
multiplied by it) and calls :meth:`BuiltinSAE.train_terms` on normalised batches; the public
``encode``/``decode``/``loss`` take and return raw activations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from saebench_vision.interfaces import SAE, SAEOutput


@dataclass
class TrainTerms:
    """One training forward pass in normalised space.

    ``fired`` counts, per latent, the samples of the batch it was active on (for dead and
    dense latent tracking); ``dense_z`` builds the (B, d_sae) code on demand, since the sparse
    paths never materialise it.
    """

    loss: torch.Tensor
    x_hat: torch.Tensor
    fired: torch.Tensor
    dense_z: Callable[[], torch.Tensor]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def random_rows(n: int, d: int, norm: float, *, device: Any = None) -> torch.Tensor:
    """``n`` random directions of length ``norm`` drawn from the global torch RNG."""
    rows = torch.randn(n, d, device=device)
    return rows * (norm / rows.norm(dim=1, keepdim=True).clamp_min(1e-12))


class BuiltinSAE(SAE):
    """Base of the built-in architectures: tied initialisation, ``b_dec`` handling, unit norms.

    Subclasses implement :meth:`train_terms` and :meth:`_activate` and may add parameters in
    :meth:`_init_extra`.
    """

    version: ClassVar[str] = "1"
    unit_norm_default: ClassVar[bool] = False

    def __init__(self, d_in: int, config: Any) -> None:
        super().__init__(d_in, config)
        n, d = self.d_sae, self.d_in
        self.W_enc = nn.Parameter(torch.empty(n, d))
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(torch.empty(n, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self._init_extra()
        self.reset_parameters()

    def resize_latents(self, d_sae: int) -> None:
        """Rebuild the parameters for ``d_sae`` latents (checkpoints whose width is not
        ``d_in x expansion``, e.g. SAELens SAEs of 16384 latents on 2304-wide inputs)."""
        n, d = int(d_sae), self.d_in
        self.d_sae = n
        self.W_enc = nn.Parameter(torch.empty(n, d))
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(torch.empty(n, d))
        self._init_extra()
        self.reset_parameters()

    # -- initialisation --------------------------------------------------------------------

    def _init_extra(self) -> None:
        """Register architecture-specific parameters and buffers."""

    @property
    def unit_norm(self) -> bool:
        return getattr(self.config, "decoder_norm", "") == "unit"

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise from the global torch RNG: random decoder rows, ``W_enc = W_dec`` (tied).

        Rows have unit norm when the decoder is held at unit norm, else
        ``config.decoder_init_norm`` (SAELens's 0.1 heuristic from Anthropic's April 2024 update).
        """
        norm = 1.0 if self.unit_norm else float(self.config.decoder_init_norm)
        rows = random_rows(self.d_sae, self.d_in, norm, device=self.W_dec.device)
        self.W_dec.copy_(rows)
        self.W_enc.copy_(rows)
        self.b_enc.zero_()
        self.b_dec.zero_()
        self._reset_extra()

    def _reset_extra(self) -> None:
        """Reset architecture-specific parameters and buffers."""

    @torch.no_grad()
    def init_b_dec(self, value: torch.Tensor) -> None:
        """Set the decoder bias (normalised space) from the trainer's data sample."""
        self.b_dec.copy_(value.to(self.b_dec))

    # -- shared pieces ---------------------------------------------------------------------

    def _enc_bias(self, b: torch.Tensor) -> torch.Tensor:
        """Effective encoder bias: ``(x - b_dec) W_encᵀ + b = x W_encᵀ + (b - W_enc b_dec)``.

        Folding ``b_dec`` into the bias keeps the gradient of the dense input product to the
        weight alone (no (B, d_in) input gradient, one GEMM fewer per step).
        """
        if self.config.apply_b_dec_to_input:
            return b - self.W_enc @ self.b_dec
        return b

    def _pre(self, xn: torch.Tensor) -> torch.Tensor:
        return F.linear(xn, self.W_enc, self._enc_bias(self.b_enc))

    def _decode_n(self, z: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_dec, z, self.W_dec)

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_terms(self, xn: torch.Tensor, *, sparsity_scale: float = 1.0) -> TrainTerms:
        """Loss and statistics of a normalised batch ``xn`` (B, d_in)."""
        raise NotImplementedError

    # -- public API (raw activations) -------------------------------------------------------

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return self._pre(x * self.input_scale)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._activate(self.pre_activations(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._decode_n(z) / self.input_scale

    def loss(self, x: torch.Tensor, *, sparsity_scale: float = 1.0) -> SAEOutput:
        terms = self.train_terms(x * self.input_scale, sparsity_scale=sparsity_scale)
        return SAEOutput(
            loss=terms.loss,
            x_hat=terms.x_hat / self.input_scale,
            z=terms.dense_z(),
            metrics=terms.metrics,
        )

    def decoder_directions(self) -> torch.Tensor:
        w = self.W_dec.detach()
        return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)

    # -- decoder-norm constraint --------------------------------------------------------------

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """With unit-norm rows, drop the gradient's component along each row (sparsify, saev)."""
        if self.unit_norm and self.W_dec.grad is not None:
            g, w = self.W_dec.grad, self.W_dec
            g.sub_((g * w).sum(1, keepdim=True) * w)

    @torch.no_grad()
    def on_step_end(self) -> None:
        if self.unit_norm:
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    # -- helpers -------------------------------------------------------------------------------

    def _l1_weights(self) -> torch.Tensor | None:
        """Per-latent L1 weights: decoder row norms in ``weighted-l1`` mode, else None."""
        if getattr(self.config, "decoder_norm", "") == "weighted-l1":
            return self.W_dec.norm(dim=1)
        return None


def mse_sum(x_hat: torch.Tensor, xn: torch.Tensor) -> torch.Tensor:
    """Squared error summed over features, averaged over the batch (SAELens's ``mse_loss``)."""
    return (x_hat - xn).pow(2).sum(-1).mean()


def dense_fired(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fired counts per latent, mean L0)`` of a dense code."""
    active = z > 0
    fired = active.sum(0)
    return fired, fired.sum() / max(1, z.shape[0])


def geometric_median(x: torch.Tensor, iters: int = 100, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm in float64 (dictionary_learning's and SAELens v5's ``b_dec`` init)."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        dist = (x - y).norm(dim=1).clamp_min(eps)
        w = 1.0 / dist
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - y).norm() <= eps * max(1.0, float(y.norm())):
            y = new
            break
        y = new
    return y.float()


def default_aux_k(d_in: int, configured: int) -> int:
    return configured if configured > 0 else max(1, d_in // 2)
