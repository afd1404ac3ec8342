"""Plugin loading: built-ins, entry points, isolation of broken plugins, blocking, duplicates."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import builtins_only_env

from saebench_vision import hookimpl
from saebench_vision.errors import DuplicateComponentError, PluginError, UnknownComponentError
from saebench_vision.plugins import DEFAULT_PLUGINS, get_plugin_manager


def make_distribution(root: Path, dist: str, eps: dict[str, str], modules: dict[str, str]) -> None:
    """A minimal installed distribution (dist-info + modules) that importlib.metadata can see."""
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    lines = ["[saebench_vision]"] + [f"{name} = {target}" for name, target in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


GOOD = """
    from saebench_vision import hookimpl

    @hookimpl
    def register_saes():
        return {"my-sae": "good_plugin_mod:MySAE"}
"""
BROKEN = """
    raise ImportError("this plugin needs a package that is not installed")
"""


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    make_distribution(tmp_path, "good-dist", {"good": "good_plugin_mod"}, {"good_plugin_mod": GOOD})
    make_distribution(
        tmp_path, "broken-dist", {"broken": "broken_plugin_mod"}, {"broken_plugin_mod": BROKEN}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("good_plugin_mod", "broken_plugin_mod"):
        sys.modules.pop(mod, None)
    return tmp_path


def test_builtins_registered_from_explicit_tuple(manager):
    names = {name for name, _ in manager.pm.list_name_plugin()}
    assert names == {name for name, _ in DEFAULT_PLUGINS}
    for name, _ in DEFAULT_PLUGINS:
        assert manager.distributions[name][0] == "saebench-vision"


def test_broken_plugin_is_reported_and_the_rest_work(fake_site, capsys):
    manager = get_plugin_manager()
    assert [f.name for f in manager.failures] == ["broken"]
    assert manager.failures[0].distribution == "broken-dist"
    assert "ImportError: this plugin needs a package" in manager.failures[0].error
    assert "my-sae" in manager.registry().names("sae")
    assert manager.registry().get("sae", "my-sae").plugin == "good"
    assert manager.distributions["good"] == ("good-dist", "1.2.3")
    err = capsys.readouterr().err
    assert "plugin `broken` from broken-dist failed to load" in err
    assert "SAEBENCH_VISION_DISABLE_PLUGINS=broken" in err


def test_strict_mode_turns_a_broken_plugin_into_an_error(fake_site, monkeypatch):
    monkeypatch.setenv("SAEBENCH_VISION_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="plugin `broken` from broken-dist failed to load"):
        get_plugin_manager()


def test_blocked_plugins_are_never_imported(fake_site, monkeypatch):
    monkeypatch.setenv("SAEBENCH_VISION_DISABLE_PLUGINS", "broken, good")
    manager = get_plugin_manager(strict=True)
    assert manager.failures == []
    assert "broken_plugin_mod" not in sys.modules and "good_plugin_mod" not in sys.modules
    assert "my-sae" not in manager.registry().names("sae")


def test_builtins_can_be_blocked_too(monkeypatch):
    monkeypatch.setenv("SAEBENCH_VISION_DISABLE_PLUGINS", "builtin-saes")
    manager = get_plugin_manager(load_entrypoints=False)
    assert manager.registry().names("sae") == []


def test_a_disabled_name_that_matches_no_plugin_is_a_warning_or_a_strict_error(
    fake_site, monkeypatch, capsys
):
    monkeypatch.setenv("SAEBENCH_VISION_DISABLE_PLUGINS", "builtin-sae,good")
    manager = get_plugin_manager()
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "matches no plugin" in x]
    assert line.startswith(
        "warning: SAEBENCH_VISION_DISABLE_PLUGINS=builtin-sae,good: `builtin-sae` matches no plugin"
    )
    assert "Did you mean: builtin-saes" in line
    listed = line.split("(plugins: ")[1].rstrip(")").split(", ")
    assert {"builtin-saes", "broken", "good"} <= set(listed)
    # The names that do match still take effect; the misspelt one disabled nothing.
    assert "my-sae" not in manager.registry().names("sae")
    assert "topk" in manager.registry().names("sae")
    # An entry point counts as a plugin even when entry points are not loaded.
    monkeypatch.setenv("SAEBENCH_VISION_DISABLE_PLUGINS", "good")
    get_plugin_manager(load_entrypoints=False)
    assert "matches no plugin" not in capsys.readouterr().err
    monkeypatch.setenv("SAEBENCH_VISION_DISABLE_PLUGINS", "goood")
    with pytest.raises(PluginError, match="`goood` matches no plugin.*Did you mean: good"):
        get_plugin_manager(strict=True)


def test_extra_plugin_modules_from_environment(fake_site, monkeypatch):
    monkeypatch.setenv("SAEBENCH_VISION_PLUGINS", "good_plugin_mod")
    manager = get_plugin_manager(load_entrypoints=False)
    assert manager.registry().get("sae", "my-sae").plugin == "good_plugin_mod"


class _DupPlugin:
    @staticmethod
    @hookimpl
    def register_saes():
        return {"my-sae": "elsewhere:Other"}


class _FirstPlugin:
    @staticmethod
    @hookimpl
    def register_saes():
        return {"my-sae": "first_mod:MySAE"}


def test_duplicate_names_name_both_owners(manager):
    manager.register(_FirstPlugin(), "first")
    manager.register(_DupPlugin(), "second")
    with pytest.raises(DuplicateComponentError) as info:
        manager.registry()
    msg = str(info.value)
    assert "SAE `my-sae` is registered twice" in msg
    assert "plugin `first` (first_mod:MySAE)" in msg and "plugin `second` (elsewhere:Other)" in msg


def test_unknown_name_suggests_close_ones(toy_manager):
    with pytest.raises(UnknownComponentError) as info:
        toy_manager.registry().get("sae", "toy-saee")
    assert str(info.value).startswith("Unknown SAE 'toy-saee'. Did you mean: toy-sae? Available: ")
    with pytest.raises(UnknownComponentError, match=r"Unknown model 'zzz'\. Available: "):
        toy_manager.registry().get("model", "zzz")


class _Misspelled:
    @staticmethod
    @hookimpl
    def register_sae():  # not a hook: the spec is register_saes
        return {}


def test_misspelled_hook_is_caught(manager):
    from pluggy import PluginValidationError

    with pytest.raises(PluginValidationError, match="register_sae"):
        manager.register(_Misspelled(), "typo")


class _BadReturn:
    @staticmethod
    @hookimpl
    def register_models():
        return ["not", "a", "dict"]


class _BadRef:
    @staticmethod
    @hookimpl
    def register_models():
        return {"m": "no_colon_here"}


@pytest.mark.parametrize(
    "plugin,expected",
    [
        (_BadReturn(), "register_models() must return a dict"),
        (_BadRef(), "model `m`: component reference 'no_colon_here'"),
    ],
)
def test_malformed_registrations(manager, plugin, expected, capsys):
    # Strict: an error naming the plugin. Otherwise a named warning, and the rest still work.
    manager.strict = True
    manager.register(plugin, "bad")
    with pytest.raises(PluginError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        manager.registry()
    manager.strict = False
    manager._registry = None
    registry = manager.registry()
    assert "plugin `bad`" in capsys.readouterr().err
    assert "relu" in {e.name for e in registry.entries("sae")}
    assert [f.name for f in manager.failures] == ["bad"]


def test_unimportable_component_names_the_plugin(manager):
    class Stale:
        @staticmethod
        @hookimpl
        def register_evaluators():
            return {"stale": "no_such_module_xyz:Evaluator"}

    manager.register(Stale(), "stale-plugin")
    with pytest.raises(
        PluginError, match=r"evaluator `stale` \(plugin `stale-plugin`\): cannot import"
    ):
        manager.registry().get("evaluator", "stale").load()


def test_a_raising_observer_is_one_warning_and_the_others_still_run(manager, capsys):
    seen = []

    class Broken:
        @staticmethod
        @hookimpl
        def saebench_cell_finished(cell):
            raise ValueError(f"dashboard down\nsecond line {cell}")

    class Listener:
        @staticmethod
        @hookimpl
        def saebench_cell_finished(cell, records):
            seen.append((cell, records))

    manager.register(Broken(), "broken")
    manager.register(Listener(), "listener")
    for i in range(3):
        manager.notify("saebench_cell_finished", cell=i, records=[i])
    assert seen == [(0, [0]), (1, [1]), (2, [2])]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "warning: plugin `broken`: saebench_cell_finished() raised ValueError: dashboard down; "
        "the run goes on (shown once; disable the plugin with "
        "SAEBENCH_VISION_DISABLE_PLUGINS=broken)"
    ]


def test_observers_cannot_kill_a_run_even_when_strict(tmp_path, toy_manager, capsys, monkeypatch):
    from test_runner import SUITE, write_suite

    from saebench_vision.results import ResultsStore
    from saebench_vision.runner import Runner
    from saebench_vision.suite import load_suite

    monkeypatch.setenv("SAEBENCH_VISION_STRICT_PLUGINS", "1")
    cells = []

    class Observers:
        @hookimpl
        def saebench_run_start(self, run_id):
            raise RuntimeError("cannot reach the tracker")

        @hookimpl
        def saebench_cell_finished(self, cell):
            cells.append(cell.cell_id)
            raise KeyError("no such panel")

        @hookimpl
        def saebench_run_finished(self, status):
            raise SystemExit(3)

    toy_manager.register(Observers(), "observers")
    try:
        suite = load_suite(write_suite(tmp_path, SUITE), toy_manager.registry())
        summary = Runner(suite, toy_manager, progress=False).run()
    finally:
        toy_manager.unregister("observers")
    assert summary.status == "finished" and summary.computed_cells == 16
    assert len(set(cells)) == 16  # called for every cell despite raising each time
    err = capsys.readouterr().err
    for hook in ("saebench_run_start", "saebench_cell_finished", "saebench_run_finished"):
        assert err.count(f"warning: plugin `observers`: {hook}() raised") == 1
    assert [r["status"] for r in ResultsStore(suite.output).runs()] == ["finished"]


def test_cli_startup_imports_nothing_heavy():
    """`saebench --help` and `saebench plugins` must not import torch and friends."""
    code = textwrap.dedent(
        """
        import sys
        from saebench_vision.cli import main
        for argv in (["--help"], ["plugins"], ["plugins", "--verbose"]):
            try:
                main(argv)
            except SystemExit:
                pass
        heavy = sorted(m for m in ("torch", "transformers", "diffusers", "open_clip", "torchvision",
                                   "sklearn", "pandas", "nltk") if m in sys.modules)
        print("HEAVY:", ",".join(heavy))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=builtins_only_env(),
    )
    assert out.returncode == 0, out.stderr
    assert "HEAVY: \n" in out.stdout or out.stdout.rstrip().endswith("HEAVY:"), out.stdout[-500:]
    assert "efficientnet-lite" in out.stdout and "reconstruction" in out.stdout
