"""Progress in log files: a line per 10% or per minute, with rate and ETA."""

from __future__ import annotations

import copy
import io

from test_runner import SUITE, write_suite

from saebench_vision.progress import LogProgress, make_progress
from saebench_vision.runner import Runner
from saebench_vision.suite import load_suite


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lines_per_ten_percent_with_rate_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    bar = LogProgress(1000, "extract m/train", "item", file=out, clock=clock)
    for _ in range(40):  # 25 items per second
        clock.t += 1
        bar.update(25)
    bar.close()
    lines = out.getvalue().splitlines()
    # 100, 200, ..., 900 of 1000, then the final line.
    assert len(lines) == 10
    assert lines[0] == "extract m/train: 100/1000 item (10%), 25 item/s, 4s elapsed, ETA 36s"
    assert lines[-1] == "extract m/train: 1000/1000 item (100%), 25 item/s, 40s elapsed, done"


def test_a_line_per_minute_when_progress_is_slow() -> None:
    out, clock = io.StringIO(), Clock()
    bar = LogProgress(10_000, "train", "step", file=out, clock=clock)
    bar.set_postfix(mse="0.12")
    for _ in range(5):  # 1 step per 30 s: never 10%, but a line every minute
        clock.t += 30
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("train: 2/10000 step (0%), 0.0333 step/s, 1m00s elapsed, ETA 83h")
    assert lines[0].endswith("mse=0.12")


def test_off_mode_is_nothing() -> None:
    assert make_progress(10, "x", "item", False) is None
    assert isinstance(make_progress(10, "x", "item", "log"), LogProgress)


def test_run_logs_extraction_and_training_progress(tmp_path, toy_manager, capsys) -> None:
    doc = copy.deepcopy(SUITE)
    doc["saes"] = [{"plugin": "relu", "args": {"expansion": 2, "l1_coefficient": 0.1}}]
    doc["evaluators"] = [{"plugin": "reconstruction"}]
    doc["training"] = {"epochs": 1}
    doc["cache_dir"] = str(tmp_path / "cache")
    suite = load_suite(write_suite(tmp_path, doc), toy_manager.registry())
    Runner(suite, toy_manager, progress="log").run()
    err = capsys.readouterr().err
    assert "\r" not in err
    extract = [line for line in err.splitlines() if line.startswith("extract toy-model/train:")]
    assert extract and extract[-1].startswith("extract toy-model/train: 240/240 item (100%)")
    assert any(" step (" in line and "done" in line for line in err.splitlines())
