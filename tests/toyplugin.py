"""A small plugin used by the core tests: a toy model, a toy dataset and a slow evaluator.

It is a real plugin (hooks, references, Configs); only its numbers are small. Load it in-process
with ``manager.register(toyplugin, "toy")`` or in a subprocess with
``SAEBENCH_VISION_PLUGINS=toyplugin`` and ``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from saebench_vision import hookimpl
from saebench_vision.config import ModelConfig, SAEConfig, option
from saebench_vision.interfaces import (
    SAE,
    ClassInfo,
    Dataset,
    EvalContext,
    Evaluator,
    LayerOutput,
    ModelAdapter,
    Record,
    SAEOutput,
    TokenKind,
)

M = "toyplugin"


@hookimpl
def register_models() -> dict[str, str]:
    return {"toy-model": f"{M}:ToyModel"}


@hookimpl
def register_datasets() -> dict[str, str]:
    return {"toy-clusters": f"{M}:ToyClusters"}


@hookimpl
def register_saes() -> dict[str, str]:
    return {"toy-sae": f"{M}:ToySAE"}


@hookimpl
def register_evaluators() -> dict[str, str]:
    return {"toy-slow": f"{M}:SlowEvaluator"}


@dataclass(frozen=True)
class ToyModelConfig(ModelConfig):
    d_in: int = option(16, "input width")
    width: int = option(24, "hidden width")
    weight_seed: int = option(0, "seed of the fixed random weights")
    sleep: float = option(0.0, "seconds to sleep per batch (tests use it to kill runs mid-way)")
    batch_size: int = option(16, "inputs per forward pass")


class ToyModel(ModelAdapter):
    """Two fixed random layers; ``layer.0`` has one CLS and three patch tokens per input."""

    name = "toy-model"
    version = "1"
    Config = ToyModelConfig
    input_kind = "image"

    def layer_names(self) -> list[str]:
        return ["layer.0", "final"]

    def layer_width(self, layer: str) -> int | None:
        return self.config.width

    def preprocess(self, items: list[Any]) -> Any:
        import torch

        return torch.tensor(np.stack(items), dtype=torch.float32)

    def load(self) -> None:
        import torch

        g = torch.Generator().manual_seed(self.config.weight_seed)
        self.w0 = (
            torch.randn(self.config.d_in, self.config.width, generator=g) / self.config.d_in**0.5
        )
        self.w1 = (
            torch.randn(self.config.width, self.config.width, generator=g) / self.config.width**0.5
        )

    def forward(self, batch: Any, layers: Any) -> dict[str, LayerOutput]:
        import torch

        if self.config.sleep:
            time.sleep(self.config.sleep)
        h0 = torch.relu(batch @ self.w0)
        h1 = torch.relu(h0 @ self.w1)
        out = {}
        b = batch.shape[0]
        if "layer.0" in layers:
            patches = torch.stack([h0, h0 * 0.5, h0 * 0.25], 1)
            values = torch.cat([h0[:, None], patches], 1)
            kinds = torch.tensor([TokenKind.CLS] + [TokenKind.PATCH] * 3).repeat(b, 1)
            out["layer.0"] = LayerOutput(values, kinds)
        if "final" in layers:
            out["final"] = LayerOutput(h1[:, None], torch.full((b, 1), int(TokenKind.CLS)))
        return out


@dataclass(frozen=True)
class ToyClustersConfig:
    split: Literal["train", "val", "shifted", "ood"] = option("train", "which split")
    size: int = option(240, "number of items")
    n_classes: int = option(6, "number of classes (leaves c0..)")
    d: int = option(16, "item width")
    seed: int = option(0, "data seed")


class ToyClusters(Dataset):
    """Gaussian clusters; classes c0..c5 under g0 (c0-c2) and g1 (c3-c5) under root `all`."""

    name = "toy-clusters"
    version = "1"
    Config = ToyClustersConfig
    modality = "image"

    def __init__(self, config: ToyClustersConfig) -> None:
        super().__init__(config)
        rng = np.random.default_rng(config.seed)
        centers = rng.normal(size=(config.n_classes, config.d)) * 3
        split_id = ["train", "val", "shifted", "ood"].index(config.split)
        rng = np.random.default_rng([config.seed, split_id])
        self._labels = np.arange(config.size) % config.n_classes
        shift = 1.5 if config.split == "shifted" else 0.0
        self._x = (centers[self._labels] + rng.normal(size=(config.size, config.d)) + shift).astype(
            np.float32
        )
        if config.split == "ood":
            self._x = rng.normal(size=(config.size, config.d)).astype(np.float32) * 5

    def __len__(self) -> int:
        return self.config.size

    def __getitem__(self, index: int) -> Any:
        return self._x[index]

    def labels(self) -> np.ndarray | None:
        return None if self.config.split == "ood" else self._labels

    def classes(self) -> list[ClassInfo] | None:
        if self.config.split == "ood":
            return None
        return [ClassInfo(f"c{i}", f"class {i}") for i in range(self.config.n_classes)]

    def hierarchy(self) -> dict[str, list[str]] | None:
        half = self.config.n_classes // 2
        tree = {f"c{i}": ["g0" if i < half else "g1"] for i in range(self.config.n_classes)}
        return tree | {"g0": ["all"], "g1": ["all"], "all": []}


@dataclass(frozen=True)
class SlowConfig:
    sleep: float = option(0.0, "seconds to sleep per cell")
    fail_if_exists: str = option(
        "", "raise in every cell while this file exists (tests of failed cells)"
    )


class SlowEvaluator(Evaluator):
    """Mean latent activation on the train split, optionally slowly; baseline: mean activation."""

    name = "toy-slow"
    version = "1"
    Config = SlowConfig
    metrics: ClassVar[dict[str, bool | None]] = {"mean_latent": None, "mean_input": None}

    def _maybe_fail(self) -> None:
        import os

        if self.config.fail_if_exists and os.path.exists(self.config.fail_if_exists):
            raise RuntimeError(f"toy-slow told to fail by {self.config.fail_if_exists}")

    def evaluate(self, ctx: EvalContext) -> list[Record]:
        self._maybe_fail()
        time.sleep(self.config.sleep)
        z = ctx.sae_encode(ctx.split_names("train")[0])
        return [Record("mean_latent", float(z.mean()), split="train")]

    def baseline(self, ctx: EvalContext) -> list[Record]:
        self._maybe_fail()
        time.sleep(self.config.sleep)
        x = ctx.activations(ctx.split_names("train")[0]).to_numpy()
        return [Record("mean_input", float(x.mean()), split="train")]


@dataclass(frozen=True)
class ToySAEConfig(SAEConfig):
    l1_coefficient: float = option(0.1, "L1 penalty")
    tags: list[str] = option(factory=list, help="free-form labels (a list-typed option)")
    step_sleep: float = option(
        0.0, "seconds to sleep after each optimiser step (tests kill workers mid-training)"
    )


class ToySAE(SAE):
    """A plain ReLU SAE (eqs. 1-3), small enough to read in one glance."""

    name = "toy-sae"
    version = "1"
    Config = ToySAEConfig

    def __init__(self, d_in: int, config: ToySAEConfig) -> None:
        import torch

        super().__init__(d_in, config)
        self.W_enc = torch.nn.Parameter(torch.randn(d_in, self.d_sae) / d_in**0.5)
        self.b_enc = torch.nn.Parameter(torch.zeros(self.d_sae))
        self.W_dec = torch.nn.Parameter(self.W_enc.detach().T.clone())
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))

    def pre_activations(self, x: Any) -> Any:
        return (x * self.input_scale - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: Any) -> Any:
        return self.pre_activations(x).relu()

    def decode(self, z: Any) -> Any:
        return (z @ self.W_dec + self.b_dec) / self.input_scale

    def loss(self, x: Any, *, sparsity_scale: float = 1.0) -> SAEOutput:
        z = self.encode(x)
        x_hat = self.decode(z)
        mse = ((x_hat - x) * self.input_scale).pow(2).sum(-1).mean()
        l1 = z.abs().sum(-1).mean()
        loss = mse + sparsity_scale * self.config.l1_coefficient * l1
        return SAEOutput(
            loss, x_hat, z, {"mse": mse.detach(), "l0": (z > 0).float().sum(-1).mean()}
        )

    def on_step_end(self) -> None:
        if self.config.step_sleep:
            time.sleep(self.config.step_sleep)

    def decoder_directions(self) -> Any:
        return self.W_dec.detach()
