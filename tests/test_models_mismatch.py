"""Loading the wrong model never succeeds: every adapter refuses a folder or file that holds
another model (or an incomplete one) with one line naming it, and `saebench layers` too."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from conftest_models import go_offline, sample_images
from saebench_vision_plugins.models.clip import HFCLIPAdapter, OpenCLIPAdapter
from saebench_vision_plugins.models.configs import (
    DINOv2Config,
    HFCLIPConfig,
    HFResNetConfig,
    LlavaConfig,
    OpenCLIPConfig,
    ResNetConfig,
    SDTextEncoderConfig,
)
from saebench_vision_plugins.models.dinov2 import DINOv2Adapter
from saebench_vision_plugins.models.llava import LlavaAdapter
from saebench_vision_plugins.models.resnet import HFResNetAdapter, ResNetAdapter
from saebench_vision_plugins.models.sd_text import SDTextEncoderAdapter
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model, ResNetModel
from transformers import ResNetConfig as HFResNetModelConfig

from saebench_vision.cli import main
from saebench_vision.errors import ModelMismatchError, WeightsNotFoundError


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wrong_models")
    torch.manual_seed(0)
    dino = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    Dinov2Model(dino).save_pretrained(root / "dinov2")
    resnet = HFResNetModelConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])
    ResNetModel(resnet).save_pretrained(root / "resnet")
    clip = CLIPConfig(
        text_config=dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    CLIPModel(clip).save_pretrained(root / "clip")
    # A DINOv2 folder whose weights file lost one tensor: transformers would initialise it.
    partial = root / "dinov2-partial"
    Dinov2Model(dino).save_pretrained(partial)
    state = load_file(partial / "model.safetensors")
    state.pop("layernorm.weight")
    save_file(state, partial / "model.safetensors", metadata={"format": "pt"})
    return {p.name: p for p in root.iterdir()}


def _one_line(err: pytest.ExceptionInfo[BaseException], *needles: str) -> None:
    text = str(err.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, (needle, text)


def test_dinov2_refuses_a_resnet_folder(folders: dict[str, Path]) -> None:
    adapter = DINOv2Adapter(DINOv2Config(model_id=str(folders["resnet"]), device="cpu"))
    with pytest.raises(ModelMismatchError) as err:
        adapter.layer_names()
    _one_line(err, str(folders["resnet"]), "resnet model (ResNetModel)", "not dinov2")
    with pytest.raises(ModelMismatchError):
        adapter.load()


def test_hf_resnet_refuses_a_dinov2_folder_and_a_missing_one(folders: dict[str, Path]) -> None:
    adapter = HFResNetAdapter(HFResNetConfig(model_id=str(folders["dinov2"]), device="cpu"))
    with pytest.raises(ModelMismatchError) as err:
        adapter.layer_names()
    _one_line(err, str(folders["dinov2"]), "dinov2 model", "not resnet")
    with pytest.raises(ModelMismatchError):
        adapter.load()
    with pytest.raises(WeightsNotFoundError, match="does not exist") as missing:
        HFResNetAdapter(HFResNetConfig(model_id="/nope/resnet")).layer_names()
    assert "download" not in str(missing.value)  # a local path is never fetched from the hub


def test_missing_weight_is_refused(folders: dict[str, Path]) -> None:
    adapter = DINOv2Adapter(DINOv2Config(model_id=str(folders["dinov2-partial"]), device="cpu"))
    assert adapter.layer_names()[-1] == "final"  # the config is right ...
    with pytest.raises(ModelMismatchError) as err:
        adapter.load()  # ... but a randomly initialised layernorm would slip in
    _one_line(err, "1 missing weight(s) (e.g. layernorm.weight)", str(folders["dinov2-partial"]))


def test_complete_folder_still_loads_quietly(
    folders: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    from transformers.utils import logging as hf_logging

    capfd.readouterr()
    adapter = DINOv2Adapter(DINOv2Config(model_id=str(folders["dinov2"]), device="cpu"))
    adapter.ensure_loaded()
    assert adapter.layer_names() == ["blocks.0", "blocks.1", "final"]
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err and "LOAD REPORT" not in captured.err
    assert hf_logging.is_progress_bar_enabled()  # restored for everything else


def test_llava_refuses_a_clip_folder(folders: dict[str, Path]) -> None:
    adapter = LlavaAdapter(LlavaConfig(model_id=str(folders["clip"]), device="cpu"))
    with pytest.raises(ModelMismatchError) as err:
        adapter.layer_names()
    _one_line(err, str(folders["clip"]), "clip model (CLIPModel)", "not llava")


def test_sd_text_refuses_a_folder_without_pipeline(folders: dict[str, Path]) -> None:
    for variant in ("sd1", "sd3"):
        adapter = SDTextEncoderAdapter(
            SDTextEncoderConfig(variant=variant, model_id=str(folders["clip"]))
        )
        with pytest.raises(WeightsNotFoundError, match="subfolder text_encoder"):
            adapter.layer_names()


def test_hf_clip_layers_offline_for_known_ids(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    go_offline(monkeypatch)
    large = HFCLIPAdapter(HFCLIPConfig(model_id="openai/clip-vit-large-patch14-336"))
    assert large.layer_names()[-2:] == ["blocks.23", "final"]
    assert large.transform.image_size == 336
    local = HFCLIPAdapter(HFCLIPConfig(model_id=str(folders["clip"])))
    assert local.layer_names() == ["blocks.0", "blocks.1", "final"]
    with pytest.raises(ModelMismatchError, match="dinov2 model"):
        HFCLIPAdapter(HFCLIPConfig(model_id=str(folders["dinov2"]))).layer_names()
    with pytest.raises(WeightsNotFoundError) as err:
        HFCLIPAdapter(HFCLIPConfig(model_id="someone/clip-unknown")).layer_names()
    _one_line(err, "`hf download someone/clip-unknown`")
    assert "huggingface-cli" not in str(err.value)


def test_torchvision_resnet50_given_resnet18_weights(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    path = tmp_path / "r18.pth"
    torch.save(resnet18(num_classes=10).state_dict(), path)
    adapter = ResNetAdapter(ResNetConfig(arch="resnet50", weights=None, weights_path=str(path)))
    with pytest.raises(ModelMismatchError) as err:
        adapter.load()
    _one_line(err, str(path), "resnet18 weights (basic blocks 2-2-2-2, 10 classes)", "not resnet50")


# ------------------------------------------------------------------------------ open_clip


def _open_clip_cfg(layers: int) -> dict[str, object]:
    return {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": layers,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }


def test_open_clip_folder_with_config_beside_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = tmp_path / "custom-clip"
    folder.mkdir()
    cfg = _open_clip_cfg(3)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    )
    reference = open_clip.model.CLIP(**cfg).eval()
    save_file(reference.state_dict(), folder / "open_clip_model.safetensors")

    adapter = OpenCLIPAdapter(OpenCLIPConfig(model_name="my-arch", pretrained=str(folder)))
    assert adapter.layer_names() == ["blocks.0", "blocks.1", "blocks.2", "final"]
    assert adapter.transform.mean == (0.5, 0.5, 0.5)
    assert adapter.identity()["model_cfg"]["vision_cfg"]["layers"] == 3
    adapter.ensure_loaded()
    images = sample_images(2)
    batch = adapter.preprocess(images)
    with torch.inference_mode():
        out = adapter.forward(batch, ["final"])
        expected = reference.encode_image(adapter.pixels(batch))
    torch.testing.assert_close(out["final"].values[:, 0], expected)

    (folder / "open_clip_config.json").unlink()
    with pytest.raises(WeightsNotFoundError, match="no open_clip_config.json"):
        OpenCLIPAdapter(OpenCLIPConfig(pretrained=str(folder))).layer_names()


def test_open_clip_file_of_another_architecture(tmp_path: Path) -> None:
    folder = tmp_path / "arch"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": _open_clip_cfg(2)}))
    other = tmp_path / "four-blocks.pt"
    torch.save(open_clip.model.CLIP(**_open_clip_cfg(4)).state_dict(), other)
    four = open_clip.model.CLIP(**_open_clip_cfg(4)).state_dict()
    save_file(four, folder / "open_clip_model.safetensors")
    adapter = OpenCLIPAdapter(OpenCLIPConfig(model_name="two-blocks", pretrained=str(folder)))
    with pytest.raises(ModelMismatchError) as err:
        adapter.load()
    _one_line(err, "holds a ViT with 4 image blocks of width 32", "not a ViT with 2 image blocks")

    file_adapter = OpenCLIPAdapter(OpenCLIPConfig(model_name="ViT-B-32", pretrained=str(other)))
    with pytest.raises(ModelMismatchError) as err:
        file_adapter.load()
    _one_line(err, str(other), "4 image blocks of width 32", "12 image blocks of width 768")


# ------------------------------------------------------------------------------ the CLI


def test_layers_command_refuses_wrong_and_missing_folders(
    folders: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["layers", "dinov2", "--arg", f"model_id={folders['resnet']}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "resnet model" in err and "Traceback" not in err
    assert main(["layers", "hf-resnet", "--arg", "model_id=/nope"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["layers", "dinov2", "--arg", f"model_id={folders['dinov2']}"]) == 0
    assert capsys.readouterr().out.split() == ["blocks.0", "blocks.1", "final"]
