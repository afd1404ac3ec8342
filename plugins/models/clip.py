"""CLIP through open_clip (architecture name + pretrained tag) and through transformers ``CLIPModel``.

Both adapters expose the image tower's layers for extraction, and the text tower through
:meth:`embed_text` so that images can be scored against prompts (``embed_images`` gives the
matching image embeddings; both are L2-normalised, so their dot product is CLIP's cosine).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from saebench_vision_plugins.models.common import (
    CLIP_MEAN,
    CLIP_STD,
    ImageAdapter,
    ImageTransform,
    capture,
    hf_config_dict,
    hf_dtype,
    hf_load,
    hf_load_model,
    run_until,
    vit_tokens,
)
from saebench_vision_plugins.models.configs import HFCLIPConfig, OpenCLIPConfig
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPVisionConfig

from saebench_vision.errors import ConfigError, ModelMismatchError, WeightsNotFoundError
from saebench_vision.interfaces import ClassInfo, LayerOutput, TokenKind
from saebench_vision.registry import did_you_mean


class ReleasedCLIP(NamedTuple):
    """What the config of a released transformers CLIP checkpoint says, so layer names,
    preprocessing and validate's memory check need no download (the laion widths equal
    open_clip's ViT-B-32 / L-14 / H-14 / g-14 / bigG-14)."""

    depth: int
    """image-tower depth"""
    image_size: int
    width: int
    """image-tower width (every block)"""
    projection: int
    """projected embedding width (``final``)"""


KNOWN_HF_CLIP = {
    "openai/clip-vit-base-patch32": ReleasedCLIP(12, 224, 768, 512),
    "openai/clip-vit-base-patch16": ReleasedCLIP(12, 224, 768, 512),
    "openai/clip-vit-large-patch14": ReleasedCLIP(24, 224, 1024, 768),
    "openai/clip-vit-large-patch14-336": ReleasedCLIP(24, 336, 1024, 768),
    "laion/CLIP-ViT-B-32-laion2B-s34B-b79K": ReleasedCLIP(12, 224, 768, 512),
    "laion/CLIP-ViT-L-14-laion2B-s32B-b82K": ReleasedCLIP(24, 224, 1024, 768),
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": ReleasedCLIP(32, 224, 1280, 1024),
    "laion/CLIP-ViT-g-14-laion2B-s12B-b42K": ReleasedCLIP(40, 224, 1408, 1024),
    "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k": ReleasedCLIP(48, 224, 1664, 1280),
}


def describe_open_clip_state(state: dict[str, Any]) -> str:
    """What an open_clip CLIP state dict holds: image-tower depth, width and patch size."""
    conv = state.get("visual.conv1.weight")
    blocks = {k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")}
    if conv is None or not blocks:
        return "no open_clip ViT weights (no visual.conv1 / visual.transformer keys)"
    text = {k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}
    return (
        f"a ViT with {len(blocks)} image blocks of width {conv.shape[0]}, patch {conv.shape[-1]}"
        f", {len(text)} text blocks"
    )


def _embedding_token(x: torch.Tensor) -> LayerOutput:
    """A pooled embedding (B, d) as a single CLS token."""
    kinds = torch.full((x.shape[0], 1), int(TokenKind.CLS), dtype=torch.long, device=x.device)
    return LayerOutput(values=x.unsqueeze(1), kinds=kinds)


class _CLIPBase(ImageAdapter):
    """Shared by both CLIP adapters: layer capture and the text/image scoring helpers."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._zero_shot: tuple[Any, torch.Tensor] | None = None

    def layer_token_kinds(self, layer: str) -> frozenset[TokenKind] | None:
        if layer == "final":  # the projected embedding: one CLS token
            return frozenset({TokenKind.CLS})
        return super().layer_token_kinds(layer)

    def vision_blocks(self) -> Sequence[torch.nn.Module]:
        raise NotImplementedError

    def image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected image embedding (B, d_embed), not normalised."""
        raise NotImplementedError

    def run_vision_tower(self, pixels: torch.Tensor) -> None:
        raise NotImplementedError

    def blocks_output(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def forward(self, batch: torch.Tensor, layers: Sequence[str]) -> dict[str, LayerOutput]:
        self._check(layers)
        blocks = {f"blocks.{i}": block for i, block in enumerate(self.vision_blocks())}
        wanted = {name: blocks[name] for name in layers if name != "final"}
        x = self.pixels(batch)
        out: dict[str, LayerOutput] = {}
        if "final" in layers:
            with capture(wanted) as captured:
                final = self.image_embedding(x)
            out["final"] = _embedding_token(final)
        elif wanted:
            deepest = max(wanted, key=list(blocks).index)
            with capture(wanted, stop_after=deepest) as captured:
                run_until(lambda: self.run_vision_tower(x))
        for name in wanted:
            out[name] = vit_tokens(self.blocks_output(captured[name]))
        return {name: out[name] for name in layers}

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def text_embedding(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def classify(
        self, batch: torch.Tensor, classes: Sequence[ClassInfo], prompts: Sequence[str] = ()
    ) -> torch.Tensor:
        """Zero-shot: 100 x cosine between each image and each class's mean prompt embedding
        (CLIP's logit scale), prompts filled with the class name (``a photo of a {}.``)."""
        self.ensure_loaded()
        templates = list(prompts) or ["a photo of a {}."]
        key = (tuple(c.name for c in classes), tuple(templates))
        if self._zero_shot is None or self._zero_shot[0] != key:
            texts = [t.format(c.name) for c in classes for t in templates]
            emb = self.embed_text(texts).view(len(classes), len(templates), -1).mean(1)
            self._zero_shot = (key, F.normalize(emb, dim=-1))
        images = F.normalize(self.image_embedding(self.pixels(batch)).float(), dim=-1)
        return 100.0 * images @ self._zero_shot[1].T

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N, d_embed), float32, on the model's device."""
        self.ensure_loaded()
        tokens = {k: v.to(self.device) for k, v in self.tokenize(list(texts)).items()}
        return F.normalize(self.text_embedding(tokens).float(), dim=-1)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Any]) -> torch.Tensor:
        """L2-normalised image embeddings (N, d_embed), float32, of PIL images."""
        self.ensure_loaded()
        return F.normalize(
            self.image_embedding(self.pixels(self.preprocess(images))).float(), dim=-1
        )


class OpenCLIPAdapter(_CLIPBase):
    """A CLIP ViT from open_clip: ``model_name`` (e.g. ViT-B-16) plus a ``pretrained`` tag.

    Layers: ``blocks.0`` ... ``blocks.N-1`` (the image transformer's residual stream after each
    block: CLS, then patches) and ``final`` (the projected image embedding, one CLS token).
    Preprocessing is the pretrained tag's (mean/std, interpolation) at the architecture's
    image size, resize-shortest-side then centre crop, as open_clip does. The tag's QuickGELU
    setting is applied, so ``ViT-B-16`` + ``openai`` is the OpenAI model.
    """

    name = "open-clip"
    version = "1"
    Config = OpenCLIPConfig

    def _open_clip(self) -> Any:
        import open_clip

        return open_clip

    def folder(self) -> Path | None:
        """``pretrained`` as a local folder holding ``open_clip_config.json`` (the model and
        preprocessing config, as open_clip's hub repositories lay it out) beside the weights."""
        tag = self.config.pretrained
        if not tag or not os.path.isdir(os.path.expanduser(tag)):
            return None
        return Path(tag).expanduser()

    def folder_config(self) -> dict[str, Any]:
        folder = self.folder()
        assert folder is not None
        path = folder / "open_clip_config.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WeightsNotFoundError(
                f"model `{self.name}`: folder {str(folder)!r} has no open_clip_config.json; put the "
                f'model config beside the weights as {{"model_cfg": {{...}}, "preprocess_cfg": '
                f"{{...}}}} (open_clip's hub layout), or set pretrained to the checkpoint file"
            ) from None
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(
                f"model `{self.name}`: cannot read {path}: {' '.join(str(exc).split())[:120]}"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("model_cfg", data), dict):
            raise WeightsNotFoundError(f"model `{self.name}`: {path} is not an open_clip config")
        return data

    def checkpoint_file(self) -> Path | None:
        """The weights file: ``pretrained`` itself, or the one open_clip picks in the folder."""
        folder = self.folder()
        if folder is not None:
            from open_clip.factory import _find_checkpoint_in_dir

            found = _find_checkpoint_in_dir(folder)
            if found is None:
                raise WeightsNotFoundError(
                    f"model `{self.name}`: folder {str(folder)!r} has an open_clip_config.json but "
                    f"no weights (*.safetensors, *.bin or *.pth) beside it"
                )
            return Path(found)
        tag = self.config.pretrained
        if tag and os.path.isfile(os.path.expanduser(tag)):
            return Path(tag).expanduser()
        return None

    def model_config(self) -> dict[str, Any]:
        open_clip = self._open_clip()
        if self.folder() is not None:
            data = self.folder_config()
            cfg = data.get("model_cfg", data)
            what = f"the model config in {self.folder()}"
        else:
            cfg = open_clip.get_model_config(self.config.model_name)
            what = repr(self.config.model_name)
        if cfg is None:
            known = open_clip.list_models()
            raise ConfigError(
                f"model `{self.name}`: unknown open_clip architecture {self.config.model_name!r}."
                f"{did_you_mean(self.config.model_name, known)} See open_clip.list_models(), or "
                f"set pretrained to a folder with open_clip_config.json beside the weights"
            )
        vision = cfg.get("vision_cfg") or {}
        if not isinstance(vision.get("layers"), int) or vision.get("timm_model_name"):
            raise ConfigError(
                f"model `{self.name}`: {what} is not an open_clip ViT; this adapter supports ViT "
                f"image towers (e.g. ViT-B-16, ViT-L-14)"
            )
        return dict(cfg)

    def tag_config(self) -> dict[str, Any]:
        if self.folder() is not None:
            data = self.folder_config()
            return {**dict(data.get("preprocess_cfg") or {}), **self._quick_gelu(data)}
        tag = self.config.pretrained
        if not tag or os.path.isfile(os.path.expanduser(tag)):
            return {}
        return dict(self._open_clip().get_pretrained_cfg(self.config.model_name, tag) or {})

    @staticmethod
    def _quick_gelu(data: dict[str, Any]) -> dict[str, Any]:
        cfg = data.get("model_cfg", data)
        return {"quick_gelu": True} if cfg.get("quick_gelu") else {}

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        if self.folder() is not None:
            # The folder's config decides the architecture; model_name is only a label then.
            ident["model_cfg"] = self.model_config()
        return ident

    def make_transform(self) -> ImageTransform:
        from open_clip.transform import PreprocessCfg, merge_preprocess_dict

        pp = merge_preprocess_dict(asdict(PreprocessCfg()), self.tag_config())
        size = self.config.image_size or int(self.model_config()["vision_cfg"]["image_size"])
        return ImageTransform(
            image_size=size,
            resize_size=self.config.resize_size or size,
            interpolation=self.config.interpolation or pp["interpolation"],
            mean=tuple(pp["mean"]),
            std=tuple(pp["std"]),
        )

    def layer_names(self) -> list[str]:
        depth = int(self.model_config()["vision_cfg"]["layers"])
        return [f"blocks.{i}" for i in range(depth)] + ["final"]

    def layer_width(self, layer: str) -> int | None:
        # The architecture's config (shipped with open_clip, or the folder's) says it.
        cfg = self.model_config()
        width = cfg.get("embed_dim") if layer == "final" else cfg["vision_cfg"].get("width")
        return int(width) if isinstance(width, int) else None

    def load(self) -> None:
        open_clip = self._open_clip()
        self.model_config()
        tag = self.config.pretrained
        tag_cfg = self.tag_config()
        checkpoint = self.checkpoint_file()
        if tag and not tag_cfg and checkpoint is None:
            known = open_clip.list_pretrained_tags_by_model(self.config.model_name)
            raise WeightsNotFoundError(
                f"model `{self.name}`: {tag!r} is neither a pretrained tag of "
                f"{self.config.model_name} (known: {', '.join(known) or 'none'}), a checkpoint "
                f"file nor a folder with open_clip_config.json"
            )
        folder = self.folder()
        name = f"local-dir:{folder}" if folder is not None else self.config.model_name
        common = dict(
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_image_size=self.transform.image_size,
            device="cpu",
        )
        try:
            if checkpoint is not None:
                # Build the architecture, then check the file against it before loading, so
                # another architecture's file is a one-line error, not an AssertionError.
                if folder is not None:
                    model = open_clip.create_model(name, load_weights=False, **common)
                else:
                    model = open_clip.create_model(name, pretrained=None, **common)
                self._load_checkpoint(model, checkpoint)
            else:
                model = open_clip.create_model(name, pretrained=tag or None, **common)
        except (RuntimeError, OSError) as exc:
            hub = str(tag_cfg.get("hf_hub", "")).strip("/")
            fetch = f"`hf download {hub}`" if hub else "run once with network access"
            raise WeightsNotFoundError(
                f"model `{self.name}`: cannot load {self.config.model_name} weights {tag!r} "
                f"({' '.join(str(exc).split())[:120]}); {fetch} (open_clip caches them), or set "
                f"pretrained to a local checkpoint file"
            ) from exc
        self.model = model.to(self.device, self.torch_dtype).eval()
        self.tokenizer = (
            open_clip.get_tokenizer(name)
            if folder is not None
            else open_clip.get_tokenizer(self.config.model_name)
        )

    def _load_checkpoint(self, model: Any, path: Path) -> None:
        from open_clip.factory import load_checkpoint, load_state_dict

        try:
            state = load_state_dict(str(path))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
            raise ModelMismatchError(
                f"model `{self.name}`: cannot read checkpoint {path}: "
                f"{' '.join(str(exc).split())[:120]}"
            ) from None
        if not isinstance(state, dict) or not state:
            raise ModelMismatchError(f"model `{self.name}`: {path} holds no state dict")
        expected = model.state_dict()
        resizable = {"visual.positional_embedding"}  # open_clip interpolates it to image_size
        bad = sorted(
            k
            for k in set(expected) | set(state)
            if k not in state
            or k not in expected
            or (k not in resizable and tuple(state[k].shape) != tuple(expected[k].shape))
        )
        if bad:
            raise ModelMismatchError(
                f"model `{self.name}`: {path} holds {describe_open_clip_state(state)}, not "
                f"{describe_open_clip_state(expected)} ({self.config.model_name}; {len(bad)} "
                f"weight(s) differ, e.g. {bad[0]}); set model_name to the file's architecture"
            )
        load_checkpoint(model, str(path))

    def vision_blocks(self) -> Sequence[torch.nn.Module]:
        return self.model.visual.transformer.resblocks

    def blocks_output(self, output: torch.Tensor) -> torch.Tensor:
        batch_first = getattr(self.model.visual.transformer, "batch_first", True)
        return output if batch_first else output.transpose(0, 1)

    def image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def run_vision_tower(self, pixels: torch.Tensor) -> None:
        self.model.visual(pixels)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"text": self.tokenizer(list(texts))}

    def text_embedding(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_text(tokens["text"])

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("tokenizer", None)
        return state


class HFCLIPAdapter(_CLIPBase):
    """CLIP from transformers (``CLIPModel``; e.g. openai/clip-vit-base-patch16).

    Layers: ``blocks.0`` ... ``blocks.N-1`` (the vision encoder's output after each layer,
    ``vision_model(..., output_hidden_states=True).hidden_states[i + 1]``) and ``final``
    (``get_image_features``: the projected image embedding, one CLS token). Preprocessing
    matches CLIP's image processor: shorter side to the model's image size (bicubic), centre
    crop, CLIP mean/std.
    """

    name = "hf-clip"
    version = "1"
    Config = HFCLIPConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._vision: tuple[int, int] | None = None

    def vision_settings(self) -> tuple[int, int]:
        """(image-tower depth, image size): from the loaded model, the table of released
        checkpoints (so validate works offline), or the folder's / hub's config.json."""
        if self.model is not None:
            vc = self.model.config.vision_config
            return int(vc.num_hidden_layers), int(vc.image_size)
        if self._vision is None:
            if self.config.model_id in KNOWN_HF_CLIP:
                released = KNOWN_HF_CLIP[self.config.model_id]
                self._vision = (released.depth, released.image_size)
            else:
                data = hf_config_dict(
                    self.name, self.config.model_id, ("clip",), revision=self.config.revision
                )
                vision = data.get("vision_config") or {}
                self._vision = (
                    int(vision.get("num_hidden_layers", 12)),
                    int(vision.get("image_size", 224)),
                )
        return self._vision

    def make_transform(self) -> ImageTransform:
        size = self.config.image_size or self.vision_settings()[1]
        return ImageTransform(
            image_size=size,
            resize_size=self.config.resize_size or size,
            interpolation=self.config.interpolation or "bicubic",
            mean=CLIP_MEAN,
            std=CLIP_STD,
        )

    def layer_names(self) -> list[str]:
        depth = self.vision_settings()[0]
        return [f"blocks.{i}" for i in range(depth)] + ["final"]

    def layer_width(self, layer: str) -> int | None:
        if self.model is not None:
            c = self.model.config
            return int(c.projection_dim if layer == "final" else c.vision_config.hidden_size)
        if self.config.model_id in KNOWN_HF_CLIP:
            released = KNOWN_HF_CLIP[self.config.model_id]
            width, projection = released.width, released.projection
        else:
            data = hf_config_dict(
                self.name, self.config.model_id, ("clip",), revision=self.config.revision
            )
            vision = data.get("vision_config") or {}
            width = int(vision.get("hidden_size", CLIPVisionConfig().hidden_size))
            projection = int(data.get("projection_dim", CLIPConfig().projection_dim))
        return projection if layer == "final" else width

    def load(self) -> None:
        kwargs = {"revision": self.config.revision}
        model = hf_load_model(
            self.name,
            CLIPModel,
            self.config.model_id,
            ("clip",),
            **hf_dtype(self.torch_dtype),
            **kwargs,
        )
        self.tokenizer = hf_load(
            self.name, AutoTokenizer.from_pretrained, self.config.model_id, **kwargs
        )
        self.model = model.to(self.device).eval()

    def vision_blocks(self) -> Sequence[torch.nn.Module]:
        return self.model.vision_model.encoder.layers

    def _resized(self) -> bool:
        return self.transform.image_size != self.vision_settings()[1]

    def image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(
            pixel_values=pixels, interpolate_pos_encoding=self._resized()
        )
        return out.pooler_output

    def run_vision_tower(self, pixels: torch.Tensor) -> None:
        self.model.vision_model(pixel_values=pixels, interpolate_pos_encoding=self._resized())

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        max_length = int(self.model.config.text_config.max_position_embeddings)
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def text_embedding(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.get_text_features(**tokens).pooler_output

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("tokenizer", None)
        return state
