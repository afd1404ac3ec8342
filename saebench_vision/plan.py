"""The plan: a suite expanded into cells, their identity and their dependencies. Pure, no torch.

A suite expands into evaluation cells (model, layer, SAE variant or the baseline, evaluator,
seed), grouped by (model, layer, seed). Every cell and every SAE has a content id that hashes
exactly what determines its numbers: the identity fields of each component's Config (declared
next to the field, see :func:`saebench_vision.config.option`), the component's own ``version``
and its distribution's, the split roles, the training recipe and the seed. The results store
marks finished cells; a run computes only the missing ones.

:func:`schedule` turns the cells still to compute into steps (extract a split, train an SAE
group, evaluate a cell) with their dependencies; executors decide where and when they run.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saebench_vision.cache import content_key
from saebench_vision.config import TrainingConfig, build_config, config_as_dict, identity_dict
from saebench_vision.errors import SuiteError
from saebench_vision.plugins import PluginManager
from saebench_vision.registry import KIND_TITLES, Entry
from saebench_vision.results import CellKey
from saebench_vision.suite import ComponentSpec, EvaluatorSpec, ModelSpec, SAEVariant, Suite

BASELINE = "baseline"


@dataclass
class PlannedSAE:
    sae_id: str
    variant: SAEVariant
    config_identity: dict[str, Any]
    training_identity: dict[str, Any] = field(default_factory=dict)


@dataclass
class PlannedCell:
    key: CellKey
    evaluator: EvaluatorSpec
    sae: PlannedSAE | None


@dataclass
class Group:
    """Everything of one (model, layer, seed): its SAEs and its cells."""

    model: ModelSpec
    layer: str
    seed: int
    saes: list[PlannedSAE] = field(default_factory=list)
    cells: list[PlannedCell] = field(default_factory=list)


@dataclass
class Plan:
    suite: Suite
    groups: list[Group]

    @property
    def cells(self) -> list[CellKey]:
        return [c.key for g in self.groups for c in g.cells]

    def split_roles(self) -> list[tuple[str, str]]:
        return [(s.name, s.role) for s in self.suite.datasets]


# --------------------------------------------------------------------------------------------
# Identity


def _declared_version(target: str) -> str | None:
    """The ``version = "..."`` literal in the body of class ``target``, read from its module's
    source without executing it; None when the class does not spell it out there."""
    module, _, name = target.partition(":")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) if spec else None
    if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
        return None
    st = os.stat(origin)
    return _version_in_source(origin, st.st_size, st.st_mtime_ns, name)


@functools.lru_cache(maxsize=256)
def _version_in_source(origin: str, size: int, mtime_ns: int, name: str) -> str | None:
    try:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            for item in node.body:
                targets = (
                    item.targets
                    if isinstance(item, ast.Assign)
                    else [item.target]
                    if isinstance(item, ast.AnnAssign) and item.value is not None
                    else []
                )
                value = getattr(item, "value", None)
                for t in targets:
                    if isinstance(t, ast.Name) and t.id == "version":
                        if isinstance(value, ast.Constant) and isinstance(value.value, str):
                            return value.value
                        return None
                    if isinstance(t, ast.Tuple) and any(
                        isinstance(e, ast.Name) and e.id == "version" for e in t.elts
                    ):
                        return None
    return None


def component_version(entry: Entry) -> str:
    """The component class's ``version``, read without importing the class when possible.

    Planning stays light (no torch), yet a bumped ``version`` changes every key: the version
    is read from the class body in its module's source (``version = "2"``), or, for a class
    that inherits or computes it, from the imported class.
    """
    if entry._cls is not None or entry.ref.config is None:
        return str(getattr(entry.load(), "version", ""))
    declared = _declared_version(entry.ref.target)
    if declared is not None:
        return declared
    return str(getattr(entry.load(), "version", ""))


def tree_digest(path: str) -> str | None:
    """SHA-256 of every file under ``path`` (or of the file itself): relative name, size and
    modification time, from ``stat`` alone. None when the path does not exist."""
    root = os.path.realpath(os.path.expanduser(path))
    if not os.path.exists(root):
        return None
    digest = hashlib.sha256()
    if os.path.isfile(root):
        st = os.stat(root)
        digest.update(f"{st.st_size}\0{st.st_mtime_ns}".encode())
        return digest.hexdigest()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(folder, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            rel = os.path.relpath(full, root)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def component_identity(
    manager: PluginManager, spec: ComponentSpec | SAEVariant, kind: str
) -> dict[str, Any]:
    """Plugin, the Config's identity fields (defaults filled), the component's version and its
    distribution's version; for path options (``option(..., path=True)``) also a digest of the
    files there, so results computed from a folder whose contents changed are not reused."""
    return _component(manager, spec, kind)[1]


def _component(
    manager: PluginManager, spec: ComponentSpec | SAEVariant, kind: str
) -> tuple[Any, dict[str, Any]]:
    """The built Config and :func:`component_identity`."""
    entry = manager.registry().get(kind, spec.plugin)
    config = build_config(
        entry.config_class(),
        dict(spec.args),
        where=f"{spec.where}.args",
        what=f"{KIND_TITLES[kind]} `{spec.plugin}`",
    )
    out = {
        "plugin": spec.plugin,
        "config": identity_dict(config),
        "version": component_version(entry),
        "from": manager.versions().get(entry.plugin, ""),
    }
    files = path_digests(config)
    if files:
        out["files"] = files
    return config, out


def path_digests(config: Any) -> dict[str, str | None]:
    """:func:`tree_digest` of every path option of ``config`` (``option(..., path=True)``);
    empty when none of them names an existing file or folder (hub ids, tags, None)."""
    files = {
        f.name: tree_digest(getattr(config, f.name))
        for f in dataclasses.fields(config)
        if f.metadata.get("path") and isinstance(getattr(config, f.name), str)
    }
    return files if any(files.values()) else {}


def training_identity(suite: Suite, variant: SAEVariant | None = None) -> dict[str, Any]:
    """The identity fields of the recipe an SAE is trained with (its overrides applied)."""
    config: TrainingConfig = suite.training_config(variant)
    return identity_dict(config)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts, stable across processes (Python's hash() is salted)."""
    return int(content_key({"parts": [str(p) for p in parts]})[:15], 16)


def _refuse_duplicate_saes(
    suite: Suite, variants: Sequence[tuple[SAEVariant, dict[str, Any], dict[str, Any]]]
) -> None:
    """Two entries (or sweep points) that train the same SAE, once defaults are filled in
    (``{k: 32}`` beside ``{}``), would share ids: name both instead of failing later."""
    seen: dict[str, SAEVariant] = {}
    for variant, identity, recipe in variants:
        key = content_key({"sae": identity, "training": recipe})
        first = seen.setdefault(key, variant)
        if first is not variant:
            raise SuiteError(
                f"{suite.path}: {variant.where}: `{variant.label}` is the same SAE as "
                f"{first.where} `{first.label}` ({_written_differences(first, variant)}); "
                "remove one, or change an option of one"
            )


def _written_differences(first: SAEVariant, second: SAEVariant) -> str:
    """How two entries that train the same SAE differ as written, for the refusal."""
    unset = object()
    diffs = []
    for prefix, a, b in (
        ("", first.args, second.args),
        ("training.", first.training, second.training),
    ):
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key, unset), b.get(key, unset)
            if repr(x) != repr(y):  # no elementwise == (arrays in suites built in code)
                shown = ["unset" if v is unset else f"{v!r}" for v in (y, x)]
                diffs.append(f"`{prefix}{key}` {shown[0]} against {shown[1]}")
    if not diffs:
        return "their options are written alike"
    return (
        "they differ only in " + ", ".join(diffs) + ", and every option that changes its "
        "numbers is equal once defaults are filled in and values normalised"
    )


def plan_suite(suite: Suite, manager: PluginManager) -> Plan:
    """Expand a suite into cells with content ids. Imports no component implementation."""
    splits = {
        s.name: {"role": s.role, **component_identity(manager, s, "dataset")}
        for s in suite.datasets
    }
    train = splits[suite.train_split.name]
    evaluators = [
        (e, component_identity(manager, e, "evaluator") | {"label": e.label})
        for e in suite.evaluators
    ]
    built = [(v, _component(manager, v, "sae")) for v in suite.sae_variants()]
    variants = [(v, identity, training_identity(suite, v)) for v, (_, identity) in built]
    _refuse_duplicate_saes(suite, variants)
    # What the results store records of each SAE's Config: every identity field, those at their
    # `absent` value too (left out of the ids, but they say what the SAE was trained as).
    shown = {id(v): identity_dict(config, keep_absent=True) for v, (config, _) in built}
    groups = []
    for model in suite.models:
        model_base = component_identity(manager, model, "model")
        for layer in model.layers:
            # The selection the suite names for this layer; "default" leaves it to the adapter
            # (resolved in the steps, where the adapter is at hand: the plan imports none).
            tokens = model.tokens_for(layer) or "default"
            model_id = model_base | {"tokens": tokens}
            for seed in suite.seeds:
                group = Group(model, layer, seed)
                for variant, sae_identity, recipe in variants:
                    sae_id = content_key(
                        {
                            "model": model_id,
                            "layer": layer,
                            "train": train,
                            "sae": sae_identity,
                            "training": recipe,
                            "seed": seed,
                        }
                    )[:24]
                    group.saes.append(PlannedSAE(sae_id, variant, shown[id(variant)], recipe))
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
                    version = "+".join(
                        x for x in (ev_identity["from"], ev_identity["version"]) if x
                    )
                    group.cells.append(
                        PlannedCell(
                            CellKey(
                                baseline_id,
                                model.label,
                                layer,
                                tokens,
                                "",
                                BASELINE,
                                "",
                                {},
                                evaluator.label,
                                version,
                                seed,
                            ),
                            evaluator,
                            None,
                        )
                    )
                    for planned in group.saes:
                        cell_id = content_key(base | {"sae": planned.sae_id})[:24]
                        group.cells.append(
                            PlannedCell(
                                CellKey(
                                    cell_id,
                                    model.label,
                                    layer,
                                    tokens,
                                    planned.sae_id,
                                    planned.variant.label,
                                    planned.variant.plugin,
                                    planned.config_identity,
                                    evaluator.label,
                                    version,
                                    seed,
                                ),
                                evaluator,
                                planned,
                            )
                        )
                groups.append(group)
    return Plan(suite, groups)


# --------------------------------------------------------------------------------------------
# Steps to run


@dataclass(frozen=True)
class ExtractStep:
    """Activations of one split at the listed layers of one model, in one pass."""

    model: ModelSpec
    split: str
    layers: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"extract {self.model.label}/{self.split}"


@dataclass(frozen=True)
class TrainStep:
    """The SAEs of one (model, layer, seed) that share a training recipe, trained in one pass."""

    model: ModelSpec
    layer: str
    seed: int
    saes: tuple[tuple[str, SAEVariant, str], ...]
    """(sae id, variant, JSON of its Config identity) for every SAE to train."""

    @property
    def id(self) -> str:
        ids = sorted(sae_id for sae_id, _, _ in self.saes)
        return (
            f"train {self.model.label}/{self.layer}/seed {self.seed} {content_key({'s': ids})[:8]}"
        )


@dataclass(frozen=True)
class EvaluateStep:
    """One evaluation cell."""

    model: ModelSpec
    layer: str
    seed: int
    cell: CellKey
    evaluator: EvaluatorSpec
    sae_id: str = ""
    sae_plugin: str = ""

    @property
    def id(self) -> str:
        return f"evaluate {self.cell.cell_id}"


Step = ExtractStep | TrainStep | EvaluateStep


@dataclass
class Schedule:
    """Steps in the order a single process runs them best, each with the steps it needs."""

    steps: list[Step] = field(default_factory=list)
    needs: dict[str, list[str]] = field(default_factory=dict)

    def add(self, step: Step, needs: list[str]) -> None:
        self.steps.append(step)
        self.needs[step.id] = needs


LayerReads = Callable[[ModelSpec, str, EvaluatorSpec], Sequence[str]]
"""``(model, layer, evaluator) -> layers``: the other layers of the model whose activations and
SAEs a cell of that evaluator on ``layer`` reads (see ``Evaluator.reads_layers``)."""


def schedule(
    plan: Plan, done: set[str], trained: Container[str], reads: LayerReads | None = None
) -> Schedule:
    """The steps that compute every cell not in ``done``. ``trained`` holds the ids of SAEs
    whose checkpoints already exist; ``reads`` says which other layers of its model a cell
    reads: those layers are extracted with the others, and the cell needs the training of every
    SAE of the (model, other layer, seed) group. Order: per model, every split's extraction
    (all needed layers in one pass), then per (layer, seed) group the training passes of the
    groups its cells read, one training pass per recipe, then its cells; an executor that runs
    steps one after another in this order extracts each split once and trains each SAE once
    (an SAE of another layer is read back from its checkpoint)."""
    suite = plan.suite
    out = Schedule()
    for model in suite.models:
        groups = [g for g in plan.groups if g.model is model]
        where = {(g.layer, g.seed): g for g in groups}
        pending = {id(g): [c for c in g.cells if c.key.cell_id not in done] for g in groups}
        needed: dict[int, dict[str, PlannedSAE]] = {id(g): {} for g in groups}
        read: dict[str, list[Group]] = {}
        for group in groups:
            for c in pending[id(group)]:
                if c.sae is not None:
                    needed[id(group)][c.sae.sae_id] = c.sae
                others: list[Group] = []
                for layer in reads(model, group.layer, c.evaluator) if reads else ():
                    other = where.get((layer, group.seed))
                    if other is not None and other is not group and other not in others:
                        others.append(other)
                        # Which variant the evaluator asks for is known only when it runs.
                        needed[id(other)].update({p.sae_id: p for p in other.saes})
                read[c.key.cell_id] = others
        layers_used = {g.layer for g in groups if pending[id(g)]}
        layers_used |= {o.layer for others in read.values() for o in others}
        if not layers_used:
            continue
        layers = tuple(sorted(layers_used, key=list(model.layers).index))
        extracts = {}
        for split in suite.datasets:
            step = ExtractStep(model, split.name, layers)
            extracts[split.name] = step.id
            out.add(step, [])
        producer: dict[str, str] = {}
        trained_groups: set[int] = set()
        layer_inputs = [extracts[s.name] for s in suite.datasets]
        for group in groups:
            if not pending[id(group)]:
                continue  # a group only read by others is trained where it is first read
            # The groups this group's cells read first, then its own: each group once.
            first = [o for c in pending[id(group)] for o in read[c.key.cell_id]] + [group]
            for trainee in first:
                if id(trainee) in trained_groups:
                    continue
                trained_groups.add(id(trainee))
                by_recipe: dict[str, list[PlannedSAE]] = {}
                for planned in needed[id(trainee)].values():
                    if planned.sae_id not in trained:
                        # Group by the whole recipe, runtime fields too: one pass, one device.
                        recipe = content_key(config_as_dict(suite.training_config(planned.variant)))
                        by_recipe.setdefault(recipe, []).append(planned)
                for members in by_recipe.values():
                    train_step = TrainStep(
                        model,
                        trainee.layer,
                        trainee.seed,
                        tuple(
                            (p.sae_id, p.variant, json.dumps(p.config_identity, default=str))
                            for p in members
                        ),
                    )
                    out.add(train_step, [extracts[suite.train_split.name]])
                    producer.update({p.sae_id: train_step.id for p in members})
            for c in pending[id(group)]:
                sae_id = c.sae.sae_id if c.sae is not None else ""
                eval_step = EvaluateStep(
                    model,
                    group.layer,
                    group.seed,
                    c.key,
                    c.evaluator,
                    sae_id,
                    c.sae.variant.plugin if c.sae is not None else "",
                )
                needs = list(layer_inputs)
                for sid in [sae_id] + [p.sae_id for o in read[c.key.cell_id] for p in o.saes]:
                    if sid in producer and producer[sid] not in needs:
                        needs.append(producer[sid])
                out.add(eval_step, needs)
    return out


def sae_dir(output: Path, sae_id: str) -> Path:
    """Where an SAE's checkpoint lives, relative to nothing: ``<output>/saes/<id>``."""
    return output / "saes" / sae_id
