"""What ``saebench validate`` checks beyond names and types, before any weights or data load:
that every model can read every split (input kinds), that every layer offers the tokens its
selection reads, and that every split opens (all problems reported at once).

Called from the runner's preflight, so ``run`` refuses the same suites ``validate`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from saebench_vision.errors import SaebenchError, SuiteError
from saebench_vision.suite import ModelSpec, SplitSpec, Suite

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
