"""Suite -> plan -> steps -> results, resumable.

The runner is the driver of a run: it plans (:mod:`saebench_vision.plan`: cells, their content
ids and the steps that compute the missing ones), hands the steps to an executor
(:mod:`saebench_vision.executors`: local, or Ray across a cluster) that decides where and when
each step (:mod:`saebench_vision.steps`) runs, and writes every output it gets back to the
results store, of which it is the only writer. Planning imports no torch, so a suite whose
cells are all finished is answered from the database in a fraction of a second.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from saebench_vision import __version__
from saebench_vision.checks import (
    check_datasets_open,
    check_folders,
    check_inputs,
    check_paths,
    check_roles,
    check_tokens,
    check_training_memory,
    dataset_modality,
)
from saebench_vision.config import build_config
from saebench_vision.errors import SaebenchError
from saebench_vision.plan import (
    BASELINE,
    EvaluateStep,
    ExtractStep,
    Group,
    Plan,
    PlannedSAE,
    Step,
    TrainStep,
    derive_seed,
    plan_suite,
    schedule,
)
from saebench_vision.plugins import PluginManager
from saebench_vision.progress import ProgressMode
from saebench_vision.registry import KIND_TITLES
from saebench_vision.results import (
    CLAIM_STALE_SECONDS,
    DB_NAME,
    CellKey,
    ClaimHeartbeat,
    ResultsStore,
)
from saebench_vision.suite import ComponentSpec, EvaluatorSpec, ModelSpec, SplitSpec, Suite

__all__ = [
    "BASELINE",
    "Group",
    "Plan",
    "PlannedSAE",
    "RunSummary",
    "Runner",
    "derive_seed",
    "plan_suite",
    "preflight",
]


def preflight(
    suite: Suite,
    manager: PluginManager,
    *,
    datasets: bool = False,
    devices: bool = True,
    cache_dir: Path | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Checks that need the components but no weights or data: every ``device`` option against
    this machine (``devices=False`` skips that, for runs whose steps execute on other
    machines), every model's layer names, that every model reads every split's items and that
    every layer offers the tokens its selection reads, that the SAEs fit in the training
    device's memory wherever the adapter knows a layer's width offline (also skipped with
    ``devices=False``), and (``datasets=True``) that every split can be opened (all that
    cannot, at once). What it could not check, or a batch larger than the training split, is
    appended to ``notes``. Imports the implementations (and torch); writes nothing. Returns the
    evaluators it built, by label."""
    from saebench_vision.interfaces import resolve_device

    registry = manager.registry()

    def build(kind: str, spec: ComponentSpec) -> tuple[Any, Any]:
        entry = registry.get(kind, spec.plugin, where=spec.where)
        config = build_config(
            entry.config_class(),
            dict(spec.args),
            where=f"{suite.path}: {spec.where}.args",
            what=f"{KIND_TITLES[kind]} `{spec.plugin}`",
        )
        return entry, config

    def check_device(device: str, where: str) -> None:
        if not devices:
            return
        try:
            resolve_device(device)
        except SaebenchError as exc:
            raise SaebenchError(f"{suite.path}: {where}: {exc}") from None

    check_device(suite.training_config().device, "training.device")
    for variant in suite.sae_variants():
        check_device(suite.training_config(variant).device, f"{variant.where}.training.device")
    check_folders(suite, cache_dir)
    notes = notes if notes is not None else []

    def sae_config(variant: Any) -> Any:
        return build_config(
            registry.get("sae", variant.plugin).config_class(),
            dict(variant.args),
            where=f"{suite.path}: {variant.where}.args",
            what=f"SAE `{variant.plugin}`",
        )

    modalities = {
        s.name: dataset_modality(registry.get("dataset", s.plugin)) for s in suite.datasets
    }
    evaluators = []
    configs = []
    adapters: list[tuple[ModelSpec, Any]] = []
    for kind, group in (
        ("model", suite.models),
        ("dataset", suite.datasets),
        ("evaluator", suite.evaluators),
    ):
        for spec in group:
            entry, config = build(kind, spec)
            configs.append((spec.where, config))
            if hasattr(config, "device"):
                check_device(config.device, f"{spec.where}.args.device")
            if kind == "evaluator":
                evaluators.append((spec, entry.load()(config)))
            if isinstance(spec, ModelSpec):
                adapter = entry.load()(config)
                adapter.check_layers(spec.layers, where=f"{suite.path}: {spec.where}.layers")
                check_inputs(suite, spec, adapter, modalities)
                check_tokens(suite, spec, adapter)
                adapters.append((spec, adapter))
    check_roles(suite, evaluators)
    if devices and not datasets:  # this machine reads the paths (--datasets opens them all)
        check_paths(suite, configs)
    train_items: int | None = None
    if datasets:

        def open_split(split: SplitSpec) -> Any:
            nonlocal train_items
            entry, config = build("dataset", split)
            dataset = entry.load()(config)
            if split.role == "train":
                train_items = len(dataset)
            return dataset

        check_datasets_open(suite, open_split)
    if devices:
        for spec, adapter in adapters:
            check_training_memory(suite, spec, adapter, sae_config, notes, train_items)
    return {e.label: evaluator for e, (_, evaluator) in zip(suite.evaluators, evaluators)}


@dataclass
class RunSummary:
    run_id: str
    total_cells: int
    computed_cells: int
    seconds: float
    status: str
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(step, message) of every step that failed."""
    unfinished: list[CellKey] = field(default_factory=list)
    """Cells of the suite that are still not finished when the run ends."""
    taken_cells: int = 0
    """Cells this run planned but another run, at the same time, computed and stored."""


ENV_CLAIM_STALE = "SAEBENCH_VISION_CLAIM_STALE_SECONDS"
WAIT_LINES = 5


class Runner:
    """Plans a suite, has an executor run the missing steps, and records what they return;
    every finished cell is committed at once, so a killed run loses at most the cells in
    flight.

    Concurrent runs on one output folder share the work: before an executor runs an SAE group
    or a cell it asks :meth:`claim`, which claims it in the store; one claimed by another live
    run is waited for (the executor goes on with other steps meanwhile and asks again) and read
    back from the store and the SAE checkpoints once that run has stored it. A claim whose run
    died is taken over. Extraction needs no claim: the activation cache locks each entry."""

    poll_seconds = 0.5
    """How long an executor sleeps when every step left waits on another run."""

    def __init__(
        self,
        suite: Suite,
        manager: PluginManager,
        *,
        cache_dir: Path | None = None,
        progress: ProgressMode = True,
        log: TextIO | None = None,
        argv: list[str] | None = None,
        executor: str | None = None,
        address: str | None = None,
    ) -> None:
        self.suite = suite
        self.manager = manager
        self.cache_dir = cache_dir or suite.cache_dir
        self.progress = progress
        self.log = log or sys.stderr
        self.argv = argv or sys.argv
        self.executor_name = executor or suite.executor.get("name", "local")
        self.address = address if address is not None else suite.executor.get("address")
        self._store: ResultsStore | None = None
        self._workspace: Any = None
        self._plan: Plan | None = None
        self._run_id = ""
        self._done: set[str] = set()
        self.failures: list[tuple[str, str]] = []
        self.computed_cells = 0
        self.taken_cells = 0
        self._waiting: set[str] = set()
        self.claim_stale_s = _stale_seconds()

    def say(self, message: str) -> None:
        print(message, file=self.log, flush=True)

    @property
    def store(self) -> ResultsStore:
        """The results store of the suite's output folder, created (folder and database) on
        first use: a suite that fails its preflight leaves nothing behind."""
        if self._store is None:
            self._store = ResultsStore(self.suite.output)
        return self._store

    def has_store(self) -> bool:
        """Whether the output folder already holds a results database."""
        return self._store is not None or (self.suite.output / DB_NAME).exists()

    def preflight(self) -> dict[str, Any]:
        """The checks of :func:`preflight` for this run (devices only when the steps run
        here); returns the evaluators by label."""
        return preflight(
            self.suite,
            self.manager,
            devices=self.executor_name == "local",
            cache_dir=self.cache_dir,
        )

    # -- entry point ------------------------------------------------------------------------
    def run(self) -> RunSummary:
        started = time.time()
        plan = plan_suite(self.suite, self.manager)
        cells = plan.cells
        # With no store yet every cell is pending: check the suite before anything is written.
        evaluators = None if self.has_store() else self.preflight()
        self.store.register_suite(self.suite.hash, cells, plan.split_roles())
        done = self.store.done_cells(c.cell_id for c in cells)
        pending = [c for c in cells if c.cell_id not in done]
        if pending and evaluators is None:
            evaluators = self.preflight()
        run_id = self.store.start_run(
            suite_name=self.suite.name,
            suite_path=str(self.suite.path),
            suite_hash=self.suite.hash,
            suite_json=_suite_json(self.suite),
            versions=self._versions(bool(pending)),
            argv=list(self.argv),
        )
        self.say(
            f"suite {self.suite.name} ({self.suite.hash}): {len(cells)} cells, {len(done)} already finished, "
            f"{len(pending)} to run; results in {self.store.path}"
        )
        status = "failed"
        self._run_id, self._done, self.failures = run_id, done, []
        self.computed_cells = self.taken_cells = 0
        try:
            self.manager.notify(
                "saebench_run_start", suite=self.suite, run_id=run_id, cells=pending
            )
            if pending:
                assert evaluators is not None
                with ClaimHeartbeat(self.store.path, run_id):
                    self._execute(plan, evaluators)
            status = "failed" if self.failures else "finished"
        finally:
            self.store.release_all(run_id)
            self.store.finish_run(run_id, status)
            self.manager.notify(
                "saebench_run_finished", suite=self.suite, run_id=run_id, status=status
            )
        unfinished = [c for c in cells if c.cell_id not in self._done]
        return RunSummary(
            run_id,
            len(cells),
            self.computed_cells,
            time.time() - started,
            status,
            list(self.failures),
            unfinished,
            self.taken_cells,
        )

    def _versions(self, heavy: bool) -> dict[str, str]:
        versions = {"saebench-vision": __version__, **self.manager.versions()}
        if heavy:
            import torch

            versions["torch"] = torch.__version__
        versions["python"] = sys.version.split()[0]
        return versions

    # -- execution --------------------------------------------------------------------------
    def _execute(self, plan: Plan, evaluators: dict[str, Any]) -> None:
        from saebench_vision.executors import make_executor

        executor = make_executor(
            self.executor_name,
            address=self.address,
            settings={
                k: v for k, v in self.suite.executor.items() if k in ("max_retries", "resources")
            }
            if self.executor_name == "ray"
            else None,
        )

        def reads(model: ModelSpec, layer: str, spec: EvaluatorSpec) -> tuple[str, ...]:
            return tuple(evaluators[spec.label].reads_layers(layer, tuple(model.layers)))

        from saebench_vision.checkpoint import sweep_output, verified_saes

        sweep_output(self.suite.output)
        from saebench_vision.cache import ActivationCache

        # What killed runs left in the cache (writers' folders of dead processes on this host).
        swept = ActivationCache(self.cache_dir or self.suite.cache_dir).gc()
        if swept:
            self.say(f"activation cache: removed {len(swept)} leftover(s) of runs that were killed")
        trained = verified_saes(
            {
                p.sae_id: (self.store.sae_path(p.sae_id), self.store.sae_sha256(p.sae_id))
                for g in plan.groups
                for p in g.saes
            },
            self.say,
        )
        self._plan = plan
        executor.execute(schedule(plan, self._done, trained, reads), self)

    def workspace(self) -> Any:
        """The in-process workspace of the local executor (built once per runner)."""
        from saebench_vision.steps import Workspace

        if self._workspace is None:
            self._workspace = Workspace(
                self.suite,
                self.manager,
                cache_dir=self.cache_dir,
                progress=self.progress,
                log=self.log,
                plan=self._plan,
            )
        return self._workspace

    def claim(self, step: Step) -> str:
        """Whether this run computes ``step`` now: ``"run"`` (claimed, or needs no claim),
        ``"done"`` (another run stored it meanwhile: nothing to do) or ``"wait"`` (a live other
        run is computing it: ask again later)."""
        if isinstance(step, ExtractStep):
            return "run"
        verdict, owner = self.store.claim(
            _claim_keys(step),
            self._run_id,
            lambda: self._stored(step),
            stale_after=self.claim_stale_s,
        )
        if verdict == "theirs":
            if step.id not in self._waiting:
                self._waiting.add(step.id)
                # A paper-scale sweep may wait on hundreds of steps: name the first few only.
                if len(self._waiting) <= WAIT_LINES:
                    self.say(f"{step.id}: run {owner} is computing it; waiting for it")
                if len(self._waiting) == WAIT_LINES:
                    self.say("(further steps that other runs compute are waited for silently)")
            return "wait"
        if verdict == "done":
            if isinstance(step, EvaluateStep):
                self._done.add(step.cell.cell_id)
                self.taken_cells += 1
            return "done"
        if step.id in self._waiting:
            self.say(f"{step.id}: the run computing it ended without storing it; computing it here")
        return "run"

    def _stored(self, step: Step) -> bool:
        if isinstance(step, EvaluateStep):
            return bool(self.store.done_cells([step.cell.cell_id]))
        assert isinstance(step, TrainStep)
        from saebench_vision.checkpoint import checkpoint_problem

        # Stored means whole and theirs: a damaged checkpoint is trained again, not taken.
        for sae_id, _, _ in step.saes:
            path = self.store.sae_path(sae_id)
            if path is None or not path.exists():
                return False
            if checkpoint_problem(path, sae_id, self.store.sae_sha256(sae_id)) is not None:
                return False
        return True

    def step_finished(self, step: Step, output: Any) -> None:
        """Record what a step returned (the driver is the only writer of the store)."""
        if isinstance(step, TrainStep):
            self.store.add_saes([row | {"run_id": self._run_id} for row in output.rows])
            self.store.release(_claim_keys(step), self._run_id)
        elif isinstance(step, EvaluateStep):
            self.store.add_cell(
                self._run_id, step.cell, output.records, output.seconds, output.headline
            )
            self.store.release(_claim_keys(step), self._run_id)
            self._done.add(step.cell.cell_id)
            self.computed_cells += 1
            self.manager.notify("saebench_cell_finished", cell=step.cell, records=output.records)

    def step_failed(self, step: Step, message: str) -> None:
        self.failures.append((step.id, message))
        self.store.add_failure(self._run_id, step.id, message)
        if not isinstance(step, ExtractStep):
            self.store.release(_claim_keys(step), self._run_id)


def _claim_keys(step: Step) -> list[str]:
    # SAEs are claimed one by one: two suites sharing an output folder may group them differently.
    if isinstance(step, TrainStep):
        return [f"sae {sae_id}" for sae_id, _, _ in step.saes]
    assert isinstance(step, EvaluateStep)
    return [f"cell {step.cell.cell_id}"]


def _stale_seconds() -> float:
    text = os.environ.get(ENV_CLAIM_STALE, "").strip()
    if not text:
        return CLAIM_STALE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise SaebenchError(
            f"{ENV_CLAIM_STALE}={text!r} is not a positive number of seconds; unset it for the "
            f"default ({CLAIM_STALE_SECONDS:g} s)"
        )
    return value


def _suite_json(suite: Suite) -> dict[str, Any]:
    return {
        "name": suite.name,
        "hash": suite.hash,
        "seeds": list(suite.seeds),
        "models": [
            {
                "plugin": m.plugin,
                "args": dict(m.args),
                "layers": list(m.layers),
                "tokens": m.tokens,
                **({"layer_tokens": dict(m.layer_tokens)} if m.layer_tokens else {}),
                "label": m.label,
            }
            for m in suite.models
        ],
        "datasets": {
            s.name: {"plugin": s.plugin, "args": dict(s.args), "role": s.role}
            for s in suite.datasets
        },
        "saes": [
            {
                "plugin": s.plugin,
                "args": dict(s.args),
                "sweep": {k: list(v) for k, v in s.sweep.items()},
                **({"training": dict(s.training)} if s.training else {}),
            }
            for s in suite.saes
        ],
        "training": dict(suite.training),
        "evaluators": [
            {"plugin": e.plugin, "args": dict(e.args), "label": e.label} for e in suite.evaluators
        ],
        "executor": dict(suite.executor),
    }
