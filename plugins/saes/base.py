"""Shared machinery of the built-in SAEs: parameters, normalisation, decoder norms, fused groups.

Every built-in SAE keeps its weights in latent-major layout: ``W_enc`` and ``W_dec`` are both
``(d_sae, d_in)``, one row per latent, so that sparse steps touch contiguous rows. (SAELens
stores ``W_enc`` as ``(d_in, d_sae)``; :mod:`saebench_vision.checkpoint` transposes on export.)

Training runs in normalised space: the trainer sets the ``input_scale`` buffer (inputs are
multiplied by it) and works on normalised batches; the public ``encode``/``decode``/``loss``
take and return raw activations.

Fused groups: an architecture's training step is written once, for a *group* of S SAEs of the
same architecture and shape whose parameters are stacked along a leading dimension
(:meth:`BuiltinSAE.group_terms`); a lone SAE is a group of one. The trainer stacks the
parameters of same-shape SAEs of a sweep (their sparsity coefficients may differ) so that their
products run as a few large batched matmuls instead of many small ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from saebench_vision.config import build_config, config_as_dict
from saebench_vision.interfaces import SAE, GroupTerms, SAEOutput, TrainTerms
from saebench_vision.training import geometric_median

__all__ = [
    "BuiltinSAE",
    "GroupTerms",
    "Params",
    "TrainTerms",
    "geometric_median",
]


Params = dict[str, torch.Tensor]
"""A group's parameters by name, each with a leading dimension of size S (one per SAE)."""


def random_rows(n: int, d: int, norm: float, *, device: Any = None) -> torch.Tensor:
    """``n`` random directions of length ``norm`` drawn from the global torch RNG."""
    rows = torch.randn(n, d, device=device)
    return rows * (norm / rows.norm(dim=1, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def project_out_parallel(w: torch.Tensor, grad: torch.Tensor) -> None:
    """Remove from ``grad`` its component along each row of ``w`` (unit-norm rows), in place."""
    grad.sub_((grad * w).sum(-1, keepdim=True) * w)


@torch.no_grad()
def normalise_rows(w: torch.Tensor) -> None:
    w.div_(w.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def bmm_tn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``aₛᵀ bₛ`` for every member (the weight gradients). On the CPU a loop of matrix products
    is about twice as fast as ``bmm`` with a transposed first operand."""
    if a.device.type != "cpu" or a.shape[0] == 1:
        return torch.bmm(a.transpose(1, 2), b)
    out = a.new_empty(a.shape[0], a.shape[2], b.shape[2])
    for i in range(a.shape[0]):
        torch.mm(a[i].T, b[i], out=out[i])
    return out


class CenteredLinear(torch.autograd.Function):
    """``(x - b_dec,ₛ) Wₛᵀ + bₛ`` for every member s: (S, B, n) from x (B, d).

    Written out so that the backward pass costs one product per member (``∂W = gᵀ (x - b_dec)``,
    contiguous in W's layout) plus matrix-vector products for the biases: no input gradient and
    no separate rank-one update for ``b_dec``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        b_dec: torch.Tensor | None,
        W: torch.Tensor,
        b: torch.Tensor | None,
    ) -> torch.Tensor:
        S = W.shape[0]
        if b_dec is not None:
            xc = x.unsqueeze(0) - b_dec.unsqueeze(1)
        else:
            xc = x.unsqueeze(0).expand(S, *x.shape)
        wt = W.transpose(1, 2)
        out = torch.baddbmm(b.unsqueeze(1), xc, wt) if b is not None else torch.bmm(xc, wt)
        ctx.save_for_backward(xc, W)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        xc, W = ctx.saved_tensors
        g_w = bmm_tn(grad, xc) if ctx.needs_input_grad[2] else None
        g_b = g_bdec = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            g_sum = grad.sum(1)
            g_b = g_sum if ctx.needs_input_grad[3] else None
            if ctx.needs_input_grad[1]:
                g_bdec = -torch.bmm(g_sum.unsqueeze(1), W).squeeze(1)
        return None, g_bdec, g_w, g_b


class DecodeWithL1(torch.autograd.Function):
    """``x̂ₛ = zₛ Wₛ + b_dec,ₛ`` and the L1 penalty ``Σᵢ (Σ_b a_bi) wᵢ / B`` of activations ``a``.

    ``wᵢ`` is decoder row i's norm (``weighted=True``, SAELens's penalty) or 1. Computing both
    in one function lets the backward pass add the penalty's decoder gradient into the decoder's
    weight gradient in place, instead of materialising it and summing. Pass ``a = z`` for a
    penalty on the code itself.
    """

    @staticmethod
    def forward(
        ctx: Any,
        z: torch.Tensor,
        a: torch.Tensor,
        W: torch.Tensor,
        b_dec: torch.Tensor,
        weighted: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = z.shape[1]
        x_hat = torch.baddbmm(b_dec.unsqueeze(1), z, W)
        a_sum = a.sum(1)
        norms = W.norm(dim=-1) if weighted else None
        penalty = ((a_sum * norms) if norms is not None else a_sum).sum(-1) / batch
        ctx.save_for_backward(z, W, a_sum, *([norms] if norms is not None else []))
        ctx.same = a is z
        ctx.weighted = weighted
        return x_hat, penalty

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor | None, g_pen: torch.Tensor | None) -> tuple[Any, ...]:
        z, W, a_sum, *rest = ctx.saved_tensors
        S, batch, n = z.shape
        g_z = g_w = g_bdec = g_a = None
        if g is not None:
            g = g.contiguous()
            g_z = torch.bmm(g, W.transpose(1, 2))
            g_w = bmm_tn(z, g)
            g_bdec = g.sum(1)
        if g_pen is not None:
            per_latent = (g_pen / batch).unsqueeze(-1).expand(S, n)
            if ctx.weighted:
                norms = rest[0]
                per_latent = per_latent * norms
                scale = (g_pen / batch).unsqueeze(-1) * a_sum / norms.clamp_min(1e-12)
                if g_w is None:
                    g_w = W * scale.unsqueeze(-1)
                else:
                    g_w.addcmul_(W, scale.unsqueeze(-1))
            g_a = per_latent.unsqueeze(1).expand(S, batch, n)
            if ctx.same:
                g_z = g_z.add_(g_a) if g_z is not None else g_a
                g_a = None
        if g_w is None and ctx.needs_input_grad[2]:
            g_w = torch.zeros_like(W)
        return g_z, g_a, g_w, g_bdec, None


class BuiltinSAE(SAE):
    """Base of the built-in architectures: tied initialisation, ``b_dec`` handling, unit norms.

    Subclasses implement :meth:`group_terms` and :meth:`_activate` and may add parameters in
    :meth:`_init_extra`. ``per_sae_fields`` lists the Config fields that may differ between
    members of a fused group (sparsity knobs); every other field must match.
    """

    version: ClassVar[str] = "1"
    per_sae_fields: ClassVar[frozenset[str]] = frozenset({"b_dec_init"})

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

    # -- fused groups --------------------------------------------------------------------------

    def fusion_key(self) -> str:
        """SAEs with equal keys can train as one fused group."""
        cfg = {k: v for k, v in config_as_dict(self.config).items() if k not in self.per_sae_fields}
        return json.dumps(
            [type(self).__module__, type(self).__qualname__, self.d_in, self.d_sae, cfg],
            sort_keys=True,
            default=str,
        )

    @classmethod
    def group_terms(  # type: ignore[override]
        cls, saes: Sequence[BuiltinSAE], params: Params, xn: torch.Tensor, sparsity_scale: float
    ) -> GroupTerms:
        """The training step of ``saes`` (one class, one shape) on a normalised batch ``xn``."""
        raise NotImplementedError

    @classmethod
    @torch.no_grad()
    def before_group_optimizer_step(  # type: ignore[override]
        cls, saes: Sequence[BuiltinSAE], params: dict[str, nn.Parameter]
    ) -> None:
        """With unit-norm rows, drop the stacked gradient's component along each row."""
        w = params.get("W_dec")
        if saes[0].unit_norm and w is not None and w.grad is not None:
            project_out_parallel(w, w.grad)

    def train_terms(self, xn: torch.Tensor, *, sparsity_scale: float = 1.0) -> TrainTerms:
        """Loss and statistics of a normalised batch ``xn`` (B, d_in)."""
        group = type(self).group_terms([self], self.stacked_params(), xn, sparsity_scale)
        return group.items[0]

    # -- shared pieces of a group step -----------------------------------------------------

    @staticmethod
    def group_bias(saes: Sequence[BuiltinSAE], P: Params, bias: torch.Tensor) -> torch.Tensor:
        """Effective encoder bias (S, n): ``(x - b_dec) Wᵀ + b = x Wᵀ + (b - W b_dec)``.

        Folding ``b_dec`` into the bias keeps the gradient of the dense input product to the
        weight alone (no (B, d_in) input gradient, one GEMM fewer per step).
        """
        if saes[0].config.apply_b_dec_to_input:
            return bias - torch.bmm(P["W_enc"], P["b_dec"].unsqueeze(-1)).squeeze(-1)
        return bias

    @staticmethod
    def group_encode(
        saes: Sequence[BuiltinSAE], P: Params, xn: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """Encoder pre-activations (S, B, n) of every member, ``b_dec`` subtracted if configured."""
        b_dec = P["b_dec"] if saes[0].config.apply_b_dec_to_input else None
        return CenteredLinear.apply(xn, b_dec, P["W_enc"], bias)

    @staticmethod
    def group_linear(xn: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``xn Wₛᵀ + biasₛ`` for every member: (S, B, n)."""
        S = W.shape[0]
        x = xn.unsqueeze(0).expand(S, *xn.shape)
        if bias is None:
            return torch.bmm(x, W.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, W.transpose(1, 2))

    @staticmethod
    def group_decode(z: torch.Tensor, P: Params) -> torch.Tensor:
        return torch.baddbmm(P["b_dec"].unsqueeze(1), z, P["W_dec"])

    @staticmethod
    def coefficients(saes: Sequence[BuiltinSAE], name: str, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(
            [float(getattr(s.config, name)) for s in saes], dtype=like.dtype, device=like.device
        )

    @staticmethod
    def l1_weights(saes: Sequence[BuiltinSAE], P: Params) -> torch.Tensor | None:
        """Per-latent L1 weights (S, n): decoder row norms in ``weighted-l1`` mode, else None."""
        if getattr(saes[0].config, "decoder_norm", "") == "weighted-l1":
            return P["W_dec"].norm(dim=-1)
        return None

    # -- public API (raw activations) -------------------------------------------------------

    def _pre(self, xn: torch.Tensor) -> torch.Tensor:
        bias = (
            self.b_enc - self.W_enc @ self.b_dec if self.config.apply_b_dec_to_input else self.b_enc
        )
        return torch.addmm(bias, xn, self.W_enc.T)

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return self._pre(x * self.input_scale)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._activate(self.pre_activations(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_dec, z, self.W_dec) / self.input_scale

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

    # -- SAELens ------------------------------------------------------------------------------

    saelens_architecture: ClassVar[str] = ""
    """The SAELens ``architecture`` :meth:`to_saelens` writes (empty: no counterpart)."""
    saelens_tensors: ClassVar[tuple[str, ...]] = ("b_enc",)
    """Per-latent tensors copied as they are, besides ``W_enc``, ``W_dec`` and ``b_dec``."""

    def to_saelens(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        if not self.saelens_architecture:
            return super().to_saelens()
        s = float(self.input_scale)
        tensors = {
            "W_enc": (self.W_enc.detach().float() * s).T,
            "W_dec": self.W_dec.detach().float() / s,
            "b_dec": self.b_dec.detach().float() / s,
        }
        for key in self.saelens_tensors:
            tensors[key] = getattr(self, key).detach().float()
        cfg: dict[str, Any] = {
            "architecture": self.saelens_architecture,
            "apply_b_dec_to_input": bool(self.config.apply_b_dec_to_input),
        }
        return cfg, tensors

    @classmethod
    def saelens_config_args(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        """Config arguments read from a SAELens ``cfg.json`` (besides width and ``b_dec``)."""
        return {}

    @classmethod
    def saelens_tensors_in(
        cls, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """SAELens tensors in the form :meth:`from_saelens` copies (renames, folds)."""
        return tensors

    @classmethod
    def from_saelens(cls, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> SAE:
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
        args = {
            "expansion": max(1, round(d_sae / d_in)),
            "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
            **cls.saelens_config_args(cfg),
        }
        config = build_config(cls.Config, args, where="cfg.json", what=f"SAE `{cls.name}`")
        sae = cls(d_in, config)
        if sae.d_sae != d_sae:
            sae.resize_latents(d_sae)
        raw = cls.saelens_tensors_in(cfg, dict(tensors))
        wanted = ("W_enc", "W_dec", "b_dec", *cls.saelens_tensors)
        missing = [k for k in wanted if k not in raw]
        if missing:
            raise ValueError(f"missing tensors {', '.join(missing)}")
        expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        expected.update({k: (d_sae,) for k in cls.saelens_tensors})
        for key, shape in expected.items():
            if tuple(raw[key].shape) != shape:
                raise ValueError(f"{key} has shape {tuple(raw[key].shape)}, expected {shape}")
        with torch.no_grad():
            sae.W_enc.copy_(raw["W_enc"].T)
            sae.W_dec.copy_(raw["W_dec"])
            sae.b_dec.copy_(raw["b_dec"])
            for key in cls.saelens_tensors:
                getattr(sae, key).copy_(raw[key])
            sae.input_scale.fill_(1.0)
        return sae

    # -- decoder-norm constraint --------------------------------------------------------------

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """With unit-norm rows, drop the gradient's component along each row (sparsify, saev)."""
        if self.unit_norm and self.W_dec.grad is not None:
            project_out_parallel(self.W_dec, self.W_dec.grad)

    @torch.no_grad()
    def on_step_end(self) -> None:
        if self.unit_norm:
            normalise_rows(self.W_dec)


def group_mse(x_hat: torch.Tensor, xn: torch.Tensor) -> torch.Tensor:
    """Per member (S,): squared error summed over features, averaged over the batch (SAELens's
    ``mse_loss``). ``x_hat`` is (S, B, d), ``xn`` (B, d)."""
    return (x_hat - xn).pow(2).sum(-1).mean(-1)


def dense_items(
    saes: Sequence[BuiltinSAE],
    losses: torch.Tensor,
    mse: torch.Tensor,
    x_hat: torch.Tensor,
    z: torch.Tensor,
    extra: dict[str, torch.Tensor],
) -> list[TrainTerms]:
    """Per-member terms of a dense group step (``z`` is (S, B, n))."""
    batch = z.shape[1]
    zd = z.detach()
    fired = torch.count_nonzero(zd, dim=1)
    l0 = fired.sum(-1) / max(1, batch)
    items = []
    for i in range(len(saes)):
        metrics = {"loss": losses[i].detach(), "mse": mse[i].detach(), "l0": l0[i]}
        metrics.update({k: v[i].detach() for k, v in extra.items()})
        items.append(TrainTerms(losses[i], x_hat[i], fired[i], lambda i=i: zd[i], metrics))
    return items


def default_aux_k(d_in: int, configured: int) -> int:
    return configured if configured > 0 else max(1, d_in // 2)
