"""Stable Diffusion text encoder adapter against diffusers' own ``encode_prompt``, on tiny
pipelines (text encoders and tokenizers only) saved to folders."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest_models import (
    assert_deterministic_and_batch_invariant,
    go_offline,
    tiny_clip_text_config,
    tiny_clip_tokenizer,
)
from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline
from saebench_vision_plugins.models.configs import SDTextEncoderConfig
from saebench_vision_plugins.models.sd_text import SDTextEncoderAdapter
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from saebench_vision.errors import DatasetError, WeightsNotFoundError
from saebench_vision.interfaces import TokenKind, select_tokens

PROMPTS = [
    "a photo of an astronaut",
    "an old man wearing sunglasses, anime style",
    "cat",
    "a red car",
]
T5_LENGTH = 64


@pytest.fixture(scope="module")
def sd1(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[StableDiffusionPipeline, SDTextEncoderAdapter]:
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=None,
        text_encoder=CLIPTextModel(
            CLIPTextConfig(**tiny_clip_text_config(num_hidden_layers=3))
        ).eval(),
        tokenizer=tiny_clip_tokenizer(),
        unet=None,
        scheduler=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = tmp_path_factory.mktemp("sd1")
    pipe.save_pretrained(path)
    adapter = SDTextEncoderAdapter(SDTextEncoderConfig(model_id=str(path)))
    adapter.ensure_loaded()
    return pipe, adapter


def _t5_tokenizer() -> T5Tokenizer:
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [
        (c, -3.0) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:?!'"
    ]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


@pytest.fixture(scope="module")
def sd3(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[StableDiffusion3Pipeline, SDTextEncoderAdapter]:
    torch.manual_seed(0)
    t5_tok = _t5_tokenizer()
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(t5_tok), d_model=64, d_kv=16, d_ff=64, num_layers=2, num_heads=2)
    )
    clip_l = CLIPTextModelWithProjection(
        CLIPTextConfig(**tiny_clip_text_config(hidden_size=16, projection_dim=16))
    )
    clip_g = CLIPTextModelWithProjection(
        CLIPTextConfig(**tiny_clip_text_config(hidden_size=24, projection_dim=24))
    )
    pipe = StableDiffusion3Pipeline(
        transformer=None,
        scheduler=None,
        vae=None,
        text_encoder=clip_l.eval(),
        tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=clip_g.eval(),
        tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=t5.eval(),
        tokenizer_3=t5_tok,
    )
    path = tmp_path_factory.mktemp("sd3")
    pipe.save_pretrained(path)
    adapter = SDTextEncoderAdapter(
        SDTextEncoderConfig(variant="sd3", model_id=str(path), t5_max_length=T5_LENGTH)
    )
    adapter.ensure_loaded()
    return pipe, adapter


def test_sd1_layers_match_diffusers(
    sd1: tuple[StableDiffusionPipeline, SDTextEncoderAdapter],
) -> None:
    pipe, adapter = sd1
    assert adapter.layer_names() == ["blocks.0", "blocks.1", "blocks.2", "penultimate", "final"]
    assert len(SDTextEncoderAdapter(SDTextEncoderConfig()).layer_names()) == 14
    batch = adapter.preprocess(PROMPTS)
    with torch.inference_mode():
        out = adapter.forward(batch, adapter.layer_names())
        embeds, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
        ids = pipe.tokenizer(
            PROMPTS, padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
        penultimate = pipe.text_encoder.final_layer_norm(hidden[-2])
    assert out["final"].values.shape == (4, 77, 32)
    torch.testing.assert_close(out["final"].values, embeds)
    torch.testing.assert_close(out["penultimate"].values, penultimate)
    torch.testing.assert_close(out["blocks.1"].values, hidden[2])
    assert torch.equal(out["blocks.2"].values, hidden[3])
    # One row per real token: BOS, the prompt's tokens, EOS.
    lengths = batch["clip.attention_mask"].sum(1)
    rows, item = select_tokens(out["penultimate"], "text")
    assert len(rows) == int(lengths.sum()) and item.bincount().tolist() == lengths.tolist()
    assert out["final"].kinds[0, int(lengths[0])] == TokenKind.PAD


def test_sd1_padding_option(sd1: tuple[StableDiffusionPipeline, SDTextEncoderAdapter]) -> None:
    _, adapter = sd1
    padded = SDTextEncoderAdapter(
        SDTextEncoderConfig(model_id=adapter.config.model_id, include_padding=True)
    )
    padded.ensure_loaded()
    with torch.inference_mode():
        out = padded.forward(padded.preprocess(PROMPTS[:2]), ["penultimate"])
    assert out["penultimate"].kinds.eq(TokenKind.TEXT).all()
    assert padded.identity() != adapter.identity()


def test_sd1_batch_invariant(sd1: tuple[StableDiffusionPipeline, SDTextEncoderAdapter]) -> None:
    _, adapter = sd1
    prompts = PROMPTS + ["a dog", "What is a clock?", "", "sunset over the sea"]
    assert_deterministic_and_batch_invariant(adapter, prompts, ["blocks.0", "penultimate"])


def test_sd3_prompt_embeds_match_diffusers(
    sd3: tuple[StableDiffusion3Pipeline, SDTextEncoderAdapter],
) -> None:
    pipe, adapter = sd3
    assert adapter.layer_names()[0] == "prompt-embeds"
    with torch.inference_mode():
        out = adapter.forward(adapter.preprocess(PROMPTS), adapter.layer_names())
        embeds, _, pooled, _ = pipe.encode_prompt(
            PROMPTS, None, None, do_classifier_free_guidance=False, max_sequence_length=T5_LENGTH
        )
    assert out["prompt-embeds"].values.shape == (4, 77 + T5_LENGTH, 64)
    torch.testing.assert_close(out["prompt-embeds"].values, embeds)
    torch.testing.assert_close(out["pooled"].values[:, 0], pooled)
    torch.testing.assert_close(out["t5.final"].values, embeds[:, 77:])
    torch.testing.assert_close(out["clip-g.penultimate"].values, embeds[:, :77, 16:40])
    kinds = out["prompt-embeds"].kinds
    assert kinds[:, 0].eq(TokenKind.TEXT).all() and kinds[:, 77].eq(TokenKind.TEXT).all()
    assert kinds[:, -1].eq(TokenKind.PAD).all()
    rows, _ = select_tokens(out["prompt-embeds"], "text")
    assert rows.shape[1] == 64


def test_sd3_batch_invariant_and_t5_eval(
    sd3: tuple[StableDiffusion3Pipeline, SDTextEncoderAdapter],
) -> None:
    _, adapter = sd3
    assert not adapter.encoders["t5"].training
    assert_deterministic_and_batch_invariant(adapter, PROMPTS, ["prompt-embeds", "pooled"])


def test_items_pickling_and_errors(
    sd1: tuple[StableDiffusionPipeline, SDTextEncoderAdapter],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, adapter = sd1
    assert torch.equal(
        adapter.preprocess([{"text": "cat"}])["clip.input_ids"],
        adapter.preprocess(["cat"])["clip.input_ids"],
    )
    with pytest.raises(DatasetError, match="prompt strings"):
        adapter.preprocess([3])
    clone = pickle.loads(pickle.dumps(adapter))
    assert clone.encoders == {} and torch.equal(
        clone.preprocess(["cat"])["clip.input_ids"], adapter.preprocess(["cat"])["clip.input_ids"]
    )
    go_offline(monkeypatch)
    with pytest.raises(WeightsNotFoundError, match="stable-diffusion-3.5-large") as err:
        SDTextEncoderAdapter(SDTextEncoderConfig(variant="sd3")).load()
    assert "\n" not in str(err.value) and "gated" in str(err.value)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        SDTextEncoderAdapter(SDTextEncoderConfig(model_id=str(tmp_path / "none"))).load()
