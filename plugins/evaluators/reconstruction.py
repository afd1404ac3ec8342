"""Reconstruction and sparsity of an SAE on every split (paper section 3.2, eqs. 6-8).

Per split, averaged over activation rows:

* ``mse``: (1/d) ||x - x_hat||^2 (eq. 6), in the activation space the SAE was trained on;
* ``l1``: sum_i |z_i| (eq. 7); ``l0``: the number of non-zero latents (eq. 8);
* ``explained_variance``: 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, with the split's own
  mean, so 0 is "as good as predicting the split mean" and 1 is perfect;
* ``dead_fraction`` / ``dense_fraction``: latents that fire on at most ``dead_threshold`` /
  more than ``dense_threshold`` of the split's rows;
* ``mean_active_value``: mean value of the non-zero latents (l1 / l0 over all rows), the
  activation magnitude of Fig. 2 (middle);
* ``relative_mse``: sum ||x - x_hat||^2 / sum ||x||^2, scale-free so models compare.

``mse`` with split ``ood-mean`` averages the near- and far-OOD splits (each split weighted
equally, as OpenOOD averages its datasets): the "average OOD reconstruction" of Fig. 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from saebench_vision_plugins.evaluators.common import iter_rows, prepare_sae, strided_rows
from saebench_vision_plugins.evaluators.configs import ReconstructionConfig

from saebench_vision.cache import ActivationSet
from saebench_vision.encodings import Encoding
from saebench_vision.interfaces import SAE, EvalContext, Evaluator, Record
from saebench_vision.items import save_item_values


@dataclass
class ReconstructionStats:
    """Streaming sums for one split; :meth:`records` turns them into metrics."""

    d: int
    d_sae: int
    n: int = 0
    sse: float = 0.0
    sum_x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sum_sq_x: float = 0.0
    per_row_mse: list[np.ndarray] = field(default_factory=list)
    per_row_l1: list[np.ndarray] = field(default_factory=list)
    per_row_l0: list[np.ndarray] = field(default_factory=list)
    fire_counts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    capacity: int = 0
    """Rows expected: the per-row values then go to arrays allocated once, up front, rather
    than to one small array per chunk (which, kept between each chunk's large temporaries,
    fragments the heap so that it grows with the number of rows)."""

    def __post_init__(self) -> None:
        self.sum_x = np.zeros(self.d, dtype=np.float64)
        self.fire_counts = np.zeros(self.d_sae, dtype=np.int64)
        self._rows = np.zeros((3, self.capacity), dtype=np.float64) if self.capacity else None

    def _keep(self, at: int, mse: np.ndarray, l1: np.ndarray, l0: np.ndarray) -> None:
        for i, (values, parts) in enumerate(
            ((mse, self.per_row_mse), (l1, self.per_row_l1), (l0, self.per_row_l0))
        ):
            if self._rows is not None and at + len(values) <= self.capacity:
                self._rows[i, at : at + len(values)] = values
                values = self._rows[i, at : at + len(values)]  # a view: no new buffer
            parts.append(values)

    def update(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        z: torch.Tensor | None = None,
        *,
        sparse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Add a chunk: rows ``x``, their reconstructions and latents, either dense ``z``
        (B, d_sae) or ``sparse`` = ``(indptr (B+1,), latent ids, values)`` of the chunk's
        non-zeros (then no (B, d_sae) reduction runs: L1, L0 and firing counts come from them)."""
        # x and the error in float64; z is only reduced, so no float64 copy of it.
        at = self.n
        x, x_hat = x.double(), x_hat.double()
        sq_err = (x - x_hat).pow(2).sum(1)
        self.n += x.shape[0]
        self.sse += float(sq_err.sum())
        self.sum_x += x.sum(0).cpu().numpy()
        self.sum_sq_x += float(x.pow(2).sum())
        mse = (sq_err / self.d).cpu().numpy()
        if sparse is not None:
            indptr, cols, vals = sparse
            counts = np.diff(indptr)
            rows = np.repeat(np.arange(len(counts)), counts)
            l1 = np.bincount(rows, weights=np.abs(vals).astype(np.float64), minlength=len(counts))
            self._keep(at, mse, l1, counts.astype(np.float64))
            self.fire_counts += np.bincount(cols, minlength=self.d_sae)
            return
        assert z is not None
        active = z != 0
        l1 = z.abs().sum(1, dtype=torch.float64).cpu().numpy()
        self._keep(at, mse, l1, active.sum(1).cpu().numpy().astype(np.float64))
        self.fire_counts += active.sum(0).cpu().numpy()

    def values(
        self, dead_threshold: float, dense_threshold: float
    ) -> dict[str, tuple[float, float | None]]:
        """``{metric: (value, stderr)}``."""

        def mean_se(parts: list[np.ndarray]) -> tuple[float, float | None]:
            arr = np.concatenate(parts)
            se = float(arr.std(ddof=1) / np.sqrt(len(arr))) if len(arr) > 1 else None
            return float(arr.mean()), se

        total_var = self.sum_sq_x - float(self.sum_x @ self.sum_x) / self.n
        rate = self.fire_counts / self.n
        l1, l0 = mean_se(self.per_row_l1), mean_se(self.per_row_l0)
        return {
            "mse": mean_se(self.per_row_mse),
            "l1": l1,
            "l0": l0,
            "explained_variance": (
                1.0 - self.sse / total_var if total_var > 0 else float("nan"),
                None,
            ),
            "relative_mse": (self.sse / self.sum_sq_x if self.sum_sq_x > 0 else float("nan"), None),
            "dead_fraction": (float((rate <= dead_threshold).mean()), None),
            "dense_fraction": (float((rate > dense_threshold).mean()), None),
            "mean_active_value": (l1[0] / l0[0] if l0[0] > 0 else 0.0, None),
        }


def reconstruction_stats(
    sae: SAE,
    acts: ActivationSet,
    *,
    device: torch.device,
    batch_size: int,
    rows: np.ndarray | None = None,
    latents: Encoding | None = None,
) -> ReconstructionStats:
    """Stream a split (or ``rows`` of it) through the SAE and accumulate the statistics.
    ``latents`` (the split's shared encoding) saves re-encoding: only the decoder runs."""
    stats = ReconstructionStats(
        d=acts.d, d_sae=sae.d_sae, capacity=acts.n if rows is None else len(rows)
    )
    with torch.no_grad():
        for lo, chunk in iter_rows(acts, batch_size, rows):
            x = torch.from_numpy(chunk).to(device)
            if latents is None:
                z = sae.encode(x)
                stats.update(x, sae.decode(z), z)
                continue
            picked = np.arange(lo, lo + len(chunk)) if rows is None else rows[lo : lo + len(chunk)]
            indptr, cols, vals = latents.csr(picked)
            dense = np.zeros((len(picked), latents.d_sae), dtype=np.float32)
            dense[np.repeat(np.arange(len(picked)), np.diff(indptr)), cols] = vals
            x_hat = sae.decode(torch.from_numpy(dense).to(device))
            stats.update(x, x_hat, sparse=(indptr, cols, vals))
    return stats


class ReconstructionEvaluator(Evaluator):
    """MSE, L1, L0, explained variance and dead/dense latent fractions on every split."""

    name: ClassVar[str] = "reconstruction"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = ReconstructionConfig
    metrics: ClassVar[dict[str, bool | None]] = {
        "mse": False,
        "l1": False,
        "l0": False,
        "explained_variance": True,
        "relative_mse": False,
        "dead_fraction": False,
        "dense_fraction": False,
        "mean_active_value": None,
    }
    headline: ClassVar[tuple[str, ...]] = ("mse", "l0", "explained_variance", "dead_fraction")

    def evaluate(self, ctx: EvalContext) -> list[Record]:
        cfg: ReconstructionConfig = self.config
        if ctx.sae is None:
            return []
        sae, device = prepare_sae(ctx.sae, cfg.device)
        records: list[Record] = []
        ood_mse: list[float] = []
        for role in cfg.roles:
            for split in ctx.split_names(role):
                acts = ctx.activations(split)
                rows = strided_rows(acts.n, cfg.max_rows)
                stats = reconstruction_stats(
                    sae,
                    acts,
                    device=device,
                    batch_size=cfg.batch_size,
                    rows=rows,
                    latents=ctx.latents(split, device=cfg.device, batch_size=cfg.batch_size),
                )
                # Per-row values of the mean-over-rows metrics, for bootstrap and paired tests
                # (test splits only: the train split's rows are not test items).
                sample = acts.sample_index if rows is None else acts.sample_index[rows]
                items = {}
                if role != "train":
                    items = {
                        m: save_item_values(
                            ctx.output_dir,
                            f"{m}_{split}",
                            np.concatenate(getattr(stats, f"per_row_{m}")),
                            items=sample,
                            pairing=acts.key + ("" if rows is None else f"/rows={len(rows)}"),
                            over="test items",
                        )
                        for m in ("mse", "l1", "l0")
                    }
                for metric, (value, se) in stats.values(
                    cfg.dead_threshold, cfg.dense_threshold
                ).items():
                    records.append(
                        Record(
                            metric,
                            value,
                            split=split,
                            stderr=se,
                            higher_is_better=self.metrics[metric],
                            n=stats.n,
                            extra={"role": role, **items.get(metric, {})},
                        )
                    )
                    if metric == "mse" and role in ("near-ood", "far-ood"):
                        ood_mse.append(value)
        if ood_mse:
            records.append(
                Record(
                    "mse",
                    float(np.mean(ood_mse)),
                    split="ood-mean",
                    higher_is_better=False,
                    n=len(ood_mse),
                    extra={"role": "ood-mean"},
                )
            )
        return records
