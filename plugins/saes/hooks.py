"""Registers the built-in SAE architectures (by reference: nothing heavy is imported here)."""

from __future__ import annotations

from saebench_vision import hookimpl
from saebench_vision.registry import ComponentRef

_P = "saebench_vision_plugins.saes"


@hookimpl
def register_saes() -> dict[str, ComponentRef]:
    return {}
