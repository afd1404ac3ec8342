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
      - plugin: efficientnet-lite         # the same adapter twice: a label tells them apart
        label: lite0-patches
        args: {variant: lite0, image_size: 128}
        layers: [blocks.10, final]
        tokens: {blocks.10: mean-patch}   # per layer (e.g. sd3 {pooled: cls}); others: default
    datasets:                             # one entry per split; exactly one has role train
      train:  {plugin: shapes, args: {split: train}}
      val:    {plugin: shapes, args: {split: val}, role: eval}
      sketch: {plugin: shapes, args: {split: sketch}, role: shifted}
    saes:
      - plugin: relu
        args: {expansion: 4}
        sweep: {l1_coefficient: [0.1, 1.0]}   # grid: one SAE per combination
        training: {epochs: 5}                 # this entry's overrides of the recipe below
    training: {epochs: 3, batch_size: 64, lr: 1.0e-4}
    evaluators:
      - plugin: reconstruction
      - {plugin: ontology, label: ontology-firing, args: {class_rule: firing-rate}}
    executor: {name: ray, address: auto, max_retries: 3, resources: {train: {num_gpus: 1}}}

Validation never imports a component's implementation when its plugin registered a light Config
(see :class:`saebench_vision.registry.ComponentRef`), so ``saebench validate`` stays fast.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from saebench_vision.cache import canonical_json, content_key
from saebench_vision.config import FieldValueError, TrainingConfig, config_fields, validate_args
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
    "max_variants",
    "executor",
)
MODEL_KEYS = ("plugin", "args", "layers", "tokens", "label")
DATASET_KEYS = ("plugin", "args", "role")
SAE_KEYS = ("plugin", "args", "sweep", "label", "training")
EVALUATOR_KEYS = ("plugin", "args", "label")
EXECUTOR_KEYS = ("name", "address", "max_retries", "resources")
EXECUTOR_NAMES = ("local", "ray")
STEP_NAMES = ("extract", "train", "evaluate")


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
    """A model entry. ``tokens`` is the selection for every layer (None: the adapter's
    default); ``layer_tokens`` holds per-layer selections (``tokens: {pooled: cls}``)."""

    layers: tuple[str, ...] = ()
    tokens: str | None = None
    label: str = ""
    layer_tokens: Mapping[str, str] = field(default_factory=dict)

    def tokens_for(self, layer: str) -> str | None:
        """The selection the suite names for ``layer`` (None: the adapter's default)."""
        return self.layer_tokens.get(layer, self.tokens)


@dataclass(frozen=True)
class SplitSpec(ComponentSpec):
    name: str = ""
    role: str = "eval"


@dataclass(frozen=True)
class EvaluatorSpec(ComponentSpec):
    """An evaluator entry; ``label`` (default: the plugin name) tells two entries of one
    evaluator with different args apart, in cell ids and tables."""

    label: str = ""


@dataclass(frozen=True)
class SAEVariant:
    """One SAE of a sweep: the plugin with fully specified suite arguments.

    ``training`` holds the entry's overrides of the suite's training recipe (empty: none)."""

    plugin: str
    args: Mapping[str, Any]
    label: str
    where: str
    training: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SAESpec(ComponentSpec):
    sweep: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    label: str = ""
    training: Mapping[str, Any] = field(default_factory=dict)

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
            out.append(SAEVariant(self.plugin, args, label, self.where, dict(self.training)))
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
    evaluators: tuple[EvaluatorSpec, ...]
    hash: str
    executor: Mapping[str, Any] = field(default_factory=dict)
    """How the suite runs by default (``name``: local or ray, ``address``, ``max_retries``,
    per-step ``resources``); never part of the hash, since it changes no number."""

    @property
    def train_split(self) -> SplitSpec:
        return next(s for s in self.datasets if s.role == "train")

    def split(self, name: str) -> SplitSpec:
        return next(s for s in self.datasets if s.name == name)

    def training_config(self, variant: SAEVariant | None = None) -> TrainingConfig:
        """The suite's recipe, with ``variant``'s own ``training:`` overrides when given."""
        overrides = dict(variant.training) if variant is not None else {}
        return TrainingConfig(**(dict(self.training) | overrides))

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

    def instantiate(
        self,
        config_cls: Any,
        args: dict[str, Any],
        where: str,
        paths: Mapping[str, str] | None = None,
        context: str = "",
    ) -> Any:
        """Run the Config's own checks (``__post_init__``) and rephrase their failure.

        ``where`` is the YAML path of the args; a :class:`FieldValueError` is reported at the
        field's own path, ``paths[name]`` when the field is written elsewhere (a sweep's
        ``saes[0].sweep.k[1]``), else ``<where>.<name>``; ``context`` (which sweep point)
        follows the message."""
        try:
            return config_cls(**args)
        except FieldValueError as exc:
            path = (paths or {}).get(exc.name, f"{where}.{exc.name}")
            tail = f" {context}" if context and exc.name not in (paths or {}) else ""
            raise self.fail(path, exc.problem(config_cls) + tail) from None
        except (ValueError, TypeError) as exc:
            raise self.fail(where + (f" {context}" if context else ""), str(exc)) from None


def _sweep_example(values: Any, f: Any) -> str:
    """``[v]`` for a scalar written where a list belongs; for an empty list, two values built
    from the field's default (``[32, 64]``), or ``[...]`` when it has none."""
    if not isinstance(values, (list, dict)) and values is not None:
        return f"[{values!r}]" if isinstance(values, str) else f"[{values}]"
    default = f.default
    if isinstance(default, bool) or default is dataclasses.MISSING or default is None:
        return "[...]"
    if isinstance(default, (int, float)):
        return f"[{default}, {default * 2}]" if default else "[0, 1]"
    return f"[{default!r}, ...]"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


MAX_NODES = 100_000
"""Most YAML nodes a suite may expand to once aliases are followed (a 1 KB alias bomb expands to
billions); real suites have a few hundred."""
MAX_DEPTH = 64
"""Deepest nesting of mappings and lists in a suite."""
MAX_VARIANTS = 10_000
"""Most SAE variants one suite may sweep over, unless its top-level `max_variants` says more."""
MAX_SEEDS = 1_000


class SuiteLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags that build Python objects) with YAML 1.2 core-schema scalars.

    PyYAML implements YAML 1.1, whose implicit types surprise: ``2:24`` is the sexagesimal 144,
    ``no``/``on``/``off`` are booleans (a split named ``no:`` becomes ``False``), and ``1e-3``
    without a dot is a string. Suites are read with the 1.2 core schema instead: booleans are
    only ``true``/``false``, integers are decimal (``_`` allowed between digits), ``0x`` or ``0o``, floats need a digit and a dot
    or an exponent (plus ``.inf``/``.nan``), null is ``null``, ``~`` or empty. Anything else is a
    string. Duplicate keys are errors that name both lines.
    """

    yaml_implicit_resolvers: dict[Any, Any] = {}

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if (
                    not isinstance(key_node, yaml.ScalarNode)
                    or key_node.tag == "tag:yaml.org,2002:merge"
                ):
                    continue
                key = self.construct_object(key_node, deep=False)
                line = key_node.start_mark.line + 1
                try:
                    hashable = hash(key) is not None
                except TypeError:
                    hashable = False
                if hashable and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key `{key}` (lines {seen[key]} and {line}): keep one",
                        key_node.start_mark,
                    )
                if hashable:
                    seen[key] = line
        return super().construct_mapping(node, deep=deep)


for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    (
        "tag:yaml.org,2002:int",
        r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$",
        list("-+0123456789"),
    ),
    (
        "tag:yaml.org,2002:float",
        r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        list("-+0123456789."),
    ),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:merge", r"^(?:<<)$", ["<"]),
):
    SuiteLoader.add_implicit_resolver(_tag, re.compile(_pattern, re.X), _first)


def _int_1_2(loader: SuiteLoader, node: Any) -> int:
    value = loader.construct_scalar(node)
    text = str(value).replace("_", "")
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


SuiteLoader.add_constructor("tag:yaml.org,2002:int", _int_1_2)


def _check_size(node: Any, path: Path) -> None:
    """Refuse documents that expand past :data:`MAX_NODES` or nest past :data:`MAX_DEPTH`.

    Aliases share nodes, so sizes are memoised per node: the check is linear in the file even
    for an alias bomb, and runs before anything is constructed (or printed) from it.
    """
    sizes: dict[int, int] = {}

    def size(n: Any, depth: int) -> int:
        if depth > MAX_DEPTH:
            line = n.start_mark.line + 1
            raise SuiteError(
                f"{path}: line {line}: nested more than {MAX_DEPTH} levels deep; flatten the suite"
            )
        if id(n) in sizes:
            return sizes[id(n)]
        total = 1
        if isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total += size(child, depth + 1)
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k, depth + 1) + size(v, depth + 1)
        if total > MAX_NODES:
            raise SuiteError(
                f"{path}: expands to more than {MAX_NODES:,} values once its aliases (*name) "
                "are followed; a suite this large is almost certainly an alias loop or bomb"
            )
        sizes[id(n)] = total
        return total

    size(node, 0)


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
    loader = SuiteLoader(text)  # a SafeLoader: nothing in the file runs
    try:
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_size(node, path)
            doc = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except RecursionError:
        raise SuiteError(
            f"{path}: nested too deeply to read (more than {MAX_DEPTH} levels); flatten the suite"
        ) from None
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
        or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63 for s in seeds_raw
        )
        or len(set(seeds_raw)) != len(seeds_raw)
    ):
        raise c.fail(
            "seeds",
            f"{_show(seeds_raw)} is not a non-empty list of distinct non-negative integers, e.g. [0, 1, 2]",
        )

    if len(seeds_raw) > MAX_SEEDS:
        raise c.fail("seeds", f"{len(seeds_raw):,} seeds; at most {MAX_SEEDS:,} are allowed")
    max_variants = doc.get("max_variants", MAX_VARIANTS)
    if not isinstance(max_variants, int) or isinstance(max_variants, bool) or max_variants < 1:
        raise c.fail("max_variants", f"{_show(max_variants)} is not a positive integer")

    models = _models(c, doc["models"])
    datasets = _datasets(c, doc["datasets"])
    training = _training(c, doc.get("training") or {}, "training")
    saes = _saes(c, doc["saes"], training, max_variants)
    evaluators = _evaluators(c, doc["evaluators"])
    executor = _executor(c, doc.get("executor"))

    # The name may say anything; the default folder made from it stays inside saebench-results/.
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "suite"
    out_value = (
        output if output is not None else doc.get("output", os.path.join("saebench-results", slug))
    )
    if not isinstance(out_value, str) or not out_value or "\x00" in out_value:
        raise c.fail("output", f"{_show(out_value)} is not a folder path")
    cache_value = doc.get("cache_dir")
    if cache_value is not None and (not isinstance(cache_value, str) or "\x00" in cache_value):
        raise c.fail("cache_dir", f"{_show(cache_value)} is not a folder path")
    verify = doc.get("cache_verify", "sample")
    if verify not in ("sample", "full", "size"):
        raise c.fail("cache_verify", f"{_show(verify)} is not one of: sample, full, size")

    hashed = {
        "models": [
            m.identity()
            | {"layers": list(m.layers), "tokens": m.tokens}
            | ({"layer_tokens": dict(m.layer_tokens)} if m.layer_tokens else {})
            for m in models
        ],
        "datasets": [d.identity() | {"name": d.name, "role": d.role} for d in datasets],
        "saes": [
            s.identity()
            | {"sweep": {k: list(v) for k, v in s.sweep.items()}}
            | ({"training": dict(s.training)} if s.training else {})
            for s in saes
        ],
        "evaluators": [e.identity() | {"label": e.label} for e in evaluators],
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
        executor=executor,
    )


def _training(
    c: _Checker, raw: Any, where: str, base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A training recipe (or a per-SAE override of one, merged over ``base``), checked."""
    try:
        training = validate_args(
            TrainingConfig, raw, where=f"{c.path}: {where}", what="the training recipe"
        )
        TrainingConfig(**(dict(base or {}) | training))
    except ConfigError as exc:
        raise SuiteError(str(exc)) from None
    except FieldValueError as exc:
        raise SuiteError(exc.at(f"{c.path}: {where}", TrainingConfig)) from None
    except (TypeError, ValueError) as exc:
        raise c.fail(where, str(exc)) from None
    return training


def _executor(c: _Checker, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = {"name": raw}
    entry = c.mapping(raw, "executor", EXECUTOR_KEYS)
    out: dict[str, Any] = {}
    name = entry.get("name", "local")
    if name not in EXECUTOR_NAMES:
        raise c.fail(
            "executor.name",
            f"{_show(name)} is not an executor.{did_you_mean(str(name), EXECUTOR_NAMES)} (expected: {', '.join(EXECUTOR_NAMES)})",
        )
    out["name"] = name
    address = entry.get("address")
    if address is not None and not isinstance(address, str):
        raise c.fail(
            "executor.address",
            f"{_show(address)} is not an address; write auto or ray://host:10001",
        )
    if address is not None:
        out["address"] = address
    retries = entry.get("max_retries", 3)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise c.fail("executor.max_retries", f"{_show(retries)} is not an integer of 0 or more")
    out["max_retries"] = retries
    resources = entry.get("resources") or {}
    c.mapping(resources, "executor.resources", STEP_NAMES)
    checked: dict[str, dict[str, float]] = {}
    for step, wanted in resources.items():
        where = f"executor.resources.{step}"
        if not isinstance(wanted, dict) or not wanted:
            raise c.fail(
                where,
                f"must map resource names to amounts, e.g. {{num_gpus: 1, num_cpus: 4}}, not {_show(wanted)}",
            )
        for key, amount in wanted.items():
            if (
                not isinstance(key, str)
                or isinstance(amount, bool)
                or not isinstance(amount, (int, float))
                or amount < 0
            ):
                raise c.fail(
                    f"{where}.{key}", f"{_show(amount)} is not a non-negative amount of a resource"
                )
        checked[step] = {str(k): float(v) for k, v in wanted.items()}
    out["resources"] = checked
    return out


def _nonempty_list(c: _Checker, value: Any, where: str, example: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise c.fail(
            where, f"must be a non-empty list of entries like `{example}`, not {_show(value)}"
        )
    return value


def _check_selection(c: _Checker, where: str, tokens: Any) -> None:
    if tokens not in TOKEN_CHOICES:
        raise c.fail(
            where,
            f"{_show(tokens)} is not a token selection.{did_you_mean(str(tokens), TOKEN_CHOICES)} (expected: {', '.join(TOKEN_CHOICES)}, or a mapping layer: selection)",
        )


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
        layer_tokens: dict[str, str] = {}
        if isinstance(tokens, dict):
            # Per-layer selections, e.g. {pooled: cls, prompt-embeds: text}.
            for layer, selection in tokens.items():
                if layer not in layers:
                    raise c.fail(
                        f"{where}.tokens.{layer}",
                        f"{_show(layer)} is not one of this entry's layers ({', '.join(layers)}); a per-layer selection names a listed layer",
                    )
                _check_selection(c, f"{where}.tokens.{layer}", selection)
                layer_tokens[layer] = selection
            tokens = None
        elif tokens is not None:
            _check_selection(c, f"{where}.tokens", tokens)
        label = entry.get("label") or ""
        if not isinstance(label, str) or "\x00" in label or "\n" in label:
            raise c.fail(f"{where}.label", f"{_show(label)} is not a one-line string")
        out.append(
            ModelSpec(
                "model", plugin, args, where, tuple(layers), tokens, label or plugin, layer_tokens
            )
        )
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


def _saes(
    c: _Checker, value: Any, training: Mapping[str, Any], max_variants: int = MAX_VARIANTS
) -> tuple[SAESpec, ...]:
    out = []
    total = 0
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
                    f"{_show(values)} is not a non-empty list of values; write the values to "
                    f"train one SAE each with, e.g. `sweep: {{{key}: {_sweep_example(values, fields[key])}}}`",
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
        count = 1
        for values in sweep.values():
            count *= len(values)
        total += count
        if total > max_variants:
            raise c.fail(
                f"{where}.sweep",
                f"the suite sweeps over {total:,} SAE variants so far, more than the limit of "
                f"{max_variants:,}; sweep fewer values, or raise the limit with a top-level "
                "`max_variants: N`",
            )
        label = entry.get("label") or ""
        if not isinstance(label, str) or "\x00" in label or "\n" in label:
            raise c.fail(f"{where}.label", f"{_show(label)} is not a one-line string")
        overrides = entry.get("training") or {}
        if not isinstance(overrides, dict):
            raise c.fail(
                f"{where}.training",
                f"must map training options to values, e.g. {{epochs: 10}}, not {_show(overrides)}",
            )
        overrides = _training(c, overrides, f"{where}.training", training)
        spec = SAESpec("sae", plugin, args, where, sweep, label, overrides)
        # variants() is the row-major grid of the sweep's values: the same order as this.
        points = itertools.product(*(range(len(v)) for v in sweep.values()))
        for variant, point in zip(spec.variants(), points):
            shown = ", ".join(f"{k}={_short(variant.args[k])}" for k in sweep)
            c.instantiate(
                config_cls,
                dict(variant.args),
                f"{where}.args",
                paths={k: f"{where}.sweep.{k}[{j}]" for k, j in zip(sweep, point)},
                context=f"(sweep {shown})" if shown else "",
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


def _evaluators(c: _Checker, value: Any) -> tuple[EvaluatorSpec, ...]:
    out = []
    for i, raw in enumerate(_nonempty_list(c, value, "evaluators", "{plugin: reconstruction}")):
        where = f"evaluators[{i}]"
        plugin, args, _ = c.component("evaluator", raw, where, EVALUATOR_KEYS)
        entry = raw if isinstance(raw, dict) else {}
        label = entry.get("label") or ""
        if not isinstance(label, str) or (
            label and not re.fullmatch(r"[A-Za-z0-9][\w.\-]*", label)
        ):
            raise c.fail(
                f"{where}.label",
                f"{_show(label)} is not a label; use letters, digits, '-', '_' or '.', e.g. ontology-firing",
            )
        out.append(EvaluatorSpec("evaluator", plugin, args, where, label or plugin))
    labels = [e.label for e in out]
    for i, n in enumerate(labels):
        first = labels.index(n)
        if first != i:
            same = out[first].plugin == out[i].plugin
            raise c.fail(
                f"evaluators[{i}]"
                + (".label" if not same or out[i].label != out[i].plugin else ""),
                f"evaluator `{n}` is listed twice (also evaluators[{first}]); "
                + (
                    "give each entry a distinct `label` to compare their args, or merge them"
                    if same
                    else "give each entry a distinct `label`"
                ),
            )
    return tuple(out)
