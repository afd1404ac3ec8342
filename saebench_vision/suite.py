"""Suites: YAML files read with ``yaml.safe_load`` into frozen dataclasses, validated up front.

Shape (every component entry is ``{plugin: NAME, args: {...}}``)::

    name: quickstart
    output: saebench-results/quickstart   # results database, SAE checkpoints, figure data
    cache_dir: null                       # activations; default $SAEBENCH_VISION_CACHE or XDG
    seeds: [0]
    models:
      - plugin: efficientnet-lite
        args: {variant: lite0, image_size: 128}
        layers: [blocks.10, final]
        tokens: cls                       # cls, mean-patch, patch, text, generated, all
    datasets:                             # one entry per split; exactly one has role train
      train:  {plugin: shapes, args: {split: train}}
      val:    {plugin: shapes, args: {split: val}, role: eval}
      sketch: {plugin: shapes, args: {split: sketch}, role: shifted}
    saes:
      - plugin: relu
        args: {expansion: 4}
        sweep: {l1_coefficient: [0.1, 1.0]}   # grid: one SAE per combination
    training: {epochs: 3, batch_size: 64, lr: 1.0e-4}
    evaluators:
      - plugin: reconstruction

Validation never imports a component's implementation when its plugin registered a light Config
(see :class:`saebench_vision.registry.ComponentRef`), so ``saebench validate`` stays fast.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from saebench_vision.cache import canonical_json, content_key
from saebench_vision.config import TrainingConfig, config_fields, validate_args
from saebench_vision.errors import ConfigError, SaebenchError, SuiteError, UnknownComponentError
from saebench_vision.registry import KIND_TITLES, Registry, did_you_mean

ROLES = ("train", "eval", "shifted", "near-ood", "far-ood")
TOKEN_CHOICES = ("cls", "mean-patch", "patch", "text", "generated", "all")
TOP_KEYS = (
    "name",
    "description",
    "output",
    "cache_dir",
    "cache_verify",
    "seeds",
    "models",
    "datasets",
    "saes",
    "training",
    "evaluators",
)
MODEL_KEYS = ("plugin", "args", "layers", "tokens", "label")
DATASET_KEYS = ("plugin", "args", "role")
SAE_KEYS = ("plugin", "args", "sweep", "label")
EVALUATOR_KEYS = ("plugin", "args")


@dataclass(frozen=True)
class ComponentSpec:
    """A validated ``{plugin, args}`` entry; ``where`` is its YAML path for messages."""

    kind: str
    plugin: str
    args: Mapping[str, Any]
    where: str

    def identity(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "args": dict(self.args)}


@dataclass(frozen=True)
class ModelSpec(ComponentSpec):
    layers: tuple[str, ...] = ()
    tokens: str | None = None
    label: str = ""


@dataclass(frozen=True)
class SplitSpec(ComponentSpec):
    name: str = ""
    role: str = "eval"


@dataclass(frozen=True)
class SAEVariant:
    """One SAE of a sweep: the plugin with fully specified suite arguments."""

    plugin: str
    args: Mapping[str, Any]
    label: str
    where: str


@dataclass(frozen=True)
class SAESpec(ComponentSpec):
    sweep: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    label: str = ""

    def variants(self) -> list[SAEVariant]:
        """The sweep's grid in row-major order of the ``sweep`` keys as written."""
        keys = list(self.sweep)
        out = []
        for values in itertools.product(*(self.sweep[k] for k in keys)) if keys else [()]:
            args = {**self.args, **dict(zip(keys, values))}
            shown = {**{k: v for k, v in self.args.items()}, **dict(zip(keys, values))}
            detail = ",".join(f"{k}={_short(v)}" for k, v in sorted(shown.items()))
            label = (
                f"{self.label or self.plugin}[{detail}]" if detail else (self.label or self.plugin)
            )
            out.append(SAEVariant(self.plugin, args, label, self.where))
        return out


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Suite:
    """A validated suite. ``hash`` covers everything that determines its numbers."""

    path: Path
    name: str
    description: str
    output: Path
    cache_dir: Path | None
    cache_verify: str
    seeds: tuple[int, ...]
    models: tuple[ModelSpec, ...]
    datasets: tuple[SplitSpec, ...]
    saes: tuple[SAESpec, ...]
    training: Mapping[str, Any]
    evaluators: tuple[ComponentSpec, ...]
    hash: str

    @property
    def train_split(self) -> SplitSpec:
        return next(s for s in self.datasets if s.role == "train")

    def split(self, name: str) -> SplitSpec:
        return next(s for s in self.datasets if s.name == name)

    def training_config(self) -> TrainingConfig:
        return TrainingConfig(**dict(self.training))

    def sae_variants(self) -> list[SAEVariant]:
        return [v for spec in self.saes for v in spec.variants()]


class _Checker:
    """Validates a parsed YAML document, raising one-line errors prefixed with the file name."""

    def __init__(self, path: Path, registry: Registry) -> None:
        self.path = path
        self.registry = registry

    def fail(self, where: str, message: str) -> SuiteError:
        return SuiteError(
            f"{self.path}: {where}: {message}" if where else f"{self.path}: {message}"
        )

    def mapping(
        self, value: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(
                where,
                f"must be a mapping with keys {', '.join(allowed)}, not {type(value).__name__} {_show(value)}",
            )
        for key in value:
            if key not in allowed:
                raise self.fail(
                    where,
                    f"unknown key `{key}`.{did_you_mean(str(key), allowed)} (expected: {', '.join(allowed)})",
                )
        for key in required:
            if key not in value or value[key] is None:
                raise self.fail(where, f"missing `{key}`")
        return value

    def component(
        self, kind: str, value: Any, where: str, allowed: tuple[str, ...]
    ) -> tuple[str, dict[str, Any], Any]:
        if isinstance(value, str):
            value = {"plugin": value}
        entry = self.mapping(value, where, allowed, ("plugin",))
        plugin = entry["plugin"]
        if not isinstance(plugin, str):
            raise self.fail(
                f"{where}.plugin",
                f"{_show(plugin)} is not a plugin name; write e.g. `plugin: {self.registry.names(kind)[0] if self.registry.names(kind) else 'name'}`",
            )
        try:
            config_cls = self.registry.get(kind, plugin).config_class()
        except UnknownComponentError as exc:
            raise self.fail(f"{where}.plugin", str(exc)) from None
        except SaebenchError as exc:
            raise self.fail(f"{where}.plugin", str(exc)) from None
        args = entry.get("args") or {}
        try:
            args = validate_args(
                config_cls,
                args,
                where=f"{self.path}: {where}.args",
                what=f"{KIND_TITLES[kind]} `{plugin}`",
            )
        except ConfigError as exc:
            raise SuiteError(str(exc)) from None
        if kind != "sae":  # SAEs are checked per sweep variant, where every option is known
            self.instantiate(config_cls, args, f"{where}.args")
        return plugin, args, config_cls

    def instantiate(self, config_cls: Any, args: dict[str, Any], where: str) -> Any:
        """Run the Config's own checks (``__post_init__``) and rephrase their failure."""
        try:
            return config_cls(**args)
        except (ValueError, TypeError) as exc:
            raise self.fail(where, str(exc)) from None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class SuiteLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags that build Python objects) that also reads ``1e-3`` as a float.

    YAML 1.1, which PyYAML implements, reads exponents without a dot (``1e-3``) as strings;
    YAML 1.2 and every user writing a learning rate read them as numbers.
    """


SuiteLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_suite(
    path: str | os.PathLike[str], registry: Registry, *, output: str | None = None
) -> Suite:
    """Read and validate a suite file; raise :class:`SuiteError` with a one-line message."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(
            f"{path}: no such suite file; check the path (built-in suites live in suites/)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path}: cannot read it ({exc})") from None
    try:
        doc = yaml.load(text, Loader=SuiteLoader)  # a SafeLoader: nothing in the file runs
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SuiteError(f"{path}: {where}invalid YAML ({problem}); fix the syntax") from None
    return parse_suite(doc, path, registry, output=output)


def parse_suite(doc: Any, path: Path, registry: Registry, *, output: str | None = None) -> Suite:
    """Validate an already parsed document (see :func:`load_suite`)."""
    c = _Checker(path, registry)
    if doc is None:
        raise c.fail("", "the file is empty; a suite needs models, datasets, saes and evaluators")
    doc = c.mapping(doc, "(top level)", TOP_KEYS, ("models", "datasets", "saes", "evaluators"))

    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise c.fail("name", f"{_show(name)} is not a non-empty string")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise c.fail("description", f"{_show(description)} is not a string")

    seeds_raw = doc.get("seeds", [0])
    if isinstance(seeds_raw, int) and not isinstance(seeds_raw, bool):
        seeds_raw = [seeds_raw]
    if (
        not isinstance(seeds_raw, list)
        or not seeds_raw
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds_raw)
        or len(set(seeds_raw)) != len(seeds_raw)
    ):
        raise c.fail(
            "seeds",
            f"{_show(seeds_raw)} is not a non-empty list of distinct non-negative integers, e.g. [0, 1, 2]",
        )

    models = _models(c, doc["models"])
    datasets = _datasets(c, doc["datasets"])
    saes = _saes(c, doc["saes"])
    evaluators = _evaluators(c, doc["evaluators"])

    training_raw = doc.get("training") or {}
    try:
        training = validate_args(
            TrainingConfig, training_raw, where=f"{path}: training", what="the training recipe"
        )
        TrainingConfig(**training)
    except ConfigError as exc:
        raise SuiteError(str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise c.fail("training", str(exc)) from None

    out_value = (
        output if output is not None else doc.get("output", os.path.join("saebench-results", name))
    )
    if not isinstance(out_value, str) or not out_value:
        raise c.fail("output", f"{_show(out_value)} is not a folder path")
    cache_value = doc.get("cache_dir")
    if cache_value is not None and not isinstance(cache_value, str):
        raise c.fail("cache_dir", f"{_show(cache_value)} is not a folder path")
    verify = doc.get("cache_verify", "sample")
    if verify not in ("sample", "full", "size"):
        raise c.fail("cache_verify", f"{_show(verify)} is not one of: sample, full, size")

    hashed = {
        "models": [m.identity() | {"layers": list(m.layers), "tokens": m.tokens} for m in models],
        "datasets": [d.identity() | {"name": d.name, "role": d.role} for d in datasets],
        "saes": [s.identity() | {"sweep": {k: list(v) for k, v in s.sweep.items()}} for s in saes],
        "evaluators": [e.identity() for e in evaluators],
        "training": training,
        "seeds": list(seeds_raw),
    }
    return Suite(
        path=path,
        name=name,
        description=description,
        output=Path(os.path.expanduser(out_value)),
        cache_dir=Path(os.path.expanduser(cache_value)) if cache_value else None,
        cache_verify=verify,
        seeds=tuple(seeds_raw),
        models=models,
        datasets=datasets,
        saes=saes,
        training=training,
        evaluators=evaluators,
        hash=content_key(hashed)[:16],
    )


def _nonempty_list(c: _Checker, value: Any, where: str, example: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise c.fail(
            where, f"must be a non-empty list of entries like `{example}`, not {_show(value)}"
        )
    return value


def _models(c: _Checker, value: Any) -> tuple[ModelSpec, ...]:
    out = []
    for i, raw in enumerate(
        _nonempty_list(c, value, "models", "{plugin: efficientnet-lite, layers: [final]}")
    ):
        where = f"models[{i}]"
        plugin, args, _ = c.component("model", raw, where, MODEL_KEYS)
        entry = raw if isinstance(raw, dict) else {}
        layers = entry.get("layers", ["final"])
        if isinstance(layers, str):
            layers = [layers]
        if (
            not isinstance(layers, list)
            or not layers
            or not all(isinstance(x, str) and x for x in layers)
        ):
            raise c.fail(
                f"{where}.layers",
                f"{_show(layers)} is not a non-empty list of layer names, e.g. [final]; `saebench layers {plugin}` lists them",
            )
        if len(set(layers)) != len(layers):
            raise c.fail(f"{where}.layers", f"{_show(layers)} names a layer twice")
        tokens = entry.get("tokens")
        if tokens is not None and tokens not in TOKEN_CHOICES:
            raise c.fail(
                f"{where}.tokens",
                f"{_show(tokens)} is not a token selection.{did_you_mean(str(tokens), TOKEN_CHOICES)} (expected: {', '.join(TOKEN_CHOICES)})",
            )
        label = entry.get("label") or ""
        if not isinstance(label, str):
            raise c.fail(f"{where}.label", f"{_show(label)} is not a string")
        out.append(ModelSpec("model", plugin, args, where, tuple(layers), tokens, label or plugin))
    labels = [m.label for m in out]
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            raise c.fail(
                f"models[{i}].label",
                f"`{label}` is used by models[{labels.index(label)}] too; give each model a distinct `label`",
            )
    return tuple(out)


def _datasets(c: _Checker, value: Any) -> tuple[SplitSpec, ...]:
    if not isinstance(value, dict) or not value:
        raise c.fail(
            "datasets",
            f"must be a mapping of split names to entries like `train: {{plugin: shapes, args: {{split: train}}}}`, not {_show(value)}",
        )
    out = []
    for name, raw in value.items():
        where = f"datasets.{name}"
        if not isinstance(name, str) or not name:
            raise c.fail("datasets", f"split name {_show(name)} is not a string")
        plugin, args, _ = c.component("dataset", raw, where, DATASET_KEYS)
        entry = raw if isinstance(raw, dict) else {}
        role = entry.get("role", "train" if name == "train" else None)
        if role is None:
            raise c.fail(where, f"missing `role` (one of: {', '.join(ROLES)})")
        if role not in ROLES:
            raise c.fail(
                f"{where}.role",
                f"{_show(role)} is not a role.{did_you_mean(str(role), ROLES)} (expected: {', '.join(ROLES)})",
            )
        out.append(SplitSpec("dataset", plugin, args, where, name, role))
    trains = [s.name for s in out if s.role == "train"]
    if len(trains) != 1:
        found = ", ".join(trains) if trains else "none"
        raise c.fail(
            "datasets",
            f"exactly one split needs `role: train` (found: {found}); SAEs and probes train on it",
        )
    return tuple(out)


def _saes(c: _Checker, value: Any) -> tuple[SAESpec, ...]:
    out = []
    for i, raw in enumerate(_nonempty_list(c, value, "saes", "{plugin: topk, args: {k: 32}}")):
        where = f"saes[{i}]"
        plugin, args, config_cls = c.component("sae", raw, where, SAE_KEYS)
        entry = raw if isinstance(raw, dict) else {}
        sweep_raw = entry.get("sweep") or {}
        if not isinstance(sweep_raw, dict):
            raise c.fail(
                f"{where}.sweep",
                f"must map option names to lists of values, e.g. {{k: [8, 32]}}, not {_show(sweep_raw)}",
            )
        sweep: dict[str, tuple[Any, ...]] = {}
        fields = config_fields(config_cls)
        for key, values in sweep_raw.items():
            if key not in fields:
                raise c.fail(
                    f"{where}.sweep",
                    f"unknown key `{key}` for SAE `{plugin}`.{did_you_mean(str(key), fields)} (expected: {', '.join(fields)})",
                )
            if key in args:
                raise c.fail(
                    f"{where}.sweep.{key}", f"`{key}` is also set in args; keep it in one place"
                )
            if not isinstance(values, list) or not values:
                raise c.fail(
                    f"{where}.sweep.{key}",
                    f"{_show(values)} is not a non-empty list of values, e.g. [{_show(values)}]",
                )
            if len({canonical_json(v) for v in values}) != len(values):
                raise c.fail(f"{where}.sweep.{key}", f"{_show(values)} repeats a value")
            checked = []
            for j, v in enumerate(values):
                try:
                    checked.append(
                        validate_args(
                            config_cls,
                            {key: v},
                            where=f"{c.path}: {where}.sweep.{key}[{j}]",
                            what=f"SAE `{plugin}`",
                        )[key]
                    )
                except ConfigError as exc:
                    raise SuiteError(str(exc).replace(f"[{j}].{key}:", f"[{j}]:")) from None
            sweep[key] = tuple(checked)
        label = entry.get("label") or ""
        if not isinstance(label, str):
            raise c.fail(f"{where}.label", f"{_show(label)} is not a string")
        spec = SAESpec("sae", plugin, args, where, sweep, label)
        for variant in spec.variants():
            shown = ", ".join(f"{k}={_short(variant.args[k])}" for k in sweep)
            c.instantiate(
                config_cls,
                dict(variant.args),
                f"{where}" + (f" (sweep {shown})" if shown else ".args"),
            )
        out.append(spec)
    labels = [v.label for s in out for v in s.variants()]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise c.fail(
            "saes",
            f"two SAEs would be named `{dupes[0]}`; remove the duplicate or give one a `label`",
        )
    return tuple(out)


def _evaluators(c: _Checker, value: Any) -> tuple[ComponentSpec, ...]:
    out = []
    for i, raw in enumerate(_nonempty_list(c, value, "evaluators", "{plugin: reconstruction}")):
        where = f"evaluators[{i}]"
        plugin, args, _ = c.component("evaluator", raw, where, EVALUATOR_KEYS)
        out.append(ComponentSpec("evaluator", plugin, args, where))
    names = [e.plugin for e in out]
    for i, n in enumerate(names):
        if names.index(n) != i:
            raise c.fail(f"evaluators[{i}]", f"evaluator `{n}` is listed twice; merge the entries")
    return tuple(out)
