"""Executors decide where and when the steps of a run execute; they compute nothing themselves.

An executor receives the :class:`~saebench_vision.plan.Schedule` (steps and what each needs) and
a driver (:class:`saebench_vision.runner.Runner`), runs every step somewhere, and hands each
output back with ``driver.step_finished(step, output)`` or reports ``driver.step_failed(step,
message)``. The driver is the only writer of the results store. Light: importing this module
imports neither torch nor Ray.
"""

from __future__ import annotations

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
    stops the run at once with its error, as a single machine user expects."""

    name = "local"

    def execute(self, schedule: Schedule, driver: Any) -> None:
        from tqdm.auto import tqdm

        from saebench_vision.steps import run_step

        ws = driver.workspace()
        for step in tqdm(
            schedule.steps,
            desc="steps",
            disable=not driver.progress,
            leave=False,
            file=driver.log,
        ):
            driver.step_finished(step, run_step(ws, step))


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
