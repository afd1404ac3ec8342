"""Checks that ``validate`` and ``run`` share, so that validate finds what run would stop on.

Each raises :class:`~saebench_vision.errors.SaebenchError` with one line that names the suite
file, the YAML path, the value and the fix. None of them writes anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from saebench_vision.errors import SaebenchError


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
