"""The runner end to end on the toy plugin: caching, reuse, resumption after SIGKILL."""

from __future__ import annotations

import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import subprocess_env

from saebench_vision.errors import SaebenchError
from saebench_vision.runner import Runner, plan_suite
from saebench_vision.suite import load_suite

SUITE: dict[str, Any] = {
    "name": "toy",
    "seeds": [0],
    "models": [{"plugin": "toy-model", "layers": ["layer.0", "final"]}],
    "datasets": {
        "train": {"plugin": "toy-clusters", "args": {"split": "train"}},
        "val": {"plugin": "toy-clusters", "args": {"split": "val"}, "role": "eval"},
        "far": {"plugin": "toy-clusters", "args": {"split": "ood", "size": 96}, "role": "far-ood"},
    },
    "saes": [
        {"plugin": "toy-sae", "args": {"expansion": 2}, "sweep": {"l1_coefficient": [0.01, 0.1]}},
        {"plugin": "relu", "args": {"expansion": 2, "l1_coefficient": 0.1}},
    ],
    "training": {"epochs": 3, "lr": 0.003},
    "evaluators": [{"plugin": "reconstruction"}, {"plugin": "toy-slow"}],
}


def write_suite(tmp_path: Path, doc: dict[str, Any], name: str = "toy.yaml") -> Path:
    doc = copy.deepcopy(doc)
    doc.setdefault("output", str(tmp_path / "out"))
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run(path: Path, manager, **kwargs: Any):
    suite = load_suite(path, manager.registry())
    runner = Runner(suite, manager, progress=False, **kwargs)
    return suite, runner, runner.run()


def test_plan_counts_cells(tmp_path, toy_manager):
    suite = load_suite(write_suite(tmp_path, SUITE), toy_manager.registry())
    plan = plan_suite(suite, toy_manager)
    # 2 layers x 1 seed x 2 evaluators x (3 SAEs + baseline)
    assert len(plan.cells) == 16
    assert len({c.cell_id for c in plan.cells}) == 16
    assert {c.sae_label for c in plan.cells} >= {"baseline", "relu[expansion=2,l1_coefficient=0.1]"}


def test_run_twice_computes_once(tmp_path, toy_manager, capsys):
    path = write_suite(tmp_path, SUITE)
    suite, runner, first = run(path, toy_manager)
    assert (first.computed_cells, first.status) == (16, "finished")
    err = capsys.readouterr().err
    assert err.count("extracting toy-model") == 3 and err.count("training 3 SAE(s)") == 2
    frame = runner.store.records_frame(suite.hash)
    assert set(frame["metric"]) >= {"mse", "l0", "explained_variance", "mean_latent", "mean_input"}
    # every SAE cell reports reconstruction on every split, with finite numbers
    mse = frame[(frame.metric == "mse") & (frame.split == "val")]
    assert len(mse) == 6 and mse["value"].notna().all()
    _, _, second = run(path, toy_manager)
    assert second.computed_cells == 0
    assert "extracting" not in capsys.readouterr().err


def test_new_output_reuses_the_activation_cache(tmp_path, toy_manager, capsys):
    run(write_suite(tmp_path, SUITE), toy_manager)
    capsys.readouterr()
    other = copy.deepcopy(SUITE) | {"output": str(tmp_path / "other")}
    _, _, summary = run(write_suite(tmp_path, other, "other.yaml"), toy_manager)
    err = capsys.readouterr().err
    assert summary.computed_cells == 16
    assert "extracting" not in err and "training 3 SAE(s)" in err


def test_adding_an_evaluator_or_seed_computes_only_new_cells(tmp_path, toy_manager, capsys):
    path = write_suite(tmp_path, SUITE)
    run(path, toy_manager)
    capsys.readouterr()
    more = copy.deepcopy(SUITE)
    more["seeds"] = [0, 1]
    _, runner, summary = run(write_suite(tmp_path, more), toy_manager)
    assert summary.computed_cells == 16  # the seed-1 half only
    err = capsys.readouterr().err
    assert "seed 0" not in err and "training 3 SAE(s) on toy-model/final seed 1" in err


def test_changed_layer_name_is_one_line(tmp_path, toy_manager):
    doc = copy.deepcopy(SUITE)
    doc["models"][0]["layers"] = ["final", "layer.O"]
    with pytest.raises(SaebenchError) as info:
        run(write_suite(tmp_path, doc), toy_manager)
    msg = str(info.value)
    assert (
        "models[0].layers: model `toy-model` has no layer 'layer.O'. Did you mean: layer.0?" in msg
    )
    assert "\n" not in msg


def _board(output: Path) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "saebench_vision",
            "leaderboard",
            str(output),
            "--format",
            "csv",
            "--all-metrics",
            "--layout",
            "wide",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(SAEBENCH_VISION_PLUGINS="toyplugin"),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


SLOW = copy.deepcopy(SUITE)
SLOW["models"][0]["args"] = {"sleep": 0.08}
SLOW["evaluators"][1]["args"] = {"sleep": 0.15}
SLOW["training"] |= {"checkpoint_every": 3, "epochs": 6}


@pytest.fixture(scope="module")
def reference_board(tmp_path_factory) -> str:
    """The leaderboard of an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("reference")
    path = write_suite(tmp, SLOW)
    env = subprocess_env(
        SAEBENCH_VISION_PLUGINS="toyplugin", SAEBENCH_VISION_CACHE=str(tmp / "cache")
    )
    done = subprocess.run(
        [sys.executable, "-m", "saebench_vision", "run", str(path), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    board = _board(tmp / "out")
    assert board.count("\n") == 1 + 2 * 4  # header + (3 SAEs + baseline) x 2 layers
    return board


def _cells_done(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    except sqlite3.Error:
        return 0


KILL_POINTS = {
    # during the forward passes: a writer has its first rows buffered, no shard is written yet
    "forward": lambda out, cache: (
        any((cache / "tmp").glob("*/.owner.json"))
        and not any((cache / "tmp").glob("*/shard-*.npy"))
    ),
    # while activations are being written to the cache: a shard in a writer's folder, or an
    # entry already committed while another split's writer is still at work (shards are
    # 64 MiB, so a toy split's only shard lives in the writer's folder for an instant)
    "extraction": lambda out, cache: (
        any((cache / "tmp").glob("*/shard-*.npy"))
        or (any(cache.glob("??/*/manifest.json")) and any((cache / "tmp").glob("*/.owner.json")))
    ),
    # while a sweep is being trained (a resumable training state exists)
    "training": lambda out, cache: any((out / "train-state").glob("*/*")),
    # after some evaluation cells were committed
    "evaluation": lambda out, cache: _cells_done(out / "results.sqlite") >= 5,
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume_gives_the_same_leaderboard(tmp_path, reference_board, point):
    path = write_suite(tmp_path, SLOW)
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = subprocess_env(SAEBENCH_VISION_PLUGINS="toyplugin", SAEBENCH_VISION_CACHE=str(cache))
    cmd = [sys.executable, "-m", "saebench_vision", "run", str(path), "--no-progress"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    while not KILL_POINTS[point](out, cache):
        assert proc.poll() is None, (
            f"run ended before reaching {point}: {proc.stderr.read()[-2000:]}"
        )
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    committed = _cells_done(out / "results.sqlite")
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    # The resumed run skips exactly the cells committed before the kill and runs the rest.
    assert f"16 cells, {committed} already finished, {16 - committed} to run" in resumed.stderr
    assert (committed >= 5) == (point == "evaluation")
    assert _board(out) == reference_board
    # The killed writer's folder was left behind; the resumed run swept it (its owner is
    # gone), so nothing of it remains for `cache gc`.
    from saebench_vision.cache import ActivationCache

    assert not list((cache / "tmp").glob("*/shard-*.npy"))
    assert not any((cache / "tmp").glob("*/.owner.json"))
    assert ActivationCache(cache).gc() == []


def test_missing_cuda_fails_before_any_work(tmp_path, toy_manager):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    doc = copy.deepcopy(SUITE)
    doc["models"][0]["args"] = {"device": "cuda"}
    path = write_suite(tmp_path, doc)
    with pytest.raises(SaebenchError) as info:
        run(path, toy_manager)
    assert str(info.value).startswith(
        f"{path}: models[0].args.device: device 'cuda': this torch sees no CUDA device"
    )
    assert not any((tmp_path / "out").glob("saes/*"))


def test_labelled_evaluators_and_per_sae_training(tmp_path, toy_manager, capsys):
    """One evaluator twice with different args, and an SAE with its own recipe: each is a cell
    (or SAE) of its own, and the override reaches the trainer."""
    doc = copy.deepcopy(SUITE)
    doc["models"][0]["layers"] = ["final"]
    doc["saes"][1]["training"] = {"epochs": 1}
    doc["evaluators"] = [
        {"plugin": "reconstruction", "label": "recon-val", "args": {"roles": ["eval"]}},
        {"plugin": "reconstruction", "label": "recon-all"},
    ]
    suite, runner, summary = run(write_suite(tmp_path, doc), toy_manager)
    assert (summary.status, summary.computed_cells) == ("finished", 8)
    err = capsys.readouterr().err
    # the ReLU SAE with its own recipe trains in a pass of its own
    assert "training 2 SAE(s) on toy-model/final" in err and "training 1 SAE(s)" in err
    frame = runner.store.records_frame(suite.hash)
    assert set(frame["evaluator"]) == {"recon-val", "recon-all"}
    assert set(frame[frame.evaluator == "recon-val"]["split"]) == {"val"}
    assert set(frame[frame.evaluator == "recon-all"]["split"]) >= {"train", "val", "far"}
    steps = {
        row[0]: json.loads(row[1])["steps"]
        for row in runner.store.db.execute("SELECT label, stats_json FROM saes")
    }
    relu = steps["relu[expansion=2,l1_coefficient=0.1]"]
    toy = steps["toy-sae[expansion=2,l1_coefficient=0.01]"]
    assert (toy, relu) == (round(3 * 240 / 64), round(1 * 240 / 64))  # epochs 3 vs the override's 1
    # the override is part of the SAE's identity: changing it retrains that SAE only
    doc["saes"][1]["training"] = {"epochs": 2}
    _, _, again = run(write_suite(tmp_path, doc), toy_manager)
    assert again.computed_cells == 2  # its two cells
    assert capsys.readouterr().err.count("training 1 SAE(s)") == 1
