"""SAE encodings shared across evaluators: each (SAE, split) is encoded once per run, stored sparsely.

At the paper's scale a dense (N, d_sae) latent array is 1.28M x 12,288 x 4 bytes = 63 GB, and
every evaluator of a cell used to re-encode the same split (the probes about 13 times per feature
kind). SAE latents are sparse (L0 of tens to a few hundred), so an :class:`Encoding` keeps them in
CSR form: ``indptr`` (N+1,) int64, ``indices`` (nnz,) int32 and ``values`` (nnz,) float32, the
exact non-zeros of ``sae.encode(x)`` (decoding a chunk back to dense gives the same float32
numbers). Entries stay in memory while the store's ``memory_budget_bytes`` allows; beyond it they
are written to files in the store's folder and read back through memory maps, so memory stays
flat in N. Readers stream: :meth:`Encoding.iter_dense` (chunks), :meth:`Encoding.iter_sparse`
(row, column, value triplets) and :meth:`Encoding.read` (rows by index).

This module imports torch; it is used by :class:`~saebench_vision.interfaces.EvalContext`.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from saebench_vision.errors import SaebenchError

if TYPE_CHECKING:
    from saebench_vision.cache import ActivationSet
    from saebench_vision.interfaces import SAE

DEFAULT_MEMORY_BUDGET = 4 * 2**30
"""Bytes of CSR encodings a store keeps in memory before it spills new ones to memory-mapped files."""
DEFAULT_DENSE_LIMIT = 2 * 2**30
"""Largest dense (N, d_sae) float32 array :meth:`EvalContext.sae_encode` will build."""


class Encoding:
    """The SAE latents of one split, CSR: row ``i``'s non-zeros are
    ``indices[indptr[i]:indptr[i+1]]`` (latent ids, ascending) with ``values`` of the same slice."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, d_sae: int):
        self.indptr = indptr
        self.indices = indices
        self.values = values
        self.d_sae = int(d_sae)
        self.n = len(indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.indices.nbytes + self.values.nbytes)

    def dense(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a dense float32 array (stop - start, d_sae)."""
        return self.read(np.arange(start, min(stop, self.n)))

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows at ``rows`` (any order) as a dense float32 array (len(rows), d_sae)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), self.d_sae), dtype=np.float32)
        local, cols, vals = self.gather(rows)
        out[local, cols] = vals
        return out

    def csr(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The non-zeros of ``rows`` in CSR form: ``(indptr (len(rows) + 1,), latent ids,
        values)``, row ``i``'s entries at ``indptr[i]:indptr[i + 1]``."""
        lo, hi = self.indptr[rows], self.indptr[rows + 1]
        counts = hi - lo
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        if len(rows) and np.all(rows[1:] == rows[:-1] + 1):
            # A contiguous block: one slice of the (possibly memory-mapped) arrays.
            a, b = int(lo[0]), int(hi[-1])
            return indptr, np.asarray(self.indices[a:b]), np.asarray(self.values[a:b])
        offsets = np.repeat(lo - indptr[:-1], counts) + np.arange(int(indptr[-1]))
        return indptr, np.asarray(self.indices[offsets]), np.asarray(self.values[offsets])

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The non-zeros of ``rows``: ``(position in rows, latent id, value)`` arrays."""
        indptr, cols, vals = self.csr(rows)
        return np.repeat(np.arange(len(rows)), np.diff(indptr)), cols, vals

    def iter_dense(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start row, dense float32 chunk)`` of at most ``rows`` rows, in order."""
        for start in range(0, self.n, rows):
            yield start, self.dense(start, start + rows)

    def iter_sparse(self, rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """``(start row, row offsets within the chunk, latent ids, values)`` per chunk of ``rows``."""
        for start in range(0, self.n, rows):
            stop = min(start + rows, self.n)
            local, cols, vals = self.gather(np.arange(start, stop))
            yield start, local, cols, vals

    def fire_counts(self) -> np.ndarray:
        """Rows on which each latent is non-zero, (d_sae,) int64."""
        counts = np.zeros(self.d_sae, dtype=np.int64)
        step = 1 << 24
        for lo in range(0, self.nnz, step):
            counts += np.bincount(np.asarray(self.indices[lo : lo + step]), minlength=self.d_sae)
        return counts


def encode_split(
    sae: SAE,
    acts: ActivationSet,
    *,
    device: torch.device,
    batch_size: int = 4096,
    spill_dir: Path | None = None,
) -> Encoding:
    """Stream ``acts`` through ``sae.encode`` once; CSR in memory, or in files under ``spill_dir``."""
    counts = np.zeros(acts.n, dtype=np.int64)
    parts_idx: list[np.ndarray] = []
    parts_val: list[np.ndarray] = []
    files = None
    if spill_dir is not None:
        spill_dir.mkdir(parents=True, exist_ok=True)
        files = (open(spill_dir / "indices.bin", "wb"), open(spill_dir / "values.bin", "wb"))  # noqa: SIM115
    try:
        sae = sae.to(device).eval()
        with torch.no_grad():
            for start, chunk in acts.iter_chunks(batch_size):
                x = torch.from_numpy(np.array(chunk, dtype=np.float32)).to(device)
                z = sae.encode(x).float()
                rows, cols = (z != 0).nonzero(as_tuple=True)  # row-major: columns ascend per row
                vals = z[rows, cols].cpu().numpy()
                idx = cols.to(torch.int32).cpu().numpy()
                counts[start : start + len(chunk)] = np.bincount(
                    rows.cpu().numpy(), minlength=len(chunk)
                )
                if files is not None:
                    files[0].write(idx.tobytes())
                    files[1].write(vals.tobytes())
                else:
                    parts_idx.append(idx)
                    parts_val.append(vals)
    finally:
        if files is not None:
            for fh in files:
                fh.close()
    indptr = np.zeros(acts.n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    if spill_dir is not None:
        indices: np.ndarray = (
            np.memmap(spill_dir / "indices.bin", dtype=np.int32, mode="r", shape=(nnz,))
            if nnz
            else np.zeros(0, dtype=np.int32)
        )
        values: np.ndarray = (
            np.memmap(spill_dir / "values.bin", dtype=np.float32, mode="r", shape=(nnz,))
            if nnz
            else np.zeros(0, dtype=np.float32)
        )
    else:
        indices = np.concatenate(parts_idx) if parts_idx else np.zeros(0, dtype=np.int32)
        values = np.concatenate(parts_val) if parts_val else np.zeros(0, dtype=np.float32)
    return Encoding(indptr, indices, values, sae.d_sae)


class EncodingStore:
    """Encodings of every (SAE, split) of a run, each computed on first request and then shared.

    ``memory_budget_bytes`` bounds the CSR bytes held in memory; an encoding whose estimated size
    (rows x the SAE's L0 so far) would exceed what is left is written under ``root`` and
    memory-mapped. ``root`` belongs to the store (a private temporary folder by default): files
    of released entries are deleted, and :meth:`close` removes the folder. :meth:`release` drops
    the entries of an SAE (the runner calls it when a group of cells is done).
    """

    def __init__(
        self, root: Path | None = None, *, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    ) -> None:
        self._root = root
        self.memory_budget_bytes = int(memory_budget_bytes)
        self._entries: dict[tuple[str, str], Encoding] = {}
        self._in_memory: dict[tuple[str, str], int] = {}
        self._spilled: dict[tuple[str, str], Path] = {}
        self.encoded: list[tuple[str, str]] = []
        """(sae id, split) in the order they were encoded (what a test checks: once each)."""

    def _spill_root(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="saebench-encodings-"))
        if not self._root.exists():
            self._root.mkdir(parents=True)
            # Also gone when the process exits normally without closing the store.
            atexit.register(shutil.rmtree, self._root, True)
        return self._root

    def get(
        self,
        sae_id: str,
        split: str,
        sae: SAE,
        acts: ActivationSet,
        *,
        device: torch.device,
        batch_size: int = 4096,
    ) -> Encoding:
        key = (sae_id, split)
        found = self._entries.get(key)
        if found is not None and found.n == acts.n and found.d_sae == sae.d_sae:
            return found
        used = sum(self._in_memory.values())
        # Estimate from an encoding of this SAE already made (its L0), else assume 10% density.
        known = [e for (s, _), e in self._entries.items() if s == sae_id and e.n]
        per_row = known[0].nnz / known[0].n if known else 0.1 * sae.d_sae
        estimate = int(acts.n * (8 + per_row * 8))
        spill = None
        if used + estimate > self.memory_budget_bytes:
            spill = self._spill_root() / f"{_safe(sae_id)}-{_safe(split)}-{uuid.uuid4().hex[:8]}"
        enc = encode_split(sae, acts, device=device, batch_size=batch_size, spill_dir=spill)
        self._drop(key)
        self._entries[key] = enc
        if spill is None:
            self._in_memory[key] = enc.nbytes
        else:
            self._spilled[key] = spill
        self.encoded.append(key)
        return enc

    @property
    def memory_bytes(self) -> int:
        """CSR bytes held in memory now."""
        return sum(self._in_memory.values())

    def _drop(self, key: tuple[str, str]) -> None:
        self._entries.pop(key, None)
        self._in_memory.pop(key, None)
        path = self._spilled.pop(key, None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    def release(self, sae_id: str | None = None) -> None:
        """Forget the encodings of ``sae_id`` (every SAE when None) and delete their files."""
        for key in [k for k in self._entries if sae_id is None or k[0] == sae_id]:
            self._drop(key)

    def close(self) -> None:
        self.release()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> EncodingStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def dense_limit_error(split: str, n: int, d_sae: int, limit: int) -> SaebenchError:
    return SaebenchError(
        f"split {split!r}: a dense ({n:,} x {d_sae:,}) float32 encoding would take "
        f"{n * d_sae * 4 / 2**30:.1f} GiB, over the {limit / 2**30:.1f} GiB limit of "
        f"EvalContext.sae_encode; stream with ctx.latents(split).iter_dense / iter_sparse, or "
        f"pass max_bytes= to allow more"
    )


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:80] or "x"
