"""SAE checkpoints: this project's format and SAELens v6's, both ``cfg.json`` + safetensors.

This project's format stores the SAE's ``state_dict`` as is (``sae_weights.safetensors``) and a
``cfg.json`` with the architecture name, ``d_in``, ``d_sae``, the Config, the SAE's version and
the caller's ``meta``. Writes go to a temporary folder that is renamed into place, so a reader
sees the old checkpoint or the new one, never half of one.

The SAELens format (``save_saelens``/``load_saelens``) is SAELens v6's inference checkpoint.
This module knows only its container (``cfg.json`` fields shared by every architecture and the
weights file); each SAE class says how it maps to it (:meth:`SAE.to_saelens`,
:meth:`SAE.from_saelens`, :attr:`SAE.saelens_architectures`), so a third-party SAE can export
and load too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import time
import uuid
from collections.abc import Callable, Container, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saebench_vision.config import build_config, config_as_dict, stored_args
from saebench_vision.errors import ConfigError, SaebenchError
from saebench_vision.interfaces import SAE

FORMAT = "saebench-vision-sae"
FORMAT_VERSION = 1
WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"


class CheckpointError(SaebenchError):
    """An SAE checkpoint is missing, damaged, or in a form this version cannot read."""


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, computed once per process for each (path, size, mtime)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owner_tag() -> str:
    # Who wrote a temporary folder, so that a later start can tell a dead writer's leftovers
    # (SIGKILL) from a live writer's work in progress on this or another host.
    return f"{os.getpid()}@{_host_tag()}"


def _owner_gone(name: str, older_than_s: float, mtime: float) -> bool:
    parts = name.split(".")
    owner = next((p for p in parts if "@" in p), None)
    if owner is None:  # written before owners were recorded: only stale ones are swept
        return time.time() - mtime > older_than_s
    pid, _, host = owner.partition("@")
    if host != _host_tag() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def sweep_leftovers(folder: Path, older_than_s: float = 24 * 3600) -> list[Path]:
    """Remove the ``.*.tmp``/``.*.old`` folders in ``folder`` whose writer is gone; return them.

    A writer on another host is never judged (its pid means nothing here); a leftover without
    a recorded owner is removed once it is older than ``older_than_s``."""
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith((".tmp", ".old"))):
            continue
        try:
            mtime = entry.stat().st_mtime
        except OSError:
            continue
        if _owner_gone(entry.name, older_than_s, mtime):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def sweep_output(output: Path) -> list[Path]:
    """Sweep the leftovers of killed writers in an output folder: temporary SAE checkpoints
    (``saes/``) and training-state files (``train-state/*/``)."""
    removed = sweep_leftovers(Path(output) / "saes")
    for folder in sorted((Path(output) / "train-state").glob("*")):
        if folder.is_dir():
            removed += sweep_leftovers(folder)
    return removed


def _write_dir_atomically(directory: Path, write: Callable[[Path], None]) -> None:
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.{owner_tag()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        write(tmp)
        for file in tmp.iterdir():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
        if directory.exists():
            trash = directory.parent / f".{directory.name}.{owner_tag()}.{uuid.uuid4().hex[:8]}.old"
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
    sae: SAE = cls(d_in, config)
    if sae.d_sae != d_sae:
        try:
            sae.resize_latents(d_sae)
        except NotImplementedError as exc:
            raise CheckpointError(
                f"SAE `{cls.name}` with d_in {d_in} has {sae.d_sae} latents, the checkpoint "
                f"{d_sae} ({exc})"
            ) from exc
    return sae


def save_sae(sae: SAE, directory: Path, meta: dict[str, Any]) -> str:
    """Save ``sae`` to ``directory`` (``sae_weights.safetensors`` + ``cfg.json``), atomically.

    Returns the weights file's SHA-256, which ``cfg.json`` also records (``weights_sha256``)
    so that :func:`load_sae` and :func:`checkpoint_problem` can tell changed bytes."""
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
        cfg["weights_sha256"] = file_sha256(tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=1, sort_keys=True, default=str))

    _write_dir_atomically(Path(directory), write)
    return str(cfg["weights_sha256"])


def _safetensors_intact(file: Path) -> str | None:
    # Without a recorded hash: the header must parse and its tensors must end where the file does.
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return "shorter than a safetensors header"
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100 << 20):
                return "not a safetensors file (bad header length)"
            header = json.loads(fh.read(n))
        ends = [
            int(v["data_offsets"][1])
            for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict)
        ]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        return f"not a safetensors file ({exc})"
    if 8 + n + max(ends, default=0) != size:
        return f"{size} bytes where its header promises {8 + n + max(ends, default=0)} (truncated?)"
    return None


def checkpoint_problem(directory: Path, sae_id: str, sha256: str | None = None) -> str | None:
    """Why the checkpoint in ``directory`` is not SAE ``sae_id`` as saved, or None if it is.

    Checks the id in ``cfg.json`` and the weights' SHA-256 against ``sha256`` (the results
    store's record) and the one ``cfg.json`` records; with neither, that the weights file is
    whole. Hashes are memoised per process, so this is cheap to ask again."""
    directory = Path(directory)
    try:
        cfg = _read_cfg(directory)
    except CheckpointError as exc:
        return str(exc)
    meta = cfg.get("meta") if isinstance(cfg.get("meta"), dict) else {}
    held = meta.get("sae_id") if isinstance(meta, dict) else None
    if held != sae_id:
        return f"{directory / CONFIG_FILE}: holds SAE {held}, not {sae_id}"
    recorded = cfg.get("weights_sha256")
    weights = directory / WEIGHTS_FILE
    if sha256 and recorded and sha256 != recorded:
        return f"{directory / CONFIG_FILE}: records weights {recorded[:12]}, the results store {sha256[:12]}"
    want = sha256 or recorded
    if not want:
        return None if (why := _safetensors_intact(weights)) is None else f"{weights}: {why}"
    try:
        actual = file_sha256(weights)
    except OSError as exc:
        return f"{weights}: unreadable ({exc.strerror})"
    if actual != want:
        return f"{weights}: SHA-256 {actual[:12]} is not the saved {str(want)[:12]} (changed bytes)"
    return None


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
    recorded = cfg.get("weights_sha256")
    if recorded:
        actual = file_sha256(directory / WEIGHTS_FILE)
        if actual != recorded:
            raise CheckpointError(
                f"{directory / WEIGHTS_FILE}: damaged, SHA-256 {actual[:12]} is not the saved "
                f"{str(recorded)[:12]} (the file changed since it was saved); `saebench run` "
                "trains it again"
            )
    try:
        cls: Any = resolve(name)
    except SaebenchError as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: architecture: {exc}") from exc
    config = build_config(
        cls.Config,
        stored_args(cls.Config, config_args),
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
    """Write ``model`` as a SAELens v6 inference checkpoint, through :meth:`SAE.to_saelens`."""
    try:
        cfg, tensors = model.to_saelens()
    except NotImplementedError as exc:
        raise CheckpointError(f"cannot export to SAELens: {exc}") from exc
    cfg = {
        "d_in": model.d_in,
        "d_sae": model.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **cfg,
    }
    cfg["metadata"] = {
        "saebench_vision_architecture": model.name,
        "saebench_vision_config": config_as_dict(model.config),
        **dict(cfg.get("metadata") or {}),
        **(metadata or {}),
    }
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=1, default=str))

    _write_dir_atomically(Path(directory), write)


def load_saelens(directory: Path, classes: Iterable[type[SAE]]) -> SAE:
    """Load a SAELens (v5 or v6) checkpoint with the first of ``classes`` whose
    ``saelens_architectures`` names its ``architecture`` (see :meth:`SAE.from_saelens`)."""
    directory = Path(directory)
    cfg = _read_cfg(directory)
    where = directory / CONFIG_FILE
    arch = str(cfg.get("architecture", "standard"))
    candidates = list(classes)
    cls = next((c for c in candidates if arch in getattr(c, "saelens_architectures", ())), None)
    if cls is None:
        known = sorted({a for c in candidates for a in getattr(c, "saelens_architectures", ())})
        raise CheckpointError(
            f"{where}: SAELens architecture {arch!r} is not supported "
            f"(supported: {', '.join(known) or 'none'})"
        )
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm not in ("none", "expected_average_only_in"):
        raise CheckpointError(
            f"{where}: normalize_activations {norm!r} is a per-sample normalisation this project "
            f"does not implement; fold it into the weights first"
        )
    try:
        int(cfg["d_in"]), int(cfg["d_sae"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: missing or bad d_in/d_sae ({exc})") from exc
    tensors = {k: v.float() for k, v in _read_weights(directory).items()}
    try:
        sae = cls.from_saelens(cfg, tensors)
    except ConfigError as exc:  # a cfg.json value its Config refuses, named by its key
        raise CheckpointError(f"{directory}: {exc}") from exc
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE}: cannot load as SAELens {arch!r} with SAE "
            f"`{cls.name}`: {exc}"
        ) from exc
    return sae.eval()


class VerifiedSAEs(Container[str]):
    """The SAEs whose checkpoint is whole and theirs, asked one id at a time.

    ``saes`` maps an id to its checkpoint folder (or None) and the SHA-256 the results store
    recorded (or None). Only the ids the plan asks about are checked (a finished suite hashes
    nothing), each once. A damaged or exchanged checkpoint is reported through ``warn`` and
    counts as missing, so that the plan trains the SAE again."""

    def __init__(
        self,
        saes: dict[str, tuple[Path | None, str | None]],
        warn: Callable[[str], None],
    ) -> None:
        self._saes = saes
        self._warn = warn
        self._known: dict[str, bool] = {}

    def __contains__(self, sae_id: object) -> bool:
        if not isinstance(sae_id, str) or sae_id not in self._saes:
            return False
        if sae_id not in self._known:
            path, sha256 = self._saes[sae_id]
            ok = path is not None and path.exists()
            if ok and path is not None:
                problem = checkpoint_problem(path, sae_id, sha256)
                if problem is not None:
                    self._warn(f"warning: SAE {sae_id} at {path}: {problem}; training it again")
                    ok = False
            self._known[sae_id] = ok
        return self._known[sae_id]


def verified_saes(
    saes: dict[str, tuple[Path | None, str | None]], warn: Callable[[str], None]
) -> VerifiedSAEs:
    """:class:`VerifiedSAEs` of ``saes`` (id -> (checkpoint folder or None, SHA-256 or None))."""
    return VerifiedSAEs(saes, warn)
