"""How long does a report take? ``saebench report`` of the quickstart against a 10 s budget.

Runs each command in a fresh process (start-up and imports included, as a user sees it) and
prints wall and CPU seconds side by side with ``saebench leaderboard`` on the same results,
measured in the same run, as ratios; also checks that no model code (torch, transformers,
diffusers, open_clip) was imported while building the report. Usage::

    python benchmarks/report_build.py                       # runs the quickstart first if needed
    python benchmarks/report_build.py --results saebench-results/quickstart --rounds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 10.0

PROBE = """
import json, sys, time
from saebench_vision.cli import main
started = time.perf_counter()
rc = main(sys.argv[1:])
heavy = [m for m in ("torch", "transformers", "diffusers", "open_clip") if m in sys.modules]
print(json.dumps({"rc": rc, "heavy": heavy}), file=sys.stderr)
"""


def timed(args: list[str]) -> tuple[float, float, dict]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    info = json.loads(done.stderr.strip().splitlines()[-1])
    return wall, cpu, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(REPO / "saebench-results" / "quickstart"))
    parser.add_argument("--rounds", type=int, default=3, help="best of this many (default 3)")
    args = parser.parse_args()
    results = Path(args.results)
    if not (results / "results.sqlite").exists():
        print(f"no results in {results}: running the quickstart first (about a minute)")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "saebench_vision",
                "run",
                str(REPO / "suites" / "quickstart.yaml"),
                "--output",
                str(results),
                "--no-progress",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.html"
        rows = {"leaderboard": [], "report": []}
        heavy: list[str] = []
        for _ in range(args.rounds):
            rows["leaderboard"].append(timed(["leaderboard", str(results), "--all-metrics"])[:2])
            wall, cpu, info = timed(
                ["report", str(results), "--out", str(report), "--at-l0", "16,32,64"]
            )
            rows["report"].append((wall, cpu))
            heavy += info["heavy"]
        size = report.stat().st_size
    lb_wall, lb_cpu = min(w for w, _ in rows["leaderboard"]), min(c for _, c in rows["leaderboard"])
    rp_wall, rp_cpu = min(w for w, _ in rows["report"]), min(c for _, c in rows["report"])
    print(f"{'command':<24}{'wall s':>10}{'cpu s':>10}")
    print(f"{'saebench leaderboard':<24}{lb_wall:>10.2f}{lb_cpu:>10.2f}")
    print(f"{'saebench report':<24}{rp_wall:>10.2f}{rp_cpu:>10.2f}")
    print(f"report / leaderboard: {rp_wall / lb_wall:.1f}x wall, {rp_cpu / lb_cpu:.1f}x cpu")
    print(
        f"report / {BUDGET_S:.0f} s budget: {rp_wall / BUDGET_S:.2f} (wall), report size {size / 1e6:.2f} MB"
    )
    print(f"model code imported while reporting: {sorted(set(heavy)) or 'none'}")
    return 0 if rp_wall <= BUDGET_S and not heavy else 1


if __name__ == "__main__":
    sys.exit(main())
