"""Concurrent runs of one output folder share the work through claims in the results store."""

from __future__ import annotations

import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from conftest import subprocess_env
from test_runner import SLOW, SUITE, write_suite

from saebench_vision import hookimpl
from saebench_vision.errors import SaebenchError
from saebench_vision.results import ClaimHeartbeat, ResultsStore
from saebench_vision.runner import Runner, plan_suite
from saebench_vision.suite import load_suite

# An observer plugin that appends one line per cell it sees finished, with the process id: an
# account of who computed what that does not go through the runner's own counting.
COUNTER = """
import json, os
from saebench_vision import hookimpl

@hookimpl
def saebench_cell_finished(cell):
    with open(os.environ["CELL_LOG"], "a") as f:
        f.write(json.dumps([cell.cell_id, os.getpid()]) + "\\n")
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_run(store: ResultsStore, run_id: str, host: str, status: str = "running") -> None:
    store.db.execute(
        "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,NULL,?)",
        (run_id, "toy", "x", "h", "{}", "{}", host, "[]", time.time(), status),
    )


def _hold(store: ResultsStore, key: str, run_id: str, host: str, pid: int, beat: float) -> None:
    store.db.execute(
        "INSERT OR REPLACE INTO claims VALUES (?,?,?,?,?)", (key, run_id, host, pid, beat)
    )


def test_claims_respect_live_owners_and_take_over_dead_ones(tmp_path):
    store = ResultsStore(tmp_path)
    node, now = platform.node(), time.time()
    _fake_run(store, "live-here", f"{node} pid {os.getpid()}")
    _fake_run(store, "dead-here", f"{node} pid 1")
    _fake_run(store, "far", "elsewhere pid 7")
    _fake_run(store, "over", "elsewhere pid 8", status="finished")
    _hold(store, "a", "live-here", node, os.getpid(), now - 3600)  # alive: its heartbeat is moot
    _hold(store, "b", "dead-here", node, _dead_pid(), now)  # fresh beat, but its process is gone
    _hold(store, "c", "far", "elsewhere", 7, now - 5)
    _hold(store, "d", "far", "elsewhere", 7, now - 120)
    _hold(store, "e", "over", "elsewhere", 8, now)  # its run ended
    _hold(store, "f", "gone-run", "elsewhere", 9, now)  # its run is not in the store at all

    def claim(*keys: str, stored: bool = False) -> tuple[str, str]:
        return store.claim(keys, "me", lambda: stored, stale_after=60)

    assert claim("a") == ("theirs", "live-here")
    assert claim("c") == ("theirs", "far")
    assert claim("a", stored=True) == ("done", "")
    for key in "bdef":
        assert claim(key) == ("mine", "")
    # All or nothing: one live key blocks the others of the same step.
    assert claim("g", "c") == ("theirs", "far")
    assert store.db.execute("SELECT COUNT(*) FROM claims WHERE key='g'").fetchone()[0] == 0
    assert claim("g") == ("mine", "")
    owners = dict(store.db.execute("SELECT key, run_id FROM claims").fetchall())
    assert owners == {
        "a": "live-here",
        "c": "far",
        "b": "me",
        "d": "me",
        "e": "me",
        "f": "me",
        "g": "me",
    }
    store.release(["b", "a"], "me")  # only one's own claims are released
    assert {"a", "c"} <= set(dict(store.db.execute("SELECT key, run_id FROM claims").fetchall()))
    assert "b" not in dict(store.db.execute("SELECT key, run_id FROM claims").fetchall())
    store.release_all("me")
    assert sorted(r[0] for r in store.db.execute("SELECT key FROM claims")) == ["a", "c"]


def test_a_dead_runs_claim_is_taken_over(tmp_path, toy_manager):
    suite = load_suite(write_suite(tmp_path, SUITE), toy_manager.registry())
    cells = plan_suite(suite, toy_manager).cells
    store = ResultsStore(suite.output)
    pid = _dead_pid()
    _fake_run(store, "killed", f"{platform.node()} pid {pid}")
    _hold(store, f"cell {cells[0].cell_id}", "killed", platform.node(), pid, time.time())
    runner = Runner(suite, toy_manager, progress=False)
    summary = runner.run()
    assert summary.status == "finished"
    assert (summary.computed_cells, summary.taken_cells) == (len(cells), 0)
    assert store.db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
    # The killed run is marked as such when the next run starts.
    status = store.db.execute("SELECT status FROM runs WHERE run_id='killed'").fetchone()[0]
    assert status == "interrupted"


def test_a_live_claim_is_waited_for_then_computed_when_released(tmp_path, toy_manager):
    suite = load_suite(write_suite(tmp_path, SUITE), toy_manager.registry())
    cells = plan_suite(suite, toy_manager).cells
    held = next(c for c in cells if c.sae_label != "baseline")
    store = ResultsStore(suite.output)
    _fake_run(store, "other", "elsewhere pid 5")
    _hold(store, f"cell {held.cell_id}", "other", "elsewhere", 5, time.time() + 3600)

    log = tmp_path / "log.txt"
    finished_at: dict[str, float] = {}
    released_at: list[float] = []

    class Watch:
        @hookimpl
        def saebench_cell_finished(self, cell):
            finished_at[cell.cell_id] = time.time()

    def release_later() -> None:
        # Once every other cell is done: they went on while this one waited.
        deadline = time.time() + 120
        while len(finished_at) < len(cells) - 1 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1)
        other = ResultsStore(suite.output)
        released_at.append(time.time())
        other.db.execute("DELETE FROM claims WHERE run_id='other'")
        other.close()

    toy_manager.register(Watch(), "watch")
    releaser = threading.Thread(target=release_later)
    releaser.start()
    try:
        with log.open("w") as f:
            summary = Runner(suite, toy_manager, progress=False, log=f).run()
    finally:
        releaser.join()
        toy_manager.unregister("watch")
    text = log.read_text()
    assert summary.status == "finished" and summary.computed_cells == len(cells)
    assert f"evaluate {held.cell_id}: run other is computing it; waiting for it" in text
    assert "the run computing it ended without storing it; computing it here" in text
    # It waited for the claim, and the other cells did not wait for it.
    assert finished_at[held.cell_id] >= released_at[0]
    assert sum(t < released_at[0] for t in finished_at.values()) == len(cells) - 1


def _computed(stderr: str) -> tuple[int, int]:
    found = re.search(
        r"(\d+) of \d+ cells computed in [\d.]+ s (?:and (\d+) by a concurrent run)?", stderr
    )
    assert found, stderr[-2000:]
    return int(found[1]), int(found[2] or 0)


def test_two_concurrent_runs_share_the_work(tmp_path):
    path = write_suite(tmp_path, SLOW)
    (tmp_path / "cellcounter.py").write_text(COUNTER)
    cell_log = tmp_path / "cells.jsonl"
    env = subprocess_env(
        SAEBENCH_VISION_PLUGINS="toyplugin,cellcounter",
        SAEBENCH_VISION_CACHE=str(tmp_path / "cache"),
        CELL_LOG=str(cell_log),
    )
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    cmd = [sys.executable, "-m", "saebench_vision", "run", str(path), "--no-progress"]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert outs[0][0] == outs[1][0] and outs[0][0].strip()  # the same leaderboard

    seen = [json.loads(line) for line in cell_log.read_text().splitlines()]
    per_cell = Counter(cell for cell, _ in seen)
    assert len(per_cell) == 16 and set(per_cell.values()) == {1}  # each cell computed once
    by_pid = Counter(pid for _, pid in seen)
    assert set(by_pid) == {p.pid for p in procs}  # ... and both runs computed some
    for p, (_, err) in zip(procs, outs):
        computed, taken = _computed(err)
        already = int(re.search(r"16 cells, (\d+) already finished", err)[1])
        assert computed == by_pid[p.pid]
        assert computed + taken + already == 16
    trained = [int(n) for _, err in outs for n in re.findall(r"training (\d+) SAE", err)]
    assert sum(trained) == 6  # 3 SAEs x 2 layers, each trained by one run only
    with sqlite3.connect(tmp_path / "out" / "results.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
        statuses = [r[0] for r in con.execute("SELECT status FROM runs")]
    assert statuses == ["finished", "finished"]


def test_heartbeat_refreshes_only_its_runs_claims(tmp_path):
    store = ResultsStore(tmp_path)
    _hold(store, "mine", "me", "h", 1, 0.0)
    _hold(store, "other", "you", "h", 2, 0.0)
    with ClaimHeartbeat(store.path, "me", interval=0.05):
        time.sleep(0.5)
    beats = dict(store.db.execute("SELECT key, heartbeat FROM claims").fetchall())
    assert beats["other"] == 0.0 and time.time() - beats["mine"] < 5


def test_stale_after_is_configurable_and_checked(tmp_path, toy_manager, monkeypatch):
    suite = load_suite(write_suite(tmp_path, SUITE), toy_manager.registry())
    monkeypatch.setenv("SAEBENCH_VISION_CLAIM_STALE_SECONDS", "7.5")
    assert Runner(suite, toy_manager).claim_stale_s == 7.5
    for bad in ("soon", "0", "-3", "inf", "nan"):
        monkeypatch.setenv("SAEBENCH_VISION_CLAIM_STALE_SECONDS", bad)
        with pytest.raises(SaebenchError, match="SAEBENCH_VISION_CLAIM_STALE_SECONDS=") as exc:
            Runner(suite, toy_manager)
        assert "\n" not in str(exc.value)
