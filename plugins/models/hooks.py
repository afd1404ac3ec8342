"""Registers the built-in model adapters (by reference: nothing heavy is imported here)."""

from __future__ import annotations

from saebench_vision import hookimpl
from saebench_vision.registry import ComponentRef

_P = "saebench_vision_plugins.models"


@hookimpl
def register_models() -> dict[str, ComponentRef]:
    return {
        "efficientnet-lite": ComponentRef(
            f"{_P}.efficientnet:EfficientNetLiteAdapter",
            config=f"{_P}.configs:EfficientNetLiteConfig",
        ),
    }
