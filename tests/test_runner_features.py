"""README features of `saebench run`, end to end on the toy plugin: lifecycle hooks emitted by the
runner, --output / --cache-dir, training.normalize, several seeds, the summary board, and a warm
run that imports no torch."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import subprocess_env
from test_runner import SUITE, run, write_suite

from saebench_vision import hookimpl
from saebench_vision.cache import ActivationCache
from saebench_vision.checkpoint import load_sae
from saebench_vision.results import ResultsStore
from saebench_vision.runner import plan_suite


def _resolver(manager):
    return lambda name: manager.registry().get("sae", name).load()


SMALL = copy.deepcopy(SUITE)
SMALL["models"][0]["layers"] = ["final"]
SMALL["saes"] = [{"plugin": "toy-sae", "args": {"expansion": 2}}]
SMALL["evaluators"] = [{"plugin": "reconstruction"}]
SMALL["training"] = {"epochs": 1, "lr": 0.003}


def test_runner_emits_every_lifecycle_hook(tmp_path, toy_manager):
    seen: list[tuple] = []

    class Listener:
        @staticmethod
        @hookimpl
        def saebench_run_start(suite, run_id, cells):
            seen.append(("start", run_id, len(cells)))

        @staticmethod
        @hookimpl
        def saebench_cell_finished(cell, records):
            seen.append(("cell", cell.cell_id, len(records)))

        @staticmethod
        @hookimpl
        def saebench_run_finished(suite, run_id, status):
            seen.append(("finished", run_id, status))

    toy_manager.register(Listener(), "listener")
    try:
        suite, _, summary = run(write_suite(tmp_path, SMALL), toy_manager)
    finally:
        toy_manager.unregister(name="listener")
    cells = plan_suite(suite, toy_manager).cells
    assert seen[0] == ("start", summary.run_id, len(cells))
    assert seen[-1] == ("finished", summary.run_id, "finished")
    finished = [s for s in seen if s[0] == "cell"]
    assert sorted(s[1] for s in finished) == sorted(c.cell_id for c in cells)
    sae_cells = {c.cell_id for c in cells if c.sae_label != "baseline"}
    assert all(n > 0 for _, cell_id, n in finished if cell_id in sae_cells)


def test_run_output_and_cache_dir_override_the_suite(tmp_path, monkeypatch, capsys):
    from saebench_vision.cli import main

    monkeypatch.setenv("SAEBENCH_VISION_PLUGINS", "toyplugin")
    suite_out, cache_env = tmp_path / "suite-out", tmp_path / "env-cache"
    monkeypatch.setenv("SAEBENCH_VISION_CACHE", str(cache_env))
    path = write_suite(tmp_path, SMALL | {"output": str(suite_out)})
    out, cache = tmp_path / "chosen-out", tmp_path / "chosen-cache"
    assert main(["run", str(path), "--output", str(out), "--cache-dir", str(cache)]) == 0
    board = capsys.readouterr().out
    assert (out / "results.sqlite").is_file() and not suite_out.exists()
    assert len(list(cache.glob("??/*/manifest.json"))) == 3  # train, val, far at one layer
    assert not list(cache_env.glob("??/*/manifest.json"))
    # The summary board after `run`: one row per SAE (and the baseline) with headline metrics.
    assert "toy-sae[expansion=2]" in board and "mse" in board and "explained_variance" in board
    assert "| toy-model" in board


@pytest.mark.parametrize("normalize", ["none", "sqrt-d"])
def test_training_normalize_through_the_runner(tmp_path, toy_manager, normalize):
    doc = copy.deepcopy(SMALL)
    doc["training"] = doc["training"] | {"normalize": normalize}
    suite, runner, _ = run(write_suite(tmp_path, doc), toy_manager)
    (planned,) = [p for g in plan_suite(suite, toy_manager).groups for p in g.saes]
    sae, _ = load_sae(runner.store.sae_path(planned.sae_id), _resolver(toy_manager))
    acts = ActivationCache(runner.cache_dir).entries()
    train = next(a for a in acts if a.meta["split"] == "train")
    x = train.read(np.arange(train.n)).astype(np.float64)
    want = 1.0 if normalize == "none" else math.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1).mean()
    assert float(sae.input_scale) == pytest.approx(want, rel=1e-5)


def test_several_seeds_train_separate_saes_and_report_intervals(tmp_path, toy_manager):
    doc = copy.deepcopy(SMALL) | {"seeds": [0, 1, 2]}
    suite, runner, summary = run(write_suite(tmp_path, doc), toy_manager)
    assert summary.computed_cells == 3 * 2  # (SAE + baseline) x 3 seeds
    planned = [p for g in plan_suite(suite, toy_manager).groups for p in g.saes]
    assert len({p.sae_id for p in planned}) == 3
    weights = [
        load_sae(runner.store.sae_path(p.sae_id), _resolver(toy_manager))[0].W_enc.detach().numpy()
        for p in planned
    ]
    assert not np.allclose(weights[0], weights[1]) and not np.allclose(weights[1], weights[2])
    frame = runner.store.records_frame(suite.hash)
    mse = frame[(frame.metric == "mse") & (frame.split == "val")]
    assert sorted(mse["seed"]) == [0, 1, 2] and mse["value"].nunique() == 3
    from saebench_vision.leaderboard import render

    text = render(frame, layout="wide", metrics=("mse",), splits=("val",))
    row = next(line for line in text.splitlines() if "toy-sae" in line)
    values = mse["value"].to_numpy()
    # mean ± 95% Student-t interval over the three seeds (t_0.975 with 2 dof = 4.303)
    ci = 4.302652729911275 * values.std(ddof=1) / math.sqrt(3)
    decimals = max(0, 1 - math.floor(math.log10(ci)))
    assert f"{values.mean():.{decimals}f} ± {ci:.{decimals}f}" in row


def test_light_toy_configs_match_the_toy_plugin():
    import dataclasses

    import toylight
    import toyplugin

    for name in ("ToyModelConfig", "ToyClustersConfig", "SlowConfig", "ToySAEConfig"):
        light, real = getattr(toylight, name)(), getattr(toyplugin, name)()
        assert dataclasses.asdict(light) == dataclasses.asdict(real), name


def test_warm_run_imports_no_torch(tmp_path):
    path = write_suite(tmp_path, SMALL)
    # toylight: the toy plugin behind light hooks (Configs importable without torch)
    env = subprocess_env(
        SAEBENCH_VISION_PLUGINS="toylight", SAEBENCH_VISION_CACHE=str(tmp_path / "cache")
    )
    cold = subprocess.run(
        [sys.executable, "-m", "saebench_vision", "run", str(path), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert cold.returncode == 0, cold.stderr
    code = textwrap.dedent(
        f"""
        import sys
        from saebench_vision.cli import main
        code = main(["run", {str(path)!r}, "--no-progress"])
        print("EXIT", code, "TORCH", "torch" in sys.modules)
        """
    )
    warm = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert "EXIT 0 TORCH False" in warm.stdout, warm.stdout + warm.stderr
    assert "0 of 2 cells computed" in warm.stderr


def test_a_suite_that_fails_preflight_writes_nothing(tmp_path, monkeypatch, capsys):
    from saebench_vision.cli import main

    monkeypatch.setenv("SAEBENCH_VISION_PLUGINS", "toyplugin")
    doc = copy.deepcopy(SMALL)
    doc["models"][0]["layers"] = ["no-such-layer"]
    out, cache = tmp_path / "out", tmp_path / "cache"
    path = write_suite(tmp_path, doc | {"output": str(out)})
    assert main(["run", str(path), "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert "no-such-layer" in err and "Traceback" not in err
    assert not out.exists() and not cache.exists()
    # With the store already there, a failing preflight records no run either.
    good = write_suite(tmp_path, SMALL | {"output": str(out)}, name="good.yaml")
    assert main(["run", str(good), "--cache-dir", str(cache)]) == 0
    runs = ResultsStore(out).db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    assert main(["run", str(path), "--cache-dir", str(cache)]) == 2
    assert ResultsStore(out).db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == runs


def test_a_batch_above_the_training_rows_is_noted_when_training(tmp_path, toy_manager, capsys):
    doc = copy.deepcopy(SMALL)
    doc["training"] = doc["training"] | {"batch_size": 600, "epochs": 5}
    suite, _, summary = run(write_suite(tmp_path, doc), toy_manager)
    assert summary.status == "finished"
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("note:")]
    # 240 toy training items, one row each: 2.5 epochs a step, 5 epochs in round(5 * 240 / 600).
    assert line == (
        f"note: {suite.path}: training.batch_size: 600 is more than the 240 training rows of "
        "toy-model/final: every step repeats rows (2.5 epochs a step, 5 epoch(s) in 2 step(s)); "
        "a batch_size of at most 240 takes several steps per epoch"
    )
