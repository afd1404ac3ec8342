"""Stable Diffusion text encoders: SD 1.x's CLIP text encoder, and SD 3/3.5's two CLIPs + T5.

Weights load with transformers from the pipeline's subfolders (``text_encoder``,
``tokenizer``, ...), so a diffusers pipeline folder or hub id works as ``model_id`` and the
diffusion model itself is never loaded. Each text position is one sample (a TEXT token).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from saebench_vision_plugins.models.common import hf_config_dict, hf_dtype, hf_load, hf_load_model
from saebench_vision_plugins.models.configs import SDTextEncoderConfig
from transformers import (
    AutoTokenizer,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5EncoderModel,
)

from saebench_vision.errors import DatasetError
from saebench_vision.interfaces import LayerOutput, ModelAdapter, TokenKind

DEFAULT_IDS = {
    "sd1": "CompVis/stable-diffusion-v1-4",
    "sd3": "stabilityai/stable-diffusion-3.5-large",
}
KNOWN_SD1_DEPTHS = {
    "CompVis/stable-diffusion-v1-4": 12,
    "CompVis/stable-diffusion-v1-1": 12,
    "stable-diffusion-v1-5/stable-diffusion-v1-5": 12,
}
SD3_LAYERS = ["prompt-embeds", "pooled", "clip-l.penultimate", "clip-g.penultimate", "t5.final"]
CLIP_MAX_LENGTH = 77
KNOWN_SD3 = {
    "stabilityai/stable-diffusion-3-medium-diffusers",
    "stabilityai/stable-diffusion-3.5-medium",
    "stabilityai/stable-diffusion-3.5-large",
    "stabilityai/stable-diffusion-3.5-large-turbo",
}
SUBFOLDER_TYPES = {
    "text_encoder": ("clip_text_model",),
    "text_encoder_2": ("clip_text_model",),
    "text_encoder_3": ("t5",),
}


class SDTextEncoderAdapter(ModelAdapter):
    """The text conditioning of Stable Diffusion, one TEXT token per prompt position.

    ``variant: sd1`` (Stable Diffusion 1.4, CompVis/stable-diffusion-v1-4), layers:

    * ``blocks.0`` ... ``blocks.11``: the CLIP text encoder's residual stream after each layer;
    * ``penultimate``: ``final_layer_norm(hidden_states[-2])``, the paper's "penultimate layer"
      and exactly what diffusers feeds the UNet with ``clip_skip=1``; passing steered values
      as ``prompt_embeds`` is the steering path;
    * ``final``: ``last_hidden_state``, SD 1.4's default conditioning.

    ``variant: sd3`` (Stable Diffusion 3 / 3.5), as the SD3 pipeline's ``encode_prompt``:

    * ``prompt-embeds``: the full output of the three text encoders, (77 + ``t5_max_length``)
      positions of T5 width: CLIP-L and CLIP-G penultimate hidden states concatenated along
      features and zero-padded to T5's width, followed by T5's final hidden states (the
      paper's appendix B trains on this, each position independent);
    * ``pooled``: the two CLIPs' projected pooled embeddings concatenated (one CLS token);
    * ``clip-l.penultimate``, ``clip-g.penultimate``, ``t5.final``: the parts, unpadded.

    Prompts are padded to the full length as the pipelines do (77 CLIP tokens, then
    ``t5_max_length`` T5 tokens). Positions after the end-of-text token are PAD unless
    ``include_padding`` is set: the diffusion model sees them, but they repeat the same few
    vectors and would swamp an SAE's training set.
    """

    name = "sd-text-encoder"
    version = "1"
    Config = SDTextEncoderConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.encoders: dict[str, Any] = {}
        self._tokenizers: dict[str, Any] | None = None
        self._layers: list[str] | None = None

    @property
    def model_id(self) -> str:
        return self.config.model_id or DEFAULT_IDS[self.config.variant]

    def _load(self, loader: Any, subfolder: str, **kwargs: Any) -> Any:
        return hf_load(
            self.name,
            loader,
            self.model_id,
            subfolder=subfolder,
            revision=self.config.revision,
            **kwargs,
        )

    def _config(self, subfolder: str) -> dict[str, Any]:
        return hf_config_dict(
            self.name,
            self.model_id,
            SUBFOLDER_TYPES[subfolder],
            revision=self.config.revision,
            subfolder=subfolder,
        )

    # ------------------------------------------------------------------ names and loading

    def layer_names(self) -> list[str]:
        if self._layers is None:
            if self.config.variant == "sd3":
                if self.model_id not in KNOWN_SD3:
                    self._config("text_encoder")  # a pipeline folder or id, not another model
                self._layers = list(SD3_LAYERS)
            else:
                if "clip" in self.encoders:
                    depth = self.encoders["clip"].config.num_hidden_layers
                elif self.model_id in KNOWN_SD1_DEPTHS:
                    depth = KNOWN_SD1_DEPTHS[self.model_id]
                else:
                    depth = int(self._config("text_encoder").get("num_hidden_layers", 12))
                self._layers = [f"blocks.{i}" for i in range(depth)] + ["penultimate", "final"]
        return self._layers

    def layer_token_kinds(self, layer: str) -> frozenset[TokenKind] | None:
        if layer == "pooled":
            return frozenset({TokenKind.CLS})
        return frozenset({TokenKind.TEXT})

    @property
    def tokenizers(self) -> dict[str, Any]:
        if self._tokenizers is None:
            if self.config.variant == "sd1":
                self._tokenizers = {"clip": self._load(AutoTokenizer.from_pretrained, "tokenizer")}
            else:
                self._tokenizers = {
                    "clip-l": self._load(AutoTokenizer.from_pretrained, "tokenizer"),
                    "clip-g": self._load(AutoTokenizer.from_pretrained, "tokenizer_2"),
                    "t5": self._load(AutoTokenizer.from_pretrained, "tokenizer_3"),
                }
        return self._tokenizers

    def load(self) -> None:
        dtype = self.torch_dtype
        if self.config.variant == "sd1":
            specs = {"clip": (CLIPTextModel, "text_encoder")}
        else:
            specs = {
                "clip-l": (CLIPTextModelWithProjection, "text_encoder"),
                "clip-g": (CLIPTextModelWithProjection, "text_encoder_2"),
                "t5": (T5EncoderModel, "text_encoder_3"),
            }
        encoders = {}
        for key, (cls, subfolder) in specs.items():
            # Built from a config or loaded, an encoder must be in eval mode (T5 dropout).
            encoder = hf_load_model(
                self.name,
                cls,
                self.model_id,
                SUBFOLDER_TYPES[subfolder],
                allow_unexpected=("text_model.embeddings.position_ids",),
                revision=self.config.revision,
                subfolder=subfolder,
                **hf_dtype(dtype),
            )
            encoders[key] = encoder.to(self.device).eval()
        self.encoders = encoders
        self.tokenizers  # noqa: B018 - load the tokenizers before DataLoader workers fork
        self._layers = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["encoders"] = {}
        state["_loaded"] = False
        return state

    # ------------------------------------------------------------------ preprocessing

    @staticmethod
    def _text(item: Any) -> str:
        if isinstance(item, str):
            return item
        if isinstance(item, Mapping) and isinstance(item.get("text"), str):
            return item["text"]
        raise DatasetError(
            f"model `sd-text-encoder`: items must be prompt strings (or dicts with a text), "
            f"not {type(item).__name__}"
        )

    def _tokenize(self, key: str, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        enc = self.tokenizers[key](
            texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        return {
            f"{key}.input_ids": enc["input_ids"],
            f"{key}.attention_mask": enc["attention_mask"],
        }

    def preprocess(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        texts = [self._text(item) for item in items]
        batch: dict[str, torch.Tensor] = {}
        for key in self.tokenizers:
            length = self.config.t5_max_length if key == "t5" else CLIP_MAX_LENGTH
            batch.update(self._tokenize(key, texts, length))
        return batch

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "model_id": self.model_id,
            "preprocess": {"clip_max_length": CLIP_MAX_LENGTH, "padding": "max_length"},
        }

    # ------------------------------------------------------------------ forward

    def _kinds(self, mask: torch.Tensor) -> torch.Tensor:
        kinds = torch.full_like(mask, int(TokenKind.TEXT), dtype=torch.long)
        if not self.config.include_padding:
            kinds[mask == 0] = int(TokenKind.PAD)
        return kinds

    def _clip(self, key: str, batch: Mapping[str, torch.Tensor]) -> Any:
        encoder = self.encoders[key]
        ids = batch[f"{key}.input_ids"].to(self.device)
        kwargs = {}
        if getattr(encoder.config, "use_attention_mask", False):
            kwargs["attention_mask"] = batch[f"{key}.attention_mask"].to(self.device)
        return encoder(ids, output_hidden_states=True, **kwargs)

    def forward(
        self, batch: Mapping[str, torch.Tensor], layers: Sequence[str]
    ) -> dict[str, LayerOutput]:
        if not self.encoders:
            raise RuntimeError(f"model `{self.name}`: call ensure_loaded() before forward()")
        if not set(layers) <= set(self.layer_names()):
            self.check_layers(layers)
        if self.config.variant == "sd1":
            return self._forward_sd1(batch, layers)
        return self._forward_sd3(batch, layers)

    def _forward_sd1(
        self, batch: Mapping[str, torch.Tensor], layers: Sequence[str]
    ) -> dict[str, LayerOutput]:
        out = self._clip("clip", batch)
        kinds = self._kinds(batch["clip.attention_mask"]).to(self.device)
        encoder = self.encoders["clip"]
        text_model = getattr(encoder, "text_model", encoder)
        result = {}
        for name in layers:
            if name == "final":
                values = out.last_hidden_state
            elif name == "penultimate":
                values = text_model.final_layer_norm(out.hidden_states[-2])
            else:
                values = out.hidden_states[int(name.split(".")[1]) + 1]
            result[name] = LayerOutput(values=values, kinds=kinds)
        return result

    def _forward_sd3(
        self, batch: Mapping[str, torch.Tensor], layers: Sequence[str]
    ) -> dict[str, LayerOutput]:
        need = set(layers)
        parts: dict[str, torch.Tensor] = {}
        pooled: list[torch.Tensor] = []
        if need & {"prompt-embeds", "pooled", "clip-l.penultimate", "clip-g.penultimate"}:
            for key in ("clip-l", "clip-g"):
                out = self._clip(key, batch)
                parts[key] = out.hidden_states[-2]
                pooled.append(out.text_embeds)
        if need & {"prompt-embeds", "t5.final"}:
            ids = batch["t5.input_ids"].to(self.device)
            # The SD3 pipeline runs T5 without an attention mask; so do we.
            parts["t5"] = self.encoders["t5"](ids).last_hidden_state
        clip_kinds = self._kinds(batch["clip-l.attention_mask"]).to(self.device)
        t5_kinds = self._kinds(batch["t5.attention_mask"]).to(self.device)
        result: dict[str, LayerOutput] = {}
        for name in layers:
            if name == "prompt-embeds":
                clip = torch.cat([parts["clip-l"], parts["clip-g"]], dim=-1)
                clip = F.pad(clip, (0, parts["t5"].shape[-1] - clip.shape[-1]))
                values = torch.cat([clip, parts["t5"]], dim=-2)
                result[name] = LayerOutput(values, torch.cat([clip_kinds, t5_kinds], dim=1))
            elif name == "pooled":
                values = torch.cat(pooled, dim=-1).unsqueeze(1)
                cls = torch.full((values.shape[0], 1), int(TokenKind.CLS), device=self.device)
                result[name] = LayerOutput(values, cls)
            elif name == "t5.final":
                result[name] = LayerOutput(parts["t5"], t5_kinds)
            else:
                key = name.split(".")[0]
                result[name] = LayerOutput(parts[key], clip_kinds)
        return result
