"""The extraction loop with a fake in-test adapter and real cache writers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from saebench_vision.cache import ActivationCache
from saebench_vision.config import ModelConfig, option
from saebench_vision.extraction import extract_activations
from saebench_vision.interfaces import Dataset, LayerOutput, ModelAdapter, TokenKind


@dataclass(frozen=True)
class FakeConfig(ModelConfig):
    patches: int = option(3, "patch tokens per input")


class FakeAdapter(ModelAdapter):
    """Item i is the float i; layer `a` has CLS = i and patches i + 0.1 k; layer `b` = -a."""

    name = "fake"
    Config = FakeConfig

    def __init__(self, config: FakeConfig) -> None:
        super().__init__(config)
        self.loads = 0
        self.batches: list[int] = []

    def layer_names(self) -> list[str]:
        return ["a", "b"]

    def preprocess(self, items: Sequence[Any]) -> torch.Tensor:
        return torch.tensor([float(x) for x in items])

    def load(self) -> None:
        self.loads += 1

    def forward(self, batch: torch.Tensor, layers: Sequence[str]) -> dict[str, LayerOutput]:
        self.batches.append(len(batch))
        p = self.config.patches
        offsets = torch.cat([torch.zeros(1), 0.1 * torch.arange(1, p + 1)])
        values = (batch[:, None] + offsets[None, :]).unsqueeze(-1).repeat(1, 1, 2)
        kinds = torch.full((len(batch), p + 1), int(TokenKind.PATCH))
        kinds[:, 0] = int(TokenKind.CLS)
        out = {"a": LayerOutput(values, kinds), "b": LayerOutput(-values, kinds)}
        return {layer: out[layer] for layer in layers}


class Numbers(Dataset):
    name = "numbers"
    Config = FakeConfig

    def __init__(self, n: int, labelled: bool = True) -> None:
        super().__init__(FakeConfig())
        self.n, self.labelled = n, labelled

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> float:
        return float(index)

    def labels(self) -> np.ndarray | None:
        return np.arange(self.n) % 3 if self.labelled else None


def _writers(tmp_path: Path, layers: Sequence[str]) -> dict[str, Any]:
    cache = ActivationCache(tmp_path / "cache")
    return {layer: cache.writer(f"{layer}" * 64, d=2, meta={"layer": layer}) for layer in layers}


@pytest.mark.parametrize("workers", [0, 1])
def test_cls_rows_indices_and_labels(tmp_path: Path, workers: int) -> None:
    adapter = FakeAdapter(FakeConfig(batch_size=4, num_workers=workers))
    writers = _writers(tmp_path, ["a", "b"])
    extract_activations(adapter, Numbers(10), ["a", "b"], "cls", writers, progress=False)
    a, b = writers["a"].commit(), writers["b"].commit()
    assert adapter.loads == 1 and adapter.batches == [4, 4, 2]
    np.testing.assert_array_equal(a.to_numpy()[:, 0], np.arange(10, dtype=np.float32))
    np.testing.assert_array_equal(b.to_numpy(), -a.to_numpy())
    np.testing.assert_array_equal(a.sample_index, np.arange(10))
    np.testing.assert_array_equal(a.labels, np.arange(10) % 3)


def test_patch_rows_map_to_their_items(tmp_path: Path) -> None:
    adapter = FakeAdapter(FakeConfig(batch_size=3, patches=2))
    writers = _writers(tmp_path, ["a"])
    extract_activations(
        adapter, Numbers(5, labelled=False), ["a"], "patch", writers, progress=False
    )
    acts = writers["a"].commit()
    assert acts.n == 10 and acts.labels is None
    np.testing.assert_array_equal(acts.sample_index, np.repeat(np.arange(5), 2))
    expected = np.repeat(np.arange(5), 2) + np.tile([0.1, 0.2], 5)
    np.testing.assert_allclose(acts.to_numpy()[:, 0], expected, rtol=1e-6)


def test_mean_patch_and_missing_writer(tmp_path: Path) -> None:
    adapter = FakeAdapter(FakeConfig(batch_size=8, patches=4))
    writers = _writers(tmp_path, ["b"])
    extract_activations(adapter, Numbers(3), ["b"], "mean-patch", writers, progress=False)
    np.testing.assert_allclose(
        writers["b"].commit().to_numpy()[:, 1], -(np.arange(3) + 0.25), rtol=1e-6
    )
    with pytest.raises(ValueError, match="no writer"):
        extract_activations(adapter, Numbers(3), ["a", "b"], "cls", writers, progress=False)
