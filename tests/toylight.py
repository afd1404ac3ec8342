"""The toy plugin behind light hooks: Configs in a module that imports no torch, implementations
referenced lazily in :mod:`toyplugin`. Used to check that a warm run imports no torch
(``SAEBENCH_VISION_PLUGINS=toylight``); a test keeps these Configs equal to toyplugin's. The
toy classes declare ``version`` in their bodies, so planning reads it from the source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saebench_vision import hookimpl
from saebench_vision.config import ModelConfig, SAEConfig, option
from saebench_vision.registry import ComponentRef


@dataclass(frozen=True)
class ToyModelConfig(ModelConfig):
    d_in: int = option(16, "input width")
    width: int = option(24, "hidden width")
    weight_seed: int = option(0, "seed of the fixed random weights")
    sleep: float = option(0.0, "seconds to sleep per batch (tests use it to kill runs mid-way)")
    batch_size: int = option(16, "inputs per forward pass")


@dataclass(frozen=True)
class ToyClustersConfig:
    split: Literal["train", "val", "shifted", "ood"] = option("train", "which split")
    size: int = option(240, "number of items")
    n_classes: int = option(6, "number of classes (leaves c0..)")
    d: int = option(16, "item width")
    seed: int = option(0, "data seed")


@dataclass(frozen=True)
class SlowConfig:
    sleep: float = option(0.0, "seconds to sleep per cell")
    fail_if_exists: str = option(
        "", "raise in every cell while this file exists (tests of failed cells)"
    )


@dataclass(frozen=True)
class ToySAEConfig(SAEConfig):
    l1_coefficient: float = option(0.1, "L1 penalty")
    tags: list[str] = option(factory=list, help="free-form labels (a list-typed option)")
    step_sleep: float = option(
        0.0, "seconds to sleep after each optimiser step (tests kill workers mid-training)"
    )


def _ref(cls: str, config: str) -> ComponentRef:
    return ComponentRef(f"toyplugin:{cls}", config=f"toylight:{config}")


@hookimpl
def register_models() -> dict[str, ComponentRef]:
    return {"toy-model": _ref("ToyModel", "ToyModelConfig")}


@hookimpl
def register_datasets() -> dict[str, ComponentRef]:
    return {"toy-clusters": _ref("ToyClusters", "ToyClustersConfig")}


@hookimpl
def register_saes() -> dict[str, ComponentRef]:
    return {"toy-sae": _ref("ToySAE", "ToySAEConfig")}


@hookimpl
def register_evaluators() -> dict[str, ComponentRef]:
    return {"toy-slow": _ref("SlowEvaluator", "SlowConfig")}
