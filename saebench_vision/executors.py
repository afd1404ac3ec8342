"""Executors decide where and when the steps of a run execute; they compute nothing themselves.

An executor receives the :class:`~saebench_vision.plan.Schedule` (steps and what each needs) and
a driver (:class:`saebench_vision.runner.Runner`), runs every step somewhere, and hands each
output back with ``driver.step_finished(step, output)`` or reports ``driver.step_failed(step,
message)``. Before it runs an SAE group or a cell it asks ``driver.claim(step)``: ``"run"``,
``"done"`` (another run stored it: count it finished) or ``"wait"`` (another run computes it:
ask again later, meanwhile run other steps, not the ones that need it). The driver is the only
writer of the results store. Light: importing this module
imports neither torch nor Ray.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from saebench_vision.errors import SaebenchError

if TYPE_CHECKING:
    from saebench_vision.plan import Schedule

EXECUTORS = ("local", "ray")


class Executor:
    """Base class: ``name`` as written in ``--executor`` and a suite's ``executor:``."""

    name: ClassVar[str] = ""

    def execute(self, schedule: Schedule, driver: Any) -> None:
        raise NotImplementedError


class LocalExecutor(Executor):
    """Every step in this process, one after another, in the schedule's order (each split
    extracted once, each group trained in one pass, the adapter loaded once). A failing step
    stops the run at once with its error, as a single machine user expects. A step that
    another run is computing (``driver.claim``) is set aside with the steps that need it; the
    others go on, and when only set-aside steps are left the executor polls until the other
    run has stored them (or died, and this run takes them over)."""

    name = "local"

    def execute(self, schedule: Schedule, driver: Any) -> None:
        from saebench_vision.progress import make_progress
        from saebench_vision.steps import run_step

        ws = driver.workspace()
        # In a log file: a line per 10% of the steps or per minute, so that long evaluations,
        # which report nothing themselves, still show the run is alive.
        bar = make_progress(
            len(schedule.steps), "steps", "step", driver.progress, file=driver.log, leave=False
        )
        finished: set[str] = set()
        waiting = list(schedule.steps)
        try:
            while waiting:
                still = []
                for step in waiting:
                    if not all(n in finished for n in schedule.needs[step.id]):
                        still.append(step)
                        continue
                    verdict = driver.claim(step)
                    if verdict == "wait":
                        still.append(step)
                        continue
                    if verdict == "run":
                        driver.step_finished(step, run_step(ws, step))
                    finished.add(step.id)
                    if bar is not None:
                        bar.update(1)
                if len(still) == len(waiting):
                    time.sleep(driver.poll_seconds)
                waiting = still
        finally:
            if bar is not None:
                bar.close()


def make_executor(
    name: str, *, address: str | None = None, settings: dict[str, Any] | None = None
) -> Executor:
    """The executor called ``name``; Ray is imported only when it is the one chosen."""
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        from saebench_vision.ray_executor import RayExecutor

        return RayExecutor(address=address, **(settings or {}))
    raise SaebenchError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
