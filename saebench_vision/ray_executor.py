"""Run the steps of a suite as Ray tasks, on a local Ray instance or a cluster.

Each step (extract a split, train an SAE group, evaluate a cell) is one task with the resources
its component asks for: one GPU when its ``device`` is ``cuda`` (or ``auto`` on a cluster that
has GPUs), one CPU otherwise, or what the suite's ``executor.resources.<step>`` says. A task is
submitted as soon as every step it needs has finished, so evaluation of a group starts while
other groups still train. Workers read and write only the activation cache and the output
folder, which must be on storage every node sees (checked before any task runs); the numbers
come back to the driver, the only writer of ``results.sqlite``.

A task whose worker dies is retried up to ``max_retries`` times (Ray retries system failures
only); a task that raises is recorded as failed with its message, the steps that need it are not
run, and every other step goes on. Imported only when the Ray executor is chosen.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from saebench_vision.errors import SaebenchError
from saebench_vision.executors import Executor
from saebench_vision.plan import EvaluateStep, ExtractStep, Schedule, Step, TrainStep

try:
    import ray
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise SaebenchError(
        'the ray executor needs Ray: pip install "saebench-vision[ray]" (or run with --executor local)'
    ) from exc

STEP_KINDS = {ExtractStep: "extract", TrainStep: "train", EvaluateStep: "evaluate"}


def _run_remote(suite: Any, cache_dir: str, cwd: str, step: Step) -> Any:
    """The body of every task: this worker's workspace for the suite runs the step."""
    from saebench_vision.steps import run_step, workspace_for

    if os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)  # relative paths in the suite mean what they meant on the driver
    return run_step(workspace_for(suite, Path(cache_dir)), step)


def _probe(paths: list[str], token: str) -> list[str]:
    """The paths of ``paths`` whose probe file this node cannot read back."""
    unseen = []
    for path in paths:
        try:
            if Path(path).read_text(encoding="utf-8") != token:
                unseen.append(path)
        except OSError:
            unseen.append(path)
    return unseen


class RayExecutor(Executor):
    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        max_retries: int = 3,
        resources: dict[str, dict[str, float]] | None = None,
    ) -> None:
        self.address = address
        self.max_retries = max_retries
        self.resources = resources or {}

    # -- set-up ---------------------------------------------------------------------------
    def _connect(self) -> bool:
        """Join (or start) Ray; True when this call started it."""
        if ray.is_initialized():
            return False
        try:
            ray.init(
                address=self.address,
                include_dashboard=False,
                configure_logging=False,
                log_to_driver=True,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a new local instance"
            raise SaebenchError(
                f"ray executor: cannot connect to {where} ({str(exc).splitlines()[0]}); start the "
                "cluster (`ray start --head`) or pass --address auto|ray://host:10001"
            ) from None
        return True

    def _check_shared_storage(self, folders: dict[str, Path]) -> None:
        """Every alive node must read back a file the driver just wrote in each folder."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        token = uuid.uuid4().hex
        probes = {}
        for what, folder in folders.items():
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".saebench-probe-{token}"
            probe.write_text(token, encoding="utf-8")
            probes[str(probe)] = (what, folder)
        try:
            probe_task = ray.remote(num_cpus=0)(_probe)
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            answers = ray.get(
                [
                    probe_task.options(
                        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                    ).remote(list(probes), token)
                    for n in nodes
                ],
                timeout=300,
            )
        finally:
            for written in probes:
                Path(written).unlink(missing_ok=True)
        for node, unseen in zip(nodes, answers):
            if unseen:
                what, folder = probes[unseen[0]]
                raise SaebenchError(
                    f"ray executor: node {node.get('NodeManagerAddress', node['NodeID'])} cannot "
                    f"see the {what} {folder}; put `output` and `cache_dir` on a filesystem every "
                    "node mounts at the same path (NFS, Lustre, a shared volume)"
                )

    def _options(self, driver: Any, step: Step, cluster_gpus: float) -> dict[str, Any]:
        kind = STEP_KINDS[type(step)]
        if kind in self.resources:
            wanted = dict(self.resources[kind])
            opts: dict[str, Any] = {
                "num_cpus": wanted.pop("num_cpus", 1),
                "num_gpus": wanted.pop("num_gpus", 0),
            }
            if wanted:
                opts["resources"] = wanted
            return opts
        device = _device_of(driver, step)
        gpu = device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)
        return {"num_cpus": 1, "num_gpus": 1 if gpu else 0}

    # -- the run --------------------------------------------------------------------------
    def execute(self, schedule: Schedule, driver: Any) -> None:
        from saebench_vision.cache import default_cache_dir

        started_here = self._connect()
        try:
            suite = driver.suite
            suite = dataclasses.replace(suite, output=Path(os.path.abspath(suite.output)))
            cache_dir = Path(
                os.path.abspath(driver.cache_dir or suite.cache_dir or default_cache_dir())
            )
            self._check_shared_storage(
                {"output folder": suite.output, "activation cache": cache_dir}
            )
            self._drive(schedule, driver, suite, cache_dir)
        finally:
            if started_here:
                ray.shutdown()

    def _drive(self, schedule: Schedule, driver: Any, suite: Any, cache_dir: Path) -> None:
        task = ray.remote(_run_remote)
        gpus = float(ray.cluster_resources().get("GPU", 0))
        suite_ref = ray.put(suite)
        cwd = os.getcwd()
        waiting = list(schedule.steps)
        finished: set[str] = set()
        failed: set[str] = set()
        running: dict[Any, Step] = {}
        progress = _Progress(driver, len(waiting))
        while waiting or running:
            still = []
            for step in waiting:
                needs = schedule.needs[step.id]
                if any(n in failed for n in needs):
                    failed.add(step.id)  # not run: what it needs failed
                    progress.skipped += 1
                elif all(n in finished for n in needs):
                    ref = task.options(
                        name=f"saebench-{STEP_KINDS[type(step)]}",
                        max_retries=self.max_retries,
                        retry_exceptions=False,
                        **self._options(driver, step, gpus),
                    ).remote(suite_ref, str(cache_dir), cwd, step)
                    running[ref] = step
                else:
                    still.append(step)
            waiting = still
            progress.show(len(waiting), len(running))
            if not running:
                break
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                step = running.pop(ref)
                try:
                    output = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    failed.add(step.id)
                    progress.failed += 1
                    driver.step_failed(step, _one_line(exc.cause if exc.cause else exc))
                    continue
                except ray.exceptions.RayError as exc:
                    failed.add(step.id)
                    progress.failed += 1
                    driver.step_failed(
                        step,
                        f"its worker died {self.max_retries + 1} time(s) ({_one_line(exc)}); "
                        "raise executor.max_retries or check the node's memory",
                    )
                    continue
                driver.step_finished(step, output)
                finished.add(step.id)
                progress.done += 1
        progress.show(0, 0, final=True)


def _device_of(driver: Any, step: Step) -> str:
    """The ``device`` option that decides where a step computes."""
    from saebench_vision.config import build_config

    suite = driver.suite
    if isinstance(step, TrainStep):
        return suite.training_config(step.saes[0][1]).device
    spec: Any = step.model if isinstance(step, ExtractStep) else step.evaluator
    kind = "model" if isinstance(step, ExtractStep) else "evaluator"
    try:
        entry = driver.manager.registry().get(kind, spec.plugin)
        config = build_config(entry.config_class(), dict(spec.args))
    except SaebenchError:
        return str(spec.args.get("device", "cpu"))
    return str(getattr(config, "device", suite.training_config().device))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = next((t.strip() for t in reversed(text) if t.strip()), type(exc).__name__)
    return f"{type(exc).__name__}: {line}" if not isinstance(exc, SaebenchError) else line


class _Progress:
    """One line on the driver: steps waiting / running / done / failed."""

    def __init__(self, driver: Any, total: int) -> None:
        self.driver, self.total = driver, total
        self.done = self.failed = self.skipped = 0
        self._last: tuple[int, ...] = ()
        self._shown_at = 0.0

    def show(self, waiting: int, running: int, final: bool = False) -> None:
        state = (waiting, running, self.done, self.failed, self.skipped)
        tty = bool(self.driver.progress)
        if state == self._last and not final:
            return
        if not tty and not final and time.time() - self._shown_at < 30:
            return
        self._last, self._shown_at = state, time.time()
        line = (
            f"ray: {self.total} steps: {waiting} waiting, {running} running, {self.done} done, "
            f"{self.failed} failed" + (f", {self.skipped} not run" if self.skipped else "")
        )
        out = self.driver.log or sys.stderr
        if tty and not final:
            print("\r" + line, end="", file=out, flush=True)
        else:
            print(("\r" if tty else "") + line, file=out, flush=True)
