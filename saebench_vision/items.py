"""Per-item values of metrics that are means over test items, stored beside a cell's records.

A metric such as probe accuracy or reconstruction MSE is a mean over the items of a split; its
interval should come from resampling those items (:mod:`saebench_vision.stats`), and the
difference between two rows (an SAE and the raw-feature baseline) should be tested on the same
items, paired. Evaluators keep the per-item values with :func:`save_item_values`, which writes one
small ``.npz`` into the cell's artifact folder (``ctx.output_dir``) and returns the entry to merge
into the record's ``extra``::

    Record("acc", correct.mean(), split=split,
           extra={..., **save_item_values(ctx.output_dir, f"acc_{split}", correct,
                                          items=acts.sample_index, pairing=acts.key)})

``pairing`` names the item set (the activation cache key of the split, which hashes model, layer,
tokens, preprocessing and dataset): two rows are compared item by item only when it is equal.
``items`` maps each value to its dataset item when rows are not items (patch tokens), so that the
bootstrap resamples images, not correlated tokens.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saebench_vision.errors import ResultsError

EXTRA_KEY = "items"
"""The key of ``Record.extra`` that points at the per-item file."""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def save_item_values(
    out_dir: Path,
    name: str,
    values: Any,
    *,
    items: Any = None,
    pairing: str = "",
    over: str = "test items",
) -> dict[str, Any]:
    """Write ``values`` (one per row) atomically; returns ``{"items": {...}}`` for ``extra``.

    ``name`` becomes the file name (``items_<name>.npz``) and must be unique within the cell.
    ``over`` says in words what the items are (shown beside every interval computed from them).
    """
    arr = np.asarray(values).reshape(-1)
    # 0/1 outcomes (correct or not) are stored as bytes: an eighth of the space at ImageNet scale.
    arr = arr.astype(np.uint8) if arr.dtype == np.bool_ else arr.astype(np.float64)
    groups = None if items is None else np.asarray(items, dtype=np.int64).reshape(-1)
    if groups is not None and len(groups) != len(arr):
        raise ValueError(f"{len(arr)} values but {len(groups)} item ids")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    file = f"items_{_safe(name)}.npz"
    tmp = out_dir / f".{file}.{uuid.uuid4().hex}.tmp.npz"
    payload: dict[str, Any] = {"values": arr, "pairing": np.array(pairing)}
    if groups is not None:
        payload["items"] = groups
    np.savez_compressed(tmp, **payload)
    os.replace(tmp, out_dir / file)
    return {EXTRA_KEY: {"file": file, "n": int(len(arr)), "pairing": pairing, "over": over}}


@dataclass(frozen=True)
class ItemValues:
    """Per-item values read back: ``values`` aggregated to one per item (rows of an item averaged)."""

    values: np.ndarray
    pairing: str
    over: str
    path: Path


def load_item_values(
    path: Path, *, over: str = "test items", expect_n: int | None = None
) -> ItemValues:
    """Read a file written by :func:`save_item_values`; a damaged or mismatched file is refused."""
    try:
        with np.load(path, allow_pickle=False) as data:
            values = np.asarray(data["values"], dtype=np.float64)
            pairing = str(data["pairing"])
            groups = np.asarray(data["items"]) if "items" in data.files else None
    except (OSError, KeyError, ValueError) as exc:
        raise ResultsError(
            f"{path}: unreadable per-item values ({exc}); run the suite again to rewrite them"
        ) from exc
    if expect_n is not None and len(values) != expect_n:
        raise ResultsError(
            f"{path}: {len(values)} per-item values but the record says n={expect_n}; the file "
            "belongs to another run: delete it and run the suite again"
        )
    if groups is not None and len(np.unique(groups)) < len(groups):
        uniq, inverse = np.unique(groups, return_inverse=True)
        sums = np.bincount(inverse, weights=values, minlength=len(uniq))
        values = sums / np.bincount(inverse, minlength=len(uniq))
    return ItemValues(values=values, pairing=pairing, over=over, path=path)
