"""The contract names no built-in: the core imports no plugin module, and what the trainer and
the checkpoint code may call on an SAE is declared on ``interfaces.SAE`` with a default."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch

import saebench_vision
from saebench_vision.config import SAEConfig, TrainingConfig
from saebench_vision.errors import ConfigError
from saebench_vision.interfaces import SAE, SAEOutput
from saebench_vision.training import train_saes

CORE = Path(saebench_vision.__file__).parent
PLUGINS = "saebench_vision_plugins"


def plugin_imports(source: str) -> list[str]:
    """Every module name an import statement (anywhere, lazy ones too) takes from the plugins."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module",)
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names = [str(node.args[0].value)]
        else:
            continue
        found += [n for n in names if n == PLUGINS or n.startswith(PLUGINS + ".")]
    return found


def test_the_scan_finds_plugin_imports():
    src = (
        "import os\nfrom saebench_vision_plugins.saes.base import x\n"
        "def f():\n    import saebench_vision_plugins.saes\n"
        "    importlib.import_module('saebench_vision_plugins.models')\n"
    )
    assert plugin_imports(src) == [
        "saebench_vision_plugins.saes.base",
        "saebench_vision_plugins.saes",
        "saebench_vision_plugins.models",
    ]


def test_the_core_imports_nothing_from_the_plugins():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 10
    offenders = {
        str(f.relative_to(CORE)): plugin_imports(f.read_text())
        for f in files
        if plugin_imports(f.read_text())
    }
    assert offenders == {}


def test_trainer_protocol_is_declared_on_the_sae_base_class():
    for name in (
        "train_terms",
        "init_b_dec",
        "before_optimizer_step",
        "on_step_end",
        "fusion_key",
        "group_terms",
        "before_group_optimizer_step",
        "stacked_params",
        "resize_latents",
        "to_saelens",
        "from_saelens",
    ):
        member = getattr(SAE, name)
        assert inspect.getdoc(member), name
    training = (CORE / "training.py").read_text()
    for probe in ('getattr(sae, "', "getattr(self.saes[0]", '"W_dec"', "unit_norm"):
        assert probe not in training, probe


class _Plain(SAE):
    """Implements only the required methods; no b_dec to initialise."""

    name = "plain"

    def __init__(self, d_in: int, config: SAEConfig) -> None:
        super().__init__(d_in, config)
        self.W = torch.nn.Parameter(torch.randn(self.d_sae, d_in) * 0.1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x * self.input_scale @ self.W.T)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W / self.input_scale

    def loss(self, x: torch.Tensor, *, sparsity_scale: float = 1.0) -> SAEOutput:
        z = self.encode(x)
        x_hat = self.decode(z)
        return SAEOutput(((x_hat - x) * self.input_scale).pow(2).sum(-1).mean(), x_hat, z)


def test_an_sae_with_only_the_required_methods_trains_through_the_defaults():
    torch.manual_seed(0)
    x = torch.randn(256, 4).numpy()
    sae = _Plain(4, SAEConfig(expansion=2))
    before = sae.W.detach().clone()
    terms = sae.train_terms(torch.from_numpy(x[:8]) * 2.0)
    assert terms.fired.shape == (8,) and "loss" in terms.metrics
    stats = train_saes([sae], x, TrainingConfig(epochs=1, batch_size=32), seed=0, progress=False)
    assert not torch.equal(sae.W, before)
    assert stats[0]["final_loss"] > 0 and 0 <= stats[0]["dead_fraction"] <= 1
    with pytest.raises(ConfigError, match="`plain` cannot initialise a decoder bias") as info:
        train_saes(
            [_Plain(4, SAEConfig(expansion=2, b_dec_init="mean"))],
            x,
            TrainingConfig(epochs=1, batch_size=32),
            seed=0,
            progress=False,
        )
    assert "\n" not in str(info.value)
