"""Synthetic pieces for the multimodal evaluator tests: cache entries written from arrays, an SAE
whose latents are ReLU(x), labelled datasets, and an EvalContext over them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from saebench_vision_plugins.saes.configs import ReLUConfig
from saebench_vision_plugins.saes.relu import ReLUSAE

from saebench_vision.cache import ActivationCache, ActivationSet
from saebench_vision.interfaces import ClassInfo, Dataset, EvalContext


def entry(
    root: Path,
    name: str,
    rows: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray | None = None,
    responses: dict[int, str] | None = None,
) -> ActivationSet:
    """A committed cache entry holding ``rows`` (one per token) of dataset ``items``."""
    cache = ActivationCache(root)
    writer = cache.writer(name.ljust(64, "0"), rows.shape[1], {"layer": name})
    writer.append(rows.astype(np.float32), items, labels, responses=responses)
    return writer.commit()


def relu_identity_sae(d: int) -> ReLUSAE:
    """An SAE with d latents whose encoding is exactly ReLU(x)."""
    sae = ReLUSAE(d, ReLUConfig(expansion=1))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


class LabelledSplit(Dataset):
    """Items with labels over named classes; ``modality`` text or image-text."""

    name = "labelled-split"

    def __init__(self, labels: list[int], class_ids: list[str], modality: str, items: Any = None):
        super().__init__(None)
        self._labels = np.asarray(labels, dtype=np.int64)
        self._classes = [ClassInfo(c, c.replace("-", " ")) for c in class_ids]
        self.modality = modality  # type: ignore[misc]
        self._items = items

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> Any:
        return self._items[index] if self._items is not None else f"item {index}"

    def labels(self) -> np.ndarray:
        return self._labels

    def classes(self) -> list[ClassInfo]:
        return list(self._classes)


def context(
    tmp: Path,
    *,
    acts: dict[tuple[str, str], ActivationSet],
    datasets: dict[str, Dataset],
    splits: dict[str, str],
    sae: Any,
    layer: str,
    layers: tuple[str, ...] | None = None,
    partners: dict[str, Any] | None = None,
) -> EvalContext:
    """An EvalContext over in-memory pieces; ``partners`` maps a layer to its SAE."""
    return EvalContext(
        model_name="tiny",
        layer=layer,
        tokens="patch",
        seed=0,
        device="cpu",
        splits=splits,
        activation_loader=lambda split: acts[(split, layer)],
        dataset_loader=lambda split: datasets[split],
        adapter_loader=lambda: None,
        output_dir=tmp / "artifacts",
        sae=sae,
        sae_id="sae-under-test",
        layers=layers or (layer,),
        layer_activation_loader=lambda split, other: acts[(split, other)],
        sae_resolver=lambda other, sae_id, label: ((partners or {})[other], f"sae-{other}"),
    )
