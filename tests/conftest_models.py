"""Shared helpers for the model adapter tests (imported explicitly, not a pytest conftest)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from saebench_vision.interfaces import ModelAdapter


def sample_images(n: int = 8, seed: int = 0) -> list[Image.Image]:
    """``n`` PIL images of different sizes, aspect ratios and modes (smooth random textures)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        w, h = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        small = rng.integers(0, 256, size=(max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        images.append(img.convert("L") if i % 4 == 3 else img)
    return images


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the Hugging Face hub unreachable at once (no retries), as on an offline machine."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def forward(adapter: ModelAdapter, items: Sequence[Any], layers: Sequence[str]) -> dict[str, Any]:
    with torch.inference_mode():
        return adapter.forward(adapter.preprocess(items), layers)


def assert_deterministic_and_batch_invariant(
    adapter: ModelAdapter,
    items: Sequence[Any],
    layers: Sequence[str],
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Same numbers twice; one batch of all items equals one batch per item (within tolerance).

    Items whose outputs have different lengths (text) are compared on their own tokens: the
    single-item output is matched against the batch row where the kinds agree.
    """
    whole = forward(adapter, items, layers)
    again = forward(adapter, items, layers)
    singles = [forward(adapter, [item], layers) for item in items]
    for layer in layers:
        assert torch.equal(whole[layer].values, again[layer].values), layer
        assert torch.equal(whole[layer].kinds, again[layer].kinds), layer
        for i, single in enumerate(singles):
            one = single[layer]
            row_vals, row_kinds = whole[layer].values[i], whole[layer].kinds[i]
            if one.values.shape[1] == row_vals.shape[0]:
                torch.testing.assert_close(one.values[0], row_vals, atol=atol, rtol=rtol)
                assert torch.equal(one.kinds[0], row_kinds), layer
            else:  # padded in the batch: compare the non-padding positions in order
                keep_batch, keep_one = row_kinds != 0, one.kinds[0] != 0
                torch.testing.assert_close(
                    one.values[0][keep_one], row_vals[keep_batch], atol=atol, rtol=rtol
                )
                assert torch.equal(one.kinds[0][keep_one], row_kinds[keep_batch]), layer


def byte_level_vocab(specials: Sequence[str], *, end_of_word: bool = False) -> dict[str, int]:
    """A vocabulary of ``specials`` then the byte-level alphabet (so any text tokenizes with no
    merges); with ``end_of_word`` each symbol also gets a CLIP-style ``</w>`` variant."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {token: i for i, token in enumerate(specials)}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
        if end_of_word:
            vocab[ch + "</w>"] = len(vocab)
    return vocab


def tiny_clip_tokenizer() -> Any:
    """A CLIPTokenizer built in memory: <|startoftext|> = 0, <|endoftext|> = 1 (also padding)."""
    from transformers import CLIPTokenizer

    vocab = byte_level_vocab(["<|startoftext|>", "<|endoftext|>"], end_of_word=True)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_clip_text_config(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a 2-layer CLIP text tower matching :func:`tiny_clip_tokenizer`."""
    config = dict(
        vocab_size=len(byte_level_vocab(["a", "b"], end_of_word=True)),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=16,
    )
    config.update(overrides)
    return config
