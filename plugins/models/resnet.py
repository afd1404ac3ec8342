"""ResNet through torchvision (weights tag) and through transformers ``ResNetModel``.

Both expose the same layers: ``stem`` (after the stem's max-pool), ``stages.0`` ...
``stages.3`` (each residual stage's output) and ``final`` (the pre-logit features). Every layer
is a feature map: its CLS token is the global average pool and its patch tokens are the
spatial positions. In a ResNet the classifier reads the pooled last stage, so ``final`` holds
the same map as ``stages.3``; its CLS token is exactly the classifier's input.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from saebench_vision_plugins.models.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageAdapter,
    ImageTransform,
    capture,
    feature_map_tokens,
    hf_config_dict,
    hf_dtype,
    hf_load_model,
    imagenet_head_columns,
    load_state_file,
    run_until,
)
from saebench_vision_plugins.models.configs import HFResNetConfig, ResNetConfig
from torch import nn

from saebench_vision.errors import ModelMismatchError, WeightsNotFoundError
from saebench_vision.interfaces import ClassInfo, LayerOutput

LAYERS = ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "final"]
HF_MODEL_TYPES = ("resnet",)
# Released 4-stage checkpoints, so layer names need no download.
KNOWN_HF_IDS = {f"microsoft/resnet-{n}" for n in (18, 26, 34, 50, 101, 152)}
# torchvision architectures by (bottleneck blocks?, blocks per stage).
TORCHVISION_ARCHS = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}


def torchvision_widths(arch: str) -> dict[str, int]:
    """Channels of every layer of a torchvision ResNet, from its block type alone: a stem of
    64, stages of 64..512 (basic blocks) or 4x that (bottlenecks); ``final`` pools stage 3."""
    bottleneck = arch in {
        a for (uses_bottleneck, _), a in TORCHVISION_ARCHS.items() if uses_bottleneck
    }
    stages = [64 * 2**i * (4 if bottleneck else 1) for i in range(4)]
    return {"stem": 64, **{f"stages.{i}": w for i, w in enumerate(stages)}, "final": stages[3]}


def describe_resnet_state(state: dict[str, Any]) -> str:
    """What a torchvision ResNet state dict holds, read from its keys and shapes."""
    blocks = []
    for stage in range(1, 5):
        ids = {k.split(".")[1] for k in state if k.startswith(f"layer{stage}.")}
        blocks.append(len(ids))
    if not any(blocks):
        return "no torchvision ResNet weights (no layer1 ... layer4 keys)"
    bottleneck = any(k.endswith("conv3.weight") for k in state)
    arch = TORCHVISION_ARCHS.get((bottleneck, tuple(blocks)))
    fc = state.get("fc.weight")
    classes = f", {fc.shape[0]} classes" if isinstance(fc, torch.Tensor) else ""
    kind = "bottleneck" if bottleneck else "basic"
    return f"{arch or 'a ResNet'} weights ({kind} blocks {'-'.join(map(str, blocks))}{classes})"


def _first_line(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _module_key(layer: str) -> str:
    return "stages.3" if layer == "final" else layer


class _ResNetBase(ImageAdapter):
    def layer_names(self) -> list[str]:
        return list(LAYERS)

    def layer_modules(self) -> dict[str, nn.Module]:
        """``stem`` and ``stages.i`` -> modules whose output is that layer."""
        raise NotImplementedError

    def run(self, pixels: torch.Tensor) -> None:
        raise NotImplementedError

    def forward(self, batch: torch.Tensor, layers: Sequence[str]) -> dict[str, LayerOutput]:
        self._check(layers)
        modules = self.layer_modules()
        # final and stages.3 share a module: capture each module once.
        by_module = {key: modules[key] for key in {_module_key(name) for name in layers}}
        deepest = max(by_module, key=LAYERS.index)
        x = self.pixels(batch)
        with capture(by_module, stop_after=deepest) as captured:
            run_until(lambda: self.run(x))
        maps = {name: feature_map_tokens(t) for name, t in captured.items()}
        return {name: maps[_module_key(name)] for name in layers}


class ResNetAdapter(_ResNetBase):
    """A torchvision ResNet (``arch`` + ``weights`` tag, e.g. resnet50 / IMAGENET1K_V2).

    Preprocessing is the weights tag's own evaluation transform (resnet50 IMAGENET1K_V2:
    shorter side to 232 bilinear, centre-crop 224, ImageNet mean/std; V1: 256 -> 224); with
    ``weights: null`` (random init or ``weights_path`` only), 256 -> 224 bilinear.
    """

    name = "resnet"
    version = "1"
    Config = ResNetConfig

    def weights_enum(self) -> Any:
        from torchvision.models import get_model_weights

        if not self.config.weights:
            return None
        options = get_model_weights(self.config.arch)
        try:
            return options[self.config.weights]
        except KeyError:
            known = ", ".join(w.name for w in options)
            raise WeightsNotFoundError(
                f"model `{self.name}`: {self.config.arch} has no torchvision weights tag "
                f"{self.config.weights!r} (known: {known}, DEFAULT)"
            ) from None

    def identity(self) -> dict[str, Any]:
        weights = self.weights_enum()
        # DEFAULT may name other weights in a later torchvision: key on the resolved tag.
        return {**super().identity(), "weights": None if weights is None else weights.name}

    def make_transform(self) -> ImageTransform:
        weights = self.weights_enum()
        crop, resize, interp = 224, 256, "bilinear"
        if weights is not None:
            t = weights.transforms()
            crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
            interp = str(t.interpolation.value)
        size = self.config.image_size or crop
        return ImageTransform(
            image_size=size,
            resize_size=self.config.resize_size or round(resize * size / crop),
            interpolation=self.config.interpolation or interp,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.config.weights_path:
            path = Path(self.config.weights_path).expanduser()
            if not path.is_file():
                raise WeightsNotFoundError(
                    f"model `{self.name}`: weights_path {str(path)!r} does not exist; point it to "
                    f"a .pth state dict, or unset it to download the weights tag"
                )
            return load_state_file(self.name, path)
        weights = self.weights_enum()
        if weights is None:
            return None
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except (OSError, RuntimeError) as exc:
            raise WeightsNotFoundError(
                f"model `{self.name}`: cannot download {self.config.arch} {weights.name} from "
                f"{weights.url} ({' '.join(str(exc).split())[:100]}); run once with network "
                f"access (cached in ~/.cache/torch/hub/checkpoints), or download that file and "
                f"set weights_path to it"
            ) from exc

    def layer_width(self, layer: str) -> int | None:
        return torchvision_widths(self.config.arch).get(layer)

    def load(self) -> None:
        from torchvision.models import get_model

        model = get_model(self.config.arch, weights=None)
        state = self.state_dict()
        if state is not None:
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                source = self.config.weights_path or f"weights tag {self.config.weights}"
                raise ModelMismatchError(
                    f"model `{self.name}`: {source} holds {describe_resnet_state(state)}, not "
                    f"{self.config.arch} ({_first_line(exc)}); set arch to match the file or "
                    f"point weights_path to {self.config.arch} weights"
                ) from None
        self.model = model.to(self.device, self.torch_dtype).eval()

    @torch.inference_mode()
    def classify(
        self, batch: torch.Tensor, classes: Sequence[ClassInfo], prompts: Sequence[str] = ()
    ) -> torch.Tensor | None:
        """The ImageNet-1k head's logits of ``classes`` (None if ``fc`` has another size)."""
        self.ensure_loaded()
        model: Any = self.model
        if model.fc.out_features != 1000:
            return None
        return model(self.pixels(batch)).float()[:, imagenet_head_columns(classes, self.name)]

    def layer_modules(self) -> dict[str, nn.Module]:
        m: Any = self.model
        return {"stem": m.maxpool, **{f"stages.{i}": getattr(m, f"layer{i + 1}") for i in range(4)}}

    def run(self, pixels: torch.Tensor) -> None:
        self.model(pixels)


class HFResNetAdapter(_ResNetBase):
    """A transformers ``ResNetModel`` (e.g. microsoft/resnet-50).

    ``stem`` is the embedder's output and ``stages.i`` the encoder's stage outputs
    (``hidden_states[0]`` ... ``hidden_states[4]``). Preprocessing matches the model's image
    processor: shorter side to 256 (224 / crop_pct 0.875, bicubic), centre-crop 224,
    ImageNet mean/std.
    """

    name = "hf-resnet"
    version = "1"
    Config = HFResNetConfig

    def layer_names(self) -> list[str]:
        # Verify the folder or id (type and stage count) without loading weights.
        if self._layers is None:
            if self.config.model_id not in KNOWN_HF_IDS:
                config = hf_config_dict(
                    self.name, self.config.model_id, HF_MODEL_TYPES, revision=self.config.revision
                )
                self._check_stages(len(config.get("depths") or [3, 4, 6, 3]))
            self._layers = list(LAYERS)
        return list(self._layers)

    def _check_stages(self, stages: int) -> None:
        if stages != 4:
            raise ModelMismatchError(
                f"model `{self.name}`: {self.config.model_id} has {stages} stages, expected a "
                f"4-stage ResNet; point model_id to a ResNet checkpoint"
            )

    def make_transform(self) -> ImageTransform:
        size = self.config.image_size or 224
        return ImageTransform(
            image_size=size,
            resize_size=self.config.resize_size or round(size / 0.875),
            interpolation=self.config.interpolation or "bicubic",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )

    def load(self) -> None:
        from transformers import ResNetModel

        model = hf_load_model(
            self.name,
            ResNetModel,
            self.config.model_id,
            HF_MODEL_TYPES,
            # microsoft/resnet-* are ResNetForImageClassification checkpoints: the backbone
            # loads from them and the head is read separately.
            allow_unexpected=("classifier.",),
            revision=self.config.revision,
            **hf_dtype(self.torch_dtype),
        )
        self._check_stages(len(model.encoder.stages))
        self.model = model.to(self.device).eval()

    def layer_modules(self) -> dict[str, nn.Module]:
        m: Any = self.model
        return {"stem": m.embedder, **{f"stages.{i}": s for i, s in enumerate(m.encoder.stages)}}

    def run(self, pixels: torch.Tensor) -> None:
        self.model(pixel_values=pixels)
