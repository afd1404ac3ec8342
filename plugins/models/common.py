"""Pieces shared by the built-in adapters: image preprocessing, CNN feature maps as tokens,
layer hooks, and loading errors that say how to fix them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from saebench_vision.errors import DatasetError, WeightsNotFoundError
from saebench_vision.interfaces import LayerOutput, ModelAdapter, TokenKind

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to ``resize_size``, centre-crop ``image_size``, stack as uint8
    (B, 3, H, W).

    Normalisation (mean/std) is applied by :meth:`normalize` on the model's device: uint8
    batches are 4x cheaper to move between worker processes and to the GPU.
    """

    image_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def image(self, img: Any) -> np.ndarray:
        if not isinstance(img, Image.Image):
            raise DatasetError(
                f"expected a PIL image, got {type(img).__name__}; image models need an image dataset"
            )
        if img.mode != "RGB":
            img = img.convert("RGB")
        w, h = img.size
        scale = self.resize_size / min(w, h)
        size = (max(self.resize_size, round(w * scale)), max(self.resize_size, round(h * scale)))
        left = (size[0] - self.image_size) // 2
        top = (size[1] - self.image_size) // 2
        # Resample only the source region that the centre crop keeps: the same pixels as
        # resize-then-crop (up to rounding) for a fraction of the work.
        sx, sy = size[0] / w, size[1] / h
        box = (left / sx, top / sy, (left + self.image_size) / sx, (top + self.image_size) / sy)
        out = (self.image_size, self.image_size)
        if box != (0, 0, w, h) or out != (w, h):
            img = img.resize(out, _RESAMPLE[self.interpolation], box=box)
        return np.asarray(img, dtype=np.uint8)

    def __call__(self, images: Sequence[Any]) -> torch.Tensor:
        batch = np.stack([self.image(img) for img in images])
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()

    def normalize(
        self, pixels: torch.Tensor, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> normalised ``dtype`` on ``device``."""
        x = pixels.to(device, non_blocking=True).float().div_(255.0)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(dtype)

    def settings(self) -> dict[str, Any]:
        return asdict(self)


def feature_map_tokens(x: torch.Tensor) -> LayerOutput:
    """A CNN feature map (B, C, H, W) as tokens: the global average pool as the CLS token,
    then the H*W spatial positions (row-major) as patch tokens."""
    b, c, h, w = x.shape
    spatial = x.flatten(2).transpose(1, 2)
    values = torch.cat([x.mean(dim=(2, 3)).unsqueeze(1), spatial], dim=1)
    kinds = torch.full((b, 1 + h * w), int(TokenKind.PATCH), dtype=torch.long, device=x.device)
    kinds[:, 0] = int(TokenKind.CLS)
    return LayerOutput(values=values, kinds=kinds)


def vit_tokens(x: torch.Tensor, n_prefix: int = 1) -> LayerOutput:
    """ViT hidden states (B, T, d) whose token 0 is CLS; ``n_prefix - 1`` register tokens
    after it are marked PAD (neither CLS nor patch); the rest are patches."""
    b, t, _ = x.shape
    kinds = torch.full((b, t), int(TokenKind.PATCH), dtype=torch.long, device=x.device)
    kinds[:, :n_prefix] = int(TokenKind.PAD)
    kinds[:, 0] = int(TokenKind.CLS)
    return LayerOutput(values=x, kinds=kinds)


def first_tensor(output: Any) -> torch.Tensor:
    """A module's output tensor (some layers return tuples or output objects)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return first_tensor(output[0])
    for attr in ("last_hidden_state", "hidden_states"):
        if getattr(output, attr, None) is not None:
            return first_tensor(getattr(output, attr))
    raise TypeError(f"cannot find a tensor in a module output of type {type(output).__name__}")


class _StopForward(Exception):
    """Raised from a hook once every requested layer is captured, to skip the rest."""


@contextmanager
def capture(
    modules: dict[str, nn.Module], *, stop_after: str | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``modules`` (name -> module) during a forward pass.

    With ``stop_after``, the pass is cut short once that module has run (use
    :func:`run_until` to swallow the stop): layers after the deepest requested one cost nothing.
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured[name] = first_tensor(output)
            if name == stop_after:
                raise _StopForward

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def run_until(fn: Callable[[], Any]) -> Any:
    """Call ``fn``; a :class:`_StopForward` from a capture hook means "done", returning None."""
    try:
        return fn()
    except _StopForward:
        return None


def looks_local(model_id: str) -> bool:
    """Whether ``model_id`` names a folder rather than a hub repository."""
    return (
        model_id.startswith(("/", "./", "../", "~"))
        or os.path.isabs(model_id)
        or model_id.count("/") > 1
        or os.path.exists(os.path.expanduser(model_id))
    )


def hf_dtype(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The ``from_pretrained`` keyword for a dtype: ``dtype`` since transformers 4.56,
    ``torch_dtype`` before (older versions would silently ignore ``dtype``)."""
    import transformers
    from packaging.version import Version

    new = Version(transformers.__version__) >= Version("4.56")
    return {"dtype": dtype} if new else {"torch_dtype": dtype}


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def hf_load(adapter_name: str, loader: Callable[..., Any], model_id: str, **kwargs: Any) -> Any:
    """``loader(model_id, **kwargs)`` (a ``from_pretrained``), with missing weights turned into
    a one-line :class:`WeightsNotFoundError` that says how to get them."""
    if looks_local(model_id):
        path = Path(model_id).expanduser()
        if not path.is_dir():
            raise WeightsNotFoundError(
                f"model `{adapter_name}`: local folder {str(path)!r} does not exist; point "
                f"model_id to a folder saved with save_pretrained, or to a hub id"
            )
        model_id = str(path)
    try:
        return loader(model_id, **kwargs)
    except (OSError, ValueError) as exc:
        subfolder = kwargs.get("subfolder")
        where = f"{model_id}" + (f" (subfolder {subfolder})" if subfolder else "")
        raise WeightsNotFoundError(
            f"model `{adapter_name}`: cannot load {where}: {_one_line(exc)}; run once with network "
            f"access, or `huggingface-cli download {model_id}` (accept the licence on the hub "
            f"first if the model is gated), or set model_id to a local folder"
        ) from exc


class ImageAdapter(ModelAdapter):
    """Base of the image encoders: uint8 preprocessing in workers, normalisation on device."""

    input_kind = "image"
    default_tokens = "cls"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.model: nn.Module | None = None
        self._transform: ImageTransform | None = None
        self._layers: list[str] | None = None

    def make_transform(self) -> ImageTransform:
        """The preprocessing, resolved from the config (and the model's defaults)."""
        raise NotImplementedError

    @property
    def transform(self) -> ImageTransform:
        if self._transform is None:
            self._transform = self.make_transform()
        return self._transform

    def preprocess(self, items: Sequence[Any]) -> torch.Tensor:
        return self.transform(items)

    def pixels(self, batch: torch.Tensor) -> torch.Tensor:
        return self.transform.normalize(batch, self.device, self.torch_dtype)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "preprocess": self.transform.settings()}

    def __getstate__(self) -> dict[str, Any]:
        # Workers need only the preprocessing; never pickle the weights into them.
        state = dict(self.__dict__)
        state["model"] = None
        state["_loaded"] = False
        return state

    def _check(self, layers: Sequence[str]) -> None:
        if self.model is None:
            raise RuntimeError(f"model `{self.name}`: call ensure_loaded() before forward()")
        if not set(layers) <= set(self._layer_cache()):
            self.check_layers(layers)

    def _layer_cache(self) -> list[str]:
        if self._layers is None:
            self._layers = self.layer_names()
        return self._layers
