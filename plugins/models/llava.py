"""LLaVA 1.5 through transformers ``LlavaForConditionalGeneration`` (llava-hf/llava-1.5-7b-hf)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from saebench_vision_plugins.models.common import (
    capture,
    hf_config_dict,
    hf_dtype,
    hf_load,
    hf_load_model,
    run_until,
)
from saebench_vision_plugins.models.configs import LlavaConfig as LlavaAdapterConfig
from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration

from saebench_vision.errors import DatasetError
from saebench_vision.interfaces import LayerOutput, ModelAdapter, TokenKind

KNOWN_DEPTHS = {"llava-hf/llava-1.5-7b-hf": 32, "llava-hf/llava-1.5-13b-hf": 40}
MODEL_TYPES = ("llava",)


class LlavaAdapter(ModelAdapter):
    """LLaVA 1.5: the projector output and the language model's hidden states.

    Items are dicts ``{"image": PIL image or None, "text": prompt}``, a bare string (a
    text-only prompt, e.g. "What is a clock?") or a bare image (asked ``default_prompt``).
    Each becomes ``prompt_template`` (LLaVA-1.5's ``USER: <image>\\n... ASSISTANT:``) and goes
    through the model's own processor, left-padded so prompts can be batched for generation.

    Layers:

    * ``projector``: the multimodal projector's output, one PATCH token per image patch
      (576 for 336 px / 14 px patches); items without an image have only PAD tokens here.
    * ``lm.0`` ... ``lm.N-1``: the residual stream after each decoder layer
      (transformers' ``hidden_states[i + 1]``);
    * ``final``: the last layer after the final RMSNorm (what the LM head reads).

    In the ``lm.*`` and ``final`` layers, image positions are PATCH tokens, the prompt's other
    positions TEXT, padding PAD and, with ``generate_tokens > 0``, the greedily decoded
    response GENERATED (up to and including the end-of-sequence token). The response's
    activations come from one forward pass over prompt + response after decoding, so every
    generated token, the last included, has its hidden state at every layer.
    """

    name = "llava"
    version = "2"  # 2: cache entries of generated tokens also hold the response texts
    Config = LlavaAdapterConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.model: Any = None
        self._processor: Any = None
        self._layers: list[str] | None = None

    # ------------------------------------------------------------------ loading and names

    def depth(self) -> int:
        if self.model is not None:
            return int(self.model.config.text_config.num_hidden_layers)
        if self.config.model_id in KNOWN_DEPTHS:
            return KNOWN_DEPTHS[self.config.model_id]
        config = hf_config_dict(
            self.name, self.config.model_id, MODEL_TYPES, revision=self.config.revision
        )
        text = config.get("text_config") or {}
        return int(text.get("num_hidden_layers", LlavaConfig().text_config.num_hidden_layers))

    def layer_names(self) -> list[str]:
        if self._layers is None:
            self._layers = ["projector"] + [f"lm.{i}" for i in range(self.depth())] + ["final"]
        return self._layers

    def layer_token_kinds(self, layer: str) -> frozenset[TokenKind] | None:
        if layer == "projector":
            return frozenset({TokenKind.PATCH})
        kinds = {TokenKind.TEXT, TokenKind.PATCH}
        if self.config.generate_tokens > 0:
            kinds.add(TokenKind.GENERATED)
        return frozenset(kinds)

    @property
    def processor(self) -> Any:
        if self._processor is None:
            processor = hf_load(
                self.name,
                AutoProcessor.from_pretrained,
                self.config.model_id,
                revision=self.config.revision,
            )
            processor.tokenizer.padding_side = "left"
            self._processor = processor
        return self._processor

    def load(self) -> None:
        model = hf_load_model(
            self.name,
            LlavaForConditionalGeneration,
            self.config.model_id,
            MODEL_TYPES,
            revision=self.config.revision,
            **hf_dtype(self.torch_dtype),
        )
        self.model = model.to(self.device).eval()
        self.processor  # noqa: B018 - load the processor with the model, before workers fork
        self._layers = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["model"] = None
        state["_loaded"] = False
        return state

    # ------------------------------------------------------------------ preprocessing

    def _split(self, item: Any) -> tuple[Image.Image | None, str]:
        if isinstance(item, Image.Image):
            return item, self.config.default_prompt
        if isinstance(item, str):
            return None, item
        if isinstance(item, Mapping):
            image = item.get("image")
            text = item.get("text") or item.get("prompt")
            if image is not None and not isinstance(image, Image.Image):
                raise DatasetError(
                    f"model `{self.name}`: item image is a {type(image).__name__}, not a PIL image"
                )
            if not text:
                if image is None:
                    raise DatasetError(
                        f"model `{self.name}`: an item has neither an image nor a text"
                    )
                text = self.config.default_prompt
            return image, str(text)
        raise DatasetError(
            f"model `{self.name}`: items must be dicts {{image, text}}, strings or PIL images, "
            f"not {type(item).__name__}"
        )

    def prompt(self, text: str, has_image: bool) -> str:
        return self.config.prompt_template.format(
            image="<image>\n" if has_image else "", prompt=text
        )

    def preprocess(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        pairs = [self._split(item) for item in items]
        images = [img.convert("RGB") for img, _ in pairs if img is not None]
        prompts = [self.prompt(text, img is not None) for img, text in pairs]
        enc = self.processor(text=prompts, images=images or None, return_tensors="pt", padding=True)
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if images:
            batch["pixel_values"] = enc["pixel_values"]
        batch["has_image"] = torch.tensor([img is not None for img, _ in pairs])
        return batch

    def identity(self) -> dict[str, Any]:
        # The processor (image size, mean/std, tokenizer) is fixed by model_id and revision.
        return {**super().identity(), "preprocess": {"padding_side": "left"}}

    # ------------------------------------------------------------------ forward

    def _generate(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy response: the full sequences and their attention mask (response up to EOS)."""
        gen_config = self.model.generation_config
        pad = gen_config.pad_token_id
        if pad is None:
            pad = self.processor.tokenizer.pad_token_id
        sequences = self.model.generate(
            **inputs,
            max_new_tokens=self.config.generate_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
        )
        prompt_len = inputs["input_ids"].shape[1]
        response = sequences[:, prompt_len:]
        eos = gen_config.eos_token_id
        eos_ids = torch.tensor(
            eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos]),
            device=response.device,
        )
        is_eos = torch.isin(response, eos_ids)
        # Valid up to and including the first EOS.
        after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
        mask = torch.cat([inputs["attention_mask"], (~after_eos).long()], dim=1)
        return sequences, mask

    def forward(
        self, batch: Mapping[str, torch.Tensor], layers: Sequence[str]
    ) -> dict[str, LayerOutput]:
        if self.model is None:
            raise RuntimeError(f"model `{self.name}`: call ensure_loaded() before forward()")
        if not set(layers) <= set(self.layer_names()):
            self.check_layers(layers)
        device = self.device
        inputs: dict[str, torch.Tensor] = {
            "input_ids": batch["input_ids"].to(device),
            "attention_mask": batch["attention_mask"].to(device),
        }
        if "pixel_values" in batch:
            inputs["pixel_values"] = batch["pixel_values"].to(device, self.torch_dtype)
        prompt_len = inputs["input_ids"].shape[1]
        input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
        responses: list[str] | None = None
        if self.config.generate_tokens > 0:
            input_ids, mask = self._generate(inputs)
            responses = self._decode(input_ids[:, prompt_len:], mask[:, prompt_len:])

        lm = self.model.model.language_model
        modules: dict[str, torch.nn.Module] = {"projector": self.model.model.multi_modal_projector}
        modules.update({f"lm.{i}": layer for i, layer in enumerate(lm.layers)})
        modules["final"] = lm.norm
        wanted = {name: modules[name] for name in layers}
        deepest = max(wanted, key=list(modules).index)
        # Positions count real tokens only, as generate() does for left-padded prompts.
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        with capture(wanted, stop_after=deepest) as captured:
            run_until(
                lambda: self.model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=position_ids,
                    pixel_values=inputs.get("pixel_values"),
                    use_cache=False,
                    logits_to_keep=1,
                )
            )

        kinds = torch.full_like(input_ids, int(TokenKind.TEXT))
        is_image = input_ids == self.model.config.image_token_id
        is_image[:, prompt_len:] = False
        kinds[is_image] = int(TokenKind.PATCH)
        kinds[:, prompt_len:] = int(TokenKind.GENERATED)
        kinds[mask == 0] = int(TokenKind.PAD)
        out: dict[str, LayerOutput] = {}
        for name in layers:
            if name == "projector":
                out[name] = self._projector_tokens(captured.get(name), batch["has_image"])
            else:
                # Zero the padding so that no NaN or junk from masked rows leaks into means.
                values = captured[name].masked_fill((kinds == TokenKind.PAD).unsqueeze(-1), 0)
                out[name] = LayerOutput(values=values, kinds=kinds)
            out[name].responses = responses
        return out

    def _decode(self, response: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """The response texts: generated tokens up to the first EOS, special tokens dropped."""
        tokenizer = self.processor.tokenizer
        return [
            tokenizer.decode(row[keep.bool()].tolist(), skip_special_tokens=True).strip()
            for row, keep in zip(response.cpu(), mask.cpu())
        ]

    def _projector_tokens(
        self, features: torch.Tensor | None, has_image: torch.Tensor
    ) -> LayerOutput:
        b = len(has_image)
        d = int(self.model.config.text_config.hidden_size)
        if features is None:  # no image in this batch
            empty = torch.zeros((b, 0, d), device=self.device, dtype=self.torch_dtype)
            return LayerOutput(empty, torch.zeros((b, 0), dtype=torch.long, device=self.device))
        n = features.shape[1]
        values = features.new_zeros((b, n, d))
        rows = has_image.to(self.device)
        values[rows] = features
        kinds = torch.full((b, n), int(TokenKind.PAD), dtype=torch.long, device=self.device)
        kinds[rows] = int(TokenKind.PATCH)
        return LayerOutput(values=values, kinds=kinds)

    # ------------------------------------------------------------------ helpers

    def decode_response(self, batch: Mapping[str, torch.Tensor]) -> list[str]:
        """Greedy response texts for a preprocessed batch (``generate_tokens`` new tokens)."""
        self.ensure_loaded()
        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "has_image"}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.torch_dtype)
        with torch.inference_mode():
            sequences, _ = self._generate(inputs)
        response = sequences[:, inputs["input_ids"].shape[1] :]
        return self.processor.tokenizer.batch_decode(response, skip_special_tokens=True)
