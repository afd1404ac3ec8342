"""CLIP image and text embeddings for validation and the CLIP labeller (the user's CLIP).

``hf``: a transformers ``CLIPModel`` (hub id or folder, checked to be a CLIP model) with its
processor; ``open-clip``: ``open_clip.create_model_and_transforms(name, pretrained=tag)``.
Embeddings are L2-normalised float64 arrays, so cosine similarity is a dot product.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from saebench_vision.errors import WeightsNotFoundError
from saebench_vision.interfaces import resolve_device


class CLIPScorer:
    def __init__(
        self, backend: str, model: str, pretrained: str | None = None, device: str = "cpu"
    ) -> None:
        self.backend = backend
        self.model_name = model
        self.pretrained = pretrained
        self.device = resolve_device(device)
        self._model: Any = None

    def identity(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model_name, "pretrained": self.pretrained}

    def _load(self) -> None:
        if self._model is not None:
            return
        if self.backend == "hf":
            from saebench_vision_plugins.models.common import hf_load
            from transformers import AutoConfig, CLIPModel, CLIPProcessor

            config = hf_load("clip scorer", AutoConfig.from_pretrained, self.model_name)
            if getattr(config, "model_type", "") != "clip":
                raise WeightsNotFoundError(
                    f"clip scorer: {self.model_name!r} holds a {config.model_type!r} model, not "
                    f"CLIP; set clip_model to a CLIPModel id or folder"
                )
            self._model = hf_load("clip scorer", CLIPModel.from_pretrained, self.model_name)
            self._model = self._model.to(self.device).eval()
            self._processor = hf_load("clip scorer", CLIPProcessor.from_pretrained, self.model_name)
        else:
            import open_clip

            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name, pretrained=self.pretrained
            )
            self._model = model.to(self.device).eval()
            self._preprocess = preprocess
            self._tokenizer = open_clip.get_tokenizer(self.model_name)

    @staticmethod
    def _norm(x: torch.Tensor) -> np.ndarray:
        out = x.double().cpu().numpy()
        return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)

    def images(self, images: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        self._load()
        chunks = []
        with torch.inference_mode():
            for lo in range(0, len(images), batch_size):
                part = [im.convert("RGB") for im in images[lo : lo + batch_size]]
                if self.backend == "hf":
                    pixels = self._processor(images=part, return_tensors="pt")["pixel_values"]
                    out = self._model.get_image_features(pixel_values=pixels.to(self.device))
                    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
                else:
                    pixels = torch.stack([self._preprocess(im) for im in part]).to(self.device)
                    feats = self._model.encode_image(pixels)
                chunks.append(self._norm(feats))
        return np.concatenate(chunks)

    def texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        self._load()
        chunks = []
        with torch.inference_mode():
            for lo in range(0, len(texts), batch_size):
                part = list(texts[lo : lo + batch_size])
                if self.backend == "hf":
                    enc = self._processor(
                        text=part, return_tensors="pt", padding=True, truncation=True
                    )
                    out = self._model.get_text_features(
                        input_ids=enc["input_ids"].to(self.device),
                        attention_mask=enc["attention_mask"].to(self.device),
                    )
                    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
                else:
                    feats = self._model.encode_text(self._tokenizer(part).to(self.device))
                chunks.append(self._norm(feats))
        return np.concatenate(chunks)
