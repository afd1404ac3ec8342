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
        "head-accuracy": ComponentRef(
            f"{_P}.head_accuracy:HeadAccuracyEvaluator",
            config=f"{_P}.head_config:HeadAccuracyConfig",
        ),
    }
