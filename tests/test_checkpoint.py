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
from saebench_vision.interfaces import SAE

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


def saved_without(sae, tmp_path, *fields, tensors=()):
    """``sae`` saved, its config's ``fields`` and the weights file's ``tensors`` removed (as a
    version before the fields wrote them), and loaded again."""
    save_sae(sae, tmp_path / "sae", {})
    path = tmp_path / "sae" / "cfg.json"
    cfg = json.loads(path.read_text())
    for field in fields:
        del cfg["config"][field]
    path.write_text(json.dumps(cfg))
    if tensors:
        weights = tmp_path / "sae" / "sae_weights.safetensors"
        kept = {k: v for k, v in load_file(weights).items() if k not in tensors}
        save_file(kept, weights)
    return load_sae(tmp_path / "sae", resolve)[0]


def test_a_matryoshka_checkpoint_saved_before_nesting_existed_loads_as_nested_by_latents(
    tmp_path,
):
    # Matryoshka SAEs nested by dictionary prefixes only until `nesting` was added (with the
    # default `both`): a config without the field is one trained that way.
    sae = randomised(MatryoshkaSAE, MatryoshkaConfig(expansion=2, k=3, nesting="latents"))
    loaded = saved_without(sae, tmp_path, "nesting")
    assert loaded.config.nesting == "latents" != MatryoshkaConfig().nesting
    assert loaded.config == sae.config


@pytest.mark.parametrize("cls", [BatchTopKSAE, MatryoshkaSAE], ids=lambda c: c.name)
def test_a_checkpoint_saved_before_a_field_existed_loads_as_it_was_trained(tmp_path, cls):
    # Before `topk_warmup` existed these SAEs selected per batch from the first step and had no
    # sample counter; such a checkpoint's config lacks the field and must load as
    # `topk_warmup: 0` (the field's declared `absent`), not as the new default's warm-up.
    config = MatryoshkaConfig if cls is MatryoshkaSAE else BatchTopKConfig
    sae = randomised(cls, config(expansion=2, k=3, topk_warmup=0))
    loaded = saved_without(sae, tmp_path, "topk_warmup")
    assert loaded.config.topk_warmup == 0 and config().topk_warmup > 0
    assert loaded.config == sae.config
    x = torch.randn(5, 6)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    # A config that names the field keeps what it says: a warmed-up SAE's counter round-trips.
    warm = randomised(cls, config(expansion=2, k=3, topk_warmup=0.25))
    with torch.no_grad():
        warm.samples_trained.fill_(7)
    save_sae(warm, tmp_path / "warm", {})
    loaded, _ = load_sae(tmp_path / "warm", resolve)
    assert loaded.config.topk_warmup == 0.25 and int(loaded.samples_trained) == 7


@pytest.mark.parametrize("cls", [TopKSAE, BatchTopKSAE, MatryoshkaSAE], ids=lambda c: c.name)
def test_a_checkpoint_saved_before_the_k_ramp_existed_loads_with_constant_k(tmp_path, cls):
    # Before `k_ramp` / `k_start` these SAEs kept k latents from the first step, and a TopK
    # SAE had no sample counter in its weights file: such a checkpoint loads as k throughout.
    config = {TopKSAE: TopKConfig, BatchTopKSAE: BatchTopKConfig}.get(cls, MatryoshkaConfig)
    sae = randomised(cls, config(expansion=2, k=3, k_ramp=0))
    assert sae.config.k_start == 1 and config().k_ramp > 0 and config().k_start < 1
    old = ("samples_trained",) if cls is TopKSAE else ()
    assert ("samples_trained" in sae.state_dict()) == (cls is not TopKSAE)
    loaded = saved_without(sae, tmp_path, "k_ramp", "k_start", tensors=old)
    assert loaded.config == sae.config
    x = torch.randn(5, 6)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    # With the ramp the counter is saved (a resumed run needs it) and round-trips.
    ramped = randomised(cls, config(expansion=2, k=3))
    with torch.no_grad():
        ramped.samples_trained.fill_(11)
    save_sae(ramped, tmp_path / "ramped", {})
    loaded, _ = load_sae(tmp_path / "ramped", resolve)
    assert loaded.config.k_ramp == config().k_ramp and int(loaded.samples_trained) == 11


def test_a_gated_checkpoint_saved_before_l1_convention_loads_with_saelens_lambda(tmp_path):
    # Before `l1_convention` existed the gate's L1 was weighted by λ alone (SAELens's); such a
    # config lacks the field and must load as `saelens`, not as the new `relu` default.
    sae = randomised(GatedSAE, GatedConfig(expansion=2, l1_convention="saelens"))
    loaded = saved_without(sae, tmp_path, "l1_convention")
    assert loaded.config.l1_convention == "saelens" and GatedConfig().l1_convention == "relu"
    assert loaded.config == sae.config
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
    # a checkpoint whose weights were rewritten fails its hash; without one, it does not fit
    with pytest.raises(CheckpointError, match="damaged, SHA-256"):
        load_sae(tmp_path / "sae", resolve)
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    del cfg["weights_sha256"]
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(cfg))
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
    loaded = load_saelens(tmp_path / "lens", CLASSES.values())
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
    sae = load_saelens(folder, CLASSES.values())
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
        load_saelens(folder, CLASSES.values())


# --------------------------------------------------------------------------------------------
# SAELens's own formulas, written out from its documented maths (sae_lens/saes/*.py, v6):
# sae_in = x - b_dec · apply_b_dec_to_input; standard: ReLU(sae_in W_enc + b_enc);
# jumprelu: ReLU(pre) · 1[pre > threshold]; gated: 1[sae_in W_enc + b_gate > 0] ·
# ReLU(sae_in (W_enc ⊙ exp(r_mag)) + b_mag); topk: ReLU of the k largest of pre (times
# ‖W_dec‖ per latent with rescale_acts_by_decoder_norm, which then decodes (z / ‖W_dec‖) W_dec).
# Decode: z W_dec + b_dec.


def lens_encode(cfg: dict, t: dict, x: torch.Tensor) -> torch.Tensor:
    sae_in = x - t["b_dec"] * float(cfg.get("apply_b_dec_to_input", True))
    arch = cfg["architecture"]
    if arch == "gated":
        active = (sae_in @ t["W_enc"] + t["b_gate"] > 0).float()
        return active * torch.relu(sae_in @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"])
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    if arch == "standard":
        return torch.relu(pre)
    if arch == "jumprelu":
        return torch.relu(pre) * (pre > t["threshold"]).float()
    assert arch == "topk"
    if cfg.get("rescale_acts_by_decoder_norm"):
        pre = pre * t["W_dec"].norm(dim=-1)
    top = pre.topk(cfg["k"], dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def lens_decode(cfg: dict, t: dict, z: torch.Tensor) -> torch.Tensor:
    if cfg["architecture"] == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        z = z / t["W_dec"].norm(dim=-1)
    return z @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("cls,config", ALL, ids=[c.name for c, _ in ALL])
def test_saelens_export_matches_saelens_formulas(tmp_path, cls, config):
    sae = randomised(cls, config, scale=1.7)
    save_saelens(sae, tmp_path / "lens", {"note": "x"})
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    t = load_file(str(tmp_path / "lens" / "sae_weights.safetensors"))
    assert cfg["metadata"]["note"] == "x" and cfg["metadata"]["saebench_vision_architecture"]
    x = torch.randn(9, 6) * 2 + 0.5
    z = sae.encode(x)
    assert (z != 0).any()
    torch.testing.assert_close(lens_encode(cfg, t, x), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lens_decode(cfg, t, z), sae.decode(z), rtol=1e-5, atol=1e-5)
    if cls.name == "topk":
        # Exact with or without SAELens's default rescaling: never read as rescaled by mistake.
        assert cfg["rescale_acts_by_decoder_norm"] is False and cfg["k"] == config.k


def _write_lens(folder, cfg: dict, tensors: dict) -> None:
    folder.mkdir()
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors")
    )
    (folder / "cfg.json").write_text(json.dumps(cfg))


LENS = {
    "standard": ({}, ("b_enc",)),
    "topk": ({"k": 3, "rescale_acts_by_decoder_norm": False}, ("b_enc",)),
    "topk-rescaled": ({"k": 3, "rescale_acts_by_decoder_norm": True}, ("b_enc",)),
    "gated": ({}, ("b_gate", "r_mag", "b_mag")),
    "jumprelu": ({}, ("b_enc", "threshold")),
}


@pytest.mark.parametrize("kind", list(LENS))
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_loads_saelens_checkpoints_as_saelens_computes_them(tmp_path, kind, apply_b_dec):
    torch.manual_seed(1)
    d_in, d_sae = 5, 13  # not a multiple, as in many released SAEs
    extra, names = LENS[kind]
    cfg = {
        "architecture": kind.split("-")[0],
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": "none",
        **extra,
    }
    t = {
        "W_enc": torch.randn(d_in, d_sae),
        # Decoder rows of very different norms, so rescaling by them changes the top k.
        "W_dec": torch.randn(d_sae, d_in) * torch.logspace(-1, 1, d_sae).unsqueeze(1),
        "b_dec": torch.randn(d_in) * 0.3,
    }
    for name in names:
        t[name] = torch.randn(d_sae) * (0.3 if name != "threshold" else 0.1) + (
            0.2 if name == "threshold" else 0.0
        )
    _write_lens(tmp_path / "lens", cfg, t)
    sae = load_saelens(tmp_path / "lens", CLASSES.values())
    assert sae.d_sae == d_sae
    if kind == "gated":  # trained with SAELens's weighting of λ, and says so
        assert sae.config.l1_convention == "saelens"
    if kind.startswith("topk"):  # trained with k from the first step, and says so
        assert sae.config.k_ramp == 0 and TopKConfig().k_ramp > 0
    x = torch.randn(40, d_in)
    want = lens_encode(cfg, t, x)
    got = sae.encode(x)
    assert (want != 0).any()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(got), lens_decode(cfg, t, want), rtol=1e-5, atol=1e-5)
    if kind == "topk-rescaled":
        plain = {**cfg, "rescale_acts_by_decoder_norm": False}
        assert not torch.equal(lens_encode(plain, t, x) != 0, want != 0)
        # Loaded with the norms folded in: unit rows, and it exports back exactly.
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(d_sae))
        save_saelens(sae, tmp_path / "back")
        cfg2 = json.loads((tmp_path / "back" / "cfg.json").read_text())
        t2 = load_file(str(tmp_path / "back" / "sae_weights.safetensors"))
        torch.testing.assert_close(lens_encode(cfg2, t2, x), want, rtol=1e-5, atol=1e-5)
        # Unit rows: SAELens's default (rescaled) reading of the export gives the same code.
        torch.testing.assert_close(
            lens_encode({**cfg2, "rescale_acts_by_decoder_norm": True}, t2, x),
            want,
            rtol=1e-5,
            atol=1e-5,
        )


def test_saelens_refusals_name_the_reason(tmp_path):
    sae = randomised(BatchTopKSAE, BatchTopKConfig(expansion=2, k=3, inference="batch-topk"))
    with pytest.raises(CheckpointError, match="inference: batch-topk"):
        save_saelens(sae, tmp_path / "a")
    t = {"W_enc": torch.randn(4, 8), "W_dec": torch.randn(8, 4), "b_dec": torch.zeros(4)}
    _write_lens(tmp_path / "g", {"architecture": "gated", "d_in": 4, "d_sae": 8}, t)
    with pytest.raises(CheckpointError, match="missing tensors b_gate, r_mag, b_mag") as info:
        load_saelens(tmp_path / "g", CLASSES.values())
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="supported: none"):
        load_saelens(tmp_path / "g", [])


class _Scaler(SAE):
    """A third-party SAE (not built in): z = ReLU(a ⊙ x), x̂ = z / a, with its own SAELens map."""

    name = "scaler"
    saelens_architectures = ("standard",)

    def __init__(self, d_in, config) -> None:
        super().__init__(d_in, config)
        self.d_sae = d_in
        self.a = torch.nn.Parameter(torch.rand(d_in) + 0.5)

    def encode(self, x):
        return torch.relu(x * self.a)

    def decode(self, z):
        return z / self.a

    def to_saelens(self):
        d = self.d_in
        a = self.a.detach()
        tensors = {
            "W_enc": torch.diag(a),
            "W_dec": torch.diag(1 / a),
            "b_enc": torch.zeros(d),
            "b_dec": torch.zeros(d),
        }
        return {"architecture": "standard", "apply_b_dec_to_input": False}, tensors

    @classmethod
    def from_saelens(cls, cfg, tensors):
        from saebench_vision.config import SAEConfig

        sae = cls(int(cfg["d_in"]), SAEConfig(expansion=1))
        with torch.no_grad():
            sae.a.copy_(torch.diagonal(tensors["W_enc"]))
        return sae


def test_a_third_party_sae_exports_and_loads_through_its_own_methods(tmp_path):
    from saebench_vision.config import SAEConfig

    sae = _Scaler(4, SAEConfig(expansion=1))
    save_saelens(sae, tmp_path / "lens")
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    t = load_file(str(tmp_path / "lens" / "sae_weights.safetensors"))
    x = torch.randn(6, 4)
    torch.testing.assert_close(lens_encode(cfg, t, x), sae.encode(x))
    loaded = load_saelens(tmp_path / "lens", [_Scaler])
    assert isinstance(loaded, _Scaler)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))

    class Closed(_Scaler):
        name = "closed"
        to_saelens = SAE.to_saelens

    with pytest.raises(CheckpointError, match="`closed` has no SAELens counterpart"):
        save_saelens(Closed(4, SAEConfig(expansion=1)), tmp_path / "x")


@pytest.mark.parametrize("convention", ["relu", "saelens"])
def test_a_gated_export_says_how_its_l1_was_weighted_and_loads_back_so(tmp_path, convention):
    sae = randomised(GatedSAE, GatedConfig(expansion=2, l1_convention=convention), scale=1.0)
    save_saelens(sae, tmp_path / "lens")
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    assert cfg["l1_convention"] == convention
    assert load_saelens(tmp_path / "lens", CLASSES.values()).config.l1_convention == convention
    # Without the key (SAELens wrote it): SAELens's weighting.
    del cfg["l1_convention"]
    (tmp_path / "lens" / "cfg.json").write_text(json.dumps(cfg))
    assert load_saelens(tmp_path / "lens", CLASSES.values()).config.l1_convention == "saelens"
    cfg["l1_convention"] = "lasso"
    (tmp_path / "lens" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as info:
        load_saelens(tmp_path / "lens", CLASSES.values())
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'lens'}: cfg.json.l1_convention: 'lasso' is not")
    assert "\n" not in message
