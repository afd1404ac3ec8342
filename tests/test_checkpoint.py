"""SAE checkpoints: exact round trips, atomic writes, clear errors, SAELens interop."""

from __future__ import annotations

import json

import pytest
import torch
from saebench_vision_plugins.saes.configs import (
    BatchTopKConfig,
    GatedConfig,
    JumpReLUConfig,
    MatryoshkaConfig,
    ReLUConfig,
    TopKConfig,
)
from saebench_vision_plugins.saes.gated import GatedSAE
from saebench_vision_plugins.saes.jumprelu import JumpReLUSAE
from saebench_vision_plugins.saes.relu import ReLUSAE
from saebench_vision_plugins.saes.topk import BatchTopKSAE, MatryoshkaSAE, TopKSAE
from safetensors.torch import load_file, save_file

from saebench_vision.checkpoint import (
    CheckpointError,
    load_sae,
    load_saelens,
    save_sae,
    save_saelens,
)
from saebench_vision.errors import SaebenchError

CLASSES = {
    c.name: c for c in (ReLUSAE, TopKSAE, GatedSAE, BatchTopKSAE, JumpReLUSAE, MatryoshkaSAE)
}
ALL = [
    (ReLUSAE, ReLUConfig(expansion=2, l1_coefficient=3.0, b_dec_init="mean")),
    (TopKSAE, TopKConfig(expansion=3, k=4)),
    (GatedSAE, GatedConfig(expansion=2)),
    (BatchTopKSAE, BatchTopKConfig(expansion=2, k=3)),
    (JumpReLUSAE, JumpReLUConfig(expansion=2, l0_coefficient=0.1)),
    (MatryoshkaSAE, MatryoshkaConfig(expansion=4, k=3, prefix_fractions=(0.25, 1.0))),
]


def resolve(name: str) -> type:
    if name not in CLASSES:
        raise SaebenchError(f"Unknown SAE {name!r}")
    return CLASSES[name]


def randomised(cls, config, d: int = 6, scale: float = 1.0):
    torch.manual_seed(0)
    sae = cls(d, config)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        sae.input_scale.fill_(scale)
        if hasattr(sae, "threshold") and sae.threshold.ndim == 0:
            sae.threshold.fill_(0.05)
        if hasattr(sae, "samples_since_fired"):
            sae.samples_since_fired.copy_(torch.arange(sae.d_sae))
    return sae.eval()


@pytest.mark.parametrize("cls,config", ALL, ids=[c.name for c, _ in ALL])
def test_round_trip_is_exact(tmp_path, cls, config):
    sae = randomised(cls, config, scale=1.7)
    save_sae(sae, tmp_path / "sae", {"label": "x", "stats": {"final_mse": 0.5}})
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == [
        "cfg.json",
        "sae_weights.safetensors",
    ]
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == cls.name and cfg["d_in"] == 6 and cfg["version"] == cls.version
    loaded, meta = load_sae(tmp_path / "sae", resolve)
    assert type(loaded) is cls and loaded.config == sae.config
    assert meta == {"label": "x", "stats": {"final_mse": 0.5}}
    for key, value in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(5, 6)
    assert torch.equal(loaded.encode(x), sae.encode(x))


def test_save_replaces_atomically_and_leaves_no_temporaries(tmp_path):
    a = randomised(ReLUSAE, ReLUConfig(expansion=2))
    b = randomised(TopKSAE, TopKConfig(expansion=2, k=2))
    save_sae(a, tmp_path / "sae", {"n": 1})
    save_sae(b, tmp_path / "sae", {"n": 2})
    loaded, meta = load_sae(tmp_path / "sae", resolve)
    assert loaded.name == "topk" and meta == {"n": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]


def test_missing_or_damaged_checkpoints_raise_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="missing") as info:
        load_sae(tmp_path / "nothing", resolve)
    assert "\n" not in str(info.value)
    sae = randomised(ReLUSAE, ReLUConfig(expansion=2))
    save_sae(sae, tmp_path / "sae", {})
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="damaged") as info:
        load_sae(tmp_path / "sae", resolve)
    assert "\n" not in str(info.value)
    save_sae(sae, tmp_path / "sae", {})
    (tmp_path / "sae" / "cfg.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable JSON"):
        load_sae(tmp_path / "sae", resolve)
    save_sae(sae, tmp_path / "sae", {})
    tensors = load_file(str(weights))
    tensors["W_enc"] = tensors["W_enc"][:3]
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match="does not fit") as info:
        load_sae(tmp_path / "sae", resolve)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cls,config", ALL, ids=[c.name for c, _ in ALL])
def test_saelens_round_trip(tmp_path, cls, config):
    sae = randomised(cls, config, scale=1.0)
    save_saelens(sae, tmp_path / "lens")
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    tensors = load_file(str(tmp_path / "lens" / "sae_weights.safetensors"))
    assert tensors["W_enc"].shape == (6, sae.d_sae) and tensors["W_dec"].shape == (sae.d_sae, 6)
    assert cfg["d_sae"] == sae.d_sae and cfg["apply_b_dec_to_input"] is True
    loaded = load_saelens(tmp_path / "lens", resolve)
    x = torch.randn(7, 6)
    # Exact: the weights are copied, never recomputed, when the input scale is 1.
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert torch.equal(loaded.decode(sae.encode(x)), sae.decode(sae.encode(x)))
    expected = {"relu": "standard", "topk": "topk", "gated": "gated"}.get(cls.name, "jumprelu")
    assert cfg["architecture"] == expected
    assert loaded.name == {"standard": "relu"}.get(expected, expected)


def test_saelens_export_folds_the_input_scale(tmp_path):
    sae = randomised(ReLUSAE, ReLUConfig(expansion=2), scale=3.0)
    save_saelens(sae, tmp_path / "lens")
    t = load_file(str(tmp_path / "lens" / "sae_weights.safetensors"))
    x = torch.randn(4, 6)
    # SAELens's StandardSAE: relu((x - b_dec) @ W_enc + b_enc) @ W_dec + b_dec
    z = torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    torch.testing.assert_close(z, sae.encode(x))
    torch.testing.assert_close(z @ t["W_dec"] + t["b_dec"], sae.decode(sae.encode(x)))


def test_loads_a_saelens_checkpoint_written_by_saelens_conventions(tmp_path):
    torch.manual_seed(0)
    d_in, d_sae = 4, 10  # d_sae not a multiple of d_in, as in many released SAEs
    tensors = {
        "W_enc": torch.randn(d_in, d_sae),
        "W_dec": torch.randn(d_sae, d_in),
        "b_enc": torch.randn(d_sae),
        "b_dec": torch.randn(d_in),
        "log_threshold": torch.randn(d_sae) * 0.1,
    }
    folder = tmp_path / "jr"
    folder.mkdir()
    save_file({k: v.half() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(
        json.dumps(
            {
                "architecture": "jumprelu",
                "d_in": d_in,
                "d_sae": d_sae,
                "dtype": "float16",
                "apply_b_dec_to_input": False,
                "normalize_activations": "none",
                "metadata": {},
            }
        )
    )
    sae = load_saelens(folder, resolve)
    assert sae.d_sae == d_sae and sae.name == "jumprelu"
    t = {k: v.half().float() for k, v in tensors.items()}
    x = torch.randn(3, d_in)
    pre = x @ t["W_enc"] + t["b_enc"]
    want = torch.relu(pre) * (pre > t["log_threshold"].exp())
    torch.testing.assert_close(sae.encode(x), want)

    (folder / "cfg.json").write_text(
        json.dumps({"architecture": "transcoder", "d_in": 4, "d_sae": 10})
    )
    with pytest.raises(CheckpointError, match="transcoder"):
        load_saelens(folder, resolve)
