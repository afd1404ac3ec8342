"""CLIP through open_clip (architecture name + pretrained tag) and through transformers ``CLIPModel``.

Both adapters expose the image tower's layers for extraction, and the text tower through
:meth:`embed_text` so that images can be scored against prompts (``embed_images`` gives the
matching image embeddings; both are L2-normalised, so their dot product is CLIP's cosine).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from saebench_vision_plugins.models.common import (
    CLIP_MEAN,
    CLIP_STD,
    ImageAdapter,
    ImageTransform,
    capture,
    hf_dtype,
    hf_load,
    run_until,
    vit_tokens,
)
from saebench_vision_plugins.models.configs import HFCLIPConfig, OpenCLIPConfig
from transformers import AutoTokenizer, CLIPConfig, CLIPModel

from saebench_vision.errors import ConfigError, WeightsNotFoundError
from saebench_vision.interfaces import LayerOutput, TokenKind
from saebench_vision.registry import did_you_mean


def _embedding_token(x: torch.Tensor) -> LayerOutput:
    """A pooled embedding (B, d) as a single CLS token."""
    kinds = torch.full((x.shape[0], 1), int(TokenKind.CLS), dtype=torch.long, device=x.device)
    return LayerOutput(values=x.unsqueeze(1), kinds=kinds)


class _CLIPBase(ImageAdapter):
    """Shared by both CLIP adapters: layer capture and the text/image scoring helpers."""

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

    def model_config(self) -> dict[str, Any]:
        open_clip = self._open_clip()
        cfg = open_clip.get_model_config(self.config.model_name)
        if cfg is None:
            known = open_clip.list_models()
            raise ConfigError(
                f"model `{self.name}`: unknown open_clip architecture {self.config.model_name!r}."
                f"{did_you_mean(self.config.model_name, known)} See open_clip.list_models()"
            )
        if not isinstance(cfg["vision_cfg"].get("layers"), int) or cfg["vision_cfg"].get(
            "timm_model_name"
        ):
            raise ConfigError(
                f"model `{self.name}`: {self.config.model_name!r} is not an open_clip ViT; this "
                f"adapter supports ViT image towers (e.g. ViT-B-16, ViT-L-14)"
            )
        return cfg

    def tag_config(self) -> dict[str, Any]:
        tag = self.config.pretrained
        if not tag or os.path.isfile(os.path.expanduser(tag)):
            return {}
        return dict(self._open_clip().get_pretrained_cfg(self.config.model_name, tag) or {})

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

    def load(self) -> None:
        open_clip = self._open_clip()
        self.model_config()
        tag = self.config.pretrained
        tag_cfg = self.tag_config()
        if tag and not tag_cfg and not os.path.isfile(os.path.expanduser(tag)):
            known = open_clip.list_pretrained_tags_by_model(self.config.model_name)
            raise WeightsNotFoundError(
                f"model `{self.name}`: {tag!r} is neither a pretrained tag of "
                f"{self.config.model_name} (known: {', '.join(known) or 'none'}) nor a checkpoint file"
            )
        try:
            model = open_clip.create_model(
                self.config.model_name,
                pretrained=os.path.expanduser(tag) if tag else None,
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                force_image_size=self.transform.image_size,
                device="cpu",
            )
        except (RuntimeError, OSError) as exc:
            hub = str(tag_cfg.get("hf_hub", "")).strip("/")
            fetch = f"`huggingface-cli download {hub}`" if hub else "run once with network access"
            raise WeightsNotFoundError(
                f"model `{self.name}`: cannot load {self.config.model_name} weights {tag!r} "
                f"({' '.join(str(exc).split())[:120]}); {fetch} (open_clip caches them), or set "
                f"pretrained to a local checkpoint file"
            ) from exc
        self.model = model.to(self.device, self.torch_dtype).eval()
        self.tokenizer = open_clip.get_tokenizer(self.config.model_name)

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
        self._hf_config: Any = None

    def hf_config(self) -> Any:
        if self._hf_config is None:
            self._hf_config = hf_load(
                self.name,
                CLIPConfig.from_pretrained,
                self.config.model_id,
                revision=self.config.revision,
            )
        return self._hf_config

    def make_transform(self) -> ImageTransform:
        size = self.config.image_size or int(self.hf_config().vision_config.image_size)
        return ImageTransform(
            image_size=size,
            resize_size=self.config.resize_size or size,
            interpolation=self.config.interpolation or "bicubic",
            mean=CLIP_MEAN,
            std=CLIP_STD,
        )

    def layer_names(self) -> list[str]:
        depth = int(self.hf_config().vision_config.num_hidden_layers)
        return [f"blocks.{i}" for i in range(depth)] + ["final"]

    def load(self) -> None:
        kwargs = {"revision": self.config.revision}
        model = hf_load(
            self.name,
            CLIPModel.from_pretrained,
            self.config.model_id,
            **hf_dtype(self.torch_dtype),
            **kwargs,
        )
        self.tokenizer = hf_load(
            self.name, AutoTokenizer.from_pretrained, self.config.model_id, **kwargs
        )
        self.model = model.to(self.device).eval()
        self._hf_config = model.config

    def vision_blocks(self) -> Sequence[torch.nn.Module]:
        return self.model.vision_model.encoder.layers

    def _resized(self) -> bool:
        return self.transform.image_size != int(self.hf_config().vision_config.image_size)

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
