"""CPU threads that degrade gracefully on a shared machine.

Left alone, torch starts one OpenMP thread per core, and GNU OpenMP (the runtime in the PyPI
torch wheels) lets idle threads spin at every barrier before they sleep. On a quiet machine
that is the fastest choice. Beside other work it is the slowest: each parallel region waits
for its slowest thread, which the scheduler has handed to another process, while the other
threads burn their time slice spinning, so the wall time *and* the CPU time grow several-fold
(``benchmarks/busy_cpu.py`` measures it). The extraction's DataLoader workers, the trainer's
side-by-side SAE threads and BLAS all draw on the same cores.

``saebench run`` therefore chooses, before torch is imported (the OpenMP runtime reads its
environment once, at load):

* threads = the cores this process may use minus the load already on them (1-minute load
  average, rounded), at least 1: all cores on a quiet machine, one on a saturated one;
* ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning (a few
  microseconds more per parallel region on a quiet machine, no CPU burnt on a busy one);
* both only where the user has not decided: ``OMP_NUM_THREADS`` / ``OMP_WAIT_POLICY`` in the
  environment, ``saebench run --threads N`` or ``SAEBENCH_VISION_THREADS`` (an integer,
  ``auto``, or ``torch`` to keep torch's own defaults) win.

Measured with ``benchmarks/busy_cpu.py --breakdown`` on 2 cores beside 2 busy loops (and other
work): torch's defaults 73 s wall / 14 s CPU; one spinning thread 35 s / 5.6 s; two sleeping
threads 32 s / 5.1 s; both choices 35 s / 5.4 s. Spinning threads that outnumber the free cores
are the cost; either remedy alone removes most of it, and both together keep the CPU time low
whichever way the load moves during a run.

Thread counts never change results beyond float summation order, so they are not part of any
identity.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

ENV = "SAEBENCH_VISION_THREADS"


@dataclass(frozen=True)
class ThreadPlan:
    threads: int | None
    """Intra-op threads set, or None when torch's defaults were kept."""
    cores: int
    load: float | None
    reason: str

    def describe(self) -> str:
        if self.threads is None:
            return f"threads: torch defaults ({self.reason})"
        load = "" if self.load is None else f", load {self.load:.1f}"
        return f"threads: {self.threads} of {self.cores} cores{load} ({self.reason})"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


def choose_threads(cores: int, load: float | None) -> int:
    """All cores when they are idle, one fewer per process already running, at least 1."""
    if load is None:
        return cores
    return max(1, min(cores, cores - int(load + 0.5)))


def configure_threads(requested: str | int | None = None) -> ThreadPlan:
    """Set the thread count and OpenMP wait policy for this process (see the module text).

    ``requested`` (``--threads``) beats ``SAEBENCH_VISION_THREADS``, which beats
    ``OMP_NUM_THREADS``; the automatic choice applies only when none is given. Call it before
    torch is imported; if torch already is, its thread count is still set (the wait policy
    then stays as the runtime read it)."""
    from saebench_vision.errors import ConfigError

    cores, load = available_cores(), load_average()
    choice = requested if requested is not None else os.environ.get(ENV)
    if choice is not None and str(choice).strip().lower() == "torch":
        return ThreadPlan(
            None, cores, load, f"{ENV}=torch" if requested is None else "--threads torch"
        )
    if choice is not None and str(choice).strip().lower() != "auto":
        given = f"--threads {choice}" if requested is not None else f"{ENV}={choice}"
        fix = "use an integer >= 1 (e.g. 2), auto or torch"
        try:
            threads = int(choice)
        except ValueError:
            raise ConfigError(f"{given}: {choice!r} is not a thread count; {fix}") from None
        if threads < 1:
            raise ConfigError(f"{given}: {threads} threads is not at least 1; {fix}")
        reason = "--threads" if requested is not None else ENV
    elif os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
        reason = "OMP_NUM_THREADS"
    else:
        threads = choose_threads(cores, load)
        reason = "cores minus load"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        reason += ", idle threads sleep"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return ThreadPlan(threads, cores, load, reason)
