"""Packaging: the wheel carries the plugins; a third-party distribution plugs in via entry points."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, subprocess_env


def pip(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            *args,
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_wheel_contains_core_plugins_and_data(tmp_path):
    built = pip("wheel", str(REPO), "-w", str(tmp_path))
    assert built.returncode == 0, built.stderr
    wheel = next(tmp_path.glob("saebench_vision-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "saebench_vision/hookspecs.py",
        "saebench_vision/py.typed",
        "saebench_vision_plugins/__init__.py",
        "saebench_vision_plugins/saes/hooks.py",
        "saebench_vision_plugins/models/hooks.py",
        "saebench_vision_plugins/datasets/shapes.py",
        "saebench_vision_plugins/evaluators/hooks.py",
    ):
        assert required in names, required
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "saebench = saebench_vision.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    """The example plugin installed (for real, by pip) into a private site folder."""
    site = tmp_path_factory.mktemp("site")
    done = pip("install", "--target", str(site), str(REPO / "examples" / "saebench-example-plugin"))
    assert done.returncode == 0, done.stderr
    assert any(site.glob("saebench_example_plugin-0.2.0.dist-info"))
    return site


def run_cli(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = subprocess_env(**env)
    environment["PYTHONPATH"] = f"{site}:{environment['PYTHONPATH']}"
    return subprocess.run(
        [sys.executable, "-m", "saebench_vision", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def test_installed_plugin_is_listed(example_site):
    out = run_cli(example_site, "plugins")
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith("example "))
    assert (
        "saebench-example-plugin 0.2.0" in line
        and "register_saes" in line
        and "sae: tied-relu" in line
    )
    blocked = run_cli(example_site, "plugins", SAEBENCH_VISION_DISABLE_PLUGINS="example")
    assert "tied-relu" not in blocked.stdout


def test_installed_plugin_keeps_startup_light(example_site):
    env = subprocess_env()
    env["PYTHONPATH"] = f"{example_site}:{env['PYTHONPATH']}"
    code = (
        "import sys; from saebench_vision.cli import main; main(['plugins']); "
        "print('TORCH', 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert "tied-relu" in out.stdout and "TORCH False" in out.stdout, out.stdout + out.stderr


def test_installed_plugin_runs_in_a_suite(example_site, tmp_path):
    suite = {
        "name": "third-party",
        "output": str(tmp_path / "out"),
        "models": [{"plugin": "toy-model", "layers": ["final"]}],
        "datasets": {
            "train": {"plugin": "toy-clusters"},
            "val": {"plugin": "toy-clusters", "args": {"split": "val"}, "role": "eval"},
        },
        "saes": [
            {
                "plugin": "tied-relu",
                "args": {"expansion": 2},
                "sweep": {"l1_coefficient": [0.05, 0.5]},
            }
        ],
        # lr 0.01: with gradients clipped to norm 1 (the default), 5 epochs at 0.003 are too
        # few for the stronger penalty to sparsify the toy SAE
        "training": {"epochs": 5, "lr": 0.01},
        "evaluators": [{"plugin": "reconstruction"}],
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = run_cli(
        example_site,
        "run",
        str(path),
        "--no-progress",
        "--format",
        "csv",
        "--all-metrics",
        SAEBENCH_VISION_PLUGINS="toyplugin",
        SAEBENCH_VISION_CACHE=str(tmp_path / "cache"),
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader(io.StringIO(out.stdout)))
    header = rows[0]
    ev = header.index("explained_variance")
    tied = [r for r in rows[1:] if r[2].startswith("tied-relu[") and r[3] == "val"]
    assert len(tied) == 2
    # the stronger L1 penalty gives sparser codes and worse reconstruction; the weaker one
    # reconstructs clearly better than predicting the mean
    l0 = header.index("l0")
    weak, strong = sorted(tied, key=lambda r: r[2])
    assert float(weak[l0]) > float(strong[l0])
    assert float(weak[ev]) > max(0.2, float(strong[ev])), (weak, strong)
