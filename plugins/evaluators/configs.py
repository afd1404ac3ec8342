"""Config dataclasses of the built-in evaluators. Light: imports no torch.

Where the paper leaves a choice open (thresholds for dead and dense latents, the probe's
regulariser, how a feature's class set is chosen, ties between common hypernyms) the choice is
a field here, and the field's help says what the default is and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saebench_vision.config import FieldValueError, option


@dataclass(frozen=True)
class ReconstructionConfig:
    """Options of the ``reconstruction`` evaluator (paper eqs. 6-8)."""

    roles: tuple[str, ...] = option(
        ("train", "eval", "shifted", "near-ood", "far-ood"),
        "split roles to score; every split of these roles gets its own records",
    )
    batch_size: int = option(
        4096, "activation rows per chunk streamed through the SAE", identity=False
    )
    max_rows: int | None = option(
        None, "score at most this many rows per split (evenly strided); null scores every row"
    )
    dead_threshold: float = option(
        0.0,
        "a latent is dead on a split when it fires on at most this fraction of rows "
        "(0: it never fires, the usual definition)",
    )
    dense_threshold: float = option(
        0.1,
        "a latent is dense when it fires on more than this fraction of rows (0.1: on more than "
        "one row in ten, a feature too common to name one concept)",
    )
    device: str = option(
        "auto", "torch device for the SAE forward pass: cpu, cuda, auto", identity=False
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise FieldValueError("batch_size", self.batch_size, "at least 1")
        for label, value in (
            ("dead_threshold", self.dead_threshold),
            ("dense_threshold", self.dense_threshold),
        ):
            if not 0.0 <= value <= 1.0:
                raise FieldValueError(label, value, "between 0 and 1")


@dataclass(frozen=True)
class ProbeConfig:
    """Options of the ``ood-accuracy`` evaluator's linear probe (shared by every feature kind)."""

    solver: Literal["auto", "lbfgs", "minibatch"] = option(
        "auto",
        "lbfgs: full-batch L-BFGS to convergence (exact; streams the rows each evaluation when "
        "they exceed full_batch_limit); minibatch: Adam over shuffled minibatches (ImageNet "
        "scale); auto: lbfgs when rows x features <= full_batch_limit, else minibatch",
    )
    full_batch_limit: int = option(
        50_000_000,
        "largest rows x features held in memory for L-BFGS (and solved by it under auto)",
    )
    l2: float = option(
        1e-4,
        "L2 penalty (l2/2)*||W||^2 added to the mean cross-entropy, on standardised features; "
        "equals scikit-learn's C = 1/(l2 * n_train)",
    )
    standardize: bool = option(
        True,
        "scale each feature to zero mean and unit variance on the train split (SAE latents and "
        "raw embeddings differ in scale by orders of magnitude; one recipe must fit both)",
    )
    epochs: int = option(10, "minibatch solver: passes over the train split")
    batch_size: int = option(4096, "minibatch solver: rows per optimiser step")
    lr: float = option(
        1e-2,
        "minibatch solver: Adam learning rate, cosine-decayed to zero (features are standardised, "
        "so the convex problem tolerates a large rate; 1e-3 stops short of the optimum)",
    )
    memory_budget_gb: float = option(
        4.0,
        "raw activation rows of a split up to this size are copied once onto the probe's device; "
        "larger splits stream from the memory-mapped cache (same rows in the same order, so the "
        "numbers do not depend on it)",
        identity=False,
    )
    lbfgs_max_iter: int = option(500, "lbfgs solver: iteration limit")
    lbfgs_tol: float = option(1e-7, "lbfgs solver: gradient tolerance")

    def __post_init__(self) -> None:
        if self.memory_budget_gb < 0:
            raise FieldValueError("memory_budget_gb", self.memory_budget_gb, "0 or more")
        if self.batch_size < 1:
            raise FieldValueError("batch_size", self.batch_size, "at least 1")


@dataclass(frozen=True)
class OODAccuracyConfig(ProbeConfig):
    """Options of the ``ood-accuracy`` evaluator (paper Table 1, Fig. 2 left, Fig. 12)."""

    features: tuple[str, ...] = option(
        ("latents", "pre-activations"),
        "SAE feature kinds to probe: latents (z) and pre-activations (Fig. 12's ablation, the "
        "encoder output before its nonlinearity); the baseline always probes raw embeddings",
    )
    roles: tuple[str, ...] = option(("eval", "shifted"), "split roles to test the probe on")
    device: str = option("auto", "torch device for probe training: cpu, cuda, auto", identity=False)
    seed_offset: int = option(0, "added to the cell's seed for probe initialisation and shuffling")

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = set(self.features) - {"latents", "pre-activations"}
        if unknown:
            raise FieldValueError(
                "features",
                self.features,
                f"a list of latents and pre-activations ({sorted(unknown)[0]!r} is neither)",
            )


@dataclass(frozen=True)
class OntologyConfig:
    """Options of the ``ontology`` evaluator (paper eqs. 9-12, Table 2, Fig. 3)."""

    split_role: Literal["train", "eval"] = option(
        "eval", "role of the labelled split whose per-class mean activations define class sets"
    )
    class_rule: Literal["relative-mean", "firing-rate"] = option(
        "relative-mean",
        "how a feature's class set C_k is chosen. relative-mean: classes whose mean activation, "
        "less the feature's median class mean, is at least `threshold` times the largest such "
        "value (centring makes the rule apply to dense baselines too; sparse SAE latents have "
        "median ~0). firing-rate: classes on whose images the feature fires (> 0) at least "
        "`threshold` of the time",
    )
    threshold: float = option(0.5, "the class_rule's threshold, in (0, 1]")
    min_class_mean: float = option(
        1e-6, "a feature whose largest (centred) class mean is at most this has no class set"
    )
    tie_break: Literal["lowest", "highest"] = option(
        "lowest",
        "among common hypernyms with equally many leaves (single-child chains, DAG nodes with "
        "one leaf set), lowest picks the smallest total distance from the feature's classes "
        "(then the lowest node id), so a single-class feature's LCH is its class (height 0); "
        "highest picks the largest. Depends on the class set only",
    )
    distance: Literal["shortest", "longest"] = option(
        "shortest", "dist(w, h) of eq. 11 in a DAG: the shortest or longest hypernym path"
    )
    near_root_fraction: float = option(
        0.9,
        "an LCH holding at least this fraction of all classes is near-root: its coverage is just "
        "|C|/|Omega|, earned by firing on everything, so such features are counted apart "
        "(n_near_root) and left out of the coverage counts. 0.9 because on ImageNet-1k's WordNet "
        "the nodes above it (entity, physical entity, object, whole: >= 949 leaves) sit far "
        "above the next (artifact, 522)",
    )
    baseline_centre: Literal["split-mean", "none"] = option(
        "split-mean",
        "under class_rule firing-rate, where the random-direction and neuron baselines are "
        "measured from: split-mean fires when (x - mean) . u > 0, as an SAE fires on its "
        "centred input x - b_dec; none uses the raw origin (x . u > 0), which on non-negative "
        "activations lets directions near the mean fire on nearly every class",
    )
    min_classes: int = option(
        2,
        "features with fewer classes are left out of the coverage counts (eq. 12 gives every "
        "single-class feature coverage 1, so Table 2 counts multi-class features)",
    )
    coverage_thresholds: tuple[float, ...] = option((0.99, 0.75), "Table 2's coverage thresholds")
    random_features: bool = option(
        True, "also score random unit directions, as many as the SAE has latents (Table 2 baseline)"
    )
    histogram_bins: int = option(20, "bins per axis of Fig. 3's height x coverage histogram")
    batch_size: int = option(
        4096, "activation rows per chunk streamed through the SAE", identity=False
    )
    device: str = option("auto", "torch device for encoding: cpu, cuda, auto", identity=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise FieldValueError("threshold", self.threshold, "more than 0 and at most 1")
        if self.min_classes < 1:
            raise FieldValueError("min_classes", self.min_classes, "at least 1")
        if not 0.0 < self.near_root_fraction <= 1.0:
            raise FieldValueError(
                "near_root_fraction", self.near_root_fraction, "more than 0 and at most 1"
            )


@dataclass(frozen=True)
class LayerSweepConfig(OntologyConfig):
    """Options of the ``layer-sweep`` evaluator (paper Fig. 8, appendix A): one SAE per layer."""

    recon_role: Literal["train", "eval"] = option(
        "eval", "role of the split whose reconstruction and L0 are reported"
    )
    dead_threshold: float = option(
        0.0, "as in reconstruction: fire rate at or below which a latent is dead"
    )
