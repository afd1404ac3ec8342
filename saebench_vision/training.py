"""The SAE trainer: one loop for every architecture, whole sweeps in one pass over the data.

:func:`train_saes` trains a list of SAEs together: the activations are read, shuffled and
batched once per step and every SAE takes its optimiser step on the same batch. The recipe is
:class:`~saebench_vision.config.TrainingConfig` (the paper's by default: Adam 1e-4, 5% linear
warm-up, 20% linear decay, 5% sparsity-coefficient warm-up, 3 epochs, batch 64).

Sweeps: SAEs of one architecture and shape can be stacked into a group whose products run as
batched matmuls (``fuse``; on by default on CUDA, where many small steps are launch-bound), and
on the CPU independent groups train side by side, one thread each (``parallel_saes``). Each
group has its own fused Adam. What an SAE may provide for this (a loss in normalised space, a
fused group step, gradient projections) is the optional part of :class:`~.interfaces.SAE`.

Determinism: SAEs start from the weights they were constructed with (construct them under a
seeded torch RNG; the built-ins initialise from it), the data order is a pure function of
``(seed, epoch)`` and nothing else draws random numbers, so an SAE ends with the same weights
whether it is trained alone or in a sweep, and a run resumed from a checkpoint ends with the
same weights as an uninterrupted one (on the CPU; CUDA's scatter-adds are not bitwise
reproducible).

Data: a training set of at most ``in_memory_limit_gb`` is read into memory (onto the training
device) and shuffled by a full permutation per epoch. A larger one streams from the memory-mapped
cache: the epoch's order permutes blocks of ``BLOCK_ROWS`` consecutive rows and then rows
within spans of ``BUFFER_BLOCKS`` blocks, so the rows of a span come from one region of the
files (in the page cache, not the process's heap). Rows are read a few batches at a time (at
most ``READ_BYTES``, at least one batch) by a background thread that keeps one read ahead of
the training step, so the heap the data takes is fixed whatever the number of rows.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import hashlib
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from saebench_vision.config import TrainingConfig, identity_dict
from saebench_vision.errors import ConfigError, SaebenchError
from saebench_vision.interfaces import SAE, resolve_device
from saebench_vision.progress import LogProgress, ProgressMode

BLOCK_ROWS = 1024
BUFFER_BLOCKS = 64
READ_BYTES = 16 * 2**20
"""Streaming: rows read per background read (whole batches, at least one)."""
NORM_SAMPLE_ROWS = 8192
"""Rows (of the first epoch's order) used to estimate the input scale and the ``b_dec`` init."""
DENSE_FIRING_RATE = 0.1
"""A latent is dense when it fires on more than this fraction of samples (SAEBench's choice)."""
FINAL_WINDOW_FRACTION = 0.05
"""``final_loss``/``final_mse``/``final_l0`` average the last 5% of steps."""
STATE_FILE = "train_state.pt"
FUSE_ELEMENTS = 1 << 27
"""Largest (S x batch x d_sae) a fused group's activations may have (512 MiB in float32)."""


class TrainingError(SaebenchError):
    """Training cannot start or resume (bad data, bad checkpoint, divergence)."""


_ALLOCATOR_TUNED = False


class SAEContractError(SaebenchError):
    """An SAE plugin's method returned something the SAE contract does not allow."""


CONTRACT_ROWS = 8


def _plugin(sae: SAE) -> str:
    cls = type(sae)
    return f"SAE `{sae.name}` ({cls.__module__}:{cls.__qualname__})"


def _check_tensor(
    sae: SAE, method: str, value: Any, shape: tuple[int, ...], meaning: str
) -> torch.Tensor:
    where = f"{_plugin(sae)}: {method}"
    if not isinstance(value, torch.Tensor):
        raise SAEContractError(f"{where} returned a {type(value).__name__}, not a tensor")
    if tuple(value.shape) != shape:
        raise SAEContractError(
            f"{where} returned shape {tuple(value.shape)}, expected {shape} {meaning}; "
            "fix the plugin"
        )
    if not value.is_floating_point():
        raise SAEContractError(f"{where} returned dtype {value.dtype}, expected a floating dtype")
    if not bool(torch.isfinite(value).all()):
        raise SAEContractError(
            f"{where} returned non-finite values (nan or inf) on finite inputs; fix the plugin"
        )
    return value


def check_sae_contract(sae: SAE, x: torch.Tensor) -> None:
    """Check an SAE against its contract on a few rows ``x`` (raw activations, (B, d_in)):
    ``encode`` gives (B, d_sae), ``decode`` (B, d_in) and ``decoder_directions`` (d_sae, d_in)
    when implemented, all floating and finite. A one-line :class:`SAEContractError` names the
    plugin and the method. Cheap (a forward pass on ``CONTRACT_ROWS`` rows, no gradients), and
    side-effect free: eval mode and the random state are restored afterwards."""
    x = x[:CONTRACT_ROWS]
    b, d_in, d_sae = x.shape[0], sae.d_in, sae.d_sae
    training = sae.training
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            sae.eval()
            z = _check_tensor(sae, "encode", sae.encode(x), (b, d_sae), "(batch, d_sae)")
            _check_tensor(sae, "decode", sae.decode(z), (b, d_in), "(batch, d_in)")
            try:
                directions = sae.decoder_directions()
            except NotImplementedError:
                directions = None
            if directions is not None:
                _check_tensor(sae, "decoder_directions", directions, (d_sae, d_in), "(d_sae, d_in)")
    except SAEContractError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        text = " ".join(str(exc).split())[:160]
        raise SAEContractError(
            f"{_plugin(sae)}: encode/decode failed on a ({b}, {d_in}) batch ({text}); fix the "
            "plugin"
        ) from exc
    finally:
        sae.train(training)


def available_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` (CUDA: the device's free memory; else the machine's available
    memory from psutil or /proc/meminfo), or None where it cannot be told."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        except (RuntimeError, AssertionError):
            return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def check_memory(needed: float, device: torch.device, what: str, fix: str) -> None:
    """A one-line :class:`ConfigError` when ``needed`` bytes exceed what ``device`` has free;
    silent where free memory cannot be told. ``what`` names the suite field, ``fix`` the way out."""
    free = available_memory(device)
    if free is not None and needed > free:
        raise ConfigError(
            f"{what} needs about {_size(needed)} of memory, {device.type} has {_size(free)} "
            f"available; {fix}"
        )


# Adam: per parameter, the weight, its gradient and two moment estimates, in float32; a
# margin of 2 for the activations, temporaries and the fused copies of a sweep.
SAE_BYTES_PER_PARAM = 4 * 4 * 2


def estimate_sae_bytes(d_in: int, d_sae: int) -> int:
    """Training memory of one SAE with a (d_in x d_sae) encoder and decoder, with Adam."""
    return 2 * d_in * d_sae * SAE_BYTES_PER_PARAM


def estimate_batch_bytes(batch_size: int, d_in: int, d_saes: Sequence[int]) -> float:
    """Memory of one training batch through a sweep: per row, the input, each SAE's code and
    pre-activations, and their gradients, in float32. A batch wraps around epochs, so it holds
    ``batch_size`` rows however few the data has."""
    return 4.0 * 4 * batch_size * (d_in + sum(d_saes))


def check_sweep_memory(
    d_in: int,
    saes: Sequence[tuple[str, Any]],
    batch_size: int,
    device: torch.device,
    path: Any,
) -> None:
    """The memory checks of a sweep trained together, made before any SAE is built (so that
    ``saebench validate`` makes them too, from a layer width the adapter knows offline): the
    SAEs with their Adam state, then one batch through all of them. ``saes`` holds (YAML
    location of each SAE entry, its Config); ``path`` is the suite file. One line naming the
    largest SAE's ``expansion`` or ``training.batch_size``, with the way out."""
    if not saes:
        return
    widths = [int(d_in * float(getattr(c, "expansion", 1))) for _, c in saes]
    big = max(range(len(widths)), key=widths.__getitem__)
    check_memory(
        float(sum(estimate_sae_bytes(d_in, w) for w in widths)),
        device,
        f"{path}: {saes[big][0]}.args.expansion: {getattr(saes[big][1], 'expansion', '?')} "
        f"({len(widths)} SAE(s) trained together, the largest {d_in} x {widths[big]})",
        "lower the expansion, or train on a machine with more memory",
    )
    check_memory(
        estimate_batch_bytes(batch_size, d_in, widths),
        device,
        f"{path}: training.batch_size: {batch_size} (rows of width {d_in} into {len(widths)} "
        f"SAE(s) of {sum(widths)} latents in all)",
        "lower training.batch_size",
    )


def tune_cpu_allocator() -> bool:
    """Let glibc keep large freed blocks for reuse instead of returning them to the system.

    torch's CPU allocator takes every tensor from ``malloc``; glibc serves blocks above 32 MiB
    from fresh ``mmap`` pages and unmaps them on free, so each (batch, d_sae) temporary of a
    training step pays for its page faults again (about 40 ms per 100 MB here, as much as the
    arithmetic of a ReLU over it). Raising the mmap and trim thresholds makes such blocks come
    from the heap and be reused. The process then keeps its peak memory until it exits. Linux
    only; set ``SAEBENCH_VISION_MALLOC_DEFAULTS=1`` to leave the allocator alone. Returns
    whether the setting is in effect.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("SAEBENCH_VISION_MALLOC_DEFAULTS"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        ok = ok and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = bool(ok)
    return _ALLOCATOR_TUNED


# --------------------------------------------------------------------------------------------
# Data


class _Rows:
    """Random access to the training rows (the whole set or a seeded subset of it)."""

    def __init__(self, data: Any, max_samples: int | None, seed: int) -> None:
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
        self.data = data
        self.n_total = int(data.n if hasattr(data, "n") else data.shape[0])
        self.d = int(data.d if hasattr(data, "d") else data.shape[1])
        if self.n_total == 0:
            raise TrainingError("training data has no rows; check the train split")
        self.subset: np.ndarray | None = None
        if max_samples is not None and max_samples < self.n_total:
            if max_samples < 1:
                raise ConfigError(f"training.max_samples: {max_samples} must be at least 1")
            rng = np.random.default_rng([seed, 0x5AE5])
            self.subset = np.sort(rng.choice(self.n_total, size=max_samples, replace=False))
        self.n = len(self.subset) if self.subset is not None else self.n_total

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Rows at ``positions`` (indices into the subset), in that order, as float32."""
        rows = self.subset[positions] if self.subset is not None else positions
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        if hasattr(self.data, "read"):
            block = self.data.read(sorted_rows)
        else:
            block = np.asarray(self.data[sorted_rows], dtype=np.float32)
        out = np.empty_like(block)
        out[order] = block
        return out


class _BatchStream:
    """Batches of the shuffled stream from a given step on, as float32 tensors on ``device``."""

    def __init__(
        self, rows: _Rows, batch: int, seed: int, device: torch.device, in_memory: bool
    ) -> None:
        self.rows, self.batch, self.seed, self.device = rows, batch, seed, device
        self.in_memory = in_memory
        self.table: torch.Tensor | None = None
        if in_memory:
            self.table = torch.from_numpy(rows.read(np.arange(rows.n))).to(device)

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        n = self.rows.n
        if self.in_memory:
            return rng.permutation(n)
        blocks = rng.permutation(math.ceil(n / BLOCK_ROWS))
        order = np.concatenate(
            [np.arange(b * BLOCK_ROWS, min(n, (b + 1) * BLOCK_ROWS)) for b in blocks]
        )
        span = BLOCK_ROWS * BUFFER_BLOCKS
        for lo in range(0, n, span):
            order[lo : lo + span] = rng.permutation(order[lo : lo + span])
        return order

    def sample(self, rows: int) -> torch.Tensor:
        """The first ``rows`` rows of epoch 0's order (for statistics before training)."""
        pos = self.epoch_order(0)[: min(rows, self.rows.n)]
        return self._take(pos)

    def _take(self, positions: np.ndarray) -> torch.Tensor:
        if self.table is not None:
            idx = torch.from_numpy(positions).to(self.device)
            return self.table.index_select(0, idx)
        return torch.from_numpy(self.rows.read(positions)).to(self.device)

    def _segments(self, start_sample: int) -> Iterator[np.ndarray]:
        """Position arrays of the stream from ``start_sample`` on, in buffer-sized pieces."""
        n = self.rows.n
        epoch, offset = divmod(start_sample, n)
        span = self.batch if self.in_memory else BLOCK_ROWS * BUFFER_BLOCKS
        while True:
            order = self.epoch_order(epoch)
            for lo in range(offset, n, span):
                yield order[lo : min(n, lo + span)]
            epoch, offset = epoch + 1, 0

    def _batch_positions(self, start_step: int) -> Iterator[np.ndarray]:
        """Position arrays of consecutive batches from ``start_step`` on; a batch continues
        across segment and epoch ends."""
        pending: list[np.ndarray] = []
        have = 0
        for seg in self._segments(start_step * self.batch):
            pending.append(seg)
            have += len(seg)
            while have >= self.batch:
                pos = np.concatenate(pending) if len(pending) > 1 else pending[0]
                yield pos[: self.batch]
                rest = pos[self.batch :]
                pending, have = ([rest] if len(rest) else []), len(rest)

    def read_batches(self) -> int:
        """Batches per background read when streaming (a fixed budget: ``READ_BYTES``)."""
        return max(1, READ_BYTES // (4 * self.rows.d * self.batch))

    def batches(self, start_step: int) -> Iterator[torch.Tensor]:
        positions = self._batch_positions(start_step)
        if self.table is not None:
            for pos in positions:
                yield self._take(pos)
            return
        per_read = self.read_batches()

        def reads() -> Iterator[np.ndarray]:
            while True:
                group = [next(positions) for _ in range(per_read)]
                yield np.concatenate(group) if per_read > 1 else group[0]

        pieces = reads()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(self._read_cpu, next(pieces))
            while True:
                nxt = pool.submit(self._read_cpu, next(pieces))
                block = future.result()
                future = nxt
                for lo in range(0, len(block), self.batch):
                    yield block[lo : lo + self.batch].to(self.device, non_blocking=True)
                del block

    def _read_cpu(self, positions: np.ndarray) -> torch.Tensor:
        out = torch.from_numpy(self.rows.read(positions))
        return out.pin_memory() if self.device.type == "cuda" else out


# --------------------------------------------------------------------------------------------
# Schedules


def lr_factor(step: int, total: int, config: TrainingConfig) -> float:
    """Linear warm-up over the first ``warmup_fraction``, linear decay to 0 over the last
    ``decay_fraction`` of steps (the paper's schedule)."""
    warm = round(config.warmup_fraction * total)
    decay = round(config.decay_fraction * total)
    factor = 1.0
    if warm > 0:
        factor = min(factor, (step + 1) / warm)
    if decay > 0 and step >= total - decay:
        factor = min(factor, (total - step) / decay)
    return factor


def sparsity_factor(step: int, total: int, config: TrainingConfig) -> float:
    warm = round(config.sparsity_warmup_fraction * total)
    return min(1.0, (step + 1) / warm) if warm > 0 else 1.0


def total_steps(n_rows: int, config: TrainingConfig) -> int:
    return max(1, round(config.epochs * n_rows / config.batch_size))


# --------------------------------------------------------------------------------------------
# Initialisation


def geometric_median(x: torch.Tensor, iters: int = 100, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm in float64 (dictionary_learning's and SAELens v5's ``b_dec`` init)."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        dist = (x - y).norm(dim=1).clamp_min(eps)
        w = 1.0 / dist
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - y).norm() <= eps * max(1.0, float(y.norm())):
            y = new
            break
        y = new
    return y.float()


def _init_saes(saes: Sequence[SAE], sample: torch.Tensor, config: TrainingConfig) -> float:
    """Set every SAE's ``input_scale`` and ``b_dec`` from a data sample; returns the scale."""
    scale = 1.0
    if config.normalize == "sqrt-d":
        mean_norm = float(sample.double().norm(dim=1).mean())
        if not math.isfinite(mean_norm) or mean_norm <= 0:
            raise TrainingError(f"training data has mean norm {mean_norm}; cannot normalise it")
        scale = math.sqrt(sample.shape[1]) / mean_norm
    sample_n = sample * scale
    medians: dict[str, torch.Tensor] = {}
    for sae in saes:
        cast(torch.Tensor, sae.input_scale).fill_(scale)
        how = getattr(sae.config, "b_dec_init", "zeros")
        if how == "zeros":
            continue
        if how not in medians:
            medians[how] = sample_n.mean(0) if how == "mean" else geometric_median(sample_n)
        with torch.no_grad():
            sae.init_b_dec(medians[how])
    return scale


def _make_optimizer(
    params: list[torch.nn.Parameter], config: TrainingConfig, device: torch.device
) -> torch.optim.Optimizer:
    """Adam, fused into one kernel per step where torch has one for the device."""
    kwargs: dict[str, Any] = {"lr": config.lr, "betas": tuple(config.adam_betas)}
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.Adam(params, fused=True, **kwargs)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.Adam(params, **kwargs)


# --------------------------------------------------------------------------------------------
# Checkpoints


def _fingerprint(saes: Sequence[SAE], rows: _Rows, config: TrainingConfig, seed: int) -> str:
    key = getattr(rows.data, "key", None)
    ident = {
        "seed": seed,
        "n": rows.n,
        "n_total": rows.n_total,
        "d": rows.d,
        "data": key,
        "config": identity_dict(config),
        "saes": [s.identity() for s in saes],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    from saebench_vision.checkpoint import owner_tag

    tmp = path.with_name(f".{path.name}.{owner_tag()}.{uuid.uuid4().hex}.tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _load_state(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means "start over"
        import sys

        print(
            f"warning: {path}: unreadable training checkpoint ({exc}); starting over",
            file=sys.stderr,
        )
        return None
    if state.get("fingerprint") != fingerprint:
        import sys

        print(
            f"warning: {path}: checkpoint is for other SAEs, data or settings; starting over",
            file=sys.stderr,
        )
        return None
    return state


# --------------------------------------------------------------------------------------------
# The loop


class _Tracker:
    """Per-SAE running statistics kept on the training device (no sync per step)."""

    def __init__(self, sae: SAE, device: torch.device) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.fired = torch.zeros(sae.d_sae, dtype=torch.int64, device=device)
        self.samples = 0
        self.last: dict[str, torch.Tensor] = {}

    def state(self) -> dict[str, Any]:
        return {
            "sums": {k: v.cpu() for k, v in self.sums.items()},
            "steps": self.steps,
            "fired": self.fired.cpu(),
            "samples": self.samples,
        }

    def load(self, state: dict[str, Any], device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.steps = int(state["steps"])
        self.fired = state["fired"].to(device)
        self.samples = int(state["samples"])


class _Group:
    """SAEs that take their step together.

    A fused group (SAEs of one :meth:`~saebench_vision.interfaces.SAE.fusion_key`) keeps its
    members' parameters stacked in one tensor per name; each member's parameters are views
    into it, so the optimiser updates the stack and the members see the new values. Any other
    SAE is a group of one with its own parameters.
    """

    def __init__(self, saes: list[SAE], stack: bool) -> None:
        self.saes = saes
        self.stacked: dict[str, torch.nn.Parameter] = {}
        if stack and len(saes) > 1:
            for name, first in saes[0].named_parameters():
                members = [dict(s.named_parameters())[name] for s in saes]
                stacked = torch.nn.Parameter(
                    torch.stack([m.detach() for m in members]), requires_grad=first.requires_grad
                )
                for i, member in enumerate(members):
                    member.data = stacked.data[i]
                self.stacked[name] = stacked

    def parameters(self) -> list[torch.nn.Parameter]:
        if self.stacked:
            return [p for p in self.stacked.values() if p.requires_grad]
        return [p for sae in self.saes for p in sae.parameters() if p.requires_grad]

    def step(
        self, x: torch.Tensor, xn: torch.Tensor, scale: float
    ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Forward and backward; returns each member's (metrics, fired counts)."""
        if self.stacked:
            terms = type(self.saes[0]).group_terms(self.saes, dict(self.stacked), xn, scale)
            terms.loss.backward()
            return [(t.metrics, t.fired) for t in terms.items]
        out: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []
        for sae in self.saes:
            t = sae.train_terms(xn, sparsity_scale=scale)
            t.loss.backward()
            out.append((t.metrics, t.fired))
        return out

    @torch.no_grad()
    def clip_gradients(self, max_norm: float) -> None:
        """Scale each member's gradient so that its global norm is at most ``max_norm``
        (``torch.nn.utils.clip_grad_norm_`` per SAE, as SAELens clips): members of a fused
        group are clipped separately, so a sweep trains as its SAEs would alone."""
        if max_norm <= 0:
            return
        if self.stacked:
            grads = [p.grad for p in self.stacked.values() if p.grad is not None]
            if not grads:
                return
            sq = torch.stack([g.pow(2).reshape(g.shape[0], -1).sum(1) for g in grads]).sum(0)
            factor = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(factor.reshape(-1, *([1] * (g.dim() - 1))))
            return
        for sae in self.saes:
            params = [p for p in sae.parameters() if p.requires_grad and p.grad is not None]
            if params:
                torch.nn.utils.clip_grad_norm_(params, max_norm)

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        if self.stacked:
            type(self.saes[0]).before_group_optimizer_step(self.saes, self.stacked)
            return
        for sae in self.saes:
            sae.before_optimizer_step()

    def unstack(self) -> None:
        """Give every member its own storage again."""
        if self.stacked:
            for sae in self.saes:
                for p in sae.parameters():
                    p.data = p.data.clone()
            self.stacked = {}


def _groups(saes: list[SAE], config: TrainingConfig, device: torch.device) -> list[_Group]:
    """Fuse same-shape SAEs of one architecture, in chunks that bound the (S, B, n) tensors."""
    fuse = config.fuse == "on" or (config.fuse == "auto" and device.type == "cuda")
    if not fuse:
        return [_Group([s], stack=False) for s in saes]
    by_key: dict[str, list[SAE]] = {}
    order: list[str | int] = []
    for i, sae in enumerate(saes):
        key = sae.fusion_key()
        if key is None:
            order.append(i)
            continue
        if key not in by_key:
            by_key[key] = []
            order.append(key)
        by_key[key].append(sae)
    groups = []
    for item in order:
        if isinstance(item, int):
            groups.append(_Group([saes[item]], stack=False))
            continue
        members = by_key[item]
        size = max(1, FUSE_ELEMENTS // max(1, config.batch_size * members[0].d_sae))
        for lo in range(0, len(members), size):
            groups.append(_Group(members[lo : lo + size], stack=True))
    return groups


class SweepTrainer:
    """One optimiser step for every SAE of a sweep on a shared batch (the trainer's core).

    ``step(x, i)`` takes a raw batch and the step's index (for the learning-rate and sparsity
    schedules). :func:`train_saes` drives it over the data; the throughput benchmark drives it
    directly. Call :meth:`finish` at the end.

    Each group has its own fused Adam, so groups are independent. On the CPU, when there are
    several groups, they train side by side on ``config.parallel_saes`` threads with one
    intra-op thread each (torch's thread count is restored by :meth:`finish`): small products
    (batch 64) parallelise poorly inside one matmul and every parallel region waits for its
    slowest thread, while independent SAEs need no synchronisation until the step ends. Each
    SAE's arithmetic is then single-threaded and the same whichever thread runs it.
    """

    def __init__(
        self,
        saes: list[SAE],
        config: TrainingConfig,
        *,
        total_steps: int,
        input_scale: float,
        device: torch.device,
    ) -> None:
        self.saes, self.config, self.total = saes, config, total_steps
        self.input_scale = float(input_scale)
        self.groups = _groups(saes, config, device)
        self.optimizers = [_make_optimizer(g.parameters(), config, device) for g in self.groups]
        self._threads_before = torch.get_num_threads()
        workers = config.parallel_saes or self._threads_before
        workers = min(workers, len(self.groups)) if device.type == "cpu" else 1
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._shares: list[list[int]] = [list(range(len(self.groups)))]
        if workers > 1:
            cost = [sum(s.d_in * s.d_sae for s in g.saes) for g in self.groups]
            shares: list[list[int]] = [[] for _ in range(workers)]
            loads = [0] * workers
            for i in sorted(range(len(self.groups)), key=lambda i: -cost[i]):
                w = loads.index(min(loads))
                shares[w].append(i)
                loads[w] += cost[i]
            self._shares = [sorted(share) for share in shares if share]
            torch.set_num_threads(1)
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(self._shares))

    def _run(
        self, share: list[int], x: torch.Tensor, xn: torch.Tensor, lr: float, scale: float
    ) -> list[tuple[SAE, tuple[dict[str, torch.Tensor], torch.Tensor]]]:
        out: list[tuple[SAE, tuple[dict[str, torch.Tensor], torch.Tensor]]] = []
        for i in share:
            group, optimizer = self.groups[i], self.optimizers[i]
            out.extend(zip(group.saes, group.step(x, xn, scale)))
            group.clip_gradients(self.config.max_grad_norm)
            group.before_optimizer_step()
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for sae in group.saes:
                sae.on_step_end()
        return out

    def step(
        self, x: torch.Tensor, step: int
    ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Train on raw batch ``x``; returns (metrics, fired counts) per SAE, in ``saes`` order."""
        xn = x * self.input_scale
        lr = self.config.lr * lr_factor(step, self.total, self.config)
        scale = sparsity_factor(step, self.total, self.config)
        if self._pool is None:
            done = [self._run(share, x, xn, lr, scale) for share in self._shares]
        else:
            futures = [
                self._pool.submit(self._run, share, x, xn, lr, scale) for share in self._shares
            ]
            done = [f.result() for f in futures]
        results = {id(sae): res for part in done for sae, res in part}
        return [results[id(sae)] for sae in self.saes]

    def optimizer_states(self) -> list[dict[str, Any]]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_optimizer_states(self, states: list[dict[str, Any]]) -> None:
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)

    def finish(self) -> None:
        """End of training: fused groups' members get their own storage back, threads reset."""
        for group in self.groups:
            group.unstack()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
            torch.set_num_threads(self._threads_before)


def train_saes(
    saes: list[SAE],
    data: Any,
    config: TrainingConfig,
    *,
    seed: int,
    progress: ProgressMode = True,
    desc: str = "",
    checkpoint_dir: Path | None = None,
) -> list[dict[str, float]]:
    """Train ``saes`` in place, together, in one pass over ``data``; return per-SAE statistics.

    ``data`` is an :class:`~saebench_vision.cache.ActivationSet` (or an (N, d) array). Each
    SAE's statistics are ``final_loss``, ``final_mse``, ``final_l0`` (means over the last 5% of
    steps, in normalised space), ``dead_fraction`` and ``dense_fraction`` (latents that never
    fired, or fired on more than 10% of samples, over the last epoch's worth of steps),
    ``steps``, ``seconds`` (the whole sweep's wall time) and ``input_scale``.

    With ``checkpoint_dir`` and ``config.checkpoint_every > 0`` the full training state is saved
    atomically every that many steps and training resumes from it when present; the state file
    is removed once training completes. SAEs end on the CPU, in eval mode.
    """
    if not saes:
        return []
    rows = _Rows(data, config.max_samples, seed)
    for i, sae in enumerate(saes):
        if sae.d_in != rows.d:
            raise TrainingError(
                f"SAE {i} (`{sae.name}`) expects inputs of width {sae.d_in} but the training "
                f"activations have width {rows.d}"
            )
    if config.batch_size < 1:
        raise ConfigError(f"training.batch_size: {config.batch_size} must be at least 1")
    device = resolve_device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "training.device: cuda was requested but no CUDA device is available; use cpu or auto"
        )
    # A batch wraps around epochs, so it holds batch_size rows however few the data has; per
    # row: the input, each SAE's code and pre-activations, and their gradients, in float32.
    check_memory(
        estimate_batch_bytes(config.batch_size, rows.d, [sae.d_sae for sae in saes]),
        device,
        f"training.batch_size: {config.batch_size} (rows of width {rows.d} into "
        f"{len(saes)} SAE(s) of {sum(sae.d_sae for sae in saes)} latents in all)",
        "lower training.batch_size",
    )
    torch.manual_seed(seed)
    if device.type == "cpu":
        tune_cpu_allocator()
    in_memory = rows.n * rows.d * 4 <= config.in_memory_limit_gb * 2**30
    stream = _BatchStream(rows, config.batch_size, seed, device, in_memory)
    steps_total = total_steps(rows.n, config)
    steps_per_epoch = math.ceil(rows.n / config.batch_size)
    final_window = max(1, math.ceil(FINAL_WINDOW_FRACTION * steps_total))
    fire_window = min(steps_total, steps_per_epoch)

    for sae in saes:
        sae.to(device)
        sae.train()
        sae.begin_training(steps_total * config.batch_size)
    sample = stream.sample(NORM_SAMPLE_ROWS)
    input_scale = _init_saes(saes, sample, config)
    for sae in saes:
        check_sae_contract(sae, sample)
    trainer = SweepTrainer(
        saes, config, total_steps=steps_total, input_scale=input_scale, device=device
    )
    trackers = [_Tracker(sae, device) for sae in saes]

    state_path = Path(checkpoint_dir) / STATE_FILE if checkpoint_dir is not None else None
    checkpointing = state_path is not None and config.checkpoint_every > 0
    fingerprint = _fingerprint(saes, rows, config, seed) if checkpointing else ""
    start, elapsed_before = 0, 0.0
    if checkpointing and state_path is not None:
        state = _load_state(state_path, fingerprint)
        if state is not None:
            for sae, sd in zip(saes, state["saes"]):
                sae.load_state_dict(sd)
            trainer.load_optimizer_states(state["optimizer"])
            for tracker, ts in zip(trackers, state["trackers"]):
                tracker.load(ts, device)
            torch.set_rng_state(state["rng"])
            start, elapsed_before = int(state["step"]), float(state["seconds"])

    t0 = time.perf_counter()
    bar = _progress(steps_total, start, desc, progress)
    if isinstance(bar, LogProgress):
        # Each log line reads the loss of the step it reports (one device sync per line).
        bar.postfix_source = lambda: _postfix_values(trackers)
    posted = -math.inf
    batches = stream.batches(start)
    try:
        for step in range(start, steps_total):
            x = next(batches)
            results = trainer.step(x, step)
            in_final = step >= steps_total - final_window
            in_fire = step >= steps_total - fire_window
            for tracker, (metrics, fired) in zip(trackers, results):
                tracker.last = metrics
                if in_final:
                    for key, value in metrics.items():
                        value = value.detach().float()
                        tracker.sums[key] = (
                            tracker.sums[key] + value if key in tracker.sums else value
                        )
                    tracker.steps += 1
                if in_fire:
                    tracker.fired += fired.to(tracker.fired.dtype)
                    tracker.samples += x.shape[0]
            if bar is not None:
                bar.update(1)
                # A bar redraws often: its loss is refreshed once a second (a device sync each
                # time), and at the last step.
                now = time.monotonic()
                if not isinstance(bar, LogProgress) and (
                    now - posted >= POSTFIX_SECONDS or step == steps_total - 1
                ):
                    bar.set_postfix(**_postfix_values(trackers))
                    posted = now
            if (
                checkpointing
                and state_path is not None
                and (step + 1) % config.checkpoint_every == 0
                and step + 1 < steps_total
            ):
                _save_state(
                    state_path,
                    {
                        "fingerprint": fingerprint,
                        "step": step + 1,
                        "seconds": elapsed_before + time.perf_counter() - t0,
                        "saes": [
                            {k: v.detach().cpu().clone() for k, v in sae.state_dict().items()}
                            for sae in saes
                        ],
                        "optimizer": trainer.optimizer_states(),
                        "trackers": [t.state() for t in trackers],
                        "rng": torch.get_rng_state(),
                    },
                )
    finally:
        trainer.finish()
    if bar is not None:
        bar.close()
    seconds = elapsed_before + time.perf_counter() - t0

    stats = []
    for sae, tracker in zip(saes, trackers):
        sums = {k: float(v) / max(1, tracker.steps) for k, v in tracker.sums.items()}
        if not math.isfinite(sums.get("loss", 0.0)):
            raise TrainingError(
                f"SAE `{sae.name}` diverged (final loss {sums.get('loss')}); lower training.lr "
                f"or the sparsity coefficient"
            )
        rate = tracker.fired.double() / max(1, tracker.samples)
        entry = {f"final_{k}": v for k, v in sums.items()}
        entry.update(
            dead_fraction=float((tracker.fired == 0).double().mean()),
            dense_fraction=float((rate > DENSE_FIRING_RATE).double().mean()),
            steps=float(steps_total),
            seconds=seconds,
            input_scale=float(input_scale),
        )
        entry.setdefault("final_mse", float("nan"))
        entry.setdefault("final_l0", float("nan"))
        stats.append(entry)
        sae.to("cpu")
        sae.eval()
    if checkpointing and state_path is not None and state_path.exists():
        state_path.unlink()
    return stats


def _progress(total: int, initial: int, desc: str, mode: ProgressMode) -> Any:
    from saebench_vision.progress import make_progress

    return make_progress(total, desc or "training SAEs", "step", mode, initial=initial, leave=False)


POSTFIX_SECONDS = 1.0
"""How often a progress bar's loss is read from the device."""


def _postfix_values(trackers: list[_Tracker]) -> dict[str, Any]:
    """The first SAE's MSE and L0 at the latest step, for a progress line."""
    first = trackers[0].last
    if "mse" not in first or "l0" not in first:
        return {}
    return {
        "mse": f"{float(first['mse']):.4g}",
        "l0": f"{float(first['l0']):.1f}",
        "saes": len(trackers),
    }
