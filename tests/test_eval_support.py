"""Shared builders for the evaluator tests (no tests here): tiny activation sets, datasets, SAEs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from saebench_vision.cache import ActivationCache, ActivationSet
from saebench_vision.config import SAEConfig
from saebench_vision.interfaces import SAE, ClassInfo, Dataset, EvalContext


class LinearReluSAE(SAE):
    """z = relu(x W_enc^T + b_enc), x_hat = z W_dec^T + b_dec, with weights given by the test."""

    name = "test-linear-relu"

    def __init__(
        self, w_enc: np.ndarray, b_enc: np.ndarray, w_dec: np.ndarray, b_dec: np.ndarray
    ) -> None:
        d_sae, d_in = w_enc.shape
        super().__init__(d_in, SAEConfig(expansion=1))
        self.d_sae = d_sae
        self.w_enc = torch.nn.Parameter(torch.as_tensor(w_enc, dtype=torch.float32))
        self.b_enc = torch.nn.Parameter(torch.as_tensor(b_enc, dtype=torch.float32))
        self.w_dec = torch.nn.Parameter(torch.as_tensor(w_dec, dtype=torch.float32))
        self.b_dec = torch.nn.Parameter(torch.as_tensor(b_dec, dtype=torch.float32))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w_enc.T + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre_activations(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.w_dec.T + self.b_dec


class ListDataset(Dataset):
    """Labels and classes only: the evaluators never read items."""

    name = "test-list"

    def __init__(
        self,
        labels: np.ndarray | None,
        classes: list[ClassInfo] | None,
        hierarchy: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(None)
        self._labels, self._classes, self._hierarchy = labels, classes, hierarchy

    def __len__(self) -> int:
        return 0 if self._labels is None else len(self._labels)

    def labels(self) -> np.ndarray | None:
        return self._labels

    def classes(self) -> list[ClassInfo] | None:
        return self._classes

    def hierarchy(self) -> dict[str, list[str]] | None:
        return self._hierarchy


def write_acts(
    root: Path, key: str, x: np.ndarray, labels: np.ndarray | None = None, chunk: int = 7
) -> ActivationSet:
    """An ActivationSet holding ``x`` (written in small chunks to exercise appends)."""
    writer = ActivationCache(root).writer(key, x.shape[1], {"test": key})
    for lo in range(0, len(x), chunk):
        writer.append(
            x[lo : lo + chunk],
            np.arange(lo, min(lo + chunk, len(x))),
            None if labels is None else labels[lo : lo + chunk],
        )
    return writer.commit()


def make_ctx(
    tmp_path: Path,
    splits: dict[str, tuple[str, np.ndarray, np.ndarray | None]],
    *,
    sae: SAE | None = None,
    classes: dict[str, list[ClassInfo]] | None = None,
    hierarchy: dict[str, list[str]] | None = None,
    seed: int = 0,
) -> EvalContext:
    """An EvalContext over in-memory splits ``{name: (role, x, labels)}``."""
    acts = {
        name: write_acts(tmp_path / "cache", f"{name:0<64}"[:64], x, y)
        for name, (_, x, y) in splits.items()
    }
    datasets: dict[str, Any] = {
        name: ListDataset(y, (classes or {}).get(name), hierarchy)
        for name, (_, _, y) in splits.items()
    }
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return EvalContext(
        model_name="toy",
        layer="final",
        tokens="cls",
        seed=seed,
        device="cpu",
        splits={name: role for name, (role, _, _) in splits.items()},
        activation_loader=acts.__getitem__,
        dataset_loader=datasets.__getitem__,
        adapter_loader=lambda: None,
        output_dir=out,
        sae=sae,
        sae_id="toy-sae",
    )


def by_key(records: list[Any]) -> dict[tuple[str, str], Any]:
    """Records keyed by (metric, split)."""
    return {(r.metric, r.split): r for r in records}
