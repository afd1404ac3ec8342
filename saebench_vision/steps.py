"""The steps: extract a split, train an SAE group, evaluate a cell.

Each step is a function of its inputs (a step of :mod:`saebench_vision.plan` and a
:class:`Workspace`) that returns its outputs: activations land in the content-addressed cache,
SAE checkpoints under the output folder, and the numbers are returned to the caller, which alone
writes the results store. Steps are picklable and run in any process that sees the cache and the
output folder; :func:`workspace_for` rebuilds the plugin manager and the components there. A
workspace keeps what its steps built (adapters, datasets, activations, SAEs) so that running
every step of a suite in one process loads each thing once.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from saebench_vision.cache import ActivationCache, content_key
from saebench_vision.checks import READABLE
from saebench_vision.config import build_config
from saebench_vision.errors import SaebenchError
from saebench_vision.plan import (
    EvaluateStep,
    ExtractStep,
    Plan,
    Step,
    TrainStep,
    derive_seed,
    path_digests,
    plan_suite,
    sae_dir,
)
from saebench_vision.plugins import PluginManager
from saebench_vision.progress import ProgressMode
from saebench_vision.registry import KIND_TITLES
from saebench_vision.suite import ComponentSpec, ModelSpec, SAEVariant, Suite


@dataclass
class CellOutput:
    """What evaluating a cell returns: its records, the time it took and the headline metrics."""

    records: list[Any]
    seconds: float
    headline: tuple[str, ...] = ()


@dataclass
class TrainOutput:
    """What training a group returns: one store row per SAE, checkpoints already on disk."""

    rows: list[dict[str, Any]] = field(default_factory=list)


class Workspace:
    """What the steps of one suite share inside one process."""

    def __init__(
        self,
        suite: Suite,
        manager: PluginManager,
        *,
        cache_dir: Path | None = None,
        progress: ProgressMode = False,
        log: TextIO | None = None,
        plan: Plan | None = None,
    ) -> None:
        self.suite = suite
        self.manager = manager
        self._plan = plan
        self.registry = manager.registry()
        self.cache = ActivationCache(cache_dir or suite.cache_dir, verify=suite.cache_verify)
        self.progress = progress
        self.log = log
        self._adapters: dict[str, Any] = {}
        self._datasets: dict[str, Any] = {}
        self._evaluators: dict[str, Any] = {}
        self._activations: dict[tuple[str, str, str], Any] = {}
        self._contexts: dict[tuple[str, str, int], Any] = {}
        self._saes: dict[str, Any] = {}
        self._weights: dict[str, dict[str, str | None]] = {}
        self._sae_group: tuple[str, str, int] | None = None
        self._encodings: Any = None

    def say(self, message: str) -> None:
        print(message, file=self.log or sys.stderr, flush=True)

    # -- components -------------------------------------------------------------------------
    def instantiate(self, kind: str, spec: ComponentSpec | SAEVariant) -> Any:
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
        except SaebenchError as exc:
            # Name the suite and the entry, as validate does, unless the message already does.
            if str(exc).startswith(str(self.suite.path)):
                raise
            message = f"{self.suite.path}: {spec.where}: {exc}"
            try:
                located = type(exc)(message)
            except TypeError:  # a plugin's error class with its own constructor
                located = SaebenchError(message)
            raise located from exc
        except (ValueError, OSError) as exc:
            raise SaebenchError(
                f"{self.suite.path}: {spec.where}: {KIND_TITLES[kind]} `{spec.plugin}`: {exc}"
            ) from exc

    def adapter(self, model: ModelSpec) -> Any:
        """The model's adapter (weights not loaded until a step needs them)."""
        if model.label not in self._adapters:
            adapter = self.instantiate("model", model)
            adapter.check_layers(model.layers, where=f"{self.suite.path}: {model.where}.layers")
            self._adapters[model.label] = adapter
        return self._adapters[model.label]

    def tokens(self, model: ModelSpec, layer: str) -> str:
        """The token selection of ``layer``: the suite's (per layer, else for the model), else
        the adapter's default for that layer."""
        return model.tokens_for(layer) or self.adapter(model).default_tokens_for(layer)

    def dataset(self, name: str) -> Any:
        if name not in self._datasets:
            self._datasets[name] = self.instantiate("dataset", self.suite.split(name))
        return self._datasets[name]

    def evaluator(self, label: str) -> Any:
        if label not in self._evaluators:
            spec = next(e for e in self.suite.evaluators if e.label == label)
            self._evaluators[label] = self.instantiate("evaluator", spec)
        return self._evaluators[label]

    def sae_class(self, name: str) -> Any:
        return self.registry.get("sae", name).load()

    @property
    def plan(self) -> Plan:
        """The suite's plan (the driver's, or planned again here: planning is pure)."""
        if self._plan is None:
            self._plan = plan_suite(self.suite, self.manager)
        return self._plan

    # -- activations ------------------------------------------------------------------------
    def activation_key(self, model: ModelSpec, layer: str, split: str) -> str:
        """The cache key of one (model, layer, tokens, split): the adapter's and the dataset's
        identities (their Configs' identity fields and versions) and what the dataset read."""
        from saebench_vision.cache import FORMAT_VERSION

        dataset = self.dataset(split)
        adapter = self.adapter(model)
        parts = {
            "adapter": adapter.identity(),
            "layer": layer,
            "tokens": self.tokens(model, layer),
            "dataset": dataset.identity(),
            "format": FORMAT_VERSION,
        }
        fingerprint = dataset.fingerprint()
        if fingerprint is not None:
            parts["data"] = fingerprint
        # A model folder or weights file replaced in place is another model.
        weights = self._model_files(model, adapter)
        if weights:
            parts["weights"] = weights
        return content_key(parts)

    def _model_files(self, model: ModelSpec, adapter: Any) -> dict[str, str | None]:
        if model.label not in self._weights:
            self._weights[model.label] = path_digests(adapter.config)
        return self._weights[model.label]

    def activations(self, model: ModelSpec, layer: str, split: str) -> Any:
        """The cached activations; an entry a step should have built but did not is an error."""
        memo = (model.label, layer, split)
        if memo not in self._activations:
            key = self.activation_key(model, layer, split)
            entry = self.cache.lookup(key)
            if entry is None:
                raise SaebenchError(
                    f"activations of {model.label}/{layer} on {split} (cache entry {key[:12]}) are "
                    f"missing from {self.cache.root}; run the suite again"
                )
            self._activations[memo] = entry
        return self._activations[memo]

    # -- evaluation contexts ----------------------------------------------------------------
    def eval_context(self, model: ModelSpec, layer: str, seed: int) -> Any:
        """The one place the runner builds an :class:`~saebench_vision.interfaces.EvalContext`:
        one per (model, layer, seed), shared by its cells through ``with_sae``."""
        from saebench_vision.interfaces import EvalContext

        memo = (model.label, layer, seed)
        if memo not in self._contexts:

            def adapter_loader() -> Any:
                adapter = self.adapter(model)
                adapter.ensure_loaded()
                return adapter

            self._contexts[memo] = EvalContext(
                model_name=model.label,
                layer=layer,
                tokens=self.tokens(model, layer),
                seed=seed,
                device=self.suite.training_config().device,
                splits={s.name: s.role for s in self.suite.datasets},
                activation_loader=lambda split: self.activations(model, layer, split),
                dataset_loader=self.dataset,
                adapter_loader=adapter_loader,
                output_dir=self.suite.output / "artifacts",
                layers=tuple(model.layers),
                layer_activation_loader=lambda split, other: self.layer_activations(
                    model, layer, other, split
                ),
                sae_resolver=lambda other, sae_id, label: self.suite_sae(
                    model, seed, layer, other, sae_id, label
                ),
                # Shared SAE encodings: each (SAE, split) is encoded once, whatever evaluators
                # read it (see EvalContext.latents).
                encodings=self.encodings(),
            )
        return self._contexts[memo]

    def layer_activations(self, model: ModelSpec, layer: str, other: str, split: str) -> Any:
        """For a cell of (model, layer): the activations of ``split`` at layer ``other``."""
        memo = (model.label, other, split)
        if memo not in self._activations:
            entry = self.cache.lookup(self.activation_key(model, other, split))
            if entry is None:
                raise SaebenchError(
                    f"activations of {model.label}/{other} on {split} are not extracted: an "
                    f"evaluator that reads layer {other!r} from {layer!r} must name it in "
                    "Evaluator.reads_layers, so that the plan extracts it"
                )
            self._activations[memo] = entry
        return self._activations[memo]

    def suite_sae(
        self,
        model: ModelSpec,
        seed: int,
        layer: str,
        other: str,
        sae_id: str,
        label: str | None,
    ) -> tuple[Any, str]:
        """For a cell of (model, layer, seed) with SAE ``sae_id`` (empty for the baseline): the
        suite's SAE on layer ``other`` of the same model and seed, the sweep variant labelled
        ``label`` (by default the cell's own label; the only one when the layer has one). It
        was trained by an earlier step (the plan orders it so when the evaluator declares the
        layer in ``reads_layers``); here it is only loaded from its checkpoint."""
        where = f"{self.suite.path}: {model.where}"
        groups = [g for g in self.plan.groups if g.model.label == model.label and g.seed == seed]
        target = next((g for g in groups if g.layer == other), None)
        if target is None or not target.saes:
            raise SaebenchError(
                f"{where}.layers: no SAE is trained on layer {other!r} of {model.label} "
                f"(layers: {', '.join(model.layers)}); add it to the layers"
            )
        if label is None:
            mine = next(
                (p for g in groups if g.layer == layer for p in g.saes if p.sae_id == sae_id),
                None,
            )
            label = mine.variant.label if mine is not None else None
        planned = next((p for p in target.saes if p.variant.label == label), None)
        if planned is None and len(target.saes) == 1:
            planned = target.saes[0]
        if planned is None:
            raise SaebenchError(
                f"{where}: no SAE labelled {label!r} on layer {other!r} (there: "
                f"{', '.join(p.variant.label for p in target.saes)}); name one as the label"
            )
        if not sae_dir(self.suite.output, planned.sae_id).exists():
            raise SaebenchError(
                f"SAE {planned.sae_id} ({planned.variant.label} on {model.label}/{other}) is not "
                f"trained yet: an evaluator that reads layer {other!r} from {layer!r} must name it "
                "in Evaluator.reads_layers, so that the plan trains it first"
            )
        # Kept beside the current group's SAEs (and dropped with them) without switching groups.
        return self._load_sae(planned.sae_id), planned.sae_id

    def encodings(self) -> Any:
        """This process's store of shared SAE encodings (closed when the group changes);
        `saebench cache gc` sweeps its folder if the process dies first."""
        if self._encodings is None:
            import uuid

            from saebench_vision.encodings import EncodingStore

            self._encodings = EncodingStore(
                self.cache.root / "tmp" / f"encodings.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            )
        return self._encodings

    def sae(self, model: ModelSpec, layer: str, seed: int, sae_id: str) -> Any:
        """A trained SAE: from this process's last training pass, else from its checkpoint."""
        self._enter_group((model.label, layer, seed))
        return self._load_sae(sae_id)

    def _load_sae(self, sae_id: str) -> Any:
        from saebench_vision.checkpoint import load_sae

        if sae_id not in self._saes:
            path = sae_dir(self.suite.output, sae_id)
            if not path.exists():
                raise SaebenchError(f"SAE {sae_id} has no checkpoint at {path}; run again")
            sae, meta = load_sae(path, self.sae_class)
            self._check_contract(sae)
            if meta.get("sae_id") not in (None, sae_id):
                raise SaebenchError(
                    f"{path}: holds SAE {meta.get('sae_id')}, not {sae_id}; remove the folder "
                    "and run again"
                )
            self._saes[sae_id] = sae
        return self._saes[sae_id]

    @staticmethod
    def _check_contract(sae: Any) -> None:
        # A loaded SAE meets no training batch: probe it with rows at its training scale (the
        # trainer normalises to a mean norm of sqrt(d_in)), from a private generator.
        import torch

        from saebench_vision.training import check_sae_contract

        gen = torch.Generator().manual_seed(0)
        x = torch.randn(4, sae.d_in, generator=gen) / sae.input_scale.float().clamp_min(1e-12)
        check_sae_contract(sae, x)

    def _enter_group(self, group: tuple[str, str, int]) -> None:
        # Keep only one group's SAEs in memory: a paper-scale sweep holds gigabytes of weights.
        if self._sae_group != group:
            self._saes.clear()
            if self._encodings is not None:
                self._encodings.close()
            self._sae_group = group


# --------------------------------------------------------------------------------------------
# Steps


def extract_split(ws: Workspace, step: ExtractStep) -> dict[str, str]:
    """Activations of ``step.split`` at every layer of ``step.layers`` in the cache, extracting
    what it lacks in one pass over the split. Returns ``{layer: cache key}``."""
    from saebench_vision.extraction import extract_activations

    model, suite = step.model, ws.suite
    split = suite.split(step.split)
    adapter = ws.adapter(model)
    dataset = ws.dataset(split.name)
    modality = str(getattr(dataset, "modality", "image"))
    if modality not in READABLE.get(adapter.input_kind, (adapter.input_kind,)):
        raise SaebenchError(
            f"{suite.path}: {split.where}: dataset `{split.plugin}` gives {modality} items but "
            f"model `{model.plugin}` takes {adapter.input_kind}; pick a matching dataset"
        )
    # Layers may read different token kinds; one pass over the split serves all of them.
    tokens = {layer: ws.tokens(model, layer) for layer in step.layers}
    keys = {layer: ws.activation_key(model, layer, split.name) for layer in step.layers}

    def absent(layer: str) -> bool:
        entry = ws.cache.lookup(keys[layer])
        if entry is not None:
            ws._activations[(model.label, layer, split.name)] = entry
        return entry is None

    missing = [layer for layer in step.layers if absent(layer)]
    if not missing:
        return keys
    with ws.cache.locked([keys[layer] for layer in missing]):
        # Another process may have built them while we waited for the lock.
        missing = [layer for layer in missing if absent(layer)]
        if not missing:
            return keys
        ws.say(
            f"extracting {model.label} {', '.join(missing)} on {split.name} ({len(dataset)} inputs)"
        )
        adapter.ensure_loaded()
        writers = _LazyWriters(
            ws.cache,
            keys,
            {
                layer: {
                    "model": model.label,
                    "layer": layer,
                    "tokens": tokens[layer],
                    "split": split.name,
                    "dataset": split.plugin,
                    **({"dataset_meta": dataset.metadata()} if dataset.metadata() else {}),
                }
                for layer in missing
            },
        )
        try:
            extract_activations(
                adapter,
                dataset,
                missing,
                {layer: tokens[layer] for layer in missing},
                writers,
                progress=ws.progress,
                desc=f"extract {model.label}/{split.name}",
            )
            for layer in missing:
                ws._activations[(model.label, layer, split.name)] = writers.commit(layer)
        except BaseException:
            writers.abort()
            raise
    return keys


def train_group(ws: Workspace, step: TrainStep) -> TrainOutput:
    """Train the step's SAEs together in one pass, save each checkpoint, return store rows."""
    import torch

    from saebench_vision.checkpoint import save_sae
    from saebench_vision.interfaces import resolve_device
    from saebench_vision.training import check_sweep_memory, total_steps, train_saes

    suite, model = ws.suite, step.model
    train = ws.activations(model, step.layer, suite.train_split.name)
    ws._enter_group((model.label, step.layer, step.seed))
    recipe = suite.training_config(step.saes[0][1])
    device = resolve_device(recipe.device)
    configs = []
    for sae_id, variant, _ in step.saes:
        cls = ws.sae_class(variant.plugin)
        config = build_config(
            cls.Config,
            dict(variant.args),
            where=f"{suite.path}: {variant.where}.args",
            what=f"SAE `{variant.plugin}`",
        )
        configs.append((sae_id, cls, config))
    # Before any SAE is built: the whole sweep trains at once, so its memory adds up.
    check_sweep_memory(
        train.d,
        [(variant.where, config) for (_, variant, _), (_, _, config) in zip(step.saes, configs)],
        recipe.batch_size,
        device,
        suite.path,
    )
    rows = min(train.n, recipe.max_samples or train.n)
    if recipe.batch_size > rows:
        ws.say(
            f"note: {suite.path}: training.batch_size: {recipe.batch_size} is more than the "
            f"{rows} training rows of {model.label}/{step.layer}: every step repeats rows "
            f"({recipe.batch_size / rows:.1f} epochs a step, {recipe.epochs:g} epoch(s) in "
            f"{total_steps(rows, recipe)} step(s)); a batch_size of at most {rows} takes "
            "several steps per epoch"
        )
    models = []
    for sae_id, cls, config in configs:
        # Each SAE's initialisation depends only on its own id, not on the sweep around it.
        torch.manual_seed(derive_seed(sae_id, step.seed) % 2**63)
        models.append(cls(train.d, config))
    group_id = content_key({"saes": sorted(sae_id for sae_id, _, _ in step.saes)})[:24]
    state_dir = suite.output / "train-state" / group_id
    ws.say(
        f"training {len(models)} SAE(s) on {model.label}/{step.layer} seed {step.seed} "
        f"({train.n} activations of width {train.d})"
    )
    stats = train_saes(
        models,
        train,
        recipe,
        seed=step.seed,
        progress=ws.progress,
        desc=f"train {model.label}/{step.layer}",
        checkpoint_dir=state_dir,
    )
    out = TrainOutput()
    for (sae_id, variant, config_json), sae, st in zip(step.saes, models, stats):
        sha256 = save_sae(
            sae,
            sae_dir(suite.output, sae_id),
            {
                "sae_id": sae_id,
                "label": variant.label,
                "model": model.label,
                "layer": step.layer,
                "seed": step.seed,
                "stats": st,
            },
        )
        out.rows.append(
            {
                "sae_id": sae_id,
                "run_id": "",
                "model": model.label,
                "layer": step.layer,
                "label": variant.label,
                "plugin": variant.plugin,
                "config": json.loads(config_json),
                "seed": step.seed,
                "path": str(Path("saes") / sae_id),
                "stats": st,
                "weights_sha256": sha256,
            }
        )
        ws._saes[sae_id] = sae
    shutil.rmtree(state_dir, ignore_errors=True)
    return out


def evaluate_cell(ws: Workspace, step: EvaluateStep) -> CellOutput:
    """Run one cell's evaluator (``baseline`` when the cell has no SAE); return its records."""
    import torch

    evaluator = ws.evaluator(step.evaluator.label)
    sae = ws.sae(step.model, step.layer, step.seed, step.sae_id) if step.sae_id else None
    ctx = ws.eval_context(step.model, step.layer, step.seed).with_sae(sae, step.sae_id)
    ctx.output_dir = ws.suite.output / "artifacts" / step.cell.cell_id
    torch.manual_seed(derive_seed(step.cell.cell_id) % 2**63)
    started = time.time()
    records = evaluator.evaluate(ctx) if sae is not None else evaluator.baseline(ctx)
    records = list(records or [])
    for r in records:
        if r.higher_is_better is None:
            r.higher_is_better = evaluator.metrics.get(r.metric)
    return CellOutput(records, time.time() - started, tuple(evaluator.headline))


def run_step(ws: Workspace, step: Step) -> Any:
    """Dispatch one step of any kind."""
    if isinstance(step, ExtractStep):
        return extract_split(ws, step)
    if isinstance(step, TrainStep):
        return train_group(ws, step)
    return evaluate_cell(ws, step)


_WORKSPACES: dict[str, Workspace] = {}


def workspace_for(
    suite: Suite, cache_dir: Path | None, progress: ProgressMode = False
) -> Workspace:
    """This process's workspace for ``suite`` (built on first use: a worker of another
    executor rebuilds the plugin manager from its environment, as ``saebench`` does)."""
    from saebench_vision.plugins import get_plugin_manager

    memo = content_key({"suite": suite.hash, "cache": str(cache_dir), "out": str(suite.output)})
    if memo not in _WORKSPACES:
        _WORKSPACES.clear()  # one suite at a time per worker process
        _WORKSPACES[memo] = Workspace(
            suite, get_plugin_manager(), cache_dir=cache_dir, progress=progress
        )
    return _WORKSPACES[memo]


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
            meta = self._meta[layer]
            raise SaebenchError(
                f"extracting {meta['model']} on {meta['split']} produced no activations for layer "
                f"{layer!r} with tokens {meta['tokens']!r}; is the split empty, or does the layer "
                "lack those tokens?"
            )
        return self._open.pop(layer).commit()

    def abort(self) -> None:
        for w in self._open.values():
            w.abort()
        self._open.clear()


class _Lazy:
    def __init__(self, owner: _LazyWriters, layer: str) -> None:
        self._owner, self._layer = owner, layer

    def append(
        self, rows: Any, sample_index: Any, labels: Any = None, responses: Any = None
    ) -> None:
        self._owner.writer(self._layer, rows.shape[1]).append(
            rows, sample_index=sample_index, labels=labels, responses=responses
        )
