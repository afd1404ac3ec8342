"""CLIP adapters: open_clip with a tiny registered config (pretrained=None) and a tiny
transformers ``CLIPModel`` saved to a folder with an in-memory tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest_models import (
    assert_deterministic_and_batch_invariant,
    go_offline,
    sample_images,
    tiny_clip_text_config,
    tiny_clip_tokenizer,
)
from saebench_vision_plugins.models.clip import HFCLIPAdapter, OpenCLIPAdapter
from saebench_vision_plugins.models.common import CLIP_MEAN, CLIP_STD
from saebench_vision_plugins.models.configs import HFCLIPConfig, OpenCLIPConfig
from transformers import CLIPConfig, CLIPModel

from saebench_vision.errors import ConfigError, WeightsNotFoundError
from saebench_vision.interfaces import TokenKind

TINY_OPEN_CLIP = "saebench-tiny-vit"


def _normalise(batch: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (batch.float() / 255 - mean) / std


# ------------------------------------------------------------------------------ open_clip


@pytest.fixture(scope="module")
def open_clip_adapter(tmp_path_factory: pytest.TempPathFactory) -> OpenCLIPAdapter:
    path = tmp_path_factory.mktemp("open_clip") / f"{TINY_OPEN_CLIP}.json"
    path.write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "vision_cfg": {
                    "image_size": 32,
                    "layers": 3,
                    "width": 32,
                    "patch_size": 8,
                    "head_width": 16,
                },
                "text_cfg": {
                    "context_length": 77,
                    "vocab_size": 49408,
                    "width": 32,
                    "heads": 2,
                    "layers": 2,
                },
            }
        )
    )
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    adapter = OpenCLIPAdapter(OpenCLIPConfig(model_name=TINY_OPEN_CLIP, pretrained=None))
    adapter.ensure_loaded()
    return adapter


def test_open_clip_layers_and_hooks(open_clip_adapter: OpenCLIPAdapter) -> None:
    adapter = open_clip_adapter
    assert adapter.layer_names() == ["blocks.0", "blocks.1", "blocks.2", "final"]
    model = adapter.model
    seen: dict[int, torch.Tensor] = {}
    handles = [
        model.visual.transformer.resblocks[i].register_forward_hook(
            lambda _m, _i, o, i=i: seen.__setitem__(i, o)
        )
        for i in range(3)
    ]
    batch = adapter.preprocess(sample_images(3))
    try:
        with torch.inference_mode():
            embedding = model.encode_image(_normalise(batch))
    finally:
        for handle in handles:
            handle.remove()
    with torch.inference_mode():
        out = adapter.forward(batch, ["blocks.0", "blocks.2", "final"])
        inter = model.visual.forward_intermediates(_normalise(batch), indices=3, output_fmt="NLC")
    assert out["blocks.0"].values.shape == (3, 1 + 16, 32)
    for i in (0, 2):
        torch.testing.assert_close(out[f"blocks.{i}"].values, seen[i])
        # open_clip's own intermediates hold the patch tokens (prefix tokens split off).
        torch.testing.assert_close(
            out[f"blocks.{i}"].values[:, 1:], inter["image_intermediates"][i]
        )
    assert out["final"].values.shape == (3, 1, 16)
    torch.testing.assert_close(out["final"].values[:, 0], embedding)
    assert out["final"].kinds.eq(TokenKind.CLS).all()


def test_open_clip_layer_widths_are_the_forward_widths(
    open_clip_adapter: OpenCLIPAdapter,
) -> None:
    layers = open_clip_adapter.layer_names()
    batch = open_clip_adapter.preprocess(sample_images(2))
    with torch.inference_mode():
        out = open_clip_adapter.forward(batch, layers)
    widths = [open_clip_adapter.layer_width(layer) for layer in layers]
    assert [out[layer].values.shape[-1] for layer in layers] == widths == [32, 32, 32, 16]
    # Released architectures: from the configs open_clip ships, no weights.
    big_g = OpenCLIPAdapter(OpenCLIPConfig(model_name="ViT-bigG-14", pretrained=None))
    assert (big_g.layer_width("blocks.0"), big_g.layer_width("final")) == (1664, 1280)


def test_open_clip_batch_invariant(open_clip_adapter: OpenCLIPAdapter) -> None:
    assert_deterministic_and_batch_invariant(
        open_clip_adapter, sample_images(8), ["blocks.1", "final"]
    )


def test_open_clip_text_tower(open_clip_adapter: OpenCLIPAdapter) -> None:
    adapter = open_clip_adapter
    texts = ["a photo of a dog", "a photo of a cat"]
    text = adapter.embed_text(texts)
    with torch.inference_mode():
        ref = adapter.model.encode_text(open_clip.get_tokenizer(TINY_OPEN_CLIP)(texts))
    torch.testing.assert_close(text, F.normalize(ref, dim=-1))
    images = adapter.embed_images(sample_images(2))
    assert images.shape == (2, 16)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(2))


def test_open_clip_preprocessing_from_tag() -> None:
    laion = OpenCLIPAdapter(OpenCLIPConfig(model_name="ViT-B-16", pretrained="openai"))
    assert laion.layer_names()[-2:] == ["blocks.11", "final"]
    assert laion.transform.image_size == 224 and laion.transform.mean == CLIP_MEAN
    siglip_like = OpenCLIPAdapter(
        OpenCLIPConfig(model_name="ViT-B-16", pretrained=None, image_size=112)
    )
    assert siglip_like.identity()["preprocess"]["image_size"] == 112


def test_open_clip_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="ViT-B-16"):
        OpenCLIPAdapter(OpenCLIPConfig(model_name="ViT-B-61")).layer_names()
    with pytest.raises(WeightsNotFoundError, match="known: .*openai"):
        OpenCLIPAdapter(OpenCLIPConfig(model_name="ViT-B-16", pretrained="not-a-tag")).load()
    go_offline(monkeypatch)
    with pytest.raises(WeightsNotFoundError, match="hf download timm/") as err:
        OpenCLIPAdapter(OpenCLIPConfig(model_name="ViT-B-32", pretrained="openai")).load()
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ transformers


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=tiny_clip_text_config(),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("hf_clip")
    CLIPModel(config).save_pretrained(path)
    tiny_clip_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_clip(hf_clip_dir: Path) -> HFCLIPAdapter:
    adapter = HFCLIPAdapter(HFCLIPConfig(model_id=str(hf_clip_dir)))
    adapter.ensure_loaded()
    return adapter


def test_hf_clip_matches_hidden_states(hf_clip: HFCLIPAdapter) -> None:
    assert hf_clip.layer_names() == ["blocks.0", "blocks.1", "blocks.2", "final"]
    assert hf_clip.transform.image_size == 32
    batch = hf_clip.preprocess(sample_images(3))
    with torch.inference_mode():
        out = hf_clip.forward(batch, ["blocks.0", "blocks.1", "blocks.2", "final"])
        early = hf_clip.forward(batch, ["blocks.1"])
        ref = hf_clip.model.vision_model(pixel_values=_normalise(batch), output_hidden_states=True)
        emb = hf_clip.model.get_image_features(pixel_values=_normalise(batch)).pooler_output
    assert len(ref.hidden_states) == 4
    for i in range(3):
        torch.testing.assert_close(out[f"blocks.{i}"].values, ref.hidden_states[i + 1])
    torch.testing.assert_close(early["blocks.1"].values, ref.hidden_states[2])
    torch.testing.assert_close(out["final"].values[:, 0], emb)


def test_hf_clip_layer_widths_without_weights(hf_clip: HFCLIPAdapter, hf_clip_dir: Path) -> None:
    cold = HFCLIPAdapter(HFCLIPConfig(model_id=str(hf_clip_dir)))  # config.json only
    layers = cold.layer_names()
    with torch.inference_mode():
        out = hf_clip.forward(hf_clip.preprocess(sample_images(2)), layers)
    assert [cold.layer_width(layer) for layer in layers] == [
        out[layer].values.shape[-1] for layer in layers
    ]
    assert [hf_clip.layer_width(layer) for layer in layers] == [32, 32, 32, 16]
    # The released checkpoints' widths agree with open_clip's own configs of the same models.
    from saebench_vision_plugins.models.clip import KNOWN_HF_CLIP

    openai = {
        "openai/clip-vit-base-patch32": "ViT-B-32",
        "openai/clip-vit-base-patch16": "ViT-B-16",
        "openai/clip-vit-large-patch14": "ViT-L-14",
        "openai/clip-vit-large-patch14-336": "ViT-L-14-336",
    }
    for model_id, released in KNOWN_HF_CLIP.items():
        name = openai.get(model_id) or model_id.split("CLIP-")[1].split("-laion")[0]
        cfg = open_clip.get_model_config(name)
        vision = cfg["vision_cfg"]
        expected = (vision["layers"], vision["image_size"], vision["width"], cfg["embed_dim"])
        assert tuple(released) == expected, model_id


def test_hf_clip_batch_invariant(hf_clip: HFCLIPAdapter) -> None:
    assert_deterministic_and_batch_invariant(hf_clip, sample_images(8), ["blocks.2", "final"])


def test_hf_clip_text_tower(hf_clip: HFCLIPAdapter, hf_clip_dir: Path) -> None:
    texts = ["a photo of a dog", "What is a clock?"]
    text = hf_clip.embed_text(texts)
    tokens = tiny_clip_tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = hf_clip.model.get_text_features(**tokens).pooler_output
        one = hf_clip.embed_text(texts[:1])
    torch.testing.assert_close(text, F.normalize(ref, dim=-1))
    torch.testing.assert_close(one[0], text[0], atol=1e-5, rtol=1e-4)
    scores = hf_clip.embed_images(sample_images(2)) @ text.T
    assert scores.shape == (2, 2) and scores.abs().max() <= 1.0 + 1e-5


def test_hf_clip_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    go_offline(monkeypatch)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        HFCLIPAdapter(HFCLIPConfig(model_id=str(tmp_path / "absent"))).load()
    with pytest.raises(WeightsNotFoundError, match="hf download openai/") as err:
        HFCLIPAdapter(HFCLIPConfig(model_id="openai/clip-vit-nope")).layer_names()
    assert "\n" not in str(err.value)
