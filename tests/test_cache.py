"""The activation cache: round trip, reuse, damage detection, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from saebench_vision import cache as cache_mod
from saebench_vision.cache import ActivationCache, content_key, default_cache_dir
from saebench_vision.errors import CacheError


def fill(cache: ActivationCache, key: str, n: int = 100, d: int = 8, seed: int = 0, chunk: int = 7):
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(n, d)).astype(np.float32)
    labels = np.arange(n) % 5
    w = cache.writer(key, d, {"what": "test"})
    for lo in range(0, n, chunk):
        w.append(
            data[lo : lo + chunk],
            sample_index=np.arange(lo, min(n, lo + chunk)),
            labels=labels[lo : lo + chunk],
        )
    return w.commit(), data, labels


def test_round_trip_across_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "SHARD_BYTES", 8 * 4 * 16)  # 16 rows per shard
    cache = ActivationCache(tmp_path)
    entry, data, labels = fill(cache, "k" * 64)
    assert len(entry.manifest["shards"]) == 7
    assert entry.n == 100 and entry.d == 8
    np.testing.assert_array_equal(entry.to_numpy(), data)
    np.testing.assert_array_equal(entry.labels, labels)
    np.testing.assert_array_equal(entry.sample_index, np.arange(100))
    idx = np.array([99, 0, 17, 16, 50, 50])
    np.testing.assert_array_equal(entry.read(idx), data[idx])
    chunks = list(entry.iter_chunks(10))
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), data)
    assert [s for s, _ in chunks][:3] == [0, 10, 16]
    assert isinstance(entry.shards[0], np.memmap)


def test_reuse_returns_the_same_entry(tmp_path):
    cache = ActivationCache(tmp_path)
    key = content_key({"model": "m", "layer": "final"})
    assert cache.lookup(key) is None
    fill(cache, key)
    again = ActivationCache(tmp_path).lookup(key)
    assert again is not None and again.n == 100
    assert len(cache.entries()) == 1


def test_key_hashes_everything():
    a = content_key({"model": {"name": "x", "config": {"image_size": 224}}, "layer": "final"})
    b = content_key({"layer": "final", "model": {"config": {"image_size": 224}, "name": "x"}})
    c = content_key({"model": {"name": "x", "config": {"image_size": 112}}, "layer": "final"})
    assert a == b != c


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_damaged_entry_is_detected_and_removed(tmp_path, damage, capsys):
    cache = ActivationCache(tmp_path)
    entry, _, _ = fill(cache, "d" * 64)
    shard = entry.path / entry.manifest["shards"][0]["file"]
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-40])
    elif damage == "flip":
        raw = bytearray(shard.read_bytes())
        raw[-5] ^= 0xFF
        shard.write_bytes(bytes(raw))
    elif damage == "delete":
        (entry.path / "labels.npy").unlink()
    else:
        (entry.path / "manifest.json").write_text("{not json")
    fresh = ActivationCache(tmp_path)
    assert fresh.lookup("d" * 64) is None
    assert "is damaged" in capsys.readouterr().err
    assert not entry.path.exists()
    rebuilt, data, _ = fill(fresh, "d" * 64)
    np.testing.assert_array_equal(rebuilt.to_numpy(), data)


def test_size_mode_skips_hashing_but_catches_truncation(tmp_path):
    cache = ActivationCache(tmp_path, verify="size")
    entry, _, _ = fill(cache, "s" * 64)
    shard = entry.path / entry.manifest["shards"][0]["file"]
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert cache.lookup("s" * 64) is not None  # same size: only `full` catches a flipped bit
    shard.write_bytes(bytes(raw[:-4]))
    assert cache.lookup("s" * 64) is None


def test_uncommitted_writer_leaves_nothing(tmp_path):
    cache = ActivationCache(tmp_path)
    w = cache.writer("u" * 64, 4, {})
    w.append(np.ones((3, 4), np.float32), np.arange(3), None)
    w.abort()
    assert cache.lookup("u" * 64) is None
    assert list((tmp_path / "tmp").iterdir()) == []


def test_bad_rows_are_refused(tmp_path):
    cache = ActivationCache(tmp_path)
    w = cache.writer("b" * 64, 4, {"model": "m", "layer": "l"})
    with pytest.raises(CacheError, match="expected rows of width 4"):
        w.append(np.ones((3, 5), np.float32), np.arange(3), None)
    with pytest.raises(CacheError, match="NaN or inf"):
        w.append(np.full((3, 4), np.nan, np.float32), np.arange(3), None)
    with pytest.raises(CacheError, match="no activations"):
        cache.writer("e" * 64, 4, {}).commit()


def _writer_process(root: str, key: str, seed: int, out: str) -> None:
    cache = ActivationCache(root)
    with cache.locked([key]):
        entry = cache.lookup(key)
        built = entry is None
        if built:
            entry, _, _ = fill(cache, key, n=2000, d=64, seed=seed, chunk=50)
    Path(out).write_text(json.dumps({"built": built, "sum": float(entry.to_numpy().sum())}))


def test_two_processes_sharing_a_cache_build_once(tmp_path):
    ctx = mp.get_context("spawn")
    key = "c" * 64
    procs = [
        ctx.Process(
            target=_writer_process,
            args=(str(tmp_path / "cache"), key, i, str(tmp_path / f"out{i}.json")),
        )
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["sum"] == results[1]["sum"]
    assert ActivationCache(tmp_path / "cache").lookup(key) is not None


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SAEBENCH_VISION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "saebench_vision"
    monkeypatch.setenv("SAEBENCH_VISION_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_unwritable_cache_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cannot create it") as info:
        ActivationCache(blocker / "cache")
    assert "\n" not in str(info.value)


def test_lookup_hashes_nothing_by_default_and_samples_catch_edits(tmp_path, monkeypatch):
    cache = ActivationCache(tmp_path)
    entry, _, _ = fill(cache, "h" * 64, n=3000, d=8)  # one 96 kB shard
    calls = []
    real = cache_mod.file_sha256
    monkeypatch.setattr(cache_mod, "file_sha256", lambda p: calls.append(p) or real(p))
    assert ActivationCache(tmp_path).lookup("h" * 64) is not None
    assert calls == []  # hashed when written, never again on lookup
    shard = entry.path / entry.manifest["shards"][0]["file"]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2 + 10] ^= 0xFF  # between the sampled blocks: only a full hash sees it
    shard.write_bytes(bytes(raw))
    assert ActivationCache(tmp_path).lookup("h" * 64) is not None
    assert "SHA-256" in ActivationCache(tmp_path).verify_entry("h" * 64)
    raw[len(raw) // 3 + 100] ^= 0xFF  # inside the block sampled at one third
    shard.write_bytes(bytes(raw))
    assert ActivationCache(tmp_path).lookup("h" * 64) is None


def _killed_writer(root: str) -> None:
    import os
    import signal

    w = ActivationCache(root).writer("z" * 64, 4, {})
    w.append(np.ones((3, 4), np.float32), np.arange(3), None)
    os.kill(os.getpid(), signal.SIGKILL)


def test_gc_sweeps_only_folders_whose_owner_is_gone(tmp_path):
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_killed_writer, args=(str(tmp_path),))
    proc.start()
    proc.join()
    assert proc.exitcode == -9
    cache = ActivationCache(tmp_path)
    live = cache.writer("y" * 64, 4, {})  # ours, still being written
    (dead,) = [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("z")]
    assert cache.gc(dry_run=True)[0][0] == dead and dead.exists()
    swept = cache.gc()
    assert [p for p, _, _ in swept] == [dead] and "is gone" in swept[0][2]
    assert not dead.exists() and live.tmp.exists()
    live.append(np.ones((2, 4), np.float32), np.arange(2), None)
    assert live.commit().n == 2 and not (live.cache.entry_path("y" * 64) / ".owner.json").exists()


def test_cache_commands(tmp_path, capsys):
    from saebench_vision.cli import main

    cache = ActivationCache(tmp_path)
    entry, _, _ = fill(cache, "c" * 64)
    fill(cache, "e" * 64)
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cccccccccccc" in out and "eeeeeeeeeeee" in out and "2 entries" in out
    assert main(["cache", "verify", "--cache-dir", str(tmp_path)]) == 0
    assert "2 of 2 entries sound" in capsys.readouterr().out
    shard = entry.path / entry.manifest["shards"][0]["file"]
    raw = bytearray(shard.read_bytes())
    raw[200] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert main(["cache", "verify", "--cache-dir", str(tmp_path)]) == 1
    assert "DAMAGED cccccccccccc" in capsys.readouterr().out and entry.path.exists()
    assert main(["cache", "verify", "ccc", "--remove", "--cache-dir", str(tmp_path)]) == 1
    assert not entry.path.exists()
    assert main(["cache", "gc", "--cache-dir", str(tmp_path)]) == 0
    assert "0 item(s)" in capsys.readouterr().out
