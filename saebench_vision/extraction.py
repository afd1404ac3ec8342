"""The extraction loop: a dataset split through a model adapter into cache entry writers.

One pass over the data serves every requested layer. Decoding and preprocessing run in
DataLoader workers (``adapter.config.num_workers``) while the main process runs the model, so
the input pipeline keeps the model busy (``benchmarks/extract_throughput.py`` measures it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from saebench_vision.cache import EntryWriter
from saebench_vision.interfaces import Dataset, ModelAdapter, select_tokens
from saebench_vision.progress import ProgressMode, make_progress


class _Indexed(TorchDataset):
    """Yields ``(index, item)`` so every batch knows which dataset items it holds."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


class _Collate:
    """Picklable collate function: item indices plus ``adapter.preprocess`` of the items."""

    def __init__(self, preprocess: Callable[[Sequence[Any]], Any]) -> None:
        self.preprocess = preprocess

    def __call__(self, pairs: Sequence[tuple[int, Any]]) -> tuple[np.ndarray, Any]:
        indices = np.fromiter((i for i, _ in pairs), dtype=np.int64, count=len(pairs))
        return indices, self.preprocess([item for _, item in pairs])


def make_loader(adapter: ModelAdapter, dataset: Dataset) -> DataLoader:
    """The DataLoader the extraction loop uses: in order, batched and preprocessed in workers."""
    workers = int(adapter.config.num_workers)
    return DataLoader(
        _Indexed(dataset),
        batch_size=int(adapter.config.batch_size),
        shuffle=False,
        num_workers=workers,
        collate_fn=_Collate(adapter.preprocess),
        pin_memory=adapter.device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
    )


def extract_activations(
    adapter: ModelAdapter,
    dataset: Dataset,
    layers: Sequence[str],
    tokens: str | Mapping[str, str],
    writers: Mapping[str, EntryWriter],
    *,
    progress: ProgressMode = True,
    desc: str = "",
) -> None:
    """Run ``dataset`` through ``adapter`` once and append the ``tokens`` rows of each layer
    (one selection for all, or ``{layer: selection}``) to ``writers[layer]``, with the dataset index (and label, when the dataset has labels) of
    the item each row came from. The writers are not committed here."""
    layers = list(layers)
    missing = [layer for layer in layers if layer not in writers]
    if missing:
        raise ValueError(f"extract_activations: no writer for layers {missing}")
    selection = {layer: tokens if isinstance(tokens, str) else tokens[layer] for layer in layers}
    adapter.check_layers(layers)
    adapter.ensure_loaded()
    labels = dataset.labels()
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
    bar = make_progress(len(dataset), desc or adapter.name, "item", progress)
    try:
        with torch.inference_mode():
            for indices, batch in make_loader(adapter, dataset):
                outputs = adapter.forward(batch, layers)
                for layer in layers:
                    rows, item = select_tokens(outputs[layer], selection[layer])
                    sample_index = indices[item.cpu().numpy()]
                    responses = outputs[layer].responses
                    writers[layer].append(
                        rows.cpu().numpy(),
                        sample_index=sample_index,
                        labels=None if labels is None else labels[sample_index],
                        responses=None
                        if responses is None
                        else dict(zip(indices.tolist(), responses)),
                    )
                if bar is not None:
                    bar.update(len(indices))
    finally:
        if bar is not None:
            bar.close()
