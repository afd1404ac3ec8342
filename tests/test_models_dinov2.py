"""DINOv2 adapter on a tiny randomly initialised ``Dinov2Model`` saved to a folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest_models import assert_deterministic_and_batch_invariant, go_offline, sample_images
from saebench_vision_plugins.models.configs import DINOv2Config
from saebench_vision_plugins.models.dinov2 import DINOv2Adapter
from transformers import Dinov2Config, Dinov2Model

from saebench_vision.errors import ConfigError, WeightsNotFoundError
from saebench_vision.interfaces import TokenKind, select_tokens


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=7,
    )
    path = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapter(model_dir: Path) -> DINOv2Adapter:
    adapter = DINOv2Adapter(DINOv2Config(model_id=str(model_dir), image_size=28))
    adapter.ensure_loaded()
    return adapter


def test_layer_names(adapter: DINOv2Adapter) -> None:
    assert adapter.layer_names() == ["blocks.0", "blocks.1", "blocks.2", "final"]
    # Released checkpoints need no download to list their layers.
    giant = DINOv2Adapter(DINOv2Config()).layer_names()
    assert len(giant) == 41 and giant[39] == "blocks.39"
    assert adapter.transform.resize_size == 32


def test_layer_widths_without_weights(model_dir: Path, adapter: DINOv2Adapter) -> None:
    # From the folder's config.json, before any weights load; then from the loaded model.
    cold = DINOv2Adapter(DINOv2Config(model_id=str(model_dir), image_size=28))
    assert cold.model is None
    assert {cold.layer_width(layer) for layer in cold.layer_names()} == {32}
    out = adapter.forward(adapter.preprocess(sample_images(1)), ["blocks.0", "final"])
    assert {o.values.shape[-1] for o in out.values()} == {adapter.layer_width("final")} == {32}
    assert DINOv2Adapter(DINOv2Config()).layer_width("blocks.39") == 1536  # offline table


def test_matches_hidden_states(adapter: DINOv2Adapter) -> None:
    batch = adapter.preprocess(sample_images(3))
    with torch.inference_mode():
        out = adapter.forward(batch, ["blocks.0", "blocks.1", "blocks.2", "final"])
        x = (
            batch.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        ) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        ref = adapter.model(pixel_values=x, output_hidden_states=True)
    assert out["blocks.0"].values.shape == (3, 1 + 16, 32)
    for i in range(3):
        torch.testing.assert_close(out[f"blocks.{i}"].values, ref.hidden_states[i + 1])
    torch.testing.assert_close(out["final"].values, ref.last_hidden_state)
    cls, _ = select_tokens(out["final"], "cls")
    torch.testing.assert_close(cls, ref.pooler_output)
    # The last block is the raw residual stream; final is layer-normed.
    assert not torch.allclose(out["blocks.2"].values, out["final"].values)
    kinds = out["blocks.1"].kinds
    assert kinds[:, 0].eq(TokenKind.CLS).all() and kinds[:, 1:].eq(TokenKind.PATCH).all()
    patches, item = select_tokens(out["blocks.1"], "patch")
    assert patches.shape == (3 * 16, 32) and item.tolist() == [0] * 16 + [1] * 16 + [2] * 16


def test_early_layer_alone_matches(adapter: DINOv2Adapter) -> None:
    batch = adapter.preprocess(sample_images(2))
    with torch.inference_mode():
        alone = adapter.forward(batch, ["blocks.0"])["blocks.0"].values
        together = adapter.forward(batch, ["blocks.0", "final"])["blocks.0"].values
    assert torch.equal(alone, together)


def test_deterministic_and_batch_invariant(adapter: DINOv2Adapter) -> None:
    assert_deterministic_and_batch_invariant(adapter, sample_images(8), ["blocks.1", "final"])


def test_unknown_layer(adapter: DINOv2Adapter) -> None:
    with pytest.raises(ConfigError, match="blocks.2"):
        adapter.forward(adapter.preprocess(sample_images(1)), ["blocks.20"])


def test_missing_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    go_offline(monkeypatch)
    missing = DINOv2Adapter(DINOv2Config(model_id=str(tmp_path / "nowhere")))
    with pytest.raises(WeightsNotFoundError, match="does not exist") as err:
        missing.load()
    assert "\n" not in str(err.value)
    hub = DINOv2Adapter(DINOv2Config(model_id="facebook/dinov2-tiny-does-not-exist"))
    with pytest.raises(WeightsNotFoundError, match="hf download") as err:
        hub.load()
    assert "\n" not in str(err.value)
    with pytest.raises(WeightsNotFoundError):
        hub.layer_names()


def test_dtype_is_the_users(model_dir: Path, adapter: DINOv2Adapter) -> None:
    low = DINOv2Adapter(DINOv2Config(model_id=str(model_dir), image_size=28, dtype="bfloat16"))
    low.ensure_loaded()
    assert next(low.model.parameters()).dtype == torch.bfloat16
    images = sample_images(2)
    with torch.inference_mode():
        out = low.forward(low.preprocess(images), ["final"])["final"].values
        ref = adapter.forward(adapter.preprocess(images), ["final"])["final"].values
    assert out.dtype == torch.bfloat16
    cosine = torch.nn.functional.cosine_similarity(out[:, 0].float(), ref[:, 0], dim=-1)
    assert (cosine > 0.99).all()
