"""CLI features the README promises: leaderboard --evaluator, plugins --verbose/--json,
validate --datasets, SAEBENCH_VISION_NO_ENTRYPOINTS."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, builtins_only_env, subprocess_env

from saebench_vision.cli import main
from saebench_vision.interfaces import Record
from saebench_vision.results import CellKey, ResultsStore


def _store(tmp_path):
    store = ResultsStore(tmp_path)
    cells = [
        CellKey("c1", "m", "final", "cls", "s1", "relu[k=1]", "relu", {}, "reconstruction", "1", 0),
        CellKey("c2", "m", "final", "cls", "s1", "relu[k=1]", "relu", {}, "ood-accuracy", "1", 0),
    ]
    store.register_suite("abc", cells, [("val", "eval")])
    run = store.start_run(
        suite_name="s", suite_path="s.yaml", suite_hash="abc", suite_json={}, versions={}, argv=[]
    )
    store.add_cell(run, cells[0], [Record("mse", 0.25, "val", higher_is_better=False)], 0.0)
    store.add_cell(run, cells[1], [Record("acc", 0.75, "val", higher_is_better=True)], 0.0)
    return store


def test_leaderboard_filters_by_evaluator(tmp_path, capsys):
    _store(tmp_path)
    board = ["leaderboard", str(tmp_path), "--format", "csv", "--layout", "wide"]
    assert main(board) == 0
    both = capsys.readouterr().out
    assert "mse" in both and "acc" in both
    assert main([*board, "--evaluator", "ood-accuracy"]) == 0
    only = capsys.readouterr().out
    assert "acc" in only and "mse" not in only and "0.75" in only
    assert main([*board, "--evaluator", "ood-acuracy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--evaluator ood-acuracy: no results of that evaluator" in err
    assert "(evaluators with results: ood-accuracy, reconstruction)" in err


def test_plugins_verbose_shows_factory_defaults_and_json_lists_components():
    env = subprocess_env(SAEBENCH_VISION_PLUGINS="toyplugin")
    verbose = subprocess.run(
        [sys.executable, "-m", "saebench_vision", "plugins", "--verbose"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert verbose.returncode == 0, verbose.stderr
    assert "_MISSING" not in verbose.stdout
    # toy-sae's `tags` has a default factory (list): its default is shown as the factory's value
    assert "  tags: " in verbose.stdout
    assert [ln for ln in verbose.stdout.splitlines() if ln.startswith("  tags: ")][0].count("= []")
    listing = subprocess.run(
        [sys.executable, "-m", "saebench_vision", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    doc = json.loads(listing.stdout)
    by_name = {p["name"]: p for p in doc["plugins"]}
    assert "toy-sae" in by_name["toyplugin"]["components"]["sae"]
    assert "topk" in by_name["builtin-saes"]["components"]["sae"]
    assert doc["failures"] == []


def test_no_entrypoints_loads_only_builtins_and_listed_modules(tmp_path):
    # A distribution on the path whose entry point would register a plugin.
    dist = tmp_path / "fake-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[saebench_vision]\nfake = toyplugin\n")
    code = (
        "import json; from saebench_vision.plugins import get_plugin_manager; "
        "print(json.dumps(sorted(p['name'] for p in get_plugin_manager().plugin_info())))"
    )

    def names(**env: str) -> list[str]:
        full = subprocess_env(**env)
        full["PYTHONPATH"] = f"{tmp_path}:{full['PYTHONPATH']}"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert "fake" in names()
    without = names(SAEBENCH_VISION_NO_ENTRYPOINTS="1")
    assert "fake" not in without and "builtin-saes" in without
    assert "toyplugin" in names(
        SAEBENCH_VISION_NO_ENTRYPOINTS="1", SAEBENCH_VISION_PLUGINS="toyplugin"
    )


def test_validate_datasets_opens_every_split(tmp_path):
    text = (REPO / "suites" / "quickstart.yaml").read_text()
    bad = tmp_path / "q.yaml"
    # An image folder that exists but holds no image passes the default check (paths exist)
    # and fails --datasets only, which opens the split.
    (tmp_path / "nowhere").mkdir()
    bad.write_text(
        text.replace(
            "datasets:\n",
            "datasets:\n  extra: {plugin: image-folder, args: {root: "
            f"{tmp_path / 'nowhere'}}}, role: far-ood}}\n",
            1,
        )
    )
    env = builtins_only_env()
    run = [sys.executable, "-m", "saebench_vision", "validate", str(bad)]
    plain = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 0, plain.stderr
    opened = subprocess.run(
        [*run, "--datasets"], capture_output=True, text=True, env=env, timeout=300
    )
    assert opened.returncode == 2 and "nowhere" in opened.stderr, opened.stderr
    assert opened.stderr.count("\n") == 1
    # A root that does not exist at all is caught without --datasets.
    (tmp_path / "nowhere").rmdir()
    missing = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 2 and "1 path(s) do not exist: datasets.extra.args.root" in (
        missing.stderr
    ), missing.stderr
