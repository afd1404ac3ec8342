"""Stored SAEs are verified (content hash and id) and rebuilt when damaged; checkpoint and
weights files that cannot load are one-line errors; leftovers of killed writers are swept."""

from __future__ import annotations

import copy
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_runner import SUITE, run, write_suite

from saebench_vision.checkpoint import (
    CheckpointError,
    checkpoint_problem,
    file_sha256,
    load_sae,
    save_sae,
    sweep_leftovers,
)
from saebench_vision.results import ResultsStore

SMALL: dict[str, Any] = copy.deepcopy(SUITE)
SMALL["models"][0]["layers"] = ["final"]
SMALL["saes"] = [
    {"plugin": "toy-sae", "args": {"expansion": 2, "l1_coefficient": 0.01}},
    {"plugin": "relu", "args": {"expansion": 2, "l1_coefficient": 0.1}},
]
SMALL["evaluators"] = [{"plugin": "reconstruction", "label": "first"}]


def _mse(runner, suite, evaluator: str) -> dict[str, float]:
    frame = runner.store.records_frame(suite.hash)
    rows = frame[(frame.metric == "mse") & (frame.split == "val") & (frame.evaluator == evaluator)]
    return {
        row.sae_label: float(row.value) for row in rows.itertuples() if row.sae_label != "baseline"
    }


def _flip(file: Path) -> None:
    data = bytearray(file.read_bytes())
    for i in range(len(data) - 64, len(data), 4):
        data[i] ^= 0x7F
    file.write_bytes(bytes(data))


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_name("swap")
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap"])
def test_damaged_or_exchanged_saes_are_retrained(tmp_path, toy_manager, capsys, damage):
    path = write_suite(tmp_path, SMALL)
    suite, runner, first = run(path, toy_manager)
    assert first.status == "finished"
    before = _mse(runner, suite, "first")
    ids = [r[0] for r in runner.store.db.execute("SELECT sae_id FROM saes ORDER BY sae_id")]
    saes = [suite.output / "saes" / i for i in ids]
    if damage == "flip":
        _flip(saes[0] / "sae_weights.safetensors")
    elif damage == "truncate":
        _truncate(saes[0] / "sae_weights.safetensors")
    else:
        _swap(saes[0], saes[1])
    capsys.readouterr()
    doc = copy.deepcopy(SMALL)
    doc["evaluators"].append({"plugin": "reconstruction", "label": "second"})
    suite, runner, second = run(write_suite(tmp_path, doc), toy_manager)
    err = capsys.readouterr().err
    assert second.status == "finished", err
    assert f"warning: SAE {ids[0]} at {saes[0]}" in err and "training it again" in err
    # the rebuilt SAEs are the ones first trained: the new cells reproduce the first numbers
    after = _mse(runner, suite, "second")
    assert after.keys() == before.keys()
    for label, value in before.items():
        assert after[label] == pytest.approx(value, rel=1e-5), label
    for sae_id, folder in zip(ids, saes):
        assert checkpoint_problem(folder, sae_id, runner.store.sae_sha256(sae_id)) is None


def test_checkpoint_records_its_hash_and_load_refuses_changed_bytes(tmp_path, toy_manager):
    from toyplugin import ToySAE

    sae = ToySAE(4, ToySAE.Config(expansion=2))
    folder = tmp_path / "sae"
    sha = save_sae(sae, folder, {"sae_id": "abc"})
    weights = folder / "sae_weights.safetensors"
    import hashlib

    assert sha == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert checkpoint_problem(folder, "abc", sha) is None
    assert "holds SAE abc, not xyz" in str(checkpoint_problem(folder, "xyz"))
    assert "results store" in str(checkpoint_problem(folder, "abc", "0" * 64))
    _flip(weights)
    assert "changed bytes" in str(checkpoint_problem(folder, "abc"))
    with pytest.raises(CheckpointError, match="changed since it was saved") as err:
        load_sae(folder, lambda name: ToySAE)
    assert "\n" not in str(err.value)


def test_hashes_are_memoised_by_path_size_and_mtime(tmp_path, monkeypatch):
    file = tmp_path / "f"
    file.write_bytes(b"x" * 100)
    first = file_sha256(file)
    import hashlib

    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    assert file_sha256(file) == first and calls == []
    file.write_bytes(b"y" * 101)
    assert file_sha256(file) == real(b"y" * 101).hexdigest() and calls == [1]


def test_unhashed_checkpoints_are_checked_for_truncation(tmp_path):
    from toyplugin import ToySAE

    folder = tmp_path / "sae"
    save_sae(ToySAE(4, ToySAE.Config(expansion=2)), folder, {"sae_id": "abc"})
    cfg = folder / "cfg.json"
    import json

    doc = json.loads(cfg.read_text())
    del doc["weights_sha256"]  # as written before checkpoints were hashed
    cfg.write_text(json.dumps(doc))
    assert checkpoint_problem(folder, "abc") is None
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    assert "truncated" in str(checkpoint_problem(folder, "abc"))
    (folder / "sae_weights.safetensors").write_bytes(b"garbage, not a checkpoint")
    assert "not a safetensors file" in str(checkpoint_problem(folder, "abc"))


def test_unknown_architecture_names_the_file(tmp_path, toy_manager):
    from toyplugin import ToySAE

    folder = tmp_path / "sae"
    save_sae(ToySAE(4, ToySAE.Config(expansion=2)), folder, {"sae_id": "abc"})
    cfg = folder / "cfg.json"
    cfg.write_text(cfg.read_text().replace('"toy-sae"', '"os:system"'))
    registry = toy_manager.registry()
    with pytest.raises(CheckpointError) as err:
        load_sae(folder, lambda name: registry.get("sae", name).load())
    assert str(cfg) in str(err.value) and "os:system" in str(err.value)


def test_old_store_gains_the_hash_column(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    db = sqlite3.connect(out / "results.sqlite")
    db.execute(
        "CREATE TABLE saes (sae_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, model TEXT NOT NULL, "
        "layer TEXT NOT NULL, label TEXT NOT NULL, plugin TEXT NOT NULL, config_json TEXT NOT "
        "NULL, seed INTEGER NOT NULL, path TEXT NOT NULL, stats_json TEXT NOT NULL, created_at "
        "REAL NOT NULL)"
    )
    db.execute("INSERT INTO saes VALUES ('old','r','m','l','x','p','{}',0,'saes/old','{}',0)")
    db.commit()
    db.close()
    store = ResultsStore(out)
    assert store.sae_sha256("old") is None and store.sae_path("old") == out / "saes" / "old"
    row = {"sae_id": "new", "run_id": "r", "model": "m", "layer": "l", "label": "x"}
    store.add_saes(
        [
            row
            | {
                "plugin": "p",
                "config": {},
                "seed": 0,
                "path": "saes/new",
                "stats": {},
                "weights_sha256": "ab" * 32,
            }
        ]
    )
    assert store.sae_sha256("new") == "ab" * 32
    store.close()
    assert ResultsStore(out).sae_sha256("new") == "ab" * 32  # migration runs once


def test_leftovers_of_dead_writers_are_swept(tmp_path):
    from saebench_vision.checkpoint import _host_tag, sweep_output

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = _host_tag()
    gone = tmp_path / f".abc.{dead.pid}@{here}.1234abcd.tmp"
    alive = tmp_path / f".abc.{os.getpid()}@{here}.1234abcd.tmp"
    elsewhere = tmp_path / f".abc.{dead.pid}@00000000.1234abcd.tmp"
    legacy = tmp_path / ".abc.1234abcd.tmp"
    real = tmp_path / "abc"
    for folder in (gone, alive, elsewhere, legacy, real):
        folder.mkdir()
        (folder / "sae_weights.safetensors").write_bytes(b"x")
    os.utime(legacy, (0, 0))
    assert sorted(sweep_leftovers(tmp_path)) == sorted([gone, legacy])
    assert alive.exists() and elsewhere.exists() and real.exists()
    # an output folder: SAE temporaries and training-state temporaries alike
    state = tmp_path / "out" / "train-state" / "group"
    state.mkdir(parents=True)
    (tmp_path / "out" / "saes").mkdir()
    leftovers = [
        state / f".state.pt.{dead.pid}@{here}.ab12.tmp",
        tmp_path / "out" / "saes" / f".abc.{dead.pid}@{here}.ab12.old",
    ]
    leftovers[0].write_bytes(b"x")
    leftovers[1].mkdir()
    (state / "state.pt").write_bytes(b"kept")
    assert sorted(sweep_output(tmp_path / "out")) == sorted(leftovers)
    assert (state / "state.pt").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _weights_files(tmp_path: Path) -> dict[str, Path]:
    import pickle

    import torch

    files = {
        "pickle": tmp_path / "evil.pth",
        "garbage": tmp_path / "garbage.pth",
        "list": tmp_path / "list.pth",
        "safetensors": tmp_path / "bad.safetensors",
    }
    torch.save({"w": _Evil()}, files["pickle"], pickle_module=pickle)
    files["garbage"].write_bytes(os.urandom(256))
    torch.save([torch.zeros(2)], files["list"])
    files["safetensors"].write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    return files


@pytest.mark.parametrize("kind", ["pickle", "garbage", "list", "safetensors"])
def test_bad_weights_path_is_one_line_naming_the_file(tmp_path, kind, capfd):
    from saebench_vision_plugins.models.configs import ResNetConfig
    from saebench_vision_plugins.models.resnet import ResNetAdapter

    from saebench_vision.errors import WeightsNotFoundError

    path = _weights_files(tmp_path)[kind]
    with pytest.raises(WeightsNotFoundError) as err:
        ResNetAdapter(ResNetConfig(arch="resnet18", weights_path=str(path), image_size=32)).load()
    message = str(err.value)
    assert str(path) in message and "\n" not in message and "weights_path" in message
    if kind == "pickle":
        assert "refused for safety" in message
    assert "pwned" not in capfd.readouterr().out


def test_safetensors_weights_path_loads(tmp_path):
    import torch
    from saebench_vision_plugins.models.common import load_state_file
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    state = {k: v.contiguous() for k, v in resnet18().state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        loaded = load_state_file("resnet", tmp_path / name)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)


# -- the SAE contract, checked on the first batch -----------------------------------------------


def _broken(method: str):
    from toyplugin import ToySAE

    class Broken(ToySAE):
        name = "broken-sae"

        def decode(self, z):
            out = super().decode(z)
            if method == "decode-shape":
                return out[:, :1]  # (B, 1): broadcasts silently in an mse
            if method == "decode-nan":
                return out * float("nan")
            return out

        def encode(self, x):
            z = super().encode(x)
            if method == "encode-width":
                return z[:, :-1]
            if method == "encode-int":
                return (z > 0).long()
            return z

    return Broken


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("decode-shape", r"decode returned shape \(8, 1\), expected \(8, 4\)"),
        ("decode-nan", "decode returned non-finite"),
        ("encode-width", r"encode returned shape \(8, 7\), expected \(8, 8\)"),
        ("encode-int", "encode returned dtype torch.int64"),
    ],
)
def test_trainer_checks_the_sae_contract_on_the_first_batch(method, expected):
    import numpy as np

    from saebench_vision.config import TrainingConfig
    from saebench_vision.training import SAEContractError, train_saes

    cls = _broken(method)
    sae = cls(4, cls.Config(expansion=2))
    data = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    with pytest.raises(SAEContractError, match=expected) as err:
        train_saes([sae], data, TrainingConfig(epochs=1, batch_size=16), seed=0, progress=False)
    assert "broken-sae" in str(err.value) and "Broken" in str(err.value)
    assert "\n" not in str(err.value)


def test_contract_check_leaves_training_unchanged():
    import numpy as np
    import torch
    from toyplugin import ToySAE

    from saebench_vision.config import TrainingConfig
    from saebench_vision.training import check_sae_contract, train_saes

    data = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    sae = ToySAE(4, ToySAE.Config(expansion=2))
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    state = torch.get_rng_state()
    sae.train()
    check_sae_contract(sae, torch.from_numpy(data))
    assert sae.training and torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in sae.state_dict().items())
    stats = train_saes([sae], data, TrainingConfig(epochs=1, batch_size=16), seed=0, progress=False)
    assert stats[0]["steps"] == 4


def test_loaded_saes_are_checked_before_evaluation(tmp_path, toy_manager):
    from saebench_vision.steps import Workspace  # noqa: F401 - the loading path under test
    from saebench_vision.training import SAEContractError

    path = write_suite(tmp_path, SMALL)
    suite, runner, _ = run(path, toy_manager)
    ws = runner.workspace()
    sae_id = runner.store.db.execute("SELECT sae_id FROM saes WHERE plugin='toy-sae'").fetchone()[0]
    ws._saes.clear()
    broken = _broken("decode-shape")
    ws.sae_class = lambda name: broken
    with pytest.raises(SAEContractError, match="decode returned shape"):
        ws._load_sae(sae_id)


# -- memory estimates before allocation -----------------------------------------------------------


def test_sae_too_large_for_the_machine_is_one_line(tmp_path, toy_manager):
    from saebench_vision.errors import ConfigError

    doc = copy.deepcopy(SMALL)
    doc["saes"] = [{"plugin": "toy-sae", "args": {"expansion": 10_000_000}}]
    with pytest.raises(ConfigError) as err:
        run(write_suite(tmp_path, doc), toy_manager)
    message = str(err.value)
    assert "saes[0].args.expansion: 10000000" in message and "available" in message
    assert "\n" not in message and not list((tmp_path / "out" / "saes").glob("*"))


def test_training_batch_too_large_is_one_line_before_allocating(monkeypatch):
    import numpy as np
    from toyplugin import ToySAE

    from saebench_vision import training
    from saebench_vision.config import TrainingConfig
    from saebench_vision.errors import ConfigError

    data = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    monkeypatch.setattr(training, "available_memory", lambda device: 2**30)
    saes = [ToySAE(4, ToySAE.Config(expansion=2)), ToySAE(4, ToySAE.Config(expansion=3))]
    # 4 bytes x (x, codes, pre-activations, gradients) x batch x (4 + 8 + 12) > 1 GiB
    batch = 2**30 // (16 * 24) + 1
    with pytest.raises(
        ConfigError,
        match=r"^training.batch_size: 2796203 \(rows of width 4 "
        r"into 2 SAE\(s\) of 20 latents in all\) needs about 1.0 GiB",
    ):
        training.train_saes(saes, data, TrainingConfig(batch_size=batch), seed=0, progress=False)
    # one row less fits: the check passes (training itself is stopped early by a patched step)
    monkeypatch.setattr(training, "available_memory", lambda device: 16 * 24 * (batch - 1))
    monkeypatch.setattr(training, "_init_saes", lambda *a: (_ for _ in ()).throw(KeyError("ok")))
    with pytest.raises(KeyError, match="ok"):
        training.train_saes(
            saes, data, TrainingConfig(batch_size=batch - 1), seed=0, progress=False
        )


def test_memory_estimates(monkeypatch):
    import torch

    from saebench_vision import training
    from saebench_vision.errors import ConfigError

    # weights, gradients and two Adam moments of encoder and decoder, float32, margin 2
    assert training.estimate_sae_bytes(1024, 12288) == 2 * 1024 * 12288 * 4 * 4 * 2
    monkeypatch.setattr(training, "available_memory", lambda device: 1000)
    training.check_memory(1000, torch.device("cpu"), "x", "y")
    with pytest.raises(
        ConfigError,
        match=r"^training.batch_size needs about 1.0 KiB of memory, cpu has 1000 B available; lower it$",
    ):
        training.check_memory(1025, torch.device("cpu"), "training.batch_size", "lower it")
    monkeypatch.setattr(training, "available_memory", lambda device: None)
    training.check_memory(1e30, torch.device("cpu"), "x", "y")  # unknown: not judged


def test_available_memory_reads_the_machine():
    import torch

    from saebench_vision.training import available_memory

    meminfo = Path("/proc/meminfo").read_text()
    line = next(x for x in meminfo.splitlines() if x.startswith("MemAvailable:"))
    free = available_memory(torch.device("cpu"))
    assert free is not None and abs(free - int(line.split()[1]) * 1024) < 2**30


@pytest.mark.parametrize(
    "args", [{"image_size": 1_000_000}, {"batch_size": 100_000_000, "image_size": 224}]
)
def test_image_batch_too_large_for_the_machine_is_one_line(args):
    from saebench_vision_plugins.models.configs import ResNetConfig
    from saebench_vision_plugins.models.resnet import ResNetAdapter

    from saebench_vision.errors import ConfigError

    adapter = ResNetAdapter(ResNetConfig(arch="resnet18", **args))
    with pytest.raises(ConfigError, match="args.image_size") as err:
        adapter.identity()  # planning resolves the preprocessing, before any image is read
    assert "available" in str(err.value) and "\n" not in str(err.value)
    assert ResNetAdapter(ResNetConfig(arch="resnet18", image_size=64)).identity()


def test_only_the_saes_the_plan_needs_are_verified(tmp_path, toy_manager, capsys, monkeypatch):
    from saebench_vision import checkpoint

    path = write_suite(tmp_path, SMALL)
    suite, runner, _ = run(path, toy_manager)
    for weights in (suite.output / "saes").glob("*/sae_weights.safetensors"):
        _flip(weights)
    capsys.readouterr()
    asked: list[str] = []
    real = checkpoint.checkpoint_problem
    monkeypatch.setattr(
        checkpoint, "checkpoint_problem", lambda p, i, h=None: asked.append(i) or real(p, i, h)
    )
    doc = copy.deepcopy(SMALL)
    doc["models"][0]["layers"] = ["final", "layer.0"]  # new cells, none of the damaged SAEs'
    _, _, again = run(write_suite(tmp_path, doc), toy_manager)
    assert again.computed_cells == 3 and asked == []
    assert "training it again" not in capsys.readouterr().err
