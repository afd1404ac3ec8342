"""Registers the built-in model adapters (by reference: nothing heavy is imported here)."""

from __future__ import annotations

from saebench_vision import hookimpl
from saebench_vision.registry import ComponentRef

_P = "saebench_vision_plugins.models"


def _ref(module_class: str, config: str) -> ComponentRef:
    return ComponentRef(f"{_P}.{module_class}", config=f"{_P}.configs:{config}")


@hookimpl
def register_models() -> dict[str, ComponentRef]:
    return {
        "efficientnet-lite": _ref("efficientnet:EfficientNetLiteAdapter", "EfficientNetLiteConfig"),
        "dinov2": _ref("dinov2:DINOv2Adapter", "DINOv2Config"),
        "open-clip": _ref("clip:OpenCLIPAdapter", "OpenCLIPConfig"),
        "hf-clip": _ref("clip:HFCLIPAdapter", "HFCLIPConfig"),
        "resnet": _ref("resnet:ResNetAdapter", "ResNetConfig"),
        "hf-resnet": _ref("resnet:HFResNetAdapter", "HFResNetConfig"),
        "llava": _ref("llava:LlavaAdapter", "LlavaConfig"),
        "sd-text-encoder": _ref("sd_text:SDTextEncoderAdapter", "SDTextEncoderConfig"),
    }
