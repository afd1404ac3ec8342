"""Registers the built-in SAE architectures (by reference: nothing heavy is imported here)."""

from __future__ import annotations

from saebench_vision import hookimpl
from saebench_vision.registry import ComponentRef

_P = "saebench_vision_plugins.saes"


@hookimpl
def register_saes() -> dict[str, ComponentRef]:
    return {
        "relu": ComponentRef(f"{_P}.relu:ReLUSAE", config=f"{_P}.configs:ReLUConfig"),
        "topk": ComponentRef(f"{_P}.topk:TopKSAE", config=f"{_P}.configs:TopKConfig"),
        "gated": ComponentRef(f"{_P}.gated:GatedSAE", config=f"{_P}.configs:GatedConfig"),
        "batch-topk": ComponentRef(
            f"{_P}.topk:BatchTopKSAE", config=f"{_P}.configs:BatchTopKConfig"
        ),
        "jumprelu": ComponentRef(
            f"{_P}.jumprelu:JumpReLUSAE", config=f"{_P}.configs:JumpReLUConfig"
        ),
        "matryoshka": ComponentRef(
            f"{_P}.topk:MatryoshkaSAE", config=f"{_P}.configs:MatryoshkaConfig"
        ),
    }
