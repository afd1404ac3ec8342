"""Per-layer summary for suites with one SAE per layer (paper Fig. 8, appendix A).

Each cell reports, for its layer's SAE, reconstruction (MSE, explained variance), sparsity (L0,
dead fraction) on one split, and the ontology counts and means on a labelled split, so a
leaderboard pivoted by layer is Fig. 8: the paper's finding is that early DINOv2 CLS layers
carry little (few live latents, no high-coverage features). The baseline scores the layer's raw
neurons on the ontology metrics.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from saebench_vision_plugins.evaluators.common import prepare_sae
from saebench_vision_plugins.evaluators.configs import LayerSweepConfig
from saebench_vision_plugins.evaluators.ontology import (
    baseline_centre,
    class_stats,
    hierarchy_index,
    projection_rates,
    score_features,
    summary,
)
from saebench_vision_plugins.evaluators.reconstruction import reconstruction_stats

from saebench_vision.errors import DatasetError
from saebench_vision.interfaces import EvalContext, Evaluator, Record

RECON_METRICS = ("mse", "explained_variance", "l0", "dead_fraction")
ONTOLOGY_METRICS = (
    "n_multiclass",
    "n_near_root",
    "coverage_gt_0.99",
    "coverage_gt_0.75",
    "mean_coverage",
    "mean_lch_height",
)


class LayerSweepEvaluator(Evaluator):
    """Reconstruction, L0 and ontological coverage of one layer's SAE (Fig. 8)."""

    name: ClassVar[str] = "layer-sweep"
    version: ClassVar[str] = "2"
    Config: ClassVar[type] = LayerSweepConfig
    metrics: ClassVar[dict[str, bool | None]] = {
        "mse": False,
        "explained_variance": True,
        "l0": False,
        "dead_fraction": False,
        "n_multiclass": None,
        "n_near_root": None,
        "coverage_gt_0.99": True,
        "coverage_gt_0.75": True,
        "mean_coverage": True,
        "mean_lch_height": None,
    }
    headline: ClassVar[tuple[str, ...]] = ("mse", "explained_variance", "l0", "coverage_gt_0.99")

    def required_roles(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.config.split_role, self.config.recon_role)))

    def _first(self, ctx: EvalContext, role: str) -> str:
        splits = ctx.split_names(role)
        if not splits:
            raise DatasetError(
                f"the layer-sweep evaluator needs a split with role {role!r}; the suite has none"
            )
        return splits[0]

    def _ontology(self, ctx: EvalContext, with_sae: bool) -> list[Record]:
        cfg: LayerSweepConfig = self.config
        split = self._first(ctx, cfg.split_role)
        index = hierarchy_index(ctx, split, cfg)
        stats = class_stats(
            ctx,
            split,
            index.n_classes,
            with_sae=with_sae,
            batch_size=cfg.batch_size,
            device=cfg.device,
        )
        denom = np.maximum(stats.counts, 1)[None, :]
        if with_sae:
            assert stats.z_sum is not None and stats.z_fire is not None
            scores = score_features(stats.z_sum.T / denom, stats.z_fire.T / denom, index, cfg)
        else:
            rates = None
            if cfg.class_rule == "firing-rate":
                eye = np.eye(stats.x_sum.shape[1])
                centre = baseline_centre(stats, cfg)
                rates = projection_rates(
                    ctx, split, eye, centre, index.n_classes, cfg.batch_size, cfg.device
                )
            scores = score_features(stats.x_means().T, rates, index, cfg)
        values = summary(scores, cfg)
        return [
            Record(
                m,
                values[m][0],
                split=split,
                higher_is_better=values[m][1],
                n=len(scores.size),
                extra={"layer": ctx.layer},
            )
            for m in ONTOLOGY_METRICS
            if m in values
        ]

    def evaluate(self, ctx: EvalContext) -> list[Record]:
        cfg: LayerSweepConfig = self.config
        if ctx.sae is None:
            return []
        split = self._first(ctx, cfg.recon_role)
        sae, device = prepare_sae(ctx.sae, cfg.device)
        stats = reconstruction_stats(
            sae,
            ctx.activations(split),
            device=device,
            batch_size=cfg.batch_size,
            latents=ctx.latents(split, device=cfg.device, batch_size=cfg.batch_size),
        )
        values = stats.values(cfg.dead_threshold, 1.0)
        records = [
            Record(
                m,
                values[m][0],
                split=split,
                stderr=values[m][1],
                higher_is_better=self.metrics[m],
                n=stats.n,
                extra={"layer": ctx.layer},
            )
            for m in RECON_METRICS
        ]
        return records + self._ontology(ctx, with_sae=True)

    def baseline(self, ctx: EvalContext) -> list[Record]:
        return self._ontology(ctx, with_sae=False)
