"""Registers the steering evaluator and the labellers (by reference: nothing heavy imported)."""

from __future__ import annotations

from saebench_vision import hookimpl
from saebench_vision.registry import ComponentRef

_P = "saebench_vision_plugins.steering"


@hookimpl
def register_evaluators() -> dict[str, ComponentRef]:
    return {
        "diffusion-steering": ComponentRef(
            f"{_P}.evaluator:DiffusionSteeringEvaluator",
            config=f"{_P}.configs:DiffusionSteeringConfig",
        ),
    }


@hookimpl
def register_labellers() -> dict[str, ComponentRef]:
    return {
        "clip": ComponentRef(
            f"{_P}.labellers:CLIPLabeller", config=f"{_P}.configs:CLIPLabellerConfig"
        ),
        "qwen2.5-vl": ComponentRef(
            f"{_P}.labellers:QwenVLLabeller", config=f"{_P}.configs:QwenLabellerConfig"
        ),
    }
