"""Integrity: strict and bounded suites, isolated plugins, a results store that notices damage,
and a CLI that answers every failure in one line."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import subprocess_env
from test_plugins import make_distribution
from test_suite import VALID, write

from saebench_vision import hookimpl
from saebench_vision.errors import PluginError, ResultsError, SaebenchError, SuiteError
from saebench_vision.plugins import get_plugin_manager
from saebench_vision.results import ResultsStore
from saebench_vision.suite import MAX_VARIANTS, load_suite


def _text(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


# -- suites: YAML 1.2 scalars, duplicate keys, bounds ------------------------------------------


def test_duplicate_keys_name_both_lines(tmp_path, toy_manager):
    text = _text(VALID).replace("  val:", "  val:", 1)
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("seeds:"))
    lines.insert(i + 3, "seeds: [5]")  # a second top-level `seeds:` after the list
    with pytest.raises(SuiteError) as err:
        load_suite(write(tmp_path, "\n".join(lines) + "\n"), toy_manager.registry())
    message = str(err.value)
    assert "duplicate key `seeds`" in message
    assert f"lines {i + 1} and {i + 4}" in message
    assert "\n" not in message


def test_duplicate_split_is_an_error_not_a_silent_override(tmp_path, toy_manager):
    text = _text(VALID)
    text = text.replace(
        "  far:", "  val:\n    plugin: toy-clusters\n    args: {split: train}\n  far:", 1
    )
    with pytest.raises(SuiteError, match="duplicate key `val`"):
        load_suite(write(tmp_path, text), toy_manager.registry())


def test_yaml_1_2_scalars(tmp_path, toy_manager):
    from saebench_vision.suite import SuiteLoader

    doc = yaml.load(
        "a: 2:24\nno: on\nc: 1e-3\nd: 0x10\ne: 1_000\nf: yes\ng: true\nh: ~\n", Loader=SuiteLoader
    )
    assert doc == {
        "a": "2:24",
        "no": "on",
        "c": 0.001,
        "d": 16,
        "e": 1000,
        "f": "yes",
        "g": True,
        "h": None,
    }
    # A sexagesimal-looking value is no longer silently 144: it is a string, and the Config says so.
    text = _text(VALID).replace("expansion: 2", "expansion: 2:24")
    with pytest.raises(SuiteError, match=r"saes\[0\]\.args\.expansion: '2:24' is not an integer"):
        load_suite(write(tmp_path, text), toy_manager.registry())


@pytest.mark.timeout(20)
def test_alias_bomb_is_refused_before_expansion(tmp_path, toy_manager):
    bomb = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        bomb.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    text = "\n".join(bomb) + "\ndescription: *a8\n" + _text({k: v for k, v in VALID.items()})
    with pytest.raises(SuiteError, match="aliases") as err:
        load_suite(write(tmp_path, text), toy_manager.registry())
    assert len(str(err.value)) < 400


@pytest.mark.timeout(20)
def test_deep_nesting_is_one_line(tmp_path, toy_manager):
    text = _text(VALID) + "extra: " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(SuiteError, match="nested"):
        load_suite(write(tmp_path, text), toy_manager.registry())


@pytest.mark.timeout(30)
def test_variant_count_is_bounded_and_overridable(tmp_path, toy_manager):
    doc = yaml.safe_load(_text(VALID))
    doc["saes"][0]["sweep"] = {"l1_coefficient": [0.001 * (i + 1) for i in range(MAX_VARIANTS + 1)]}
    with pytest.raises(SuiteError, match=f"{MAX_VARIANTS + 1:,} SAE variants.*max_variants"):
        load_suite(write(tmp_path, doc), toy_manager.registry())
    doc["saes"][0]["sweep"] = {"l1_coefficient": [0.1, 0.2, 0.3]}
    doc["max_variants"] = 2
    with pytest.raises(SuiteError, match="3 SAE variants"):
        load_suite(write(tmp_path, doc), toy_manager.registry())
    doc["max_variants"] = 3
    assert len(load_suite(write(tmp_path, doc), toy_manager.registry()).sae_variants()) == 3


@pytest.mark.parametrize(
    "path,value,expected",
    [
        ("training.lr", float("inf"), "training.lr: inf is not a finite number"),
        ("saes.0.args.l1_coefficient", float("nan"), "is not a finite number"),
        ("seeds", [2**70], "seeds: "),
        ("seeds", list(range(1001)), "1,001 seeds; at most 1,000"),
        ("output", "out\x00put", r"output: 'out\\x00put' is not a folder path"),
        ("models.0.label", "a\x00b", "label"),
    ],
)
def test_values_must_be_finite_and_in_range(tmp_path, toy_manager, path, value, expected):
    doc = yaml.safe_load(_text(VALID))
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    node[keys[-1]] = value
    with pytest.raises(SuiteError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_suite(write(tmp_path, doc), toy_manager.registry())


def test_nul_bytes_fail_string_options():
    from saebench_vision.config import check_type

    assert check_type("ok", str) == (True, "ok")
    assert check_type("a\x00b", str)[0] is False
    assert check_type(2**63, int)[0] is False and check_type(2**63 - 1, int)[0] is True
    assert check_type(10**400, float)[0] is False


# -- plugins are isolated ----------------------------------------------------------------------


EXITS = """
    import sys
    sys.exit(3)
"""
GOOD = """
    from saebench_vision import hookimpl

    @hookimpl
    def register_saes():
        return {"fine-sae": "fine_mod:FineSAE"}
"""


def test_plugin_calling_sys_exit_at_import_is_skipped(tmp_path, monkeypatch, capsys):
    make_distribution(tmp_path, "exit-dist", {"exiter": "exit_mod"}, {"exit_mod": EXITS})
    make_distribution(tmp_path, "fine-dist", {"fine": "fine_mod"}, {"fine_mod": GOOD})
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("exit_mod", "fine_mod"):
        sys.modules.pop(mod, None)
    manager = get_plugin_manager()
    err = capsys.readouterr().err
    assert "plugin `exiter` from exit-dist failed to load" in err and "SystemExit: 3" in err
    assert "fine-sae" in {e.name for e in manager.registry().entries("sae")}


class _Raises:
    @staticmethod
    @hookimpl
    def register_evaluators():
        raise RuntimeError("boom")


def test_raising_discovery_hook_warns_and_the_rest_work(manager, capsys):
    manager.register(_Raises(), "raiser")
    registry = manager.registry()
    err = capsys.readouterr().err
    assert "plugin `raiser`: register_evaluators() raised RuntimeError: boom" in err
    assert "reconstruction" in {e.name for e in registry.entries("evaluator")}
    manager.strict = True
    manager._registry = None
    with pytest.raises(PluginError, match="raiser"):
        manager.registry()


@pytest.mark.parametrize(
    "value,strict",
    [("1", True), ("yes", True), ("TRUE", True), ("0", False), ("no", False), ("", False)],
)
def test_strict_flag_values(monkeypatch, value, strict):
    monkeypatch.setenv("SAEBENCH_VISION_STRICT_PLUGINS", value)
    assert get_plugin_manager(load_entrypoints=False).strict is strict


def test_strict_flag_rejects_other_values(monkeypatch):
    monkeypatch.setenv("SAEBENCH_VISION_STRICT_PLUGINS", "maybe")
    with pytest.raises(PluginError, match="SAEBENCH_VISION_STRICT_PLUGINS='maybe' is not a yes/no"):
        get_plugin_manager(load_entrypoints=False)


# -- the results store notices damage ----------------------------------------------------------


def _store_with_a_run(output: Path) -> ResultsStore:
    store = ResultsStore(output)
    run = store.start_run(
        suite_name="s", suite_path="s.yaml", suite_hash="h", suite_json={}, versions={}, argv=[]
    )
    store.finish_run(run, "finished")
    return store


def test_empty_store_in_a_used_folder_is_an_error(tmp_path):
    _store_with_a_run(tmp_path).close()
    (tmp_path / "saes").mkdir()
    (tmp_path / "results.sqlite").write_bytes(b"")
    with pytest.raises(ResultsError, match="damaged.*empty.*cp .*results.sqlite.bak"):
        ResultsStore(tmp_path)
    # A brand-new folder whose empty file is all there is (a crash right after creation) is fine.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "results.sqlite").write_bytes(b"")
    ResultsStore(fresh).close()


def test_garbage_inside_the_store_is_detected_and_the_snapshot_restores_it(tmp_path):
    store = _store_with_a_run(tmp_path)
    store.db.executemany(
        "INSERT INTO meta VALUES (?, ?)", [(f"k{i}", "v" * 200) for i in range(200)]
    )
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    backup = tmp_path / "results.sqlite.bak"
    assert backup.exists()
    assert sqlite3.connect(backup).execute("SELECT status FROM runs").fetchone() == ("finished",)
    db = tmp_path / "results.sqlite"
    data = bytearray(db.read_bytes())
    assert len(data) > 16384
    data[8192 : 8192 + 4096] = bytes((i * 37 + 11) % 256 for i in range(4096))
    db.write_bytes(bytes(data))
    with pytest.raises(ResultsError) as err:
        ResultsStore(tmp_path)
    assert "damaged" in str(err.value) and f"cp {backup} {db}" in str(err.value)
    db.write_bytes(backup.read_bytes())
    assert ResultsStore(tmp_path).runs()[0]["status"] == "finished"


def test_runs_of_dead_processes_are_marked_interrupted(tmp_path):
    store = ResultsStore(tmp_path)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    run = store.start_run(
        suite_name="s", suite_path="s", suite_hash="h", suite_json={}, versions={}, argv=[]
    )
    import platform

    store.db.execute(
        "UPDATE runs SET host=? WHERE run_id=?",
        (f"{platform.node()} pid {dead.stdout.strip()}", run),
    )
    alive = store.start_run(
        suite_name="s", suite_path="s", suite_hash="h", suite_json={}, versions={}, argv=[]
    )
    status = {r["run_id"]: r["status"] for r in store.runs()}
    assert status == {run: "interrupted", alive: "running"}


# -- the CLI answers in one line ---------------------------------------------------------------


BUGGY = """
    from saebench_vision import hookimpl

    @hookimpl
    def register_models():
        return {"buggy-model": "buggy_mod:Nope"}

    class Nope:
        pass
"""


def test_unexpected_errors_are_one_line_unless_debug(tmp_path):
    (tmp_path / "crash_mod.py").write_text(
        textwrap.dedent(
            """
            from saebench_vision import hookimpl

            @hookimpl
            def saebench_run_start(suite, run_id):
                pass

            def boom():
                raise ZeroDivisionError("division by zero in a plugin")
            """
        )
    )
    script = (
        "import sys, saebench_vision.cli as cli\n"
        "import crash_mod\n"
        "cli.cmd_plugins = lambda args: crash_mod.boom()\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    env = subprocess_env(PYTHONPATH=str(tmp_path), SAEBENCH_VISION_NO_ENTRYPOINTS="1")
    out = subprocess.run(
        [sys.executable, "-c", script, "plugins"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert lines[0].startswith(
        "error: ZeroDivisionError: division by zero in a plugin (in crash_mod.boom)"
    )
    assert "--debug" in lines[0]
    out = subprocess.run(
        [sys.executable, "-c", script, "--debug", "plugins"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert "Traceback" in out.stderr and "ZeroDivisionError" in out.stderr


# -- validate finds what run would stop on -----------------------------------------------------


def test_output_or_cache_that_cannot_be_a_folder(tmp_path, toy_manager):
    from saebench_vision.runner import preflight

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    doc = yaml.safe_load(_text(VALID))
    doc["output"] = str(blocker)
    suite = load_suite(write(tmp_path, doc), toy_manager.registry())
    with pytest.raises(SaebenchError, match=r"output: .*a-file is a file, not a folder; choose"):
        preflight(suite, toy_manager)
    doc["output"] = str(tmp_path / "out")
    doc["cache_dir"] = str(blocker / "cache")
    suite = load_suite(write(tmp_path, doc), toy_manager.registry())
    with pytest.raises(SaebenchError, match=r"cache_dir: .*a-file is a file, so .*cache cannot"):
        preflight(suite, toy_manager)
    # --cache-dir overrides the suite's folder, so only the override is checked.
    preflight(suite, toy_manager, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_evaluator_without_the_split_role_it_needs(tmp_path, toy_manager):
    from saebench_vision.runner import preflight

    doc = yaml.safe_load(_text(VALID))
    doc["evaluators"] = [{"plugin": "ontology", "args": {"split_role": "eval"}}]
    del doc["datasets"]["val"]
    doc["output"] = str(tmp_path / "out")
    suite = load_suite(write(tmp_path, doc), toy_manager.registry())
    with pytest.raises(
        SaebenchError,
        match=r"evaluators\[0\]: evaluator `ontology` needs a split with `role: eval`",
    ):
        preflight(suite, toy_manager)
    doc["evaluators"] = [{"plugin": "ontology", "args": {"split_role": "train"}}]
    preflight(load_suite(write(tmp_path, doc), toy_manager.registry()), toy_manager)


def test_suite_name_cannot_move_the_default_output(tmp_path, toy_manager):
    doc = yaml.safe_load(_text(VALID))
    doc["name"] = "../../etc/evil name"
    suite = load_suite(write(tmp_path, doc), toy_manager.registry())
    assert suite.output == Path("saebench-results/etc-evil-name")
    assert suite.name == "../../etc/evil name"


def test_store_names_the_other_suites_it_holds(tmp_path):
    store = _store_with_a_run(tmp_path)
    assert store.other_suites("s") == []
    store.start_run(
        suite_name="t", suite_path="t", suite_hash="h2", suite_json={}, versions={}, argv=[]
    )
    assert store.other_suites("s") == ["t"] and store.other_suites("u") == ["s", "t"]


# -- cache entries that lost their manifest, leftovers, paths that must exist ------------------


def _entry(cache, key: str):
    import numpy as np

    w = cache.writer(key, 4, {"what": "test"})
    w.append(np.ones((3, 4), dtype=np.float32), np.arange(3), None)
    return w.commit()


@pytest.mark.parametrize("lose", ["manifest", "manifest-and-shards"])
def test_entry_without_its_manifest_is_rebuilt_not_stuck(tmp_path, lose, capsys):
    from saebench_vision.cache import ActivationCache

    cache = ActivationCache(tmp_path / "cache")
    key = "c" * 64
    entry = _entry(cache, key)
    (entry.path / "manifest.json").unlink()
    if lose == "manifest-and-shards":
        for shard in entry.path.glob("shard-*"):
            shard.unlink()
    fresh = ActivationCache(tmp_path / "cache")
    assert fresh.lookup(key) is None
    assert "has no manifest; rebuilding it" in capsys.readouterr().err
    assert not fresh.entry_path(key).exists()
    rebuilt = _entry(fresh, key)  # used to fail: "vanished right after it was written"
    assert rebuilt.n == 3 and fresh.lookup(key) is not None


def test_a_run_sweeps_what_killed_runs_left_in_the_cache(tmp_path, toy_manager):
    from test_runner import SUITE, write_suite

    from saebench_vision.runner import Runner

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    cache = tmp_path / "cache"
    leftover = cache / "tmp" / f"writer.{dead}.abcd1234"
    leftover.mkdir(parents=True)
    (leftover / "shard-00000.npy").write_bytes(b"x" * 100)
    doc = dict(SUITE) | {"cache_dir": str(cache), "output": str(tmp_path / "out")}
    suite = load_suite(write_suite(tmp_path, doc), toy_manager.registry())
    Runner(suite, toy_manager, progress=False, log=open(os.devnull, "w")).run()
    assert not leftover.exists()


def test_paths_that_must_exist_are_checked_by_validate_all_at_once(tmp_path, monkeypatch):
    import dataclasses

    from saebench_vision.checks import check_paths
    from saebench_vision.config import option

    @dataclasses.dataclass(frozen=True)
    class Conf:
        root: str = option("", "a folder", exists=True)
        labels: str | None = option(None, "a file", exists=True)
        model: str = option("org/model", "hub id or folder", path=True)

    class FakeSuite:
        path = Path("s.yaml")

    (tmp_path / "here").mkdir()
    check_paths(FakeSuite, [("datasets.train", Conf(root=str(tmp_path / "here")))])
    with pytest.raises(SaebenchError) as err:
        check_paths(
            FakeSuite,
            [
                ("datasets.train", Conf(root="/nope/train")),
                ("datasets.val", Conf(root=str(tmp_path / "here"), labels="/nope/val.txt")),
            ],
        )
    assert str(err.value) == (
        "s.yaml: 2 path(s) do not exist: datasets.train.args.root: /nope/train; "
        "datasets.val.args.labels: /nope/val.txt; fill in the paths on this machine"
    )


def test_validate_reports_missing_dataset_roots(tmp_path, manager):
    from saebench_vision.runner import preflight

    doc = {
        "output": str(tmp_path / "out"),
        "models": [{"plugin": "efficientnet-lite", "layers": ["final"]}],
        "datasets": {
            "train": {"plugin": "image-folder", "args": {"root": str(tmp_path / "missing")}},
        },
        "saes": [{"plugin": "topk"}],
        "evaluators": [{"plugin": "reconstruction"}],
    }
    suite = load_suite(write(tmp_path, doc), manager.registry())
    with pytest.raises(SaebenchError, match=r"1 path\(s\) do not exist: datasets.train.args.root"):
        preflight(suite, manager)


@pytest.mark.parametrize("command", ["ls", "verify", "gc"])
def test_cache_commands_refuse_a_folder_that_is_not_there(tmp_path, command, capsys):
    from saebench_vision.cli import main

    assert main(["cache", command, "--cache-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no activation cache there" in err[0]
    assert not (tmp_path / "nope").exists()


def test_two_entries_that_train_the_same_sae_name_both(tmp_path, toy_manager):
    # Spelling out a default (or a training option equal to the suite's) trains the same SAE,
    # with the same ids: refused before anything runs, naming both entries.
    from saebench_vision.plan import plan_suite

    config_cls = toy_manager.registry().get("sae", "toy-sae").config_class()
    default = config_cls().expansion
    same = [
        {"plugin": "toy-sae", "args": {"l1_coefficient": 1}},
        {"plugin": "toy-sae", "args": {"l1_coefficient": 1, "expansion": default}},
    ]
    relabelled = {**same[0], "label": "b"}
    for second in (same[1], relabelled, {**relabelled, "training": {"epochs": 2}}):
        doc = {**VALID, "saes": [same[0], second]}
        suite = load_suite(write(tmp_path, doc), toy_manager.registry())
        with pytest.raises(SuiteError) as err:
            plan_suite(suite, toy_manager)
        message = str(err.value)
        assert "saes[1]" in message and "same SAE as saes[0]" in message and "\n" not in message
        # What differs as written is named: the spelled-out default, the suite's own recipe.
        if second is same[1]:
            assert f"`expansion` {default!r} against unset" in message
        elif second.get("training"):
            assert re.search(r"`training\.epochs` 2(\.0)? against unset", message)
        else:
            assert "written alike" in message
    # A different recipe or option is a different SAE.
    for second in (
        {**relabelled, "training": {"epochs": 3}},
        {**same[0], "args": {"l1_coefficient": 2}},
    ):
        doc = {**VALID, "saes": [same[0], second]}
        plan = plan_suite(load_suite(write(tmp_path, doc), toy_manager.registry()), toy_manager)
        # two SAEs per (layer, seed): 2 layers x 2 seeds x 2
        assert len({c.sae_id for c in plan.cells if c.sae_plugin == "toy-sae"}) == 8
