"""Thread choice on a shared machine: who decides, and what auto picks."""

from __future__ import annotations

import pytest

from saebench_vision import threads
from saebench_vision.errors import ConfigError


def test_choose_threads_degrades_with_load() -> None:
    assert threads.choose_threads(8, 0.2) == 8  # quiet: every core
    assert threads.choose_threads(8, 3.4) == 5
    assert threads.choose_threads(2, 4.0) == 1  # saturated: one, never zero
    assert threads.choose_threads(4, None) == 4  # no load average (Windows): all cores


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", threads.ENV):
        monkeypatch.setenv(key, "")  # recorded, so whatever configure_threads sets is undone
        monkeypatch.delenv(key)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setattr(threads, "load_average", lambda: 2.2)
    import torch

    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)


def test_auto_sets_threads_and_passive_wait(env: pytest.MonkeyPatch) -> None:
    import os

    import torch

    plan = threads.configure_threads()
    assert plan.threads == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert torch.get_num_threads() == 2  # torch already imported: set directly
    assert (
        plan.describe() == "threads: 2 of 4 cores, load 2.2 (cores minus load, idle threads sleep)"
    )


def test_the_user_decides_first(env: pytest.MonkeyPatch) -> None:
    import os

    env.setenv("OMP_NUM_THREADS", "3")
    env.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert threads.configure_threads().threads == 3
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    env.setenv(threads.ENV, "1")
    assert threads.configure_threads().threads == 1
    assert threads.configure_threads("4").threads == 4  # --threads beats both
    assert threads.configure_threads("torch").threads is None
    with pytest.raises(ConfigError, match="^--threads many: 'many' is not a thread count"):
        threads.configure_threads("many")
    # A bad value in the environment names the variable it came from.
    env.setenv(threads.ENV, "lots")
    with pytest.raises(
        ConfigError,
        match=r"^SAEBENCH_VISION_THREADS=lots: 'lots' is not a thread count; use an integer",
    ):
        threads.configure_threads()
    env.setenv(threads.ENV, "-2")
    with pytest.raises(ConfigError, match=r"^SAEBENCH_VISION_THREADS=-2: -2 threads is not at"):
        threads.configure_threads()
