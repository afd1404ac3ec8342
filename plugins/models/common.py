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

from saebench_vision.errors import DatasetError, ModelMismatchError, WeightsNotFoundError
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


def load_state_file(adapter_name: str, path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``weights_path``: safetensors by its suffix, else ``torch.load`` with
    ``weights_only=True`` (never a pickle that runs code). A file that is neither, or holds
    something other than a state dict, is a one-line error naming it."""
    fix = "point weights_path to a state dict saved with torch.save or safetensors"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling refusals and garbage raise anything
        text = _one_line(exc, 120)
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            text = "it is a pickle that needs code to load, refused for safety"
        raise ModelMismatchError(
            f"model `{adapter_name}`: weights_path {str(path)!r} cannot be loaded ({text}); {fix}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelMismatchError(
            f"model `{adapter_name}`: weights_path {str(path)!r} holds a "
            f"{type(state).__name__}, not a state dict of tensors; {fix}"
        )
    return state


def is_local_folder(model_id: str) -> Path | None:
    """The folder ``model_id`` names (checked to exist), or None for a hub id."""
    if not looks_local(model_id):
        return None
    path = Path(model_id).expanduser()
    if not path.is_dir():
        raise WeightsNotFoundError(
            f"local folder {str(path)!r} does not exist; point model_id to a folder saved with "
            f"save_pretrained, or to a hub id"
        )
    return path


def _fetch_hint(model_id: str) -> str:
    if looks_local(model_id):
        return "point model_id to a folder saved with save_pretrained, or to a hub id"
    return (
        f"run once with network access, or `hf download {model_id}` (accept the licence on the "
        f"hub first if the model is gated), or set model_id to a local folder"
    )


def _where(model_id: str, subfolder: str | None) -> str:
    return model_id + (f" (subfolder {subfolder})" if subfolder else "")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' "Loading weights" bars and load-report tables for one load: the
    adapters check the load report themselves and raise when it says anything is wrong. When
    diffusers is loaded (a pipeline is the thing loading), its "Loading pipeline components"
    bars and notes are silenced the same way; diffusers is never imported for this."""
    import sys

    from transformers.utils import logging as hf_logging

    loggers = [hf_logging]
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as diffusers_logging

        loggers.append(diffusers_logging)
    saved = [(lg, lg.get_verbosity(), lg.is_progress_bar_enabled()) for lg in loggers]
    for lg in loggers:
        lg.set_verbosity_error()
        lg.disable_progress_bar()
    try:
        yield
    finally:
        for lg, verbosity, bars in saved:
            lg.set_verbosity(verbosity)
            if bars:
                lg.enable_progress_bar()


def hf_load(adapter_name: str, loader: Callable[..., Any], model_id: str, **kwargs: Any) -> Any:
    """``loader(model_id, **kwargs)`` (a config, tokenizer or processor ``from_pretrained``),
    with a missing folder or unreachable hub id turned into a one-line
    :class:`WeightsNotFoundError` that says how to get it."""
    try:
        path = is_local_folder(model_id)
    except WeightsNotFoundError as exc:
        raise WeightsNotFoundError(f"model `{adapter_name}`: {exc}") from None
    if path is not None:
        model_id = str(path)
    try:
        with quiet_transformers():
            return loader(model_id, **kwargs)
    except (OSError, ValueError) as exc:
        where = _where(model_id, kwargs.get("subfolder"))
        raise WeightsNotFoundError(
            f"model `{adapter_name}`: cannot load {where}: {_one_line(exc)}; {_fetch_hint(model_id)}"
        ) from exc


def hf_config_dict(
    adapter_name: str,
    model_id: str,
    expected: Sequence[str],
    *,
    revision: str | None = None,
    subfolder: str | None = None,
) -> dict[str, Any]:
    """The ``config.json`` of ``model_id`` (a folder or hub id; only that file is fetched),
    refused with a one-line :class:`ModelMismatchError` unless its ``model_type`` is one of
    ``expected``.

    transformers 5.x builds a default config, and then a randomly initialised model, when a
    folder holds another model type: this check is what stops that.
    """
    from transformers import PretrainedConfig

    kwargs: dict[str, Any] = {"revision": revision}
    if subfolder:
        kwargs["subfolder"] = subfolder
    data, _ = hf_load(adapter_name, PretrainedConfig.get_config_dict, model_id, **kwargs)
    model_type = data.get("model_type")
    if model_type not in expected:
        arch = ", ".join(data.get("architectures") or []) or "no architectures listed"
        raise ModelMismatchError(
            f"model `{adapter_name}`: {_where(model_id, subfolder)} holds a "
            f"{model_type or 'config without model_type'} model ({arch}), not "
            f"{' or '.join(expected)}; point model_id to a {expected[0]} checkpoint or use the "
            f"adapter for that model"
        )
    return data


def hf_load_model(
    adapter_name: str,
    cls: Any,
    model_id: str,
    expected: Sequence[str],
    *,
    allow_unexpected: Sequence[str] = (),
    revision: str | None = None,
    subfolder: str | None = None,
    **kwargs: Any,
) -> Any:
    """``cls.from_pretrained(model_id)`` that never returns a partly random model.

    The config's ``model_type`` must be one of ``expected``; then any missing or mismatched
    weight, or an unexpected one outside the ``allow_unexpected`` prefixes (e.g. the
    ``classifier.`` head of a ``...ForImageClassification`` checkpoint loaded as the bare
    model), is a one-line :class:`ModelMismatchError` naming the folder.
    """
    hf_config_dict(adapter_name, model_id, expected, revision=revision, subfolder=subfolder)
    if subfolder:
        kwargs["subfolder"] = subfolder
    model, info = hf_load(
        adapter_name,
        cls.from_pretrained,
        model_id,
        revision=revision,
        output_loading_info=True,
        **kwargs,
    )
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(
        str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or []
    )
    unexpected = sorted(
        k for k in info.get("unexpected_keys") or [] if not k.startswith(tuple(allow_unexpected))
    )
    problems = [
        f"{len(keys)} {what} weight(s) (e.g. {keys[0]})"
        for what, keys in (
            ("missing", missing),
            ("mismatched", mismatched),
            ("unexpected", unexpected),
        )
        if keys
    ]
    if problems:
        raise ModelMismatchError(
            f"model `{adapter_name}`: {_where(model_id, subfolder)} does not hold a complete "
            f"{cls.__name__}: {', '.join(problems)}; point model_id to a checkpoint of that model "
            f"(a randomly initialised stand-in would measure nothing)"
        )
    return model


def imagenet_head_columns(classes: Sequence[Any], adapter_name: str) -> list[int]:
    """Column of each class (by WordNet id) in an ImageNet-1k head's standard output order."""
    from saebench_vision_plugins.datasets.imagenet import imagenet_class_list

    index = {wnid: i for i, wnid in enumerate(imagenet_class_list("imagenet-1k"))}
    missing = [c.id for c in classes if c.id not in index]
    if missing:
        raise DatasetError(
            f"model `{adapter_name}`: its ImageNet-1k head has no class {missing[0]!r} "
            f"({len(missing)} of {len(classes)} classes are not ImageNet-1k WordNet ids); use "
            f"head-accuracy on ImageNet-labelled splits only"
        )
    return [index[c.id] for c in classes]


class ImageAdapter(ModelAdapter):
    """Base of the image encoders: uint8 preprocessing in workers, normalisation on device."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.model: nn.Module | None = None
        self._transform: ImageTransform | None = None
        self._layers: list[str] | None = None

    def layer_token_kinds(self, layer: str) -> frozenset[TokenKind] | None:
        # ViT blocks and CNN feature maps alike: a CLS (or pooled) token and patches.
        return frozenset({TokenKind.CLS, TokenKind.PATCH})

    def make_transform(self) -> ImageTransform:
        """The preprocessing, resolved from the config (and the model's defaults)."""
        raise NotImplementedError

    @property
    def transform(self) -> ImageTransform:
        if self._transform is None:
            transform = self.make_transform()
            self._check_batch_memory(transform)
            self._transform = transform
        return self._transform

    def _check_batch_memory(self, transform: ImageTransform) -> None:
        # Before any image is decoded: a batch of float32 pixels (the normalised copy; the
        # uint8 one is a quarter of it) and one resized image must fit in the host's memory.
        from saebench_vision.training import check_memory

        batch = int(getattr(self.config, "batch_size", 1))
        size, resize = transform.image_size, transform.resize_size
        needed = 5.0 * batch * 3 * size * size + 4.0 * 3 * resize * resize
        check_memory(
            needed,
            torch.device("cpu"),
            f"model `{self.name}`: args.batch_size {batch} x 3 channels x args.image_size "
            f"{size}^2 (resize_size {resize})",
            "lower batch_size or image_size",
        )

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
