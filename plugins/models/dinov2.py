"""DINOv2 through transformers ``Dinov2Model`` (the paper's main image encoder, ViT-g/14)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from saebench_vision_plugins.models.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageAdapter,
    ImageTransform,
    capture,
    hf_config_dict,
    hf_dtype,
    hf_load_model,
    run_until,
    vit_tokens,
)
from saebench_vision_plugins.models.configs import DINOv2Config
from transformers import Dinov2Config, Dinov2Model

from saebench_vision.interfaces import LayerOutput

KNOWN_SIZES = {
    "facebook/dinov2-small": (12, 384),
    "facebook/dinov2-base": (12, 768),
    "facebook/dinov2-large": (24, 1024),
    "facebook/dinov2-giant": (40, 1536),
}
"""(depth, ``hidden_size``) of the released checkpoints, so layer names and validate's memory
check need no download."""
MODEL_TYPES = ("dinov2",)


class DINOv2Adapter(ImageAdapter):
    """Every transformer block of DINOv2, CLS and patch tokens.

    Layers: ``blocks.0`` ... ``blocks.N-1`` are the raw residual stream after each block
    (``hidden_states[i + 1]`` in transformers' numbering); ``final`` is ``last_hidden_state``,
    i.e. the last block's output passed through DINOv2's final LayerNorm: the features DINOv2
    users take (its CLS token is ``pooler_output``). ``blocks.N-1`` and ``final`` therefore
    differ by that normalisation.

    Preprocessing matches the released image processor: resize the shorter side to 256
    (bicubic), centre-crop 224, ImageNet mean/std. Requesting only early layers stops the
    forward pass after the deepest one.
    """

    name = "dinov2"
    version = "1"
    Config = DINOv2Config

    def make_transform(self) -> ImageTransform:
        size = self.config.image_size or 224
        return ImageTransform(
            image_size=size,
            resize_size=self.config.resize_size or round(size * 256 / 224),
            interpolation=self.config.interpolation or "bicubic",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )

    def _size(self, key: str) -> int:
        """``num_hidden_layers`` or ``hidden_size``: from the loaded model, the table of
        released checkpoints, or the folder's / hub's config.json."""
        if self.model is not None:
            return int(getattr(self.model.config, key))
        if self.config.model_id in KNOWN_SIZES:
            depth, width = KNOWN_SIZES[self.config.model_id]
            return depth if key == "num_hidden_layers" else width
        config = hf_config_dict(
            self.name, self.config.model_id, MODEL_TYPES, revision=self.config.revision
        )
        return int(config.get(key, getattr(Dinov2Config(), key)))

    def depth(self) -> int:
        return self._size("num_hidden_layers")

    def layer_names(self) -> list[str]:
        return [f"blocks.{i}" for i in range(self.depth())] + ["final"]

    def layer_width(self, layer: str) -> int | None:
        # Every block and the final LayerNorm keep the residual width.
        return self._size("hidden_size")

    def load(self) -> None:
        model = hf_load_model(
            self.name,
            Dinov2Model,
            self.config.model_id,
            MODEL_TYPES,
            # A Dinov2ForImageClassification checkpoint loads as the backbone minus its head.
            allow_unexpected=("classifier.",),
            revision=self.config.revision,
            **hf_dtype(self.torch_dtype),
        )
        self.model = model.to(self.device).eval()
        self._layers = None

    def forward(self, batch: torch.Tensor, layers: Sequence[str]) -> dict[str, LayerOutput]:
        self._check(layers)
        model: Any = self.model
        modules = {f"blocks.{i}": layer for i, layer in enumerate(model.encoder.layer)}
        modules["final"] = model.layernorm
        wanted = {name: modules[name] for name in layers}
        deepest = max(wanted, key=list(modules).index)
        n_prefix = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
        x = self.pixels(batch)
        with capture(wanted, stop_after=deepest) as captured:
            run_until(lambda: model(pixel_values=x))
        return {name: vit_tokens(captured[name], n_prefix) for name in layers}
