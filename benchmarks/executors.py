"""What does running a suite through Ray cost on one machine? Local vs Ray, same suite, cold.

Runs the quickstart suite (EfficientNet-Lite0 on procedural shapes; ``--quick`` shrinks every
split to a third and trains 3 epochs) twice from scratch, each time with a fresh output folder
and activation cache: once with the local executor, once with the Ray executor on a Ray
instance started for the run (its start-up included, as a user pays it). Prints both wall
times, their ratio, the number of steps (tasks) and whether the two leaderboards agree.
Usage::

    python benchmarks/executors.py --quick            # a few minutes on 2 CPU cores
    python benchmarks/executors.py --suite suites/quickstart.yaml --num-cpus 8
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from saebench_vision.leaderboard import render
from saebench_vision.plan import plan_suite, schedule
from saebench_vision.plugins import get_plugin_manager
from saebench_vision.runner import Runner
from saebench_vision.suite import load_suite

REPO = Path(__file__).resolve().parent.parent


def _suite_file(source: Path, folder: Path, quick: bool) -> Path:
    doc = yaml.safe_load(source.read_text())
    if quick:
        for split in doc["datasets"].values():
            if "size" in split.get("args", {}):
                split["args"]["size"] = max(36, split["args"]["size"] // 3)
        doc["training"] = dict(doc.get("training") or {}) | {"epochs": 3}
    doc["output"] = str(folder / "out")
    doc["cache_dir"] = str(folder / "cache")
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _run(path: Path, executor: str) -> tuple[float, str, int]:
    manager = get_plugin_manager()
    suite = load_suite(path, manager.registry())
    steps = len(schedule(plan_suite(suite, manager), set(), set()).steps)
    runner = Runner(suite, manager, progress=False, executor=executor, log=io.StringIO())
    started = time.perf_counter()
    summary = runner.run()
    seconds = time.perf_counter() - started
    if summary.status != "finished":
        sys.exit(f"{executor}: run {summary.status}: {summary.failures}")
    board = render(
        runner.store.records_frame(suite.hash), fmt="csv", layout="wide", headline_only=False
    )
    return seconds, board, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=REPO / "suites" / "quickstart.yaml")
    parser.add_argument("--quick", action="store_true", help="smaller splits, 3 epochs")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for executor in ("local", "ray"):
            folder = Path(tmp) / executor
            folder.mkdir()
            path = _suite_file(args.suite, folder, args.quick)
            if executor == "ray":
                import ray

                started = time.perf_counter()
                ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
                startup = time.perf_counter() - started
                try:
                    seconds, board, steps = _run(path, executor)
                finally:
                    ray.shutdown()
                results[executor] = (seconds + startup, board, steps, startup)
            else:
                seconds, board, steps = _run(path, executor)
                results[executor] = (seconds, board, steps, 0.0)
    local, ray_ = results["local"], results["ray"]
    print(f"suite: {args.suite}{' (--quick)' if args.quick else ''}; {local[2]} steps (tasks)")
    print(f"local: {local[0]:7.1f} s")
    print(f"ray:   {ray_[0]:7.1f} s (Ray start-up {ray_[3]:.1f} s, {args.num_cpus} CPUs)")
    print(f"ray / local: {ray_[0] / local[0]:.2f}x (target: under 1.5x)")
    print(f"same leaderboard: {'yes' if local[1] == ray_[1] else 'NO'}")


if __name__ == "__main__":
    main()
