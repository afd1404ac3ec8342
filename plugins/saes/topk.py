"""TopK-family SAEs: TopK (paper eq. 4), BatchTopK and Matryoshka BatchTopK, with AuxK.

Training steps exploit sparsity: the encoder's forward product is dense (it chooses the top
k), everything after it touches only the kept entries (see :mod:`.sparse`). The ``dense``
backend computes the same step with dense matrices; tests check both give the same gradients.
In a fused group the members' codes are stacked into one code over the stacked weights (member
``s`` owns rows ``s·B ...`` and latents ``s·n ...``), so each sparse operation runs once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, ClassVar

import torch
from saebench_vision_plugins.saes.base import (
    BuiltinSAE,
    GroupTerms,
    Params,
    TrainTerms,
    default_aux_k,
    group_mse,
)
from saebench_vision_plugins.saes.configs import (
    BatchTopKConfig,
    MatryoshkaConfig,
    TopKConfig,
    ramp_start,
)
from saebench_vision_plugins.saes.sparse import (
    SampledLinear,
    SparseCode,
    SparseDecode,
    counts,
    stable_argsort,
)


@functools.lru_cache(maxsize=64)
def _rank_ends(fractions: tuple[float, ...], n: int, device: str) -> torch.Tensor:
    """``ends[c, i] = max(1, ⌈f_i · c⌉)`` for ``c`` in ``[0, n]`` and the inner fractions: the
    rank parts' ends for a row of ``c`` entries (computed exactly, on the host, once)."""
    table = [
        [max(1, math.ceil(Fraction(str(f)) * c)) for f in fractions[:-1]] for c in range(n + 1)
    ]
    return torch.tensor(table, dtype=torch.int64, device=device).reshape(n + 1, -1)


def _refresh_sample_count(module: torch.nn.Module, keys: Any) -> None:
    module._samples_host = int(module.samples_trained)  # type: ignore[attr-defined]


class TopKSAE(BuiltinSAE):
    """``z = ReLU(TopK(W_enc (x - b_dec) + b_enc))``; loss ``‖x - x̂‖² + α · AuxK``.

    AuxK (Gao et al. 2024): the ``k_aux`` largest pre-activations among dead latents must
    reconstruct the residual ``x - x̂``; it is scaled by ``min(1, dead / k_aux)`` as in SAELens.
    TopK has no sparsity coefficient to warm up, so ``sparsity_scale`` is ignored.
    """

    name: ClassVar[str] = "topk"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = TopKConfig
    per_sae_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "b_dec_init",
            "k",
            "aux_k_coefficient",
            "aux_k",
            "dead_after",
            "dead_after_steps",
            "threshold_momentum",
            "threshold_window",
            "inference",
            "sparse_backend",
            "topk_warmup",
            "k_ramp",
            "k_start",
        }
    )

    saelens_architecture: ClassVar[str] = "topk"
    saelens_architectures: ClassVar[tuple[str, ...]] = ("topk",)

    def _init_extra(self) -> None:
        self.register_buffer("samples_since_fired", torch.zeros(self.d_sae, dtype=torch.int64))
        # Only a schedule over the run (the k ramp, BatchTopK's warm-up) reads the count, and
        # a resumed run needs it then; without one it stays out of checkpoints, whose tensors
        # are then those of earlier versions.
        self.register_buffer(
            "samples_trained",
            torch.zeros((), dtype=torch.int64),
            persistent=self._scheduled(),
        )
        self._total_samples = 0
        # The count on the host too, so that a schedule never waits on the device; loading a
        # state (a resumed run, a checkpoint) refreshes it from the buffer.
        self._samples_host = 0
        self.register_load_state_dict_post_hook(_refresh_sample_count)

    def _scheduled(self) -> bool:
        """Whether training follows a schedule over the run's samples (here: the k ramp)."""
        return float(self.config.k_ramp) > 0

    def begin_training(self, total_samples: int) -> None:
        """The k ramp spans ``k_ramp`` of the ``total_samples`` the run trains on, counted from
        here: whatever the SAE computed before (a loss outside the trainer, an earlier run)
        does not move it. A resumed run loads its count after this call."""
        self._total_samples = int(total_samples)
        with torch.no_grad():
            self.samples_trained.zero_()
        self._samples_host = 0

    def _count_samples(self, n: int) -> None:
        """A training step's ``n`` samples (the trainer's group step counts them)."""
        self.samples_trained.add_(n)
        self._samples_host += n

    def training_k(self) -> int:
        """Latents kept per sample at this point of training: :func:`ramp_start` of ``k`` and
        ``k_start``, growing linearly to ``k`` (rounded to the nearest) over the first
        ``k_ramp`` of the run's samples; ``k`` at inference, after the ramp, and when the
        run's length was not announced."""
        k = int(self.config.k)
        ramp = float(self.config.k_ramp) * self._total_samples
        if ramp <= 0 or not self.training or self._samples_host >= ramp:
            return k
        first = ramp_start(k, float(self.config.k_start))
        return first + math.floor((k - first) * self._samples_host / ramp + 0.5)

    # -- SAELens -------------------------------------------------------------------------------

    def to_saelens(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Selection is on the raw pre-activations here, so SAELens must not rescale them by
        the decoder norms: ``rescale_acts_by_decoder_norm`` is written as false."""
        cfg, tensors = super().to_saelens()
        cfg.update(k=int(self.config.k), rescale_acts_by_decoder_norm=False)
        return cfg, tensors

    @classmethod
    def saelens_config_args(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        rescale = bool(cfg.get("rescale_acts_by_decoder_norm", False))
        # SAELens trains with k from the first step: further training continues as it did.
        return {
            "k": int(cfg.get("k", 100)),
            "decoder_norm": "unit" if rescale else "free",
            "k_ramp": 0.0,
        }

    @classmethod
    def saelens_tensors_in(
        cls, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """With ``rescale_acts_by_decoder_norm`` SAELens selects the top k of
        ``pre · ‖W_dec‖`` and decodes ``(z / ‖W_dec‖) W_dec``: folding the norms into the
        encoder (SAELens's ``fold_W_dec_norm``) gives unit decoder rows and the same code."""
        if not cfg.get("rescale_acts_by_decoder_norm", False):
            return tensors
        if not all(k in tensors for k in ("W_enc", "W_dec", "b_enc")):
            return tensors
        norms = tensors["W_dec"].norm(dim=1)
        tensors["W_dec"] = tensors["W_dec"] / norms.clamp_min(1e-30).unsqueeze(1)
        tensors["W_enc"] = tensors["W_enc"] * norms.unsqueeze(0)
        tensors["b_enc"] = tensors["b_enc"] * norms
        return tensors

    @torch.no_grad()
    def _reset_extra(self) -> None:
        self.samples_since_fired.zero_()
        self.samples_trained.zero_()
        self._samples_host = 0

    # -- selection -----------------------------------------------------------------------------

    def _select(self, pre: torch.Tensor) -> tuple[SparseCode, torch.Tensor]:
        """Kept entries of a (detached) (B, n) pre-activation matrix and their values."""
        top, idx = pre.topk(min(self.training_k(), self.d_sae), dim=1)
        return SparseCode.from_topk(idx, self.d_sae), top.reshape(-1)

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        code, top = self._select(pre)
        return code.dense(torch.relu(top))

    def entries_per_row(self) -> float:
        return float(self.config.k)

    def use_sparse(self, entries_per_row: float) -> bool:
        backend = self.config.sparse_backend
        if backend != "auto":
            return backend == "sparse"
        return entries_per_row * 8 <= self.d_sae

    def _after_select(self, code: SparseCode, values: torch.Tensor) -> None:
        """Hook after a training step's selection (BatchTopK's threshold estimate)."""

    # -- group step ----------------------------------------------------------------------------

    @staticmethod
    def _values(
        sparse: bool,
        pre: torch.Tensor,
        code: SparseCode,
        top: torch.Tensor,
        xc: torch.Tensor,
        P: Params,
        b_dec: torch.Tensor | None,
    ) -> torch.Tensor:
        """Pre-activations of a stacked code's entries, differentiable w.r.t. the encoder.

        ``xc`` (S, B, d) is the centred input of each member (data, no gradient)."""
        S, B, n = pre.shape
        if sparse:
            W = P["W_enc"].reshape(S * n, -1)
            return SampledLinear.apply(
                top, xc.reshape(S * B, -1), W, P["b_enc"].reshape(-1), b_dec, code
            )
        return pre.reshape(-1)[code.rows * n + code.cols % n]

    @staticmethod
    def _decode(
        sparse: bool, values: torch.Tensor, code: SparseCode, P: Params, shape: tuple[int, int, int]
    ) -> torch.Tensor:
        """``Z W_dec`` (no bias) per member, (S, B, d), for a stacked code."""
        S, B, n = shape
        if sparse:
            out = SparseDecode.apply(values, P["W_dec"].reshape(S * n, -1), code)
            return out.view(S, B, -1)
        z = values.new_zeros(S * B * n).index_put((code.rows * n + code.cols % n,), values)
        return torch.bmm(z.view(S, B, n), P["W_dec"])

    @classmethod
    def _reconstruct(
        cls,
        saes: Sequence[BuiltinSAE],
        sparse: bool,
        values: torch.Tensor,
        code: SparseCode,
        xn: torch.Tensor,
        P: Params,
        shape: tuple[int, int, int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x̂ (S, B, d), reconstruction loss (S,), mse of x̂ (S,))``; Matryoshka's
        reconstruction loss averages nested parts of the code."""
        x_hat = cls._decode(sparse, values, code, P, shape) + P["b_dec"].unsqueeze(1)
        mse = group_mse(x_hat, xn)
        return x_hat, mse, mse

    @classmethod
    def group_terms(
        cls, saes: Sequence[BuiltinSAE], params: Params, xn: torch.Tensor, sparsity_scale: float
    ) -> GroupTerms:
        P = params
        members: list[TopKSAE] = list(saes)  # type: ignore[arg-type]
        S, B, n = len(members), xn.shape[0], members[0].d_sae
        shape = (S, B, n)
        b_dec = P["b_dec"] if members[0].config.apply_b_dec_to_input else None
        sparse = members[0].use_sparse(max(m.entries_per_row() for m in members))
        with torch.no_grad():
            if b_dec is not None:
                xc = xn.unsqueeze(0) - b_dec.unsqueeze(1)
            else:
                xc = xn.unsqueeze(0).expand(S, B, xn.shape[1])
        if sparse:
            with torch.no_grad():
                pre = torch.baddbmm(P["b_enc"].unsqueeze(1), xc, P["W_enc"].transpose(1, 2))
        else:
            pre = cls.group_encode(members, P, xn, P["b_enc"])
        picks = [m._select(pre[i].detach()) for i, m in enumerate(members)]
        code = SparseCode.stack([(i, c) for i, (c, _) in enumerate(picks)], S, B, n)
        top = torch.cat([t for _, t in picks])
        values = torch.relu(cls._values(sparse, pre, code, top, xc, P, b_dec))
        x_hat, recon, full_mse = cls._reconstruct(members, sparse, values, code, xn, P, shape)
        losses = recon
        training = torch.is_grad_enabled() and members[0].training
        aux = cls._auxk(members, sparse, pre, xn, xc, x_hat, P, b_dec) if training else None
        if aux is not None:
            losses = losses + aux
        items = []
        start = 0
        loss_items, x_hat_items = losses.unbind(0), x_hat.unbind(0)
        with torch.no_grad():
            for i, (m, (c, _)) in enumerate(zip(members, picks)):
                v = values[start : start + c.nnz].detach()
                start += c.nnz
                fired = c.fired(v)
                if training:
                    m.samples_since_fired.add_(B).masked_fill_(fired > 0, 0)
                    m._count_samples(B)
                    m._after_select(c, v)
                metrics = {
                    "loss": losses[i].detach(),
                    "mse": full_mse[i].detach(),
                    "l0": (fired.sum() / B).float(),
                }
                if aux is not None:
                    metrics["auxk"] = aux[i].detach()
                items.append(
                    TrainTerms(
                        loss_items[i], x_hat_items[i], fired, lambda c=c, v=v: c.dense(v), metrics
                    )
                )
        return GroupTerms(losses.sum(), items)

    @classmethod
    def _auxk(
        cls,
        members: Sequence[TopKSAE],
        sparse: bool,
        pre: torch.Tensor,
        xn: torch.Tensor,
        xc: torch.Tensor,
        x_hat: torch.Tensor,
        P: Params,
        b_dec: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """Per-member AuxK losses (S,), zero for members without dead latents; None if none."""
        S, B, n = pre.shape
        codes, tops, weights = [], [], []
        for i, m in enumerate(members):
            coef = float(m.config.aux_k_coefficient)
            window = max(int(m.config.dead_after), int(m.config.dead_after_steps) * B)
            dead = m.samples_since_fired >= window
            n_dead = int(dead.sum()) if coef > 0 else 0
            if n_dead == 0:
                weights.append(0.0)
                continue
            k_aux = default_aux_k(m.d_in, m.config.aux_k)
            dead_idx = dead.nonzero().squeeze(1)
            top, pos = pre[i].detach().index_select(1, dead_idx).topk(min(k_aux, n_dead), dim=1)
            codes.append((i, SparseCode.from_topk(dead_idx[pos], n)))
            tops.append(top.reshape(-1))
            weights.append(coef * min(1.0, n_dead / k_aux))
        if not codes:
            return None
        code = SparseCode.stack(codes, S, B, n)
        entries = max(c.nnz for _, c in codes) / B
        aux_sparse = sparse or members[0].use_sparse(entries)
        values = torch.relu(cls._values(aux_sparse, pre, code, torch.cat(tops), xc, P, b_dec))
        e_hat = cls._decode(aux_sparse, values, code, P, (S, B, n))
        residual = (xn - x_hat).detach()
        w = torch.tensor(weights, dtype=xn.dtype, device=xn.device)
        return group_mse(e_hat, residual) * w


class BatchTopKSAE(TopKSAE):
    """BatchTopK (Bussmann et al. 2024): the ``k · B`` largest activations of a batch are kept.

    A running mean of the smallest kept activation becomes the inference threshold
    (``inference="threshold"``, the default), which makes it a JumpReLU SAE at inference: one
    sample's code never depends on its batch. Saved to SAELens as ``jumprelu``.

    For the first ``topk_warmup`` (a fraction) of the run's training samples, which the trainer
    announces through :meth:`begin_training`, each sample keeps its own top k (TopK), so
    that the rows of large norm do not take the batch's whole budget while the encoder is
    still unselective; the threshold is estimated from the batch selection all along.
    """

    name: ClassVar[str] = "batch-topk"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = BatchTopKConfig
    saelens_architectures: ClassVar[tuple[str, ...]] = ()

    def to_saelens(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """A JumpReLU SAE with the learnt threshold on every latent (as SAELens saves its
        BatchTopK SAEs); exact for ``inference: threshold``, which encodes the same way."""
        if self.config.inference != "threshold":
            raise NotImplementedError(
                f"SAE `{self.name}` with inference: {self.config.inference} has no SAELens "
                f"counterpart (use inference: threshold)"
            )
        cfg, tensors = BuiltinSAE.to_saelens(self)
        cfg["architecture"] = "jumprelu"
        tensors["threshold"] = torch.full((self.d_sae,), float(self.threshold))
        return cfg, tensors

    def _init_extra(self) -> None:
        super()._init_extra()
        self.register_buffer("threshold", torch.zeros(()))
        self._warmup_samples = 0
        self._batch_min: torch.Tensor | None = None

    def _scheduled(self) -> bool:
        return super()._scheduled() or float(self.config.topk_warmup) > 0

    @torch.no_grad()
    def _reset_extra(self) -> None:
        super()._reset_extra()
        self.threshold.zero_()

    def begin_training(self, total_samples: int) -> None:
        """The warm-up spans ``topk_warmup`` of the ``total_samples`` the run trains on, as
        the k ramp spans ``k_ramp`` of them."""
        super().begin_training(total_samples)
        self._warmup_samples = int(float(self.config.topk_warmup) * int(total_samples))
        self._batch_min = None

    def warming_up(self) -> bool:
        """Whether training selection is still per-sample TopK (``topk_warmup``)."""
        warmup = self._warmup_samples
        return warmup > 0 and self.training and self._samples_host < warmup

    def _select(self, pre: torch.Tensor) -> tuple[SparseCode, torch.Tensor]:
        batch, n = pre.shape
        keep = min(pre.numel(), max(1, int(self.config.k * batch)))
        top, flat = pre.reshape(-1).topk(keep, sorted=False)
        # The threshold estimate is always the batch selection's, warm-up or not, so that it
        # means one thing whenever training stops.
        positive = top[top > 0]
        self._batch_min = positive.min() if positive.numel() else None
        k = self.training_k()
        if self.warming_up():
            # Each row's top k, as a code in the batch selection's order (columns ascending
            # within a row), which Matryoshka's prefix grouping relies on.
            top, idx = pre.topk(min(k, n), dim=1)
            rows = torch.arange(batch, device=pre.device).unsqueeze(1) * n
            flat = (rows + idx).reshape(-1)
            top = top.reshape(-1)
        elif k < self.config.k:
            # The batch's k·B for the k the ramp has reached: the largest of the k·B above.
            sub = top.topk(min(top.numel(), max(1, k * batch)), sorted=False)
            top, flat = sub.values, flat[sub.indices]
        code, order = SparseCode.from_flat(flat, batch, n)
        return code, top[order]

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.config.inference == "threshold":
            return pre * (pre > self.threshold) * (pre > 0)
        return super()._activate(pre)

    def _after_select(self, code: SparseCode, values: torch.Tensor) -> None:
        smallest, self._batch_min = self._batch_min, None
        if smallest is None:
            return
        # The first estimate is taken as it is: a running mean started at 0 would lag for
        # about 1 / momentum steps, and encode far too densely after a short training.
        if bool(self.threshold == 0):
            self.threshold.copy_(smallest)
            return
        m = float(self.config.threshold_momentum)
        if m <= 0:
            m = min(1.0, code.n_rows / max(1, int(self.config.threshold_window)))
        self.threshold.mul_(1 - m).add_(m * smallest)


class MatryoshkaSAE(BatchTopKSAE):
    """Matryoshka BatchTopK: nested parts of each code each reconstruct the input.

    ``nesting`` says which parts (``prefix_fractions`` sets their sizes):

    * ``latents`` (Bussmann et al. 2025; Nabeshima 2024; SAELens's ``matryoshka_batchtopk``):
      prefixes of the dictionary, the row's active latents among the first ``f · d_sae``;
    * ``rank`` (Zaigrajew et al. 2025's MSAE; Balagansky et al.'s HierarchicalTopK): the
      row's ``⌈f · c⌉`` largest activations, ``c`` the number it kept;
    * ``both`` (the default): every prefix of either kind, so that a dictionary prefix is
      still an SAE (what ``latents`` promises) and the largest activations of a row are too.

    The loss is the mean of the distinct nested reconstruction errors ``‖x - x̂_part‖²``
    (the full reconstruction counted once), plus AuxK on the full reconstruction's residual;
    ``mse`` in the metrics is the full reconstruction's. A row that keeps few latents can have
    rank ends that coincide (every ``⌈f · c⌉`` is 1 when ``c`` is 2); its equal errors are
    each counted, as the row's parts are (counting them once changed no figure of the quality
    benchmark: ``docs/design.md``).
    """

    name: ClassVar[str] = "matryoshka"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = MatryoshkaConfig

    def prefix_ends(self) -> list[int]:
        ends = sorted({max(1, round(f * self.d_sae)) for f in self.config.prefix_fractions})
        ends[-1] = self.d_sae
        return ends

    @staticmethod
    def _latent_groups(code: SparseCode, n: int, ends: list[int]) -> torch.Tensor:
        """Each entry's dictionary prefix group: how many prefix ends its latent is past."""
        bounds = torch.tensor(ends, device=code.cols.device)
        return torch.searchsorted(bounds, code.cols % n, right=True)

    @staticmethod
    def _rank_groups(
        code: SparseCode, values: torch.Tensor, fractions: Sequence[float], n: int
    ) -> torch.Tensor:
        """Each entry's rank group: the entry of rank ``j`` (0: the row's largest value) in a
        row of ``c`` kept entries (those of value 0 included) is past every end ``⌈f · c⌉``
        (at least 1) with ``j >= ⌈f · c⌉``; ``n`` bounds ``c`` (a member's latents)."""
        rows = code.rows
        by_value = stable_argsort(-values)
        order = by_value[stable_argsort(rows[by_value])]  # by row, then value descending
        per_row = counts(rows, code.n_rows)
        starts = torch.cumsum(per_row, 0) - per_row
        sorted_rows = rows[order]
        rank = torch.empty_like(rows)
        rank[order] = torch.arange(rows.numel(), device=rows.device) - starts[sorted_rows]
        ends = _rank_ends(tuple(fractions), n, str(rows.device))
        return (rank.unsqueeze(1) >= ends[per_row[rows]]).sum(1)

    @staticmethod
    def _parts(
        sparse: bool,
        values: torch.Tensor,
        code: SparseCode,
        group: torch.Tensor,
        groups: int,
        P: Params,
        shape: tuple[int, int, int],
        ends: list[int] | None = None,
    ) -> torch.Tensor:
        """``(S, B, groups, d)``: each row's decode (no bias) of its entries in each group;
        ``ends``: the groups are these dictionary prefixes (the dense path slices by them)."""
        S, B, n = shape
        if sparse:
            vrows = code.rows * groups + group
            order = stable_argsort(vrows)
            vrows = vrows[order]
            per_row = counts(vrows, S * B * groups)
            grouped = SparseCode(
                vrows, code.cols[order], torch.cumsum(per_row, 0) - per_row, S * B * groups, S * n
            )
            W = P["W_dec"].reshape(S * n, -1)
            return SparseDecode.apply(values[order], W, grouped).view(S, B, groups, -1)
        flat = code.rows * n + code.cols % n
        if ends is not None:
            z = values.new_zeros(S * B * n).index_put((flat,), values).view(S, B, n)
            starts = [0, *ends[:-1]]
            return torch.stack(
                [torch.bmm(z[:, :, a:b], P["W_dec"][:, a:b]) for a, b in zip(starts, ends)], dim=2
            )
        parts = []
        for g in range(groups):
            mine = values * (group == g)  # no boolean indexing: no device sync
            z = values.new_zeros(S * B * n).index_put((flat,), mine)
            parts.append(torch.bmm(z.view(S, B, n), P["W_dec"]))
        return torch.stack(parts, dim=2)

    @classmethod
    def _reconstruct(
        cls,
        saes: Sequence[BuiltinSAE],
        sparse: bool,
        values: torch.Tensor,
        code: SparseCode,
        xn: torch.Tensor,
        P: Params,
        shape: tuple[int, int, int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        S, B, n = shape
        first: MatryoshkaSAE = saes[0]  # type: ignore[assignment]
        nesting = first.config.nesting
        fractions = tuple(first.config.prefix_fractions)
        kinds = []
        with torch.no_grad():
            if nesting in ("latents", "both"):
                ends = first.prefix_ends()
                kinds.append((cls._latent_groups(code, n, ends), len(ends), ends))
            if nesting in ("rank", "both"):
                group = cls._rank_groups(code, values.detach(), fractions, n)
                kinds.append((group, len(fractions), None))
        errors = []
        for group, groups, prefix_ends in kinds:
            parts = cls._parts(sparse, values, code, group, groups, P, shape, prefix_ends)
            recons = parts.cumsum(2) + P["b_dec"][:, None, None, :]
            errors.append((recons - xn[None, :, None, :]).pow(2).sum(-1).mean(1))
        x_hat = recons[:, :, -1]
        # The full reconstruction ends every kind: count it once.
        distinct = torch.cat([errors[0], *(e[:, :-1] for e in errors[1:])], dim=1)
        return x_hat, distinct.mean(-1), group_mse(x_hat, xn)
