"""SAE checkpoints: this project's format and SAELens v6's, both ``cfg.json`` + safetensors.

This project's format stores the SAE's ``state_dict`` as is (``sae_weights.safetensors``) and a
``cfg.json`` with the architecture name, ``d_in``, ``d_sae``, the Config, the SAE's version and
the caller's ``meta``. Writes go to a temporary folder that is renamed into place, so a reader
sees the old checkpoint or the new one, never half of one.

The SAELens format (``save_saelens``/``load_saelens``) uses SAELens's field names and layout
(``W_enc`` is ``(d_in, d_sae)``, ``W_dec`` is ``(d_sae, d_in)``) with the input scale folded into
the weights (as SAELens does on save), for the architectures both support:

====================  ================================
here                  SAELens ``architecture``
====================  ================================
relu                  standard
topk                  topk
gated                 gated
jumprelu              jumprelu
batch-topk            jumprelu (learnt threshold)
matryoshka            jumprelu (learnt threshold)
====================  ================================
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saebench_vision.config import build_config, config_as_dict
from saebench_vision.errors import SaebenchError
from saebench_vision.interfaces import SAE

FORMAT = "saebench-vision-sae"
FORMAT_VERSION = 1
WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"

TO_SAELENS = {
    "relu": "standard",
    "topk": "topk",
    "gated": "gated",
    "jumprelu": "jumprelu",
    "batch-topk": "jumprelu",
    "matryoshka": "jumprelu",
}
FROM_SAELENS = {"standard": "relu", "topk": "topk", "gated": "gated", "jumprelu": "jumprelu"}


class CheckpointError(SaebenchError):
    """An SAE checkpoint is missing, damaged, or in a form this version cannot read."""


def _write_dir_atomically(directory: Path, write: Callable[[Path], None]) -> None:
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        write(tmp)
        for file in tmp.iterdir():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
        if directory.exists():
            trash = directory.parent / f".{directory.name}.{uuid.uuid4().hex[:8]}.old"
            os.rename(directory, trash)
            os.rename(tmp, directory)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_cfg(directory: Path) -> dict[str, Any]:
    directory = Path(directory)
    cfg_file, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for file in (cfg_file, weights):
        if not file.is_file():
            raise CheckpointError(
                f"{file}: missing; the SAE checkpoint is incomplete, retrain or re-save it"
            )
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{cfg_file}: unreadable JSON ({exc}); retrain or re-save the SAE"
        ) from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    file = Path(directory) / WEIGHTS_FILE
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{file}: damaged safetensors file ({exc}); retrain or re-save the SAE"
        ) from exc


def _construct(cls: Any, d_in: int, config: Any, d_sae: int) -> SAE:
    sae = cls(d_in, config)
    if sae.d_sae != d_sae:
        resize = getattr(sae, "resize_latents", None)
        if not callable(resize):
            raise CheckpointError(
                f"SAE `{cls.name}` with d_in {d_in} has {sae.d_sae} latents, the checkpoint {d_sae}"
            )
        resize(d_sae)
    return sae


def save_sae(sae: SAE, directory: Path, meta: dict[str, Any]) -> None:
    """Save ``sae`` to ``directory`` (``sae_weights.safetensors`` + ``cfg.json``), atomically."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sae.state_dict().items()}
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": sae.name,
        "version": sae.version,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "config": config_as_dict(sae.config),
        "meta": meta,
    }

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=1, sort_keys=True, default=str))

    _write_dir_atomically(Path(directory), write)


def load_sae(directory: Path, resolve: Callable[[str], type]) -> tuple[SAE, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_sae`; ``resolve(name)`` returns the SAE class.

    Returns ``(sae in eval mode on the CPU, meta)``. A missing, damaged or mismatched checkpoint
    raises :class:`CheckpointError` with a one-line message.
    """
    directory = Path(directory)
    cfg = _read_cfg(directory)
    if cfg.get("format") != FORMAT:
        hint = (
            " (it looks like a SAELens checkpoint: use load_saelens)"
            if "d_sae" in cfg and "config" not in cfg
            else ""
        )
        raise CheckpointError(f"{directory / CONFIG_FILE}: not a {FORMAT} checkpoint{hint}")
    try:
        name, d_in, d_sae = str(cfg["architecture"]), int(cfg["d_in"]), int(cfg["d_sae"])
        config_args = dict(cfg["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: missing or bad field {exc}; re-save the SAE"
        ) from exc
    cls: Any = resolve(name)
    config = build_config(
        cls.Config,
        config_args,
        where=str(directory / CONFIG_FILE) + ": config",
        what=f"SAE `{name}`",
    )
    sae = _construct(cls, d_in, config, d_sae)
    tensors = _read_weights(directory)
    try:
        sae.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        reason = " ".join(line.strip() for line in first[:2])
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE}: does not fit SAE `{name}`: {reason}"
        ) from exc
    if str(cfg.get("version")) != str(cls.version):
        import sys

        print(
            f"warning: {directory}: saved by SAE `{name}` version {cfg.get('version')}, "
            f"loading with version {cls.version}",
            file=sys.stderr,
        )
    return sae.eval(), dict(cfg.get("meta") or {})


# --------------------------------------------------------------------------------------------
# SAELens


def save_saelens(model: SAE, directory: Path, metadata: dict[str, Any] | None = None) -> None:
    """Write ``model`` as a SAELens v6 inference checkpoint (input scale folded into the weights)."""
    sae: Any = model
    arch = TO_SAELENS.get(sae.name)
    if arch is None:
        raise CheckpointError(
            f"SAE `{sae.name}` has no SAELens counterpart (supported: {', '.join(TO_SAELENS)})"
        )
    s = float(sae.input_scale)
    W_enc, W_dec = sae.W_enc.detach().float(), sae.W_dec.detach().float()
    tensors: dict[str, torch.Tensor] = {
        "W_enc": (W_enc * s).T,
        "W_dec": W_dec / s,
        "b_dec": sae.b_dec.detach().float() / s,
    }
    if arch == "gated":
        for key in ("b_gate", "r_mag", "b_mag"):
            tensors[key] = getattr(sae, key).detach().float()
    else:
        tensors["b_enc"] = sae.b_enc.detach().float()
    if sae.name == "jumprelu":
        tensors["threshold"] = sae.threshold.detach().float()
    elif arch == "jumprelu":
        tensors["threshold"] = torch.full((sae.d_sae,), float(sae.threshold))
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": bool(sae.config.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "saebench_vision_architecture": sae.name,
            "saebench_vision_config": config_as_dict(sae.config),
            **(metadata or {}),
        },
    }
    if arch == "topk":
        cfg.update(k=int(sae.config.k), rescale_acts_by_decoder_norm=False)
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=1, default=str))

    _write_dir_atomically(Path(directory), write)


def load_saelens(directory: Path, resolve: Callable[[str], type]) -> SAE:
    """Load a SAELens (v5 or v6) ``standard``/``topk``/``gated``/``jumprelu`` checkpoint."""
    directory = Path(directory)
    cfg = _read_cfg(directory)
    where = directory / CONFIG_FILE
    arch = str(cfg.get("architecture", "standard"))
    name = FROM_SAELENS.get(arch)
    if name is None:
        raise CheckpointError(
            f"{where}: SAELens architecture {arch!r} is not supported (supported: {', '.join(FROM_SAELENS)})"
        )
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm not in ("none", "expected_average_only_in"):
        raise CheckpointError(
            f"{where}: normalize_activations {norm!r} is a per-sample normalisation this project "
            f"does not implement; fold it into the weights first"
        )
    try:
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: missing or bad d_in/d_sae ({exc})") from exc
    cls: Any = resolve(name)
    args: dict[str, Any] = {
        "expansion": max(1, round(d_sae / d_in)),
        "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
    }
    if name == "topk":
        args.update(k=int(cfg.get("k", 100)), decoder_norm="free")
        if cfg.get("rescale_acts_by_decoder_norm"):
            raise CheckpointError(
                f"{where}: rescale_acts_by_decoder_norm=true is not supported; fold the decoder "
                f"norms into the weights first (SAELens fold_W_dec_norm)"
            )
    config = build_config(cls.Config, args, where=str(where), what=f"SAE `{name}`")
    sae: Any = _construct(cls, d_in, config, d_sae)
    raw = {k: v.float() for k, v in _read_weights(directory).items()}
    if "log_threshold" in raw and "threshold" not in raw:
        raw["threshold"] = raw.pop("log_threshold").exp()
    wanted = ["W_enc", "W_dec", "b_dec"] + (
        ["b_gate", "r_mag", "b_mag"] if name == "gated" else ["b_enc"]
    )
    if name == "jumprelu":
        wanted.append("threshold")
    missing = [k for k in wanted if k not in raw]
    if missing:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE}: missing tensors {', '.join(missing)} for SAELens {arch!r}"
        )
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for key, shape in expected.items():
        if tuple(raw[key].shape) != shape:
            raise CheckpointError(
                f"{directory / WEIGHTS_FILE}: {key} has shape {tuple(raw[key].shape)}, expected {shape}"
            )
    with torch.no_grad():
        sae.W_enc.copy_(raw["W_enc"].T)
        sae.W_dec.copy_(raw["W_dec"])
        sae.b_dec.copy_(raw["b_dec"])
        for key in wanted[3:]:
            getattr(sae, key).copy_(raw[key])
        sae.input_scale.fill_(1.0)
    return sae.eval()
