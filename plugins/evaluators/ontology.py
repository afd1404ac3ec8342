"""Ontological features: lowest common hypernym, LCH height and coverage (paper eqs. 9-12, Table 2, Fig. 3).

For each feature k (an SAE latent, an encoder neuron, or a random direction):

1. **Class set** C_k. The paper does not say how it is chosen; the default rule
   (``class_rule: relative-mean``) takes the per-class mean activations m_kc on a labelled split,
   centres them on the feature's median class mean (so dense baselines, whose class means share a
   large offset, are judged like sparse latents whose median is ~0), and keeps classes with
   m_kc - med_k >= ``threshold`` * max_c (m_kc - med_k). ``firing-rate`` keeps classes on whose
   images the feature fires at least ``threshold`` of the time. Features whose largest centred
   class mean is <= ``min_class_mean`` (dead on the split) have no class set and no scores.
2. **LCH** h_k (eq. 10): among nodes h of S with C_k within L(h), the one with fewest leaves;
   ties (single-child chains) go to the node nearest the classes (``tie_break: lowest``).
   Computed without a feature x node product: every common hypernym of C_k is an ancestor of
   one member (the pivot, the class with the largest mean), so only the pivot's ancestors
   (<= 20 in ImageNet's WordNet DAG), pre-sorted by leaf count, are tested, each with a
   bitset subset test over 16 uint64 words.
3. **LCH height** (eq. 11): mean over C_k of the hypernym-path length from the class to h_k
   (shortest path in the DAG by default), gathered over the non-zeros of the class-set matrix.
4. **Coverage** (eq. 12): |C_k| / |L(h_k)|.

Counts of features with coverage above 0.99 and 0.75 (Table 2) are over features with at least
``min_classes`` (2) classes, since eq. 12 gives every single-class feature coverage 1.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from saebench_vision_plugins.datasets.hierarchy import (
    HierarchyIndex,
    is_wordnet_id,
    pack_bits,
    wordnet_hierarchy_for,
)
from saebench_vision_plugins.evaluators.configs import OntologyConfig

from saebench_vision.errors import DatasetError
from saebench_vision.interfaces import EvalContext, Evaluator, Record, resolve_device

# --------------------------------------------------------------------------------------------
# Class sets and scores (pure numpy; the evaluator below feeds them)


def class_sets(
    means: np.ndarray,
    *,
    rule: str = "relative-mean",
    threshold: float = 0.5,
    min_class_mean: float = 1e-6,
    rates: np.ndarray | None = None,
    chunk: int = 32768,
) -> tuple[np.ndarray, np.ndarray]:
    """Class sets of features from their class means ``(K, C)``: ``(sets (K, C) bool, pivot (K,))``.

    ``rates`` (K, C) are per-class firing rates, needed by ``rule="firing-rate"``. The pivot is
    each feature's top class (largest mean); a feature with an empty set has pivot -1.
    """
    k, c = means.shape
    sets = np.zeros((k, c), dtype=bool)
    pivot = np.full(k, -1, dtype=np.int64)
    for lo in range(0, k, chunk):
        m = np.asarray(means[lo : lo + chunk], dtype=np.float32)
        centred = m - _row_median(m)[:, None]
        top = centred.max(1)
        alive = top > min_class_mean
        if rule == "relative-mean":
            chosen = centred >= threshold * top[:, None]
        elif rule == "firing-rate":
            if rates is None:
                raise ValueError("class_rule firing-rate needs per-class firing rates")
            chosen = np.asarray(rates[lo : lo + chunk]) >= threshold
            alive &= chosen.any(1)
        else:
            raise ValueError(f"unknown class_rule {rule!r} (expected: relative-mean, firing-rate)")
        chosen &= alive[:, None]
        sets[lo : lo + chunk] = chosen
        # The pivot must be a member: the top class by mean among the chosen ones (under
        # relative-mean that is simply the top class).
        top_class = (
            centred.argmax(1) if rule == "relative-mean" else np.where(chosen, m, -np.inf).argmax(1)
        )
        pivot[lo : lo + chunk] = np.where(alive, top_class, -1)
    return sets, pivot


def _row_median(m: np.ndarray) -> np.ndarray:
    """Median of each row; rows that are mostly exact zeros and never negative (sparse
    non-negative latents, nearly all of them) skip the partial sort: their median is 0."""
    out = np.zeros(len(m), dtype=np.float32)
    zero_median = ((m == 0).sum(1) > m.shape[1] // 2) & (m.min(1) >= 0)
    rest = np.nonzero(~zero_median)[0]
    if len(rest):
        out[rest] = np.median(m[rest], axis=1)
    return out


@dataclass
class OntologyScores:
    """Per-feature results; features with an empty class set have lch -1 and NaN scores.
    ``near_root`` marks features whose LCH holds at least ``near_root_fraction`` of all classes."""

    size: np.ndarray
    lch: np.ndarray
    height: np.ndarray
    coverage: np.ndarray
    near_root: np.ndarray | None = None

    def mask(self, min_classes: int) -> np.ndarray:
        return self.size >= min_classes

    def specific(self, min_classes: int) -> np.ndarray:
        """Multi-class features whose LCH is not the root or near it (Table 2's counts)."""
        multi = self.mask(min_classes)
        return multi if self.near_root is None else multi & ~self.near_root


def score_class_sets(
    sets: np.ndarray,
    pivot: np.ndarray,
    index: HierarchyIndex,
    *,
    near_root_fraction: float = 1.0,
    chunk: int = 16384,
) -> OntologyScores:
    """LCH (eq. 10), LCH height (eq. 11) and coverage (eq. 12) of every row of ``sets`` (K, C).

    Common hypernyms with the fewest leaves can tie (single-child chains, or DAG nodes with the
    same leaf set); the tie goes to the smallest total distance from the feature's classes
    (``tie_break: lowest``; the largest under ``highest``), then the lowest node index, so the
    LCH depends on the class set only, never on which member was the pivot."""
    k, c = sets.shape
    if c != index.n_classes:
        raise ValueError(
            f"class sets have {c} classes but the hierarchy has {index.n_classes} leaves"
        )
    size = sets.sum(1).astype(np.int64)
    lch = np.full(k, -1, dtype=np.int64)
    not_leaf = ~index.leaf_bits
    sign = 1 if index.tie_break == "lowest" else -1
    dist_all = index.dist.astype(np.int64)
    for lo in range(0, k, chunk):
        hi = min(lo + chunk, k)
        live = np.nonzero(size[lo:hi] > 0)[0]
        if not len(live):
            continue
        bits = pack_bits(sets[lo:hi][live])
        cands = index.candidates[pivot[lo:hi][live]]
        # Outside-L(h) bits of each candidate, ANDed with the set: zero means C_k within L(h).
        inside = ~np.any(not_leaf[cands] & bits[:, None, :], axis=2)
        first = inside.argmax(1)
        best = cands[np.arange(len(live)), first]
        tied = inside & (index.leaf_count[cands] == index.leaf_count[best][:, None])
        multi = np.nonzero(tied.sum(1) > 1)[0]
        if len(multi):
            rows, cols = np.nonzero(sets[lo:hi][live[multi]])
            total = np.stack(
                [
                    np.bincount(
                        rows, weights=dist_all[cols, cands[multi, j][rows]], minlength=len(multi)
                    )
                    for j in range(cands.shape[1])
                ],
                axis=1,
            )
            key = np.where(tied[multi], sign * total, np.inf)
            # Smallest key, then the lowest node index among the tied.
            node = np.where(
                key == key.min(1, keepdims=True), cands[multi].astype(np.int64), len(index.nodes)
            )
            best[multi] = node.min(1)
        lch[lo + live] = best
    rows, cols = np.nonzero(sets)
    dist = index.dist[cols, lch[rows]].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        height = np.bincount(rows, weights=dist, minlength=k) / size
        coverage = size / np.where(lch >= 0, index.leaf_count[np.maximum(lch, 0)], 0)
    height[size == 0] = np.nan
    coverage[size == 0] = np.nan
    near_root = (lch >= 0) & (
        index.leaf_count[np.maximum(lch, 0)] >= near_root_fraction * index.n_classes
    )
    return OntologyScores(size=size, lch=lch, height=height, coverage=coverage, near_root=near_root)


def summary(scores: OntologyScores, cfg: OntologyConfig) -> dict[str, tuple[float, bool | None]]:
    """Table 2's counts and the means of height and coverage: ``{metric: (value, higher_is_better)}``.

    Coverage counts and means are over *specific* features: at least ``min_classes`` classes and
    an LCH that is not the root or near it (``near_root_fraction``). A near-root feature's
    coverage is just |C_k| / |Omega|, which any feature firing on most classes earns; those are
    counted apart (``n_near_root``, ``near_root_coverage_gt_*``) so no row of Table 2 can be won
    by firing on everything."""
    multi = scores.mask(cfg.min_classes)
    specific = scores.specific(cfg.min_classes)
    near = multi & ~specific
    out: dict[str, tuple[float, bool | None]] = {
        "n_features": (float(len(scores.size)), None),
        "n_with_classes": (float((scores.size > 0).sum()), None),
        "n_multiclass": (float(multi.sum()), None),
        "n_near_root": (float(near.sum()), None),
    }
    for t in cfg.coverage_thresholds:
        out[f"coverage_gt_{t:g}"] = (float((scores.coverage[specific] > t).sum()), True)
    for t in cfg.coverage_thresholds:
        out[f"near_root_coverage_gt_{t:g}"] = (float((scores.coverage[near] > t).sum()), None)
    out["mean_coverage"] = (
        float(scores.coverage[specific].mean()) if specific.any() else float("nan"),
        True,
    )
    out["mean_lch_height"] = (
        float(scores.height[specific].mean()) if specific.any() else float("nan"),
        None,
    )
    alive = scores.size > 0
    out["mean_classes"] = (float(scores.size[alive].mean()) if alive.any() else float("nan"), None)
    return out


def histogram(
    scores: OntologyScores, index: HierarchyIndex, bins: int, min_classes: int
) -> dict[str, Any]:
    """Fig. 3: 2-D histogram of LCH height (rows) by coverage (columns), all and multi-class."""
    max_height = max(float(index.dist.max()), 1.0)
    h_edges = np.linspace(0.0, max_height, bins + 1)
    c_edges = np.linspace(0.0, 1.0, bins + 1)
    out: dict[str, Any] = {"height_edges": h_edges.tolist(), "coverage_edges": c_edges.tolist()}
    for label, mask in (
        ("counts", scores.size > 0),
        ("counts_multiclass", scores.mask(min_classes)),
    ):
        counts, _, _ = np.histogram2d(
            scores.height[mask], scores.coverage[mask], bins=(h_edges, c_edges)
        )
        out[label] = counts.astype(int).tolist()
    return out


def top_concepts(
    scores: OntologyScores, index: HierarchyIndex, min_classes: int, n: int = 10
) -> list[dict[str, Any]]:
    """The highest-coverage multi-class features and their LCH names (largest class sets first)."""
    multi = np.nonzero(scores.mask(min_classes))[0]
    order = multi[np.lexsort((-scores.size[multi], -scores.coverage[multi]))][:n]
    return [
        {
            "feature": int(f),
            "lch": index.nodes[scores.lch[f]],
            "name": index.name(int(scores.lch[f])),
            "classes": int(scores.size[f]),
            "coverage": float(scores.coverage[f]),
            "height": float(scores.height[f]),
        }
        for f in order
    ]


# --------------------------------------------------------------------------------------------
# Streaming class statistics


@dataclass
class ClassStats:
    """Per-class sums over a labelled split: raw activations and (optionally) SAE latents."""

    counts: np.ndarray
    x_sum: np.ndarray
    z_sum: np.ndarray | None = None
    z_fire: np.ndarray | None = None

    def x_means(self) -> np.ndarray:
        return self.x_sum / np.maximum(self.counts, 1)[:, None]


def class_stats(
    ctx: EvalContext, split: str, n_classes: int, *, with_sae: bool, batch_size: int, device: str
) -> ClassStats:
    """One pass over ``split``: per-class counts and sums of x (C, d) and, with an SAE, of z (C, d_sae).

    Sums accumulate with ``index_add_`` in float64 on ``device``: O(rows x d) for x and
    O(non-zeros) for the SAE's latents, which come from the run's shared sparse encoding."""
    acts = ctx.activations(split)
    labels = acts.labels
    if labels is None:
        raise DatasetError(
            f"split {split!r} has no labels; the ontology evaluator needs a labelled split"
        )
    dev = resolve_device(device)
    latents = None
    if with_sae and ctx.sae is not None:
        latents = ctx.latents(split, device=device, batch_size=batch_size)
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    x_sum = torch.zeros(n_classes, acts.d, dtype=torch.float64, device=dev)
    with torch.no_grad():
        for start, chunk in acts.iter_chunks(batch_size):
            x = torch.from_numpy(np.array(chunk, dtype=np.float64)).to(dev)
            y = torch.from_numpy(labels[start : start + len(chunk)]).to(dev)
            x_sum.index_add_(0, y, x)
    z_sum = z_fire = None
    if latents is not None:
        d_sae = latents.d_sae
        flat_sum = torch.zeros(n_classes * d_sae, dtype=torch.float64, device=dev)
        flat_fire = torch.zeros(n_classes * d_sae, dtype=torch.float64, device=dev)
        y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        with torch.no_grad():
            for start, local, cols, vals in latents.iter_sparse(batch_size):
                rows = torch.from_numpy(local) + start
                flat = (y_all[rows] * d_sae + torch.from_numpy(cols.astype(np.int64))).to(dev)
                v = torch.from_numpy(vals).to(dev, torch.float64)
                flat_sum.index_add_(0, flat, v)
                flat_fire.index_add_(0, flat, (v > 0).double())
        z_sum = flat_sum.view(n_classes, d_sae).cpu().numpy()
        z_fire = flat_fire.view(n_classes, d_sae).cpu().numpy()
    return ClassStats(counts=counts, x_sum=x_sum.cpu().numpy(), z_sum=z_sum, z_fire=z_fire)


def random_directions(d: int, count: int, seed: int) -> np.ndarray:
    """``count`` random unit vectors in R^d (rows), reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(count, d, generator=gen, dtype=torch.float64)
    return (r / r.norm(dim=1, keepdim=True)).numpy()


def hierarchy_index(ctx: EvalContext, split: str, cfg: OntologyConfig) -> HierarchyIndex:
    """The split's class hierarchy: the dataset's own tree, else WordNet over its class ids."""
    ds = ctx.dataset(split)
    classes = ds.classes()
    if not classes:
        raise DatasetError(
            f"split {split!r}: its dataset lists no classes; the ontology needs labelled classes"
        )
    ids = [c.id for c in classes]
    names = {c.id: c.name for c in classes}
    own = ds.hierarchy()
    if own is not None:
        parents = own
    else:
        bad = [i for i in ids if not is_wordnet_id(i)]
        if bad:
            raise DatasetError(
                f"split {split!r}: class id {bad[0]!r} is not a WordNet id and the dataset gives no "
                f"hierarchy(); give the dataset a hierarchy or use WordNet ids"
            )
        parents, wn_names = wordnet_hierarchy_for(ids)
        names = {**wn_names, **names}
    return HierarchyIndex.build(
        parents, ids, names=names, tie_break=cfg.tie_break, distance=cfg.distance
    )


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def score_features(
    means: np.ndarray, rates: np.ndarray | None, index: HierarchyIndex, cfg: OntologyConfig
) -> OntologyScores:
    """Class sets by the configured rule, then LCH, height and coverage. ``means`` is (K, C)."""
    sets, pivot = class_sets(
        means,
        rule=cfg.class_rule,
        threshold=cfg.threshold,
        min_class_mean=cfg.min_class_mean,
        rates=rates,
    )
    return score_class_sets(sets, pivot, index, near_root_fraction=cfg.near_root_fraction)


def write_figure_data(
    out_dir: Path, stem: str, scores: OntologyScores, index: HierarchyIndex, cfg: OntologyConfig
) -> Path:
    """Fig. 3 histogram (JSON) and per-feature scores (compressed npz) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = histogram(scores, index, cfg.histogram_bins, cfg.min_classes)
    doc["top_concepts"] = top_concepts(scores, index, cfg.min_classes)
    path = out_dir / f"{stem}_fig3.json"
    path.write_text(json.dumps(doc))
    lch_names = np.array([index.nodes[i] if i >= 0 else "" for i in scores.lch])
    np.savez_compressed(
        out_dir / f"{stem}_features.npz",
        size=scores.size,
        lch=lch_names,
        height=scores.height,
        coverage=scores.coverage,
    )
    return path


class OntologyEvaluator(Evaluator):
    """Table 2 counts and Fig. 3 histograms for SAE latents, encoder neurons and random vectors.

    ``evaluate`` scores the SAE's latents and (``random_features``) as many random unit
    directions in activation space, whose metrics carry a ``random_`` prefix. ``baseline``
    scores the encoder's own neurons (the activation dimensions).
    """

    name: ClassVar[str] = "ontology"
    version: ClassVar[str] = "2"
    Config: ClassVar[type] = OntologyConfig

    def required_roles(self) -> tuple[str, ...]:
        return (self.config.split_role,)

    metrics: ClassVar[dict[str, bool | None]] = {
        "n_features": None,
        "n_with_classes": None,
        "n_multiclass": None,
        "n_near_root": None,
        "near_root_coverage_gt_0.99": None,
        "near_root_coverage_gt_0.75": None,
        "coverage_gt_0.99": True,
        "coverage_gt_0.75": True,
        "mean_coverage": True,
        "mean_lch_height": None,
        "mean_classes": None,
        "random_n_features": None,
        "random_n_with_classes": None,
        "random_n_multiclass": None,
        "random_n_near_root": None,
        "random_near_root_coverage_gt_0.99": None,
        "random_near_root_coverage_gt_0.75": None,
        "random_coverage_gt_0.99": True,
        "random_coverage_gt_0.75": True,
        "random_mean_coverage": True,
        "random_mean_lch_height": None,
        "random_mean_classes": None,
    }

    headline: ClassVar[tuple[str, ...]] = (
        "n_features",
        "coverage_gt_0.99",
        "random_coverage_gt_0.99",
    )

    def _splits(self, ctx: EvalContext) -> list[str]:
        cfg: OntologyConfig = self.config
        splits = ctx.split_names(cfg.split_role)
        if not splits:
            raise DatasetError(
                f"the ontology evaluator needs a split with role {cfg.split_role!r}; the suite has none"
            )
        return splits

    def _records(
        self,
        split: str,
        scores: OntologyScores,
        index: HierarchyIndex,
        prefix: str,
        stem: str,
        ctx: EvalContext,
    ) -> list[Record]:
        cfg: OntologyConfig = self.config
        figure = write_figure_data(ctx.output_dir, stem, scores, index, cfg)
        extra = {
            "figure_data": figure.name,
            "top_concepts": top_concepts(scores, index, cfg.min_classes, 5),
        }
        return [
            Record(
                prefix + metric,
                value,
                split=split,
                higher_is_better=hib,
                n=len(scores.size),
                extra=extra,
            )
            for metric, (value, hib) in summary(scores, cfg).items()
        ]

    def evaluate(self, ctx: EvalContext) -> list[Record]:
        cfg: OntologyConfig = self.config
        if ctx.sae is None:
            return []
        records: list[Record] = []
        for split in self._splits(ctx):
            index = hierarchy_index(ctx, split, cfg)
            stats = class_stats(
                ctx,
                split,
                index.n_classes,
                with_sae=True,
                batch_size=cfg.batch_size,
                device=cfg.device,
            )
            assert stats.z_sum is not None and stats.z_fire is not None
            denom = np.maximum(stats.counts, 1)[None, :]
            scores = score_features(stats.z_sum.T / denom, stats.z_fire.T / denom, index, cfg)
            tag = _safe(f"{ctx.model_name}_{ctx.layer}_{ctx.sae_id}_{split}")
            records += self._records(split, scores, index, "", f"ontology_sae_{tag}", ctx)
            if cfg.random_features:
                records += self._random_records(ctx, split, stats, index, ctx.sae.d_sae, tag)
        return records

    def _random_records(
        self,
        ctx: EvalContext,
        split: str,
        stats: ClassStats,
        index: HierarchyIndex,
        count: int,
        tag: str,
    ) -> list[Record]:
        cfg: OntologyConfig = self.config
        directions = random_directions(stats.x_sum.shape[1], count, ctx.seed)
        means = directions @ stats.x_means().T  # projections are linear: class means project too
        rates = None
        if cfg.class_rule == "firing-rate":
            offsets = directions @ baseline_centre(stats, cfg)
            rates = projection_rates(
                ctx, split, directions, offsets, index.n_classes, cfg.batch_size, cfg.device
            )
        scores = score_features(means, rates, index, cfg)
        return self._records(split, scores, index, "random_", f"ontology_random_{tag}", ctx)

    def baseline(self, ctx: EvalContext) -> list[Record]:
        cfg: OntologyConfig = self.config
        records: list[Record] = []
        for split in self._splits(ctx):
            index = hierarchy_index(ctx, split, cfg)
            stats = class_stats(
                ctx,
                split,
                index.n_classes,
                with_sae=False,
                batch_size=cfg.batch_size,
                device=cfg.device,
            )
            rates = None
            if cfg.class_rule == "firing-rate":
                eye = np.eye(stats.x_sum.shape[1])
                rates = projection_rates(
                    ctx,
                    split,
                    eye,
                    baseline_centre(stats, cfg),
                    index.n_classes,
                    cfg.batch_size,
                    cfg.device,
                )
            scores = score_features(stats.x_means().T, rates, index, cfg)
            tag = _safe(f"{ctx.model_name}_{ctx.layer}_{split}")
            records += self._records(split, scores, index, "", f"ontology_neurons_{tag}", ctx)
        return records


def baseline_centre(stats: ClassStats, cfg: OntologyConfig) -> np.ndarray:
    """The point the dense baselines are measured from under ``class_rule: firing-rate``.

    An SAE fires on (x - b_dec); a random direction or a neuron scored as x . u > 0 on raw,
    uncentred activations (all >= 0 after a ReLU6) fires on most images whenever u points near
    the mean, so it would win Table 2 by firing on everything. ``split-mean`` centres on the
    labelled split's mean activation (x . u > mean . u); ``none`` keeps the raw origin."""
    if cfg.baseline_centre == "none":
        return np.zeros(stats.x_sum.shape[1])
    return stats.x_sum.sum(0) / max(float(stats.counts.sum()), 1.0)


def projection_rates(
    ctx: EvalContext,
    split: str,
    directions: np.ndarray,
    offsets: np.ndarray,
    n_classes: int,
    batch_size: int,
    device: str,
) -> np.ndarray:
    """Per-class rate at which x . direction > offset, (K, C): the firing-rate rule for dense
    features, on ``device``, counted with ``index_add_``."""
    acts = ctx.activations(split)
    labels = acts.labels
    assert labels is not None
    dev = resolve_device(device)
    dirs = torch.from_numpy(directions.astype(np.float64)).to(dev)
    off = torch.from_numpy(np.asarray(offsets, dtype=np.float64)).to(dev)
    fire = torch.zeros(n_classes, len(directions), dtype=torch.float64, device=dev)
    with torch.no_grad():
        for start, chunk in acts.iter_chunks(batch_size):
            y = torch.from_numpy(labels[start : start + len(chunk)]).to(dev)
            proj = torch.from_numpy(np.array(chunk, dtype=np.float64)).to(dev) @ dirs.T
            fire.index_add_(0, y, (proj > off).double())
    counts = np.maximum(np.bincount(labels, minlength=n_classes), 1)
    return fire.cpu().numpy().T / counts[None, :]
