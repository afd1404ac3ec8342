"""Tiny offline Stable Diffusion pipelines, SAEs and CLIP models for the steering tests
(imported explicitly, not a pytest conftest)."""

from __future__ import annotations

from typing import Any

import torch
from saebench_vision_plugins.steering.tiny import SIZE, build_clip, build_sd1, build_sd3

__all__ = ["SIZE", "build_clip", "build_sd1", "build_sd3", "tiny_sae"]


def tiny_sae(d_in: int, expansion: int = 2, k: int = 4, seed: int = 0) -> Any:
    """A TopK SAE with random weights and a non-trivial input scale (so scales matter)."""
    from saebench_vision_plugins.saes.configs import TopKConfig
    from saebench_vision_plugins.saes.topk import TopKSAE

    torch.manual_seed(seed)
    sae = TopKSAE(d_in, TopKConfig(expansion=expansion, k=k))
    sae.input_scale.fill_(0.7)
    return sae.eval()


def build_qwen(path: Any) -> Any:
    """A tiny Qwen2.5-VL (vision tower and language model) with its processor, in ``path``."""
    from conftest_models import byte_level_vocab
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2Tokenizer,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tok = Qwen2Tokenizer(
        vocab=byte_level_vocab(specials),
        merges=[],
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=template,
    )
    ids = {name: tok.convert_tokens_to_ids(name) for name in specials}
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            max_position_embeddings=4096,
            bos_token_id=None,
            eos_token_id=ids["<|im_end|>"],
        ),
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=32,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            fullatt_block_indexes=[0],
            window_size=56,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=0,
    )
    Qwen2_5_VLForConditionalGeneration(config).eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path
