"""Registers the built-in evaluators (by reference: nothing heavy is imported here)."""

from __future__ import annotations

from saebench_vision import hookimpl
from saebench_vision.registry import ComponentRef

_P = "saebench_vision_plugins.evaluators"


@hookimpl
def register_evaluators() -> dict[str, ComponentRef]:
    return {
        "reconstruction": ComponentRef(
            f"{_P}.reconstruction:ReconstructionEvaluator",
            config=f"{_P}.configs:ReconstructionConfig",
        ),
        "ood-accuracy": ComponentRef(
            f"{_P}.ood_accuracy:OODAccuracyEvaluator", config=f"{_P}.configs:OODAccuracyConfig"
        ),
        "ontology": ComponentRef(
            f"{_P}.ontology:OntologyEvaluator", config=f"{_P}.configs:OntologyConfig"
        ),
        "layer-sweep": ComponentRef(
            f"{_P}.layer_sweep:LayerSweepEvaluator", config=f"{_P}.configs:LayerSweepConfig"
        ),
    }


@hookimpl
def register_figures() -> dict[str, str]:
    """The paper's figures drawn from the built-in evaluators' records and artifacts."""
    return {
        "reconstruction-pareto": f"{_P}.figures:reconstruction_pareto",
        "ood-vs-sparsity": f"{_P}.figures:ood_vs_sparsity",
        "accuracy-vs-l0": f"{_P}.figures:accuracy_vs_l0",
        "ontology-histograms": f"{_P}.figures:ontology_histograms",
        "layer-sweep": f"{_P}.figures:layer_sweep",
    }
