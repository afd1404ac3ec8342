"""The Ray executor on a local Ray instance started here (shared by this module's tests): the
same leaderboard as the local executor, a SIGKILLed worker retried, failed cells recorded while
the others finish, and runs resumed across executors."""

from __future__ import annotations

import copy
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TESTS

from saebench_vision.leaderboard import render
from saebench_vision.plugins import get_plugin_manager
from saebench_vision.runner import Runner
from saebench_vision.suite import load_suite

ray = pytest.importorskip("ray")

SUITE: dict[str, Any] = {
    "name": "toy-ray",
    "seeds": [0],
    "models": [{"plugin": "toy-model", "layers": ["final"]}],
    "datasets": {
        "train": {"plugin": "toy-clusters", "args": {"split": "train"}},
        "val": {"plugin": "toy-clusters", "args": {"split": "val", "size": 96}, "role": "eval"},
    },
    "saes": [
        {
            "plugin": "toy-sae",
            "args": {"expansion": 2, "step_sleep": 0.04},
            "sweep": {"l1_coefficient": [0.01, 0.1]},
        }
    ],
    "training": {"epochs": 4, "lr": 0.003, "checkpoint_every": 2},
    "evaluators": [{"plugin": "reconstruction"}, {"plugin": "toy-slow", "label": "toy-failing"}],
}


@pytest.fixture(scope="module")
def flag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """While this file exists, the `toy-failing` evaluator raises in every cell."""
    return tmp_path_factory.mktemp("flag") / "fail"


@pytest.fixture(scope="module")
def cluster():
    env = {
        "SAEBENCH_VISION_PLUGINS": "toyplugin",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    try:
        yield
    finally:
        ray.shutdown()


def _manager() -> Any:
    import toyplugin

    manager = get_plugin_manager(load_entrypoints=False)
    manager.register(toyplugin, "toy", ("saebench-vision-tests", "0"))
    return manager


def _run(folder: Path, flag: Path, executor: str) -> tuple[Any, Any]:
    doc = copy.deepcopy(SUITE)
    doc["evaluators"][1]["args"] = {"fail_if_exists": str(flag)}
    doc |= {"output": str(folder / "out"), "cache_dir": str(folder / "cache")}
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    manager = _manager()
    suite = load_suite(path, manager.registry())
    runner = Runner(suite, manager, progress=False, executor=executor, log=open(os.devnull, "w"))
    return runner, runner.run()


def _board(runner: Any) -> str:
    frame = runner.store.records_frame(runner.suite.hash)
    return render(frame, fmt="csv", layout="wide", headline_only=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, flag: Path) -> str:
    runner, summary = _run(tmp_path_factory.mktemp("local"), flag, "local")
    assert summary.status == "finished" and summary.computed_cells == 6
    board = _board(runner)
    assert board.count("\n") == 1 + 3  # header + 2 SAEs and the baseline
    return board


def test_ray_gives_the_local_leaderboard(cluster, reference, tmp_path, flag):
    runner, summary = _run(tmp_path, flag, "ray")
    assert (summary.status, summary.computed_cells, summary.failures) == ("finished", 6, [])
    assert _board(runner) == reference
    # the workers extracted into this run's own cache, and the driver alone wrote the store
    assert any((tmp_path / "cache").glob("*/*/manifest.json"))
    assert len(runner.store.runs()) == 1


def _kill_first_training_worker(killed: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    title = fh.read()
            except OSError:
                continue
            if title.startswith(b"ray::saebench-train"):
                time.sleep(0.3)  # mid-way through the sweep's steps
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if not fh.read().startswith(b"ray::saebench-train"):
                        continue  # it finished first: not a kill during training
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
        time.sleep(0.02)


def test_sigkilled_training_worker_is_retried(cluster, reference, tmp_path, flag):
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_training_worker, args=(killed, stop))
    killer.start()
    try:
        runner, summary = _run(tmp_path, flag, "ray")
    finally:
        stop.set()
        killer.join()
    assert killed, "no training task was seen running"
    assert (summary.status, summary.failures) == ("finished", [])
    assert _board(runner) == reference


def test_failed_evaluator_leaves_the_rest_then_local_resumes(cluster, reference, tmp_path, flag):
    flag.write_text("fail")
    try:
        runner, summary = _run(tmp_path, flag, "ray")
    finally:
        flag.unlink()
    assert summary.status == "failed"
    assert len(summary.failures) == 3
    assert all("toy-slow told to fail" in message for _, message in summary.failures)
    assert {c.evaluator for c in summary.unfinished} == {"toy-failing"}
    assert len(summary.unfinished) == 3 and summary.computed_cells == 3
    assert runner.store.failures(summary.run_id) == summary.failures
    runner, resumed = _run(tmp_path, flag, "local")
    assert (resumed.status, resumed.computed_cells) == ("finished", 3)
    assert _board(runner) == reference


def test_local_run_stopped_then_finished_by_ray(cluster, reference, tmp_path, flag):
    flag.write_text("fail")
    try:
        with pytest.raises(RuntimeError, match="toy-slow told to fail"):
            _run(tmp_path, flag, "local")
    finally:
        flag.unlink()
    runner, resumed = _run(tmp_path, flag, "ray")
    assert (resumed.status, resumed.computed_cells) == ("finished", 3)
    assert _board(runner) == reference


def test_cli_run_on_ray_reports_a_failed_run(cluster, tmp_path, flag, monkeypatch, capsys):
    from saebench_vision.cli import main

    doc = copy.deepcopy(SUITE)
    doc["evaluators"][1]["args"] = {"fail_if_exists": str(flag)}
    doc |= {"output": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setenv("SAEBENCH_VISION_PLUGINS", "toyplugin")
    flag.write_text("fail")
    try:
        code = main(["run", str(path), "--executor", "ray", "--no-progress"])
    finally:
        flag.unlink()
    err = capsys.readouterr().err
    assert code == 1
    assert "failed: evaluate " in err and "toy-slow told to fail" in err
    assert (
        "failed: 3 cell(s) unfinished" in err
        and "toy-model/final/baseline/toy-failing/seed 0" in err
    )
    assert main(["run", str(path), "--no-progress"]) == 0
    assert "3 already finished, 3 to run" in capsys.readouterr().err


def test_task_resources_follow_devices_and_overrides():
    from saebench_vision.plan import plan_suite, schedule
    from saebench_vision.ray_executor import RayExecutor
    from saebench_vision.suite import parse_suite

    doc = copy.deepcopy(SUITE)
    doc["models"][0]["args"] = {"device": "cuda"}
    doc["training"] = {"device": "auto"}
    manager = _manager()
    suite = parse_suite(doc, Path("s.yaml"), manager.registry())
    steps = schedule(plan_suite(suite, manager), set(), set()).steps
    driver = type("Driver", (), {"suite": suite, "manager": manager})()
    kinds = {type(s).__name__: s for s in steps}
    plain = RayExecutor()
    assert plain._options(driver, kinds["ExtractStep"], 0) == {"num_cpus": 1, "num_gpus": 1}
    assert plain._options(driver, kinds["TrainStep"], 0) == {"num_cpus": 1, "num_gpus": 0}
    assert plain._options(driver, kinds["TrainStep"], 4) == {"num_cpus": 1, "num_gpus": 1}
    tuned = RayExecutor(resources={"train": {"num_cpus": 4, "num_gpus": 2, "nvme": 1}})
    assert tuned._options(driver, kinds["TrainStep"], 0) == {
        "num_cpus": 4,
        "num_gpus": 2,
        "resources": {"nvme": 1},
    }


def test_storage_probe_names_what_a_node_cannot_read(tmp_path):
    from saebench_vision.ray_executor import _probe

    seen, stale = tmp_path / "a", tmp_path / "b"
    seen.write_text("token")
    stale.write_text("another run's token")
    assert _probe([str(seen), str(stale), str(tmp_path / "missing")], "token") == [
        str(stale),
        str(tmp_path / "missing"),
    ]


def test_tiny_persistence_suite_on_ray_matches_local(cluster, tmp_path):
    """Section 5.2 across layers: the projector's cells read lm.1's SAE, trained by another
    task (the plan makes them wait for it) and loaded from its checkpoint by the worker."""
    from saebench_vision_plugins.models.tiny_llava import build_tiny_llava

    model_dir = build_tiny_llava(tmp_path / "tiny-llava")
    doc = yaml.safe_load((TESTS.parent / "suites" / "llava_tiny_persistence.yaml").read_text())
    doc["models"][0]["args"]["model_id"] = str(model_dir)
    for split in doc["datasets"].values():
        split["args"]["dataset"]["args"]["size"] = 24
    doc["evaluators"][0]["args"] |= {"figures": 1, "cell_pixels": 4}
    boards = {}
    for executor in ("local", "ray"):
        folder = tmp_path / executor
        doc |= {"output": str(folder / "out"), "cache_dir": str(folder / "cache")}
        path = tmp_path / f"{executor}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        manager = get_plugin_manager(load_entrypoints=False)
        runner = Runner(
            load_suite(path, manager.registry()),
            manager,
            progress=False,
            executor=executor,
            log=open(os.devnull, "w"),
        )
        summary = runner.run()
        assert (summary.status, summary.computed_cells, summary.failures) == ("finished", 4, [])
        saes = dict(runner.store.db.execute("SELECT sae_id, layer FROM saes").fetchall())
        (figure,) = (folder / "out" / "artifacts").glob("*/fig7.json")
        data = json.loads(figure.read_text())
        assert (saes[data["from"]["sae_id"]], saes[data["to"]["sae_id"]]) == ("projector", "lm.1")
        boards[executor] = _board(runner)
    assert "iou" in boards["local"] and boards["ray"] == boards["local"]


def test_ray_per_layer_tokens_and_log_progress_match_local(cluster, tmp_path):
    """Per-layer token selections reach the workers' extraction (one pass for both layers),
    and progress lines from workers change nothing: the local executor's board and cache."""
    doc = copy.deepcopy(SUITE)
    doc["models"] = [
        {"plugin": "toy-model", "layers": ["layer.0", "final"], "tokens": {"layer.0": "mean-patch"}}
    ]
    doc["saes"] = [{"plugin": "toy-sae", "args": {"expansion": 2, "l1_coefficient": 0.1}}]
    doc["training"] = {"epochs": 1}
    doc["evaluators"] = [{"plugin": "reconstruction"}]
    boards, metas = {}, {}
    for executor in ("local", "ray"):
        folder = tmp_path / executor
        folder.mkdir()
        path = folder / "suite.yaml"
        run_doc = doc | {"output": str(folder / "out"), "cache_dir": str(folder / "cache")}
        path.write_text(yaml.safe_dump(run_doc, sort_keys=False))
        manager = _manager()
        suite = load_suite(path, manager.registry())
        runner = Runner(
            suite, manager, progress="log", executor=executor, log=open(os.devnull, "w")
        )
        summary = runner.run()
        assert (summary.status, summary.computed_cells) == ("finished", 4), summary.failures
        boards[executor] = _board(runner)
        from saebench_vision.cache import ActivationCache

        metas[executor] = sorted(
            (e.key, e.meta["layer"], e.meta["split"], e.meta["tokens"])
            for e in ActivationCache(folder / "cache").entries()
        )
    assert boards["ray"] == boards["local"]
    assert metas["ray"] == metas["local"]
    assert {(layer, tokens) for _, layer, _, tokens in metas["ray"]} == {
        ("layer.0", "mean-patch"),
        ("final", "cls"),
    }


def test_ray_and_local_runs_at_once_compute_each_cell_once(cluster, tmp_path, flag):
    import subprocess
    import sys
    from collections import Counter

    from conftest import subprocess_env
    from test_claims import COUNTER

    from saebench_vision import hookimpl

    doc = copy.deepcopy(SUITE)
    doc["evaluators"][1]["args"] = {"fail_if_exists": str(flag)}
    doc |= {"output": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    (tmp_path / "cellcounter.py").write_text(COUNTER)
    cell_log = tmp_path / "cells.jsonl"
    env = subprocess_env(SAEBENCH_VISION_PLUGINS="toyplugin,cellcounter", CELL_LOG=str(cell_log))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    local = subprocess.Popen(
        [sys.executable, "-m", "saebench_vision", "run", str(path), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    mine: list[str] = []

    class Count:
        @hookimpl
        def saebench_cell_finished(self, cell):
            mine.append(cell.cell_id)

    import toyplugin

    # Registered as the subprocess registers it, so that both plan the same cell ids.
    manager = get_plugin_manager(load_entrypoints=False)
    manager.register(toyplugin, "toyplugin", ("$SAEBENCH_VISION_PLUGINS", ""))
    manager.register(Count(), "count")
    try:
        assert local.stderr is not None
        started = [local.stderr.readline() for _ in range(2)]  # threads, then the plan
        assert "to run;" in started[-1], started
        suite = load_suite(path, manager.registry())
        runner = Runner(suite, manager, progress=False, executor="ray", log=open(os.devnull, "w"))
        summary = runner.run()
    finally:
        _, err = local.communicate(timeout=300)
    assert local.returncode == 0, err[-3000:]
    assert summary.status == "finished"
    lines = cell_log.read_text().splitlines() if cell_log.exists() else []
    theirs = [json.loads(line)[0] for line in lines]
    per_cell = Counter(mine + theirs)
    assert len(per_cell) == 6 and set(per_cell.values()) == {1}
    assert summary.computed_cells == len(mine)
    # (Registered under another name than in `reference`, the SAEs have other ids and seeds.)
    assert _board(runner).count("\n") == 1 + 3
