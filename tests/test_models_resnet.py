"""ResNet adapters: torchvision resnet18 (random weights saved as a state dict) and a tiny
transformers ``ResNetModel`` saved to a folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest_models import assert_deterministic_and_batch_invariant, go_offline, sample_images
from saebench_vision_plugins.models.common import IMAGENET_MEAN, IMAGENET_STD
from saebench_vision_plugins.models.configs import HFResNetConfig
from saebench_vision_plugins.models.configs import ResNetConfig as TVResNetConfig
from saebench_vision_plugins.models.resnet import HFResNetAdapter, ResNetAdapter
from torchvision.models import resnet18
from transformers import ResNetConfig, ResNetModel

from saebench_vision.errors import WeightsNotFoundError
from saebench_vision.interfaces import TokenKind, select_tokens

LAYERS = ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "final"]


def _normalise(batch: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch.float() / 255 - mean) / std


@pytest.fixture(scope="module")
def tv_adapter(tmp_path_factory: pytest.TempPathFactory) -> ResNetAdapter:
    torch.manual_seed(0)
    model = resnet18().eval()
    # Non-trivial batch-norm statistics, so the check would see a wrong layer.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    config = TVResNetConfig(arch="resnet18", weights_path=str(path), image_size=64)
    adapter = ResNetAdapter(config)
    adapter.ensure_loaded()
    return adapter


def test_torchvision_layers_match_hooks(tv_adapter: ResNetAdapter) -> None:
    model = tv_adapter.model
    assert tv_adapter.layer_names() == LAYERS
    # resnet18's DEFAULT (IMAGENET1K_V1) eval transform (256 -> 224), scaled to the 64 px crop.
    assert tv_adapter.transform.resize_size == round(256 * 64 / 224)
    assert tv_adapter.identity()["weights"] == "IMAGENET1K_V1"
    resnet50 = ResNetAdapter(TVResNetConfig())
    assert resnet50.identity()["weights"] == "IMAGENET1K_V2"
    assert resnet50.transform.resize_size == 232
    assert tv_adapter.transform.interpolation == "bilinear"
    seen: dict[str, torch.Tensor] = {}
    modules = {
        "stem": model.maxpool,
        **{f"stages.{i}": getattr(model, f"layer{i + 1}") for i in range(4)},
    }
    handles = [
        m.register_forward_hook(lambda _m, _i, o, n=n: seen.__setitem__(n, o))
        for n, m in modules.items()
    ]
    batch = tv_adapter.preprocess(sample_images(3))
    try:
        with torch.inference_mode():
            logits = model(_normalise(batch))
    finally:
        for handle in handles:
            handle.remove()
    with torch.inference_mode():
        out = tv_adapter.forward(batch, LAYERS)
    for name, fmap in seen.items():
        b, c, h, w = fmap.shape
        assert out[name].values.shape == (b, 1 + h * w, c)
        torch.testing.assert_close(out[name].values[:, 1:], fmap.flatten(2).transpose(1, 2))
    assert out["stages.3"].values.shape == (3, 1 + 2 * 2, 512)
    cls, _ = select_tokens(out["final"], "cls")
    torch.testing.assert_close(model.fc(cls), logits, rtol=1e-4, atol=1e-4)
    assert out["stem"].kinds[:, 0].eq(TokenKind.CLS).all()


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_torchvision_layer_widths_without_weights(arch: str) -> None:
    from torchvision.models import get_model

    model = get_model(arch, weights=None)  # random weights: shapes only
    adapter = ResNetAdapter(TVResNetConfig(arch=arch))
    stages = [getattr(model, f"layer{i + 1}")[-1] for i in range(4)]
    built = [model.bn1.num_features] + [
        (s.bn3 if hasattr(s, "bn3") else s.bn2).num_features for s in stages
    ]
    assert [adapter.layer_width(layer) for layer in LAYERS] == built + [built[-1]]


def test_torchvision_widths_are_the_forward_widths(tv_adapter: ResNetAdapter) -> None:
    batch = tv_adapter.preprocess(sample_images(2))
    with torch.inference_mode():
        out = tv_adapter.forward(batch, LAYERS)
    assert [out[layer].values.shape[-1] for layer in LAYERS] == [
        tv_adapter.layer_width(layer) for layer in LAYERS
    ]


def test_torchvision_batch_invariant(tv_adapter: ResNetAdapter) -> None:
    assert_deterministic_and_batch_invariant(tv_adapter, sample_images(8), ["stages.1", "final"])


def test_torchvision_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="known: IMAGENET1K_V1"):
        ResNetAdapter(TVResNetConfig(weights="IMAGENET9K")).load()
    with pytest.raises(WeightsNotFoundError, match="weights_path"):
        ResNetAdapter(TVResNetConfig(weights_path=str(tmp_path / "x.pth"))).load()


def test_torchvision_download_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Point torch hub at an empty folder and make the download fail as it does offline.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*_args: object, **_kwargs: object) -> None:
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsNotFoundError, match="resnet50-11ad3fa6.pth") as err:
        ResNetAdapter(TVResNetConfig()).load()
    assert "\n" not in str(err.value) and "weights_path" in str(err.value)


@pytest.fixture(scope="module")
def hf_adapter(tmp_path_factory: pytest.TempPathFactory) -> HFResNetAdapter:
    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="basic"
    )
    path = tmp_path_factory.mktemp("hf_resnet")
    ResNetModel(config).save_pretrained(path)
    adapter = HFResNetAdapter(HFResNetConfig(model_id=str(path), image_size=64))
    adapter.ensure_loaded()
    return adapter


def test_hf_resnet_matches_hidden_states(hf_adapter: HFResNetAdapter) -> None:
    batch = hf_adapter.preprocess(sample_images(3))
    with torch.inference_mode():
        out = hf_adapter.forward(batch, LAYERS)
        ref = hf_adapter.model(pixel_values=_normalise(batch), output_hidden_states=True)
    assert len(ref.hidden_states) == 5
    for i, name in enumerate(LAYERS[:5]):
        fmap = ref.hidden_states[i]
        torch.testing.assert_close(out[name].values[:, 1:], fmap.flatten(2).transpose(1, 2))
    torch.testing.assert_close(out["final"].values[:, 0], ref.pooler_output.flatten(1))
    assert out["final"].values.shape == (3, 1 + 2 * 2, 32)


def test_hf_resnet_batch_invariant(hf_adapter: HFResNetAdapter) -> None:
    assert_deterministic_and_batch_invariant(hf_adapter, sample_images(8), ["stem", "final"])


def test_hf_resnet_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    go_offline(monkeypatch)
    with pytest.raises(WeightsNotFoundError, match="microsoft/resnet-0") as err:
        HFResNetAdapter(HFResNetConfig(model_id="microsoft/resnet-0")).load()
    assert "\n" not in str(err.value)
