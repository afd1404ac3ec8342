"""Shared fixtures: every test gets its own cache folder and a fresh, isolated plugin manager."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def pytest_configure(config: pytest.Config) -> None:
    """Before any fixture runs (module-scoped ones too), point the cache away from the user's.

    Session-wide downloads (WordNet, QuickDraw/emoji) land in ``.pytest_cache`` so that reruns
    reuse them; every test then gets a private cache folder on top (``_isolated_env``).
    """
    session_cache = Path(str(config.rootpath)) / ".pytest_cache" / "saebench-vision-cache"
    session_cache.mkdir(parents=True, exist_ok=True)
    os.environ["SAEBENCH_VISION_CACHE"] = str(session_cache)


@pytest.fixture(autouse=True)
def _isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test reads or writes the user's cache, or sees plugin settings of the environment."""
    monkeypatch.setenv("SAEBENCH_VISION_CACHE", str(tmp_path_factory.mktemp("cache")))
    for var in (
        "SAEBENCH_VISION_DISABLE_PLUGINS",
        "SAEBENCH_VISION_STRICT_PLUGINS",
        "SAEBENCH_VISION_PLUGINS",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def manager():
    """A fresh plugin manager: built-ins only, no entry points."""
    from saebench_vision.plugins import get_plugin_manager

    return get_plugin_manager(load_entrypoints=False)


@pytest.fixture
def toy_manager(manager):
    """The fresh manager with the toy plugin registered (and unregistered afterwards)."""
    import toyplugin

    manager.register(toyplugin, "toy", ("saebench-vision-tests", "0"))
    try:
        yield manager
    finally:
        manager.unregister("toy")


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a ``saebench`` subprocess that can import the toy plugin."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def builtins_only_env() -> dict[str, str]:
    """Environment that loads only the built-in plugins: tests of the core's start-up cost must
    not depend on third-party plugins the developer happens to have installed."""
    env = dict(os.environ)
    env["SAEBENCH_VISION_NO_ENTRYPOINTS"] = "1"
    env.pop("SAEBENCH_VISION_PLUGINS", None)
    return env
