"""Suite -> cells -> results, resumable.

A suite expands into evaluation cells: (model, layer, SAE variant or the baseline, evaluator,
seed). Every cell has a content id that hashes what determines its numbers; the results store
marks finished cells, and a run computes only the missing ones. Planning imports no torch, so a
suite whose cells are all finished is answered from the database in a fraction of a second.

Work is ordered so each expensive thing happens once: per model, activations of every split for
all layers in one pass (cached on disk), then per (layer, seed) one training pass for all pending
SAEs of the sweep, then the evaluators.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from saebench_vision import __version__
from saebench_vision.cache import content_key
from saebench_vision.config import TrainingConfig, build_config, identity_dict
from saebench_vision.errors import SaebenchError
from saebench_vision.plugins import PluginManager
from saebench_vision.registry import KIND_TITLES
from saebench_vision.results import CellKey, ResultsStore
from saebench_vision.suite import ComponentSpec, ModelSpec, SAEVariant, Suite

BASELINE = "baseline"


@dataclass
class PlannedSAE:
    sae_id: str
    variant: SAEVariant
    config_identity: dict[str, Any]


@dataclass
class Group:
    """Everything of one (model, layer, seed): its SAEs and its cells."""

    model: ModelSpec
    layer: str
    seed: int
    saes: list[PlannedSAE] = field(default_factory=list)
    cells: list[tuple[CellKey, ComponentSpec, PlannedSAE | None]] = field(default_factory=list)


@dataclass
class Plan:
    suite: Suite
    groups: list[Group]

    @property
    def cells(self) -> list[CellKey]:
        return [c for g in self.groups for c, _, _ in g.cells]

    def split_roles(self) -> list[tuple[str, str]]:
        return [(s.name, s.role) for s in self.suite.datasets]


def _light_identity(
    manager: PluginManager, spec: ComponentSpec | SAEVariant, kind: str
) -> dict[str, Any]:
    """Plugin, full config (defaults filled, runtime fields dropped) and the plugin's version."""
    entry = manager.registry().get(kind, spec.plugin)
    config = build_config(
        entry.config_class(),
        dict(spec.args),
        where=spec.where,
        what=f"{KIND_TITLES[kind]} `{spec.plugin}`",
    )
    return {
        "plugin": spec.plugin,
        "config": identity_dict(config),
        "from": manager.versions().get(entry.plugin, ""),
    }


def plan_suite(suite: Suite, manager: PluginManager) -> Plan:
    """Expand a suite into cells with content ids. Imports no component implementation."""
    splits = {
        s.name: {"role": s.role, **_light_identity(manager, s, "dataset")} for s in suite.datasets
    }
    train = splits[suite.train_split.name]
    training = TrainingConfig(**dict(suite.training))
    training_id = {
        k: v for k, v in identity_dict(training).items() if k not in ("device", "checkpoint_every")
    }
    evaluators = [(e, _light_identity(manager, e, "evaluator")) for e in suite.evaluators]
    variants = [(v, _light_identity(manager, v, "sae")) for v in suite.sae_variants()]
    groups = []
    for model in suite.models:
        model_id = _light_identity(manager, model, "model") | {"tokens": model.tokens or "default"}
        for layer in model.layers:
            for seed in suite.seeds:
                group = Group(model, layer, seed)
                for variant, sae_identity in variants:
                    sae_id = content_key(
                        {
                            "model": model_id,
                            "layer": layer,
                            "train": train,
                            "sae": sae_identity,
                            "training": training_id,
                            "seed": seed,
                        }
                    )[:24]
                    group.saes.append(PlannedSAE(sae_id, variant, sae_identity["config"]))
                for evaluator, ev_identity in evaluators:
                    base = {"evaluator": ev_identity, "splits": splits}
                    baseline_id = content_key(
                        base
                        | {
                            "model": model_id,
                            "layer": layer,
                            "seed": seed,
                            "train": train,
                            "baseline": True,
                        }
                    )[:24]
                    group.cells.append(
                        (
                            CellKey(
                                baseline_id,
                                model.label,
                                layer,
                                model.tokens or "default",
                                "",
                                BASELINE,
                                "",
                                {},
                                evaluator.plugin,
                                ev_identity["from"],
                                seed,
                            ),
                            evaluator,
                            None,
                        )
                    )
                    for planned in group.saes:
                        cell_id = content_key(base | {"sae": planned.sae_id})[:24]
                        group.cells.append(
                            (
                                CellKey(
                                    cell_id,
                                    model.label,
                                    layer,
                                    model.tokens or "default",
                                    planned.sae_id,
                                    planned.variant.label,
                                    planned.variant.plugin,
                                    planned.config_identity,
                                    evaluator.plugin,
                                    ev_identity["from"],
                                    seed,
                                ),
                                evaluator,
                                planned,
                            )
                        )
                groups.append(group)
    return Plan(suite, groups)


def preflight(suite: Suite, manager: PluginManager, *, datasets: bool = False) -> None:
    """Checks that need the components but no weights or data: every ``device`` option against
    this machine, every model's layer names, and (``datasets=True``) that every split can be
    opened. Imports the implementations (and torch); writes nothing."""
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
        try:
            resolve_device(device)
        except SaebenchError as exc:
            raise SaebenchError(f"{suite.path}: {where}: {exc}") from None

    check_device(suite.training_config().device, "training.device")
    for kind, group in (
        ("model", suite.models),
        ("dataset", suite.datasets),
        ("evaluator", suite.evaluators),
    ):
        for spec in group:
            entry, config = build(kind, spec)
            if hasattr(config, "device"):
                check_device(config.device, f"{spec.where}.args.device")
            if isinstance(spec, ModelSpec):
                adapter = entry.load()(config)
                adapter.check_layers(spec.layers, where=f"{suite.path}: {spec.where}.layers")
            elif kind == "dataset" and datasets:
                try:
                    entry.load()(config)
                except SaebenchError as exc:
                    raise SaebenchError(f"{suite.path}: {spec.where}: {exc}") from None


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts, stable across processes (Python's hash() is salted)."""
    return int(content_key({"parts": [str(p) for p in parts]})[:15], 16)


@dataclass
class RunSummary:
    run_id: str
    total_cells: int
    computed_cells: int
    seconds: float
    status: str


class Runner:
    """Runs a plan; every finished cell is committed at once, so a killed run loses at most the
    cell in flight."""

    def __init__(
        self,
        suite: Suite,
        manager: PluginManager,
        *,
        cache_dir: Path | None = None,
        progress: bool = True,
        log: TextIO | None = None,
        argv: list[str] | None = None,
    ) -> None:
        self.suite = suite
        self.manager = manager
        self.registry = manager.registry()
        self.cache_dir = cache_dir or suite.cache_dir
        self.progress = progress
        self.log = log or sys.stderr
        self.argv = argv or sys.argv
        self.store = ResultsStore(suite.output)
        self._datasets: dict[str, Any] = {}
        self._cache: Any = None

    def say(self, message: str) -> None:
        print(message, file=self.log, flush=True)

    # -- entry point ------------------------------------------------------------------------
    def run(self) -> RunSummary:
        started = time.time()
        plan = plan_suite(self.suite, self.manager)
        cells = plan.cells
        self.store.register_suite(self.suite.hash, cells, plan.split_roles())
        done = self.store.done_cells(c.cell_id for c in cells)
        pending = [c for c in cells if c.cell_id not in done]
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
        self.manager.hook.saebench_run_start(suite=self.suite, run_id=run_id, cells=pending)
        status = "failed"
        try:
            if pending:
                self._execute(plan, done, run_id)
            status = "finished"
        finally:
            self.store.finish_run(run_id, status)
            self.manager.hook.saebench_run_finished(suite=self.suite, run_id=run_id, status=status)
        return RunSummary(run_id, len(cells), len(pending), time.time() - started, status)

    def _versions(self, heavy: bool) -> dict[str, str]:
        versions = {"saebench-vision": __version__, **self.manager.versions()}
        if heavy:
            import torch

            versions["torch"] = torch.__version__
        versions["python"] = sys.version.split()[0]
        return versions

    # -- execution --------------------------------------------------------------------------
    def _execute(self, plan: Plan, done: set[str], run_id: str) -> None:
        import torch

        from saebench_vision.cache import ActivationCache
        from saebench_vision.encodings import EncodingStore

        preflight(self.suite, self.manager)
        self._cache = ActivationCache(self.cache_dir, verify=self.suite.cache_verify)
        # Shared SAE encodings (see EvalContext.latents); `saebench cache gc` sweeps the folder
        # if the process dies before a group of cells closes it.
        self._encodings = EncodingStore(
            self._cache.root / "tmp" / f"encodings.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        )
        evaluators = {e.plugin: self._instantiate("evaluator", e) for e in self.suite.evaluators}
        for model in self.suite.models:
            groups = [
                g
                for g in plan.groups
                if g.model is model and any(c.cell_id not in done for c, _, _ in g.cells)
            ]
            if not groups:
                continue
            adapter = self._instantiate("model", model)
            adapter.check_layers(model.layers, where=f"{self.suite.path}: {model.where}.layers")
            tokens = model.tokens or adapter.default_tokens
            layers = sorted({g.layer for g in groups}, key=list(model.layers).index)
            activations = self._ensure_activations(adapter, model, layers, tokens)
            for group in groups:
                self._run_group(
                    group, adapter, tokens, activations, evaluators, done, run_id, torch
                )

    def _instantiate(self, kind: str, spec: ComponentSpec | SAEVariant) -> Any:
        entry = self.registry.get(kind, spec.plugin, where=spec.where)
        cls = entry.load()
        config = build_config(
            cls.Config,
            dict(spec.args),
            where=f"{self.suite.path}: {spec.where}.args",
            what=f"{KIND_TITLES[kind]} `{spec.plugin}`",
        )
        try:
            return cls(config)
        except SaebenchError:
            raise
        except (ValueError, OSError) as exc:
            raise SaebenchError(
                f"{self.suite.path}: {spec.where}: {KIND_TITLES[kind]} `{spec.plugin}`: {exc}"
            ) from exc

    def dataset(self, name: str) -> Any:
        if name not in self._datasets:
            self._datasets[name] = self._instantiate("dataset", self.suite.split(name))
        return self._datasets[name]

    def _activation_key(self, adapter: Any, layer: str, tokens: str, split: str) -> str:
        from saebench_vision.cache import FORMAT_VERSION

        return content_key(
            {
                "adapter": adapter.identity(),
                "layer": layer,
                "tokens": tokens,
                "dataset": self.dataset(split).identity(),
                "format": FORMAT_VERSION,
            }
        )

    def _ensure_activations(
        self, adapter: Any, model: ModelSpec, layers: list[str], tokens: str
    ) -> dict[tuple[str, str], Any]:
        """``{(split, layer): ActivationSet}``, extracting what the cache lacks, one pass per split."""
        from saebench_vision.extraction import extract_activations

        found: dict[tuple[str, str], Any] = {}
        for split in self.suite.datasets:
            dataset = self.dataset(split.name)
            if (
                adapter.input_kind != getattr(dataset, "modality", "image")
                and adapter.input_kind != "image-text"
            ):
                raise SaebenchError(
                    f"{self.suite.path}: {split.where}: dataset `{split.plugin}` gives {dataset.modality} items but "
                    f"model `{model.plugin}` takes {adapter.input_kind}; pick a matching dataset"
                )
            keys = {
                layer: self._activation_key(adapter, layer, tokens, split.name) for layer in layers
            }
            missing = [
                layer
                for layer in layers
                if self._lookup(keys[layer], found, split.name, layer) is None
            ]
            if not missing:
                continue
            with self._cache.locked([keys[layer] for layer in missing]):
                # Another process may have built them while we waited for the lock.
                missing = [
                    layer
                    for layer in missing
                    if self._lookup(keys[layer], found, split.name, layer) is None
                ]
                if not missing:
                    continue
                self.say(
                    f"extracting {model.label} {', '.join(missing)} on {split.name} ({len(dataset)} inputs)"
                )
                adapter.ensure_loaded()
                writers = _LazyWriters(
                    self._cache,
                    keys,
                    {
                        layer: {
                            "model": model.label,
                            "layer": layer,
                            "tokens": tokens,
                            "split": split.name,
                            "dataset": split.plugin,
                        }
                        for layer in missing
                    },
                )
                try:
                    extract_activations(
                        adapter,
                        dataset,
                        missing,
                        tokens,
                        writers,
                        progress=self.progress,
                        desc=f"extract {model.label}/{split.name}",
                    )
                    for layer in missing:
                        found[(split.name, layer)] = writers.commit(layer)
                except BaseException:
                    writers.abort()
                    raise
        return found

    def _lookup(self, key: str, found: dict[tuple[str, str], Any], split: str, layer: str) -> Any:
        entry = self._cache.lookup(key)
        if entry is not None:
            found[(split, layer)] = entry
        return entry

    def _run_group(
        self,
        group: Group,
        adapter: Any,
        tokens: str,
        activations: dict[tuple[str, str], Any],
        evaluators: dict[str, Any],
        done: set[str],
        run_id: str,
        torch: Any,
    ) -> None:
        from saebench_vision.checkpoint import load_sae
        from saebench_vision.interfaces import EvalContext

        pending = [(c, e, p) for c, e, p in group.cells if c.cell_id not in done]
        needed = {p.sae_id: p for _, _, p in pending if p is not None}
        saes = (
            self._train_group(group, [needed[k] for k in needed], activations, torch)
            if needed
            else {}
        )

        def adapter_loader() -> Any:
            adapter.ensure_loaded()
            return adapter

        training = self.suite.training_config()
        ctx = EvalContext(
            model_name=group.model.label,
            layer=group.layer,
            tokens=tokens,
            seed=group.seed,
            device=training.device,
            splits={s.name: s.role for s in self.suite.datasets},
            activation_loader=lambda split: activations[(split, group.layer)],
            dataset_loader=self.dataset,
            adapter_loader=adapter_loader,
            output_dir=self.suite.output / "artifacts",
            # Shared SAE encodings: one store per run, so each (SAE, split) is encoded once.
            encodings=self._encodings,
        )
        resolve = self._sae_class
        from tqdm.auto import tqdm

        for cell, evaluator_spec, planned in tqdm(
            pending,
            desc=f"evaluate {group.model.label}/{group.layer}/seed {group.seed}",
            disable=not self.progress,
            leave=False,
            file=self.log,
        ):
            evaluator = evaluators[evaluator_spec.plugin]
            sae = None
            if planned is not None:
                sae = saes.get(planned.sae_id)
                if sae is None:
                    path = self.store.sae_path(planned.sae_id)
                    if path is None:
                        raise SaebenchError(
                            f"SAE {planned.sae_id} is not in {self.store.path}; run again"
                        )
                    sae, _ = load_sae(path, resolve)
                    saes[planned.sae_id] = sae
            cell_ctx = ctx.with_sae(sae, planned.sae_id if planned else "")
            cell_ctx.output_dir = self.suite.output / "artifacts" / cell.cell_id
            torch.manual_seed(derive_seed(cell.cell_id) % 2**63)
            started = time.time()
            records = (
                evaluator.evaluate(cell_ctx)
                if planned is not None
                else evaluator.baseline(cell_ctx)
            )
            records = list(records or [])
            for r in records:
                if r.higher_is_better is None:
                    r.higher_is_better = evaluator.metrics.get(r.metric)
            self.store.add_cell(
                run_id, cell, records, time.time() - started, tuple(evaluator.headline)
            )
            done.add(cell.cell_id)
            self.manager.hook.saebench_cell_finished(cell=cell, records=records)
        self._encodings.close()

    def _sae_class(self, name: str) -> Any:
        return self.registry.get("sae", name).load()

    def _train_group(
        self,
        group: Group,
        planned: list[PlannedSAE],
        activations: dict[tuple[str, str], Any],
        torch: Any,
    ) -> dict[str, Any]:
        """Trained (or loaded) SAEs by id; all missing ones are trained together in one pass."""
        from saebench_vision.checkpoint import save_sae
        from saebench_vision.training import train_saes

        out: dict[str, Any] = {}
        missing = [
            p
            for p in planned
            if self.store.sae_path(p.sae_id) is None
            or not (self.store.sae_path(p.sae_id) or Path()).exists()
        ]
        if not missing:
            return out
        train = activations[(self.suite.train_split.name, group.layer)]
        models = []
        for p in missing:
            cls = self._sae_class(p.variant.plugin)
            config = build_config(
                cls.Config,
                dict(p.variant.args),
                where=f"{self.suite.path}: {p.variant.where}.args",
                what=f"SAE `{p.variant.plugin}`",
            )
            # Each SAE's initialisation depends only on its own id, not on the sweep around it.
            torch.manual_seed(derive_seed(p.sae_id, group.seed) % 2**63)
            models.append(cls(train.d, config))
        group_id = content_key({"saes": sorted(p.sae_id for p in missing)})[:24]
        state_dir = self.suite.output / "train-state" / group_id
        self.say(
            f"training {len(missing)} SAE(s) on {group.model.label}/{group.layer} seed {group.seed} "
            f"({train.n} activations of width {train.d})"
        )
        stats = train_saes(
            models,
            train,
            self.suite.training_config(),
            seed=group.seed,
            progress=self.progress,
            desc=f"train {group.model.label}/{group.layer}",
            checkpoint_dir=state_dir,
        )
        rows = []
        for p, sae, st in zip(missing, models, stats):
            rel = Path("saes") / p.sae_id
            save_sae(
                sae,
                self.suite.output / rel,
                {
                    "sae_id": p.sae_id,
                    "label": p.variant.label,
                    "model": group.model.label,
                    "layer": group.layer,
                    "seed": group.seed,
                    "stats": st,
                },
            )
            rows.append(
                {
                    "sae_id": p.sae_id,
                    "run_id": "",
                    "model": group.model.label,
                    "layer": group.layer,
                    "label": p.variant.label,
                    "plugin": p.variant.plugin,
                    "config": p.config_identity,
                    "seed": group.seed,
                    "path": str(rel),
                    "stats": st,
                }
            )
            out[p.sae_id] = sae
        self.store.add_saes(rows)
        shutil.rmtree(state_dir, ignore_errors=True)
        return out


class _LazyWriters(dict):
    """Cache writers opened on first append, when the layer's width is known."""

    def __init__(
        self,
        cache: Any,
        keys: dict[str, str],
        meta: dict[str, dict[str, Any]],
    ) -> None:
        super().__init__()
        self._cache, self._keys, self._meta = cache, keys, meta
        self._open: dict[str, Any] = {}
        for layer in meta:
            self[layer] = _Lazy(self, layer)

    def writer(self, layer: str, d: int) -> Any:
        if layer not in self._open:
            self._open[layer] = self._cache.writer(self._keys[layer], d, self._meta[layer])
        return self._open[layer]

    def commit(self, layer: str) -> Any:
        if layer not in self._open:
            raise SaebenchError(
                f"extraction produced no activations for layer {layer!r}; is the split empty?"
            )
        return self._open.pop(layer).commit()

    def abort(self) -> None:
        for w in self._open.values():
            w.abort()
        self._open.clear()


class _Lazy:
    def __init__(self, owner: _LazyWriters, layer: str) -> None:
        self._owner, self._layer = owner, layer

    def append(self, rows: Any, sample_index: Any, labels: Any = None) -> None:
        self._owner.writer(self._layer, rows.shape[1]).append(
            rows, sample_index=sample_index, labels=labels
        )


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
            }
            for s in suite.saes
        ],
        "training": dict(suite.training),
        "evaluators": [{"plugin": e.plugin, "args": dict(e.args)} for e in suite.evaluators],
    }
