"""A tiny, randomly initialised LLaVA saved to a folder: the offline stand-in for
llava-hf/llava-1.5-7b-hf in ``suites/llava_tiny_*.yaml`` and the tests.

It has LLaVA-1.5's structure (CLIP vision tower, two-layer MLP projector, Llama decoder, the
processor that expands ``<image>`` into one token per patch) at toy sizes: 56 px images in
14 px patches (a 4 x 4 grid), a 3-layer LM of width 32, and a byte-level Llama tokenizer built
in memory. Its weights are random, so its numbers show the harness at work, not LLaVA::

    python -m saebench_vision_plugins.models.tiny_llava ./saebench-results/tiny-llava
"""

from __future__ import annotations

import sys
from pathlib import Path


def tiny_llava_tokenizer() -> object:
    """A Llama tokenizer over bytes and a few letters, with ``<image>`` and padding."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:?!'":
        vocab.setdefault(ch, len(vocab))
    tok = LlamaTokenizer(
        vocab=vocab, merges=[], pad_token="<pad>", add_bos_token=True, model_max_length=512
    )
    tok.add_tokens(["<image>"], special_tokens=True)
    return tok


def build_tiny_llava(
    path: str | Path, *, image_size: int = 56, patch_size: int = 14, layers: int = 3, seed: int = 0
) -> Path:
    """Save a tiny ``LlavaForConditionalGeneration`` and its processor to ``path``."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = tiny_llava_tokenizer()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        ),
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tok),  # type: ignore[arg-type]
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
        ),
        image_token_id=tok.convert_tokens_to_ids("<image>"),  # type: ignore[attr-defined]
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    LlavaForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m saebench_vision_plugins.models.tiny_llava FOLDER")
    print(build_tiny_llava(sys.argv[1]))
