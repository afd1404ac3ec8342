"""OOD linear-probe accuracy (paper section 3.4, Table 1, Fig. 2 left, Fig. 12).

A probe (see :mod:`.probes`) is trained on the train split and tested on every ``eval`` and
``shifted`` split (ImageNet val, V2, Sketch, A, R in Table 1). ``baseline`` probes the raw
embeddings (the "DINOv2" rows of Table 1); ``evaluate`` probes the SAE's latents (metric ``acc``,
the "+SAE" rows) and, for Fig. 12's ablation, its pre-activations (``acc_pre``). Every probe uses
the same settings.

Shifted splits may cover a subset of the training classes (ImageNet-A and -R: 200 of 1000).
Their class ids are mapped onto the training classes, and predictions are restricted to the
split's classes (the arg-max over those 200 logits), as is standard for those benchmarks.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from saebench_vision_plugins.evaluators.configs import OODAccuracyConfig
from saebench_vision_plugins.evaluators.probes import FeatureFn, Probe, fit_probe

from saebench_vision.encodings import Encoding
from saebench_vision.errors import DatasetError
from saebench_vision.interfaces import EvalContext, Evaluator, Record, resolve_device
from saebench_vision.items import save_item_values

FEATURE_METRIC = {"raw": "acc", "latents": "acc", "pre-activations": "acc_pre"}


def class_mapping(
    train_ids: list[str] | None, split_ids: list[str] | None, split: str
) -> np.ndarray | None:
    """Index of each of the split's classes among the training classes (None: same indexing)."""
    if split_ids is None or train_ids is None or split_ids == train_ids:
        return None
    where = {cid: i for i, cid in enumerate(train_ids)}
    missing = [cid for cid in split_ids if cid not in where]
    if missing:
        raise DatasetError(
            f"split {split!r}: class {missing[0]!r} is not among the train split's classes; a "
            f"shifted split must use the training label set (or a subset of it)"
        )
    return np.array([where[cid] for cid in split_ids], dtype=np.int64)


def restricted_accuracy(
    logits: np.ndarray, labels: np.ndarray, mapping: np.ndarray | None
) -> np.ndarray:
    """Per-row correctness. With ``mapping``, ``labels`` index the split's classes and the
    prediction is the best of the mapped columns only."""
    if mapping is None:
        return logits.argmax(1) == labels
    return logits[:, mapping].argmax(1) == labels


class OODAccuracyEvaluator(Evaluator):
    """Linear-probe accuracy on in-distribution and shifted splits (Table 1, Fig. 12)."""

    name: ClassVar[str] = "ood-accuracy"
    version: ClassVar[str] = "2"
    Config: ClassVar[type] = OODAccuracyConfig

    def required_roles(self) -> tuple[str, ...]:
        return ("train",)

    metrics: ClassVar[dict[str, bool | None]] = {
        "acc": True,
        "acc_pre": True,
        "train_acc": True,
        "train_acc_pre": True,
    }
    headline: ClassVar[tuple[str, ...]] = ("acc",)

    def _classes(self, ctx: EvalContext, split: str) -> list[str] | None:
        classes = ctx.dataset(split).classes()
        return None if classes is None else [c.id for c in classes]

    def _latents(self, ctx: EvalContext, kind: str, split: str) -> Encoding | None:
        """The split's shared SAE encoding when the probe reads latents (encoded once per run)."""
        if kind != "latents":
            return None
        return ctx.latents(split, device=self.config.device, batch_size=self.config.batch_size)

    def _run(self, ctx: EvalContext, kind: str, fn: FeatureFn) -> list[Record]:
        cfg: OODAccuracyConfig = self.config
        device = resolve_device(cfg.device)
        trains = ctx.split_names("train")
        if len(trains) != 1:
            raise DatasetError(
                f"the ood-accuracy evaluator needs exactly one split with role 'train'; the suite has "
                f"{len(trains)}"
            )
        train = trains[0]
        acts = ctx.activations(train)
        labels = acts.labels
        if labels is None:
            raise DatasetError(f"split {train!r} has no labels; the ood-accuracy probe needs them")
        train_ids = self._classes(ctx, train)
        n_classes = len(train_ids) if train_ids is not None else int(labels.max()) + 1
        probe = fit_probe(
            acts,
            labels,
            n_classes,
            cfg,
            feature_fn=fn,
            device=device,
            seed=ctx.seed + cfg.seed_offset,
            latents=self._latents(ctx, kind, train),
        )
        extra = {"features": kind, "solver": probe.solver, "train_loss": probe.train_loss}
        correct = probe.predict(acts, device, latents=self._latents(ctx, kind, train)) == labels
        records = [
            Record(
                "train_acc" if kind != "pre-activations" else "train_acc_pre",
                float(correct.mean()),
                split=train,
                higher_is_better=True,
                n=len(correct),
                extra=extra,
            )
        ]
        for role in cfg.roles:
            for split in ctx.split_names(role):
                records.append(self._score(ctx, probe, split, train_ids, kind, device, extra, role))
        return records

    def _score(
        self,
        ctx: EvalContext,
        probe: Probe,
        split: str,
        train_ids: list[str] | None,
        kind: str,
        device: torch.device,
        extra: dict,
        role: str,
    ) -> Record:
        acts = ctx.activations(split)
        if acts.labels is None:
            raise DatasetError(
                f"split {split!r} (role {role}) has no labels; give it a labelled dataset"
            )
        mapping = class_mapping(train_ids, self._classes(ctx, split), split)
        latents = self._latents(ctx, kind, split)
        correct = probe.predict(acts, device, mapping, latents=latents) == acts.labels
        acc = float(correct.mean())
        n_allowed = len(mapping) if mapping is not None else probe.weight.shape[0]
        return Record(
            FEATURE_METRIC[kind],
            acc,
            split=split,
            stderr=float(np.sqrt(acc * (1 - acc) / len(correct))),
            higher_is_better=True,
            n=len(correct),
            extra={
                **extra,
                "role": role,
                "classes": n_allowed,
                **save_item_values(
                    ctx.output_dir,
                    f"{FEATURE_METRIC[kind]}_{split}",
                    correct,
                    items=acts.sample_index,
                    pairing=acts.key,
                    over="test items",
                ),
            },
        )

    def baseline(self, ctx: EvalContext) -> list[Record]:
        return self._run(ctx, "raw", lambda x: x)

    def evaluate(self, ctx: EvalContext) -> list[Record]:
        cfg: OODAccuracyConfig = self.config
        if ctx.sae is None:
            return []
        sae = ctx.sae.to(resolve_device(cfg.device)).eval()
        records: list[Record] = []
        for kind in cfg.features:
            fn: FeatureFn = sae.encode if kind == "latents" else sae.pre_activations
            records += self._run(ctx, kind, fn)
        return records
