"""Checks that ``validate`` and ``run`` share, so that validate finds what run would stop on,
before any weights or data load: writable folders, split roles, that every model can read every
split (input kinds), that every layer offers the tokens its selection reads, and that every
split opens (all problems reported at once).

Each raises :class:`~saebench_vision.errors.SaebenchError` with one line that names the suite
file, the YAML path, the value and the fix. None of them writes anything. Called from the
runner's preflight, so ``run`` refuses the same suites ``validate`` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from saebench_vision.errors import SaebenchError, SuiteError
from saebench_vision.suite import ModelSpec, SplitSpec, Suite


def writable_folder(path: Path) -> str | None:
    """Why ``path`` cannot be used as a folder that we create and write into, or None if it can."""
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return f"{path}: no part of it exists"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, so {path} cannot be created"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable" + (
            "" if probe == path else f", so {path} cannot be created"
        )
    return None


def check_folders(suite: Any, cache_dir: Path | None = None) -> None:
    """The results folder and the activation cache can be created and written."""
    from saebench_vision.cache import default_cache_dir

    cache = cache_dir or suite.cache_dir or default_cache_dir()
    for where, folder, fix in (
        ("output", suite.output, "choose another `output:` (or `saebench run --output DIR`)"),
        (
            "cache_dir",
            cache,
            "choose another `cache_dir:` (or `--cache-dir DIR`, or $SAEBENCH_VISION_CACHE)",
        ),
    ):
        problem = writable_folder(Path(folder))
        if problem:
            raise SaebenchError(f"{suite.path}: {where}: {problem}; {fix}")


def check_roles(suite: Any, evaluators: Iterable[tuple[Any, Any]]) -> None:
    """Every evaluator finds splits with the roles it needs (``Evaluator.required_roles``).

    ``evaluators`` holds (suite entry, instantiated evaluator) pairs.
    """
    present = {split.role for split in suite.datasets}
    for spec, evaluator in evaluators:
        for role in evaluator.required_roles():
            if role not in present:
                have = ", ".join(f"{s.name} ({s.role})" for s in suite.datasets)
                raise SaebenchError(
                    f"{suite.path}: {spec.where}: evaluator `{spec.plugin}` needs a split with "
                    f"`role: {role}` and the suite has none (its splits: {have}); add one under "
                    "`datasets:`"
                )


# Which dataset items a model of each input kind can read.
READABLE = {
    "image": ("image",),
    "text": ("text",),
    "image-text": ("image", "text", "image-text"),
}


def dataset_modality(entry: Any) -> str:
    """A dataset's item kind: declared on its light Config, else on the implementation."""
    declared = getattr(entry.config_class(), "modality", None)
    if isinstance(declared, str):
        return declared
    return str(getattr(entry.load(), "modality", "image"))


def check_inputs(
    suite: Suite, spec: ModelSpec, adapter: Any, modalities: Mapping[str, str]
) -> None:
    """Every split's items are of a kind the model reads (``sd-text-encoder`` on ``shapes``
    is refused here, not after loading the weights)."""
    kind = str(adapter.input_kind)
    readable = READABLE.get(kind, (kind,))
    for split in suite.datasets:
        modality = modalities[split.name]
        if modality not in readable:
            raise SuiteError(
                f"{suite.path}: {split.where}: dataset `{split.plugin}` gives {modality} items but "
                f"{spec.where} (model `{spec.plugin}`) reads {kind}; use a {kind} dataset for this "
                f"split or another model"
            )


def check_tokens(suite: Suite, spec: ModelSpec, adapter: Any) -> None:
    """Every layer offers the token kinds its selection reads (``tokens: text`` on an image
    layer, ``text`` on SD3's single-token ``pooled``, ``cls`` on a text encoder)."""
    from saebench_vision.interfaces import TOKEN_NEEDS, selections_offered

    for layer in spec.layers:
        kinds = adapter.layer_token_kinds(layer)
        if kinds is None:
            continue
        named = spec.tokens_for(layer)
        selection = named or adapter.default_tokens_for(layer)
        if TOKEN_NEEDS[selection] & kinds:
            continue
        offered = selections_offered(kinds)
        if spec.layer_tokens.get(layer) is not None:
            where = f"{spec.where}.tokens.{layer}"
        elif named is not None:
            where = f"{spec.where}.tokens"
        else:
            where = f"{spec.where}.layers"
        fix = f"tokens: {{{layer}: {offered[0]}}}" if offered else "another layer"
        raise SuiteError(
            f"{suite.path}: {where}: model `{spec.label}` layer `{layer}` has no token that "
            f"selection `{selection}` reads (it offers: {', '.join(offered) or 'nothing'}); "
            f"use {fix}"
        )


ONE_ROW_PER_ITEM = ("cls", "mean-patch")
"""Token selections that give exactly one activation row per dataset item."""


def check_training_memory(
    suite: Suite,
    spec: ModelSpec,
    adapter: Any,
    sae_config: Callable[[Any], Any],
    notes: list[str],
    train_items: int | None = None,
) -> None:
    """The memory checks training makes (:func:`saebench_vision.training.check_sweep_memory`)
    for every layer of the model entry ``spec`` whose width ``adapter.layer_width`` knows
    without weights, sweep by sweep as the plan groups them (one per training recipe); each
    layer it does not know is named in ``notes``. With ``train_items`` (the train split's
    length, when it was opened) a ``training.batch_size`` above the rows of a one-row-per-item
    layer is noted too. ``sae_config`` builds an SAE variant's Config."""
    from saebench_vision.cache import content_key
    from saebench_vision.config import config_as_dict
    from saebench_vision.interfaces import resolve_device
    from saebench_vision.training import check_sweep_memory

    variants = suite.sae_variants()
    if not variants:
        return
    sweeps: dict[str, tuple[Any, list[tuple[str, Any]], str]] = {}
    for variant in variants:
        recipe = suite.training_config(variant)
        key = content_key(config_as_dict(recipe))
        # Where the sweep's batch_size is written: the entry's override, or the suite's recipe.
        source = f"{variant.where}.training" if "batch_size" in variant.training else "training"
        sweeps.setdefault(key, (recipe, [], source))[1].append((variant.where, sae_config(variant)))
    unknown = []
    for layer in spec.layers:
        width = adapter.layer_width(layer)
        if width is None:
            unknown.append(layer)
            continue
        for recipe, saes, _ in sweeps.values():
            check_sweep_memory(
                int(width), saes, recipe.batch_size, resolve_device(recipe.device), suite.path
            )
    if unknown:
        notes.append(
            f"{suite.path}: {spec.where}: model `{spec.plugin}` knows the width of "
            f"{', '.join(unknown)} only once its weights load, so training memory there is "
            "checked when the run starts training"
        )
    if train_items is None:
        return
    one_row = [
        layer
        for layer in spec.layers
        if (spec.tokens_for(layer) or adapter.default_tokens_for(layer)) in ONE_ROW_PER_ITEM
    ]
    for recipe, _, source in sweeps.values():
        rows = min(train_items, recipe.max_samples or train_items)
        if one_row and recipe.batch_size > rows:
            notes.append(
                f"{suite.path}: {source}.batch_size: {recipe.batch_size} is more than the "
                f"{rows} training rows of {spec.label}/{', '.join(one_row)}: every step "
                f"repeats rows; a batch_size of at most {rows} takes several steps per epoch"
            )


def check_datasets_open(
    suite: Suite, open_split: Callable[[SplitSpec], Any], splits: list[SplitSpec] | None = None
) -> None:
    """Open every split; report every one that fails (missing folders, files, empty splits)
    at once, each on its own line with the suite path and the split's YAML location."""
    problems = []
    for split in splits if splits is not None else list(suite.datasets):
        try:
            open_split(split)
        except SaebenchError as exc:
            problems.append(f"{suite.path}: {split.where}: {exc}")
        except (OSError, ValueError) as exc:
            problems.append(f"{suite.path}: {split.where}: dataset `{split.plugin}`: {exc}")
    if len(problems) == 1:
        raise SuiteError(problems[0])
    if problems:
        raise SuiteError(
            f"{len(problems)} of {len(suite.datasets)} dataset splits cannot be opened:\n  "
            + "\n  ".join(problems)
        )


def check_paths(suite: Any, configs: Iterable[tuple[str, Any]]) -> None:
    """Every option declared ``option(..., exists=True)`` names a path that exists: all that do
    not, at once (a suite copied from another machine usually has several to fill in).

    ``configs`` holds (YAML location of the entry, its Config instance)."""
    import dataclasses

    missing = []
    for where, config in configs:
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if f.metadata.get("exists") and isinstance(value, str) and value:
                if not Path(os.path.expanduser(value)).exists():
                    missing.append(f"{where}.args.{f.name}: {value}")
    if missing:
        shown = "; ".join(missing[:8]) + (
            f"; and {len(missing) - 8} more" if len(missing) > 8 else ""
        )
        raise SaebenchError(
            f"{suite.path}: {len(missing)} path(s) do not exist: {shown}; fill in the paths on "
            "this machine"
        )
