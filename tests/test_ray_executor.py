"""The Ray executor on a local Ray instance started here (shared by this module's tests): the
same leaderboard as the local executor, a SIGKILLed worker retried, failed cells recorded while
the others finish, and runs resumed across executors."""

from __future__ import annotations

import copy
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
