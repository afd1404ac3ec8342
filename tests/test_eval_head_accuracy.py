"""head-accuracy: the model's own head (EfficientNet-Lite0's real ImageNet weights, CLIP
zero-shot) scored against independent computations from the libraries' own forwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest_models import sample_images, tiny_clip_text_config, tiny_clip_tokenizer
from PIL import Image
from saebench_vision_plugins.datasets.imagenet import imagenet_class_list
from saebench_vision_plugins.evaluators.head_accuracy import HeadAccuracyEvaluator
from saebench_vision_plugins.evaluators.head_config import HeadAccuracyConfig
from saebench_vision_plugins.models.clip import HFCLIPAdapter
from saebench_vision_plugins.models.configs import (
    DINOv2Config,
    EfficientNetLiteConfig,
    HFCLIPConfig,
)
from saebench_vision_plugins.models.dinov2 import DINOv2Adapter
from saebench_vision_plugins.models.efficientnet import EfficientNetLiteAdapter
from sklearn.datasets import load_sample_image
from sklearn.metrics import top_k_accuracy_score
from transformers import CLIPConfig, CLIPModel

from saebench_vision.errors import ConfigError
from saebench_vision.interfaces import ClassInfo, Dataset, EvalContext

STANDARD = imagenet_class_list("imagenet-1k")
# Six ImageNet classes: castle, church, monastery, palace, daisy, tench.
WNIDS = [STANDARD[i] for i in (483, 497, 663, 698, 985, 0)]


class Photos(Dataset):
    name = "photos"

    def __init__(self, images: list[Image.Image], labels: list[int], names: list[str]) -> None:
        self.images, self._labels = images, np.asarray(labels)
        self._classes = [ClassInfo(w, n) for w, n in zip(WNIDS, names, strict=False)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Image.Image:
        return self.images[index]

    def labels(self) -> np.ndarray:
        return self._labels

    def classes(self) -> list[ClassInfo]:
        return self._classes


def _ctx(tmp_path: Path, adapter: Any, splits: dict[str, tuple[str, Dataset]]) -> EvalContext:
    return EvalContext(
        model_name="m",
        layer="final",
        tokens="cls",
        seed=0,
        device="cpu",
        splits={name: role for name, (role, _) in splits.items()},
        activation_loader=lambda split: None,
        dataset_loader=lambda split: splits[split][1],
        adapter_loader=lambda: adapter,
        output_dir=tmp_path,
    )


def _photos() -> list[Image.Image]:
    out = []
    for name in ("china.jpg", "flower.jpg"):
        photo = Image.fromarray(load_sample_image(name))
        w, h = photo.size
        out += [
            photo,
            photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            photo.crop((0, 0, w // 2, h)),
        ]
    return out


def test_efficientnet_head_matches_its_own_logits(tmp_path: Path) -> None:
    adapter = EfficientNetLiteAdapter(EfficientNetLiteConfig(image_size=128))
    images = _photos()
    labels = [3, 3, 0, 4, 4, 5]  # palace x2 (+ a crop called castle), daisy x2, a wrong one
    names = ["castle", "church", "monastery", "palace", "daisy", "tench"]
    data = Photos(images, labels, names)
    evaluator = HeadAccuracyEvaluator(HeadAccuracyConfig(batch_size=4))
    records = {
        (r.metric, r.split): r
        for r in evaluator.baseline(_ctx(tmp_path, adapter, {"val": ("eval", data)}))
    }
    # Independently: the full 1000-way logits from the library's forward, restricted by hand.
    adapter.ensure_loaded()
    with torch.inference_mode():
        full = adapter.model(adapter.pixels(adapter.preprocess(images))).numpy()
    columns = [STANDARD.index(w) for w in WNIDS]
    restricted = full[:, columns]
    for k in (1, 5):
        expected = top_k_accuracy_score(labels, restricted, k=k, labels=range(6))
        assert records[(f"top{k}", "val")].value == pytest.approx(expected)
        p = expected
        assert records[(f"top{k}", "val")].stderr == pytest.approx(np.sqrt(p * (1 - p) / 6))
    assert records[("top1", "val")].value >= 3 / 6  # the real weights recognise the photos
    assert evaluator.evaluate(_ctx(tmp_path, adapter, {"val": ("eval", data)})) == []


def test_clip_zero_shot_matches_text_and_image_features(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=tiny_clip_text_config(),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    folder = tmp_path / "clip"
    CLIPModel(config).save_pretrained(folder)
    tiny_clip_tokenizer().save_pretrained(folder)
    adapter = HFCLIPAdapter(HFCLIPConfig(model_id=str(folder)))
    images = sample_images(6)
    labels = [0, 1, 2, 0, 1, 2]
    names = ["castle", "church", "monastery"]
    data = Photos(images, labels, names)
    prompts = ("a photo of a {}.", "a drawing of a {}.")
    evaluator = HeadAccuracyEvaluator(HeadAccuracyConfig(prompts=prompts))
    records = {
        r.metric: r.value
        for r in evaluator.baseline(_ctx(tmp_path, adapter, {"val": ("eval", data)}))
    }

    model, tok = adapter.model, adapter.tokenizer
    with torch.inference_mode():
        text = []
        for name in names:
            enc = tok([p.format(name) for p in prompts], padding=True, return_tensors="pt")
            emb = F.normalize(model.get_text_features(**enc).pooler_output, dim=-1).mean(0)
            text.append(F.normalize(emb, dim=-1))
        pixels = adapter.pixels(adapter.preprocess(images))
        img = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        scores = (img @ torch.stack(text).T).numpy()
    assert records["top1"] == pytest.approx(top_k_accuracy_score(labels, scores, k=1))
    assert records["top5"] == 1.0  # three classes: top-5 is capped at all of them


def test_model_without_head_is_one_line(tmp_path: Path) -> None:
    adapter = DINOv2Adapter(DINOv2Config())
    data = Photos(sample_images(2), [0, 1], ["castle", "church"])
    adapter.preprocess = lambda items: torch.zeros(len(items))  # type: ignore[method-assign]
    with pytest.raises(ConfigError, match="model `dinov2` has no classification head"):
        HeadAccuracyEvaluator(HeadAccuracyConfig()).baseline(
            _ctx(tmp_path, adapter, {"val": ("eval", data)})
        )
