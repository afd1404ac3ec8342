"""LLaVA adapter on a tiny randomly initialised LlavaForConditionalGeneration (tiny Llama +
tiny CLIP vision tower) with an in-memory Llama tokenizer, saved to a folder."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest_models import assert_deterministic_and_batch_invariant, go_offline, sample_images
from saebench_vision_plugins.models.configs import LlavaConfig as AdapterConfig
from saebench_vision_plugins.models.llava import LlavaAdapter
from saebench_vision_plugins.models.tiny_llava import tiny_llava_tokenizer
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from saebench_vision.errors import DatasetError, WeightsNotFoundError
from saebench_vision.interfaces import TokenKind, select_tokens

N_PATCHES = 4  # 28 px / 14 px patches = 2 x 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = tiny_llava_tokenizer()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        ),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
        ),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llava")
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapter(model_dir: Path) -> LlavaAdapter:
    adapter = LlavaAdapter(AdapterConfig(model_id=str(model_dir)))
    adapter.ensure_loaded()
    return adapter


@pytest.fixture(scope="module")
def generating(model_dir: Path) -> LlavaAdapter:
    adapter = LlavaAdapter(AdapterConfig(model_id=str(model_dir), generate_tokens=4))
    adapter.ensure_loaded()
    return adapter


def _items() -> list[object]:
    images = sample_images(2)
    return [
        {"image": images[0], "text": "Describe this image."},
        "What is a clock?",
        images[1],
        {"image": None, "text": "Name a bird."},
    ]


def test_layer_names(adapter: LlavaAdapter) -> None:
    assert adapter.layer_names() == ["projector", "lm.0", "lm.1", "lm.2", "final"]
    assert LlavaAdapter(AdapterConfig()).layer_names()[-2:] == ["lm.31", "final"]


def test_prompt_layers_match_hidden_states(adapter: LlavaAdapter) -> None:
    image = sample_images(1)[0]
    batch = adapter.preprocess([{"image": image, "text": "Describe this image."}])
    with torch.inference_mode():
        out = adapter.forward(batch, ["projector", "lm.0", "lm.1", "lm.2", "final"])
        ref = adapter.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            output_hidden_states=True,
        )
    for i in range(2):
        torch.testing.assert_close(out[f"lm.{i}"].values, ref.hidden_states[i + 1])
    torch.testing.assert_close(out["final"].values, ref.hidden_states[-1])
    # The projector's input derived by hand from the vision tower's documented hidden states
    # (layer ``vision_feature_layer``, CLS dropped by the "default" strategy), not from
    # ``image_hidden_states``, whose type changed in transformers 5.24 (a list) and changes again.
    config = adapter.model.config
    with torch.inference_mode():
        tower = adapter.model.model.vision_tower(batch["pixel_values"], output_hidden_states=True)
        patches = tower.hidden_states[config.vision_feature_layer][:, 1:]
        expected = adapter.model.model.multi_modal_projector(patches)
    assert expected.shape == (1, N_PATCHES, config.text_config.hidden_size)
    torch.testing.assert_close(out["projector"].values, expected)
    kinds = out["lm.1"].kinds[0]
    assert int((kinds == TokenKind.PATCH).sum()) == N_PATCHES
    assert int((kinds == TokenKind.TEXT).sum()) == len(kinds) - N_PATCHES
    assert out["projector"].values.shape == (1, N_PATCHES, 32)
    assert out["projector"].kinds.eq(TokenKind.PATCH).all()


def test_text_only_and_mixed_batch(adapter: LlavaAdapter) -> None:
    batch = adapter.preprocess(_items())
    assert batch["has_image"].tolist() == [True, False, True, False]
    assert batch["pixel_values"].shape[0] == 2
    with torch.inference_mode():
        out = adapter.forward(batch, ["projector", "lm.2"])
    projector = out["projector"]
    assert (
        projector.kinds[1].eq(TokenKind.PAD).all() and projector.kinds[2].eq(TokenKind.PATCH).all()
    )
    rows, item = select_tokens(projector, "patch")
    assert rows.shape == (2 * N_PATCHES, 32) and sorted(set(item.tolist())) == [0, 2]
    lm = out["lm.2"]
    assert (lm.kinds == TokenKind.PAD).any()  # shorter prompts are left-padded
    assert lm.values[lm.kinds == TokenKind.PAD].abs().sum() == 0
    text_only = adapter.preprocess(["What is a clock?"])
    assert "pixel_values" not in text_only
    with torch.inference_mode():
        alone = adapter.forward(text_only, ["projector", "final"])
    assert alone["projector"].values.shape == (1, 0, 32)
    assert not (alone["final"].kinds == TokenKind.PATCH).any()


def test_generated_tokens(generating: LlavaAdapter) -> None:
    items = [{"image": sample_images(1)[0], "text": "Describe this image."}]
    batch = generating.preprocess(items)
    prompt_len = batch["input_ids"].shape[1]
    model = generating.model
    with torch.inference_mode():
        out = generating.forward(batch, ["lm.1", "final"])
        ref = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            max_new_tokens=4,
            do_sample=False,
            output_hidden_states=True,
            return_dict_in_generate=True,
        )
    kinds = out["lm.1"].kinds[0]
    n_generated = ref.sequences.shape[1] - prompt_len
    assert out["lm.1"].values.shape[1] == prompt_len + n_generated
    assert int((kinds == TokenKind.GENERATED).sum()) >= 1
    # generate() step 0 holds the prompt; step k holds the position of generated token k - 1.
    torch.testing.assert_close(
        out["lm.1"].values[:, :prompt_len], ref.hidden_states[0][2], atol=1e-5, rtol=1e-4
    )
    for k in range(1, n_generated):
        torch.testing.assert_close(
            out["lm.1"].values[:, prompt_len + k - 1],
            ref.hidden_states[k][2][:, -1],
            atol=1e-5,
            rtol=1e-4,
        )
    assert isinstance(generating.decode_response(batch)[0], str)


def test_deterministic_and_batch_invariant(generating: LlavaAdapter) -> None:
    assert_deterministic_and_batch_invariant(
        generating, _items(), ["projector", "lm.0", "final"], atol=1e-4, rtol=1e-3
    )


def test_bad_items_and_pickling(adapter: LlavaAdapter) -> None:
    with pytest.raises(DatasetError, match="neither"):
        adapter.preprocess([{"image": None, "text": ""}])
    with pytest.raises(DatasetError, match="int"):
        adapter.preprocess([3])
    clone = pickle.loads(pickle.dumps(adapter))
    assert clone.model is None
    assert torch.equal(
        clone.preprocess(["hi"])["input_ids"], adapter.preprocess(["hi"])["input_ids"]
    )


def test_missing_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    go_offline(monkeypatch)
    with pytest.raises(WeightsNotFoundError, match="hf download llava-hf/") as err:
        LlavaAdapter(AdapterConfig(model_id="llava-hf/llava-0-hf")).load()
    assert "\n" not in str(err.value)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        LlavaAdapter(AdapterConfig(model_id=str(tmp_path / "none"))).load()
