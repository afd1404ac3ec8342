"""Content-addressed activation store: float32 ``.npy`` shards read through memory maps.

An entry holds the activations of one (model, layer, token selection, preprocessing, dataset
split). Its key hashes everything that determines those numbers, so every SAE and evaluator of
a suite, and every later run, shares one extraction. Entries are written to a private temporary
folder and renamed into place (atomic on one filesystem), and builders of the same key serialise
on a file lock.

Each file is hashed once, when it is written (SHA-256 of the whole file, plus a *sample* digest
of a few 4 KiB blocks at fixed offsets). A lookup checks sizes and the sample digests (``verify:
sample``, the default: a few reads per shard instead of rehashing ~315 GB before a resumed
Fig. 8 run starts); ``full`` rehashes every file on its first lookup in a process; ``size``
checks sizes only. ``saebench cache verify`` rehashes everything on demand. A damaged entry is
removed and rebuilt. ``saebench cache gc`` sweeps the temporary folders of writers that died
(their owner process is gone).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from saebench_vision.errors import CacheError
from saebench_vision.results import pid_alive

ENV_CACHE_DIR = "SAEBENCH_VISION_CACHE"
FORMAT_VERSION = 1
SHARD_BYTES = 64 * 2**20
RESPONSES_FILE = "responses.json"
"""Per dataset item, the text a generating model produced (``{item index: text}``)."""
SAMPLE_BLOCK = 4096
SAMPLE_POINTS = (0.0, 1 / 3, 2 / 3, 1.0)
"""Where the sample digest reads its blocks, as fractions of the file (1.0: the last block)."""
VERIFY_MODES = ("sample", "full", "size")
OWNER_FILE = ".owner.json"
"""In a writer's temporary folder: the pid and host that own it (read by ``cache gc``)."""


def default_cache_dir() -> Path:
    """``$SAEBENCH_VISION_CACHE``, else ``$XDG_CACHE_HOME/saebench_vision``, else ``~/.cache/...``."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "saebench_vision"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(parts: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``parts``."""
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_sha256(path: Path) -> str:
    """SHA-256 of the file size and of ``SAMPLE_BLOCK`` bytes at each of ``SAMPLE_POINTS``."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        for point in SAMPLE_POINTS:
            fh.seek(max(0, min(int(point * size), size - SAMPLE_BLOCK)))
            digest.update(fh.read(SAMPLE_BLOCK))
    return digest.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    """What a manifest stores about a file: bytes, SHA-256 and the sample digest."""
    return {
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "sample": sample_sha256(path),
    }


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ActivationSet:
    """A finished cache entry: ``n`` rows of width ``d``, with per-row labels and sample index.

    ``sample_index[i]`` is the dataset item that row ``i`` came from (rows and items differ
    when every patch or text token is a row). ``labels`` is the item's label per row, or None.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.n: int = int(manifest["n"])
        self.d: int = int(manifest["d"])
        self._shards: list[np.ndarray] | None = None
        self._starts = np.cumsum([0] + [s["rows"] for s in manifest["shards"]])

    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.manifest.get("meta", {}))

    @property
    def shards(self) -> list[np.ndarray]:
        if self._shards is None:
            self._shards = [
                np.load(self.path / s["file"], mmap_mode="r") for s in self.manifest["shards"]
            ]
        return self._shards

    @property
    def labels(self) -> np.ndarray | None:
        file = self.path / "labels.npy"
        return np.load(file) if file.exists() else None

    def responses(self) -> dict[int, str] | None:
        """What the model generated for each dataset item (``{item: text}``), or None when the
        entry holds no generated tokens. Stored as ``responses.json`` beside the shards."""
        file = self.path / RESPONSES_FILE
        if not file.exists():
            return None
        return {int(k): v for k, v in json.loads(file.read_text(encoding="utf-8")).items()}

    @property
    def sample_index(self) -> np.ndarray:
        return np.load(self.path / "sample_index.npy")

    def iter_chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start row, array)`` chunks of at most ``rows`` rows, in order, read from the maps."""
        start = 0
        for shard in self.shards:
            for lo in range(0, len(shard), rows):
                chunk = shard[lo : lo + rows]
                yield start + lo, chunk
            start += len(shard)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Rows at ``indices`` (any order) as a float32 array."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.d), dtype=np.float32)
        shard_of = np.searchsorted(self._starts, indices, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            out[sel] = self.shards[s][indices[sel] - self._starts[s]]
        return out

    def to_numpy(self) -> np.ndarray:
        """All rows in memory (float32)."""
        if len(self.shards) == 1:
            return np.array(self.shards[0], dtype=np.float32)
        return np.concatenate([np.asarray(s) for s in self.shards]).astype(np.float32, copy=False)


class EntryWriter:
    """Appends rows to shards in a private folder; :meth:`commit` renames it into the cache."""

    def __init__(self, cache: ActivationCache, key: str, d: int, meta: dict[str, Any]) -> None:
        self.cache, self.key, self.d, self.meta = cache, key, d, meta
        self.tmp = cache.root / "tmp" / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        write_owner(self.tmp)
        self.rows_per_shard = max(1, SHARD_BYTES // (4 * d))
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._shards: list[dict[str, Any]] = []
        self._labels: list[np.ndarray] = []
        self._index: list[np.ndarray] = []
        self._responses: dict[int, str] = {}
        self.n = 0

    def append(
        self,
        rows: np.ndarray,
        sample_index: np.ndarray,
        labels: np.ndarray | None,
        responses: dict[int, str] | None = None,
    ) -> None:
        """Add rows; ``responses`` maps dataset items to the text the model generated for them."""
        if responses:
            self._responses.update({int(k): str(v) for k, v in responses.items()})
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.d:
            raise CacheError(
                f"cache entry {self.key[:12]}: expected rows of width {self.d}, got {rows.shape}"
            )
        if not np.isfinite(rows).all():
            raise CacheError(
                f"cache entry {self.key[:12]}: the model produced NaN or inf activations "
                f"({self.meta.get('model', '?')} {self.meta.get('layer', '?')}); try dtype float32"
            )
        self._buffer.append(rows)
        self._buffered += len(rows)
        self._index.append(np.asarray(sample_index, dtype=np.int64))
        if labels is not None:
            self._labels.append(np.asarray(labels, dtype=np.int64))
        while self._buffered >= self.rows_per_shard:
            self._flush(self.rows_per_shard)
        self.n += len(rows)

    def _flush(self, rows: int) -> None:
        data = np.concatenate(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        head, tail = data[:rows], data[rows:]
        name = f"shard-{len(self._shards):05d}.npy"
        np.save(self.tmp / name, np.ascontiguousarray(head))
        self._shards.append({"file": name, "rows": len(head), **file_record(self.tmp / name)})
        self._buffer = [tail] if len(tail) else []
        self._buffered = len(tail)

    def commit(self) -> ActivationSet:
        if self._buffered:
            self._flush(self._buffered)
        if self.n == 0:
            raise CacheError(
                f"cache entry {self.key[:12]}: no activations were produced (empty split?)"
            )
        np.save(self.tmp / "sample_index.npy", np.concatenate(self._index))
        if self._labels:
            np.save(self.tmp / "labels.npy", np.concatenate(self._labels))
        if self._responses:
            texts = {str(k): self._responses[k] for k in sorted(self._responses)}
            atomic_write_text(self.tmp / RESPONSES_FILE, json.dumps(texts, ensure_ascii=False))
        extra_files = [
            f for f in ("sample_index.npy", "labels.npy", RESPONSES_FILE) if (self.tmp / f).exists()
        ]
        manifest = {
            "format": FORMAT_VERSION,
            "key": self.key,
            "n": self.n,
            "d": self.d,
            "dtype": "float32",
            "shards": self._shards,
            "meta": self.meta,
            "files": {f: file_record(self.tmp / f) for f in extra_files},
            "created": time.time(),
        }
        atomic_write_text(self.tmp / "manifest.json", json.dumps(manifest, indent=1))
        (self.tmp / OWNER_FILE).unlink(missing_ok=True)
        final = self.cache.entry_path(self.key)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self.tmp, final)
        except OSError:
            # Another process committed the same key first; its entry is equally valid.
            shutil.rmtree(self.tmp, ignore_errors=True)
        found = self.cache.lookup(self.key)
        if found is None:
            raise CacheError(
                f"cache entry {self.key[:12]} vanished right after it was written ({final})"
            )
        return found

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class ActivationCache:
    """The store under ``root``: ``<root>/<key[:2]>/<key>/{manifest.json, shard-*.npy, ...}``."""

    def __init__(self, root: Path | str | None = None, *, verify: str = "sample") -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        if verify not in VERIFY_MODES:
            raise CacheError(
                f"cache verify mode {verify!r} is not one of: {', '.join(VERIFY_MODES)}"
            )
        self.verify = verify
        self._verified: set[str] = set()
        try:
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
            (self.root / "locks").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"activation cache {self.root}: cannot create it ({exc.strerror}); set "
                f"{ENV_CACHE_DIR} or the suite's cache_dir to a writable folder"
            ) from exc

    def entry_path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lookup(self, key: str) -> ActivationSet | None:
        """The entry, or None when absent or damaged (a damaged one is removed for rebuild)."""
        path = self.entry_path(key)
        manifest_file = path / "manifest.json"
        if not manifest_file.exists():
            if path.exists():
                # Entries appear whole (a folder renamed into place with its manifest), so a
                # folder without one is damage: clear it, or every rebuild would collide with it.
                import sys

                print(
                    f"warning: activation cache entry {path} has no manifest; rebuilding it",
                    file=sys.stderr,
                )
                self._discard(path)
            return None
        problem = self._check(path, manifest_file)
        if problem:
            import sys

            print(
                f"warning: activation cache entry {path} is damaged ({problem}); rebuilding it",
                file=sys.stderr,
            )
            self._discard(path)
            return None
        return ActivationSet(path, json.loads(manifest_file.read_text()))

    def _check(self, path: Path, manifest_file: Path, mode: str | None = None) -> str:
        mode = mode or self.verify
        try:
            manifest = json.loads(manifest_file.read_text())
            files = {s["file"]: s for s in manifest["shards"]}
            files.update(manifest.get("files", {}))
            if manifest.get("format") != FORMAT_VERSION:
                return f"format {manifest.get('format')} is not {FORMAT_VERSION}"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"unreadable manifest: {exc}"
        for name, info in files.items():
            file = path / name
            if not file.exists():
                return f"{name} is missing"
            if file.stat().st_size != info["bytes"]:
                return f"{name} has {file.stat().st_size} bytes, expected {info['bytes']}"
        if mode == "size" or (mode != "verify" and manifest["key"] in self._verified):
            return ""
        for name, info in files.items():
            if mode == "sample":
                # Entries written before sample digests existed are checked by size only.
                if "sample" in info and sample_sha256(path / name) != info["sample"]:
                    return f"{name} fails its sample check"
            elif file_sha256(path / name) != info["sha256"]:
                return f"{name} fails its SHA-256 check"
        self._verified.add(manifest["key"])
        return ""

    def verify_entry(self, key: str, *, remove: bool = False) -> str:
        """Rehash every file of an entry (SHA-256): "" when sound, else what is wrong. A damaged
        entry is removed when ``remove``."""
        path = self.entry_path(key)
        manifest_file = path / "manifest.json"
        if not manifest_file.exists():
            return "no such entry"
        problem = self._check(path, manifest_file, mode="verify")
        if problem and remove:
            self._discard(path)
        return problem

    def manifests(self) -> list[dict[str, Any]]:
        """Every entry's manifest as stored (nothing verified), with ``path`` and ``bytes`` added."""
        found = []
        for file in sorted(self.root.glob("??/*/manifest.json")):
            try:
                manifest = json.loads(file.read_text())
            except (OSError, ValueError):
                manifest = {"key": file.parent.name, "damaged": "unreadable manifest"}
            manifest["path"] = str(file.parent)
            manifest["bytes"] = sum(f.stat().st_size for f in file.parent.iterdir() if f.is_file())
            found.append(manifest)
        return found

    def gc(self, *, dry_run: bool = False) -> list[tuple[Path, int, str]]:
        """Remove temporary folders and entries no process will finish or use: writers' folders
        whose owner process is gone (on this host), shared-encoding folders likewise, leftovers
        of discarded entries, and entries whose manifest cannot be read. Returns
        ``(path, bytes, why)`` for each (removed unless ``dry_run``)."""
        swept: list[tuple[Path, int, str]] = []
        for folder in sorted((self.root / "tmp").iterdir()) if (self.root / "tmp").exists() else []:
            why = _orphan_reason(folder)
            if why:
                swept.append((folder, _tree_bytes(folder), why))
        for folder in sorted(self.root.glob("??/*")):
            manifest = folder / "manifest.json"
            if folder.is_dir() and not manifest.exists():
                swept.append((folder, _tree_bytes(folder), "entry without a manifest"))
        if not dry_run:
            for folder, _, _ in swept:
                shutil.rmtree(folder, ignore_errors=True)
                if folder.exists() and folder.is_file():
                    folder.unlink()
        return swept

    def _discard(self, path: Path) -> None:
        trash = self.root / "tmp" / f"damaged-{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(OSError):
            os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def writer(self, key: str, d: int, meta: dict[str, Any]) -> EntryWriter:
        return EntryWriter(self, key, d, meta)

    @contextlib.contextmanager
    def locked(self, keys: list[str]) -> Iterator[None]:
        """Hold exclusive build locks on ``keys`` (taken in sorted order: no deadlock)."""
        handles = []
        try:
            for key in sorted(set(keys)):
                fh = open(self.root / "locks" / f"{key}.lock", "a+")  # noqa: SIM115
                fcntl.flock(fh, fcntl.LOCK_EX)
                handles.append(fh)
            yield
        finally:
            for fh in reversed(handles):
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()

    def entries(self) -> list[ActivationSet]:
        found = []
        for manifest in sorted(self.root.glob("??/*/manifest.json")):
            entry = self.lookup(manifest.parent.name)
            if entry is not None:
                found.append(entry)
        return found


def write_owner(folder: Path) -> None:
    """Mark ``folder`` (under the cache's ``tmp``) as owned by this process, for ``cache gc``."""
    (folder / OWNER_FILE).write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    )


def _orphan_reason(folder: Path) -> str:
    """Why ``folder`` in the cache's tmp is an orphan, or "" while its owner may still use it.

    The owner is read from the folder's owner file, else from its name (``<name>.<pid>.<hex>``);
    folders of another host are left alone (their pids mean nothing here)."""
    owner: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        owner = json.loads((folder / OWNER_FILE).read_text())
    if "pid" not in owner:
        parts = folder.name.rsplit(".", 2)
        if len(parts) == 3 and parts[1].isdigit():
            owner = {"pid": int(parts[1])}
    if "pid" not in owner:
        age = time.time() - folder.stat().st_mtime
        return "no owner recorded, untouched for a day" if age > 86400 else ""
    if owner.get("host", socket.gethostname()) != socket.gethostname():
        return ""
    if pid_alive(int(owner["pid"])):
        return ""
    return f"its owner process {owner['pid']} is gone"


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
