"""Shared adapter pieces: image preprocessing, CNN feature maps as tokens, layer capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from saebench_vision_plugins.models.common import (
    ImageTransform,
    capture,
    feature_map_tokens,
    looks_local,
    run_until,
)

from saebench_vision.errors import DatasetError
from saebench_vision.interfaces import TokenKind, select_tokens


def _transform(
    image_size: int = 32, resize_size: int = 40, interpolation: str = "bicubic"
) -> ImageTransform:
    return ImageTransform(
        image_size, resize_size, interpolation, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    )


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    small = np.random.default_rng(seed).integers(
        0, 256, size=(max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8
    )
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("size", [(120, 90), (90, 120), (40, 40), (300, 41), (20, 16)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_crop_matches_resize_then_crop(size: tuple[int, int], interpolation: str) -> None:
    t = _transform(interpolation=interpolation)
    img = _photo(*size)
    w, h = img.size
    scale = 40 / min(w, h)
    resized = img.resize(
        (max(40, round(w * scale)), max(40, round(h * scale))),
        {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[interpolation],
    )
    left, top = (resized.width - 32) // 2, (resized.height - 32) // 2
    expected = np.asarray(resized.crop((left, top, left + 32, top + 32)), dtype=np.int16)
    got = t.image(img).astype(np.int16)
    assert got.shape == (32, 32, 3)
    # Identical up to rounding: at most 2 levels apart, and rarely at all.
    diff = np.abs(got - expected)
    assert diff.max() <= 2 and diff.mean() < 0.25


def test_batch_modes_and_normalisation() -> None:
    t = _transform()
    images = [
        _photo(50, 70).convert("L"),
        _photo(64, 48).convert("RGBA"),
        Image.new("RGB", (32, 32), (255, 0, 128)),
    ]
    batch = t(images)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.uint8
    assert torch.equal(batch[0, 0], batch[0, 1])  # grey stays grey
    x = t.normalize(batch, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(x[2, :, 0, 0], torch.tensor([2.0, -2.0, (128 / 255 - 0.5) / 0.25]))
    assert t.normalize(batch, torch.device("cpu"), torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(DatasetError, match="PIL image"):
        t(["not an image"])


def test_feature_map_tokens() -> None:
    fmap = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    out = feature_map_tokens(fmap)
    assert out.values.shape == (2, 5, 3)
    assert out.kinds[:, 0].eq(TokenKind.CLS).all() and out.kinds[:, 1:].eq(TokenKind.PATCH).all()
    torch.testing.assert_close(out.values[:, 0], fmap.mean((2, 3)))
    torch.testing.assert_close(out.values[1, 1 + 2 * 1 + 0], fmap[1, :, 1, 0])  # row-major
    patches, item = select_tokens(out, "patch")
    assert patches.shape == (8, 3) and item.tolist() == [0] * 4 + [1] * 4


def test_capture_stops_after_deepest() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    ran: list[int] = []
    net[2].register_forward_pre_hook(lambda *_: ran.append(2))
    with capture({"a": net[0], "b": net[1]}, stop_after="b") as got:
        assert run_until(lambda: net(torch.ones(1, 2))) is None
    assert set(got) == {"a", "b"} and ran == []
    assert not net[0]._forward_hooks  # hooks removed
    with capture({"c": net[2]}) as got:
        y = run_until(lambda: net(torch.ones(1, 2)))
    torch.testing.assert_close(got["c"], y)


def test_looks_local() -> None:
    assert looks_local("/tmp/x") and looks_local("./x") and looks_local("~/models/dino")
    assert not looks_local("facebook/dinov2-giant")
