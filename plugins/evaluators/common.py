"""Helpers shared by the built-in evaluators: streaming activations through an SAE."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from saebench_vision.cache import ActivationSet
from saebench_vision.interfaces import SAE, resolve_device


def strided_rows(n: int, max_rows: int | None) -> np.ndarray | None:
    """Evenly strided row indices when a split is capped at ``max_rows``; None for every row."""
    if max_rows is None or n <= max_rows:
        return None
    return np.linspace(0, n - 1, max_rows).round().astype(np.int64)


def iter_rows(
    acts: ActivationSet, batch_size: int, rows: np.ndarray | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """``(offset, float32 chunk)`` over all rows, or over ``rows`` when given."""
    if rows is None:
        for start, chunk in acts.iter_chunks(batch_size):
            yield start, np.array(chunk, dtype=np.float32)  # a writable copy, not the map
        return
    for lo in range(0, len(rows), batch_size):
        yield lo, acts.read(rows[lo : lo + batch_size])


def prepare_sae(sae: SAE, device: str) -> tuple[SAE, torch.device]:
    """The SAE in eval mode on ``device`` (``auto``: cuda when available)."""
    dev = resolve_device(device)
    return sae.to(dev).eval(), dev


def row_labels(acts: ActivationSet, rows: np.ndarray | None = None) -> np.ndarray | None:
    """Per-row labels (restricted to ``rows`` when given), or None for an unlabelled split."""
    labels = acts.labels
    if labels is None:
        return None
    return labels if rows is None else labels[rows]
