"""Component registry: component names mapped to lazily imported classes.

Plugins register references (``"module:Class"``) rather than classes, so building the registry
imports nothing heavy; a class is imported only when a suite uses it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from saebench_vision.errors import DuplicateComponentError, PluginError, UnknownComponentError

KINDS: dict[str, str] = {
    "model": "register_models",
    "sae": "register_saes",
    "dataset": "register_datasets",
    "evaluator": "register_evaluators",
    "labeller": "register_labellers",
}
"""Component kind -> the discovery hook that registers it."""

KIND_TITLES = {
    "model": "model",
    "sae": "SAE",
    "dataset": "dataset",
    "evaluator": "evaluator",
    "labeller": "labeller",
}


@dataclass(frozen=True)
class ComponentRef:
    """Where a component lives.

    ``target`` is ``"module:Class"``. ``config``, when given, is ``"module:ConfigClass"`` in a
    module that imports nothing heavy, so that ``saebench validate`` can check arguments without
    importing the implementation (and torch).
    """

    target: str
    config: str | None = None

    def __post_init__(self) -> None:
        for ref in (self.target, self.config):
            if ref is not None and (not isinstance(ref, str) or ref.count(":") != 1):
                raise ValueError(f"component reference {ref!r} is not of the form 'module:Name'")


def import_ref(ref: str) -> Any:
    """Import ``"module:Name"`` (``Name`` may be dotted) and return the object."""
    module_name, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class Entry:
    """One registered component."""

    kind: str
    name: str
    ref: ComponentRef
    plugin: str
    _cls: Any = field(default=None, repr=False)

    def load(self) -> Any:
        """Import and return the component class."""
        if self._cls is None:
            try:
                self._cls = import_ref(self.ref.target)
            except (ImportError, AttributeError) as exc:
                raise PluginError(
                    f"{KIND_TITLES[self.kind]} `{self.name}` (plugin `{self.plugin}`): cannot import "
                    f"{self.ref.target}: {exc}; reinstall the plugin or disable it with "
                    f"SAEBENCH_VISION_DISABLE_PLUGINS={self.plugin}"
                ) from exc
        return self._cls

    def config_class(self) -> Any:
        """The component's Config dataclass, imported lightly when the plugin allows it."""
        if self.ref.config is not None:
            try:
                return import_ref(self.ref.config)
            except (ImportError, AttributeError) as exc:
                raise PluginError(
                    f"{KIND_TITLES[self.kind]} `{self.name}` (plugin `{self.plugin}`): cannot import "
                    f"its Config {self.ref.config}: {exc}"
                ) from exc
        return self.load().Config


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" Did you mean: topk?"`` or ``""``."""
    options = list(choices)
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
    if not close and len(name) >= 2:
        # Abbreviations such as `l1` for `l1_coefficient` are closer than edit distance says.
        close = [c for c in options if c.startswith(name) or c.replace("_", "").startswith(name)][
            :3
        ]
    return f" Did you mean: {', '.join(close)}?" if close else ""


class Registry:
    """Components by kind and name, with the plugin that registered each."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, kind: str, name: str, ref: Any, plugin: str) -> None:
        """Register ``name``; refuses duplicates, naming both owners."""
        title = KIND_TITLES[kind]
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin `{plugin}` registered a {title} with a non-string name {name!r}"
            )
        if isinstance(ref, str):
            try:
                ref = ComponentRef(ref)
            except ValueError as exc:
                raise PluginError(f"plugin `{plugin}`: {title} `{name}`: {exc}") from exc
        elif not isinstance(ref, ComponentRef):
            raise PluginError(
                f"plugin `{plugin}`: {title} `{name}` must map to 'module:Class' or a ComponentRef, "
                f"not {type(ref).__name__}"
            )
        existing = self._entries[kind].get(name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{title} `{name}` is registered twice: by plugin `{existing.plugin}` "
                f"({existing.ref.target}) and by plugin `{plugin}` ({ref.target}); "
                f"disable one with SAEBENCH_VISION_DISABLE_PLUGINS=<plugin>"
            )
        self._entries[kind][name] = Entry(kind, name, ref, plugin)

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> list[Entry]:
        return [self._entries[kind][n] for n in self.names(kind)]

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._entries[kind]

    def get(self, kind: str, name: str, where: str = "") -> Entry:
        """The entry for ``name``, or an error that suggests near names and lists the rest."""
        try:
            return self._entries[kind][name]
        except KeyError:
            title = KIND_TITLES[kind]
            available = ", ".join(self.names(kind)) or "(none)"
            prefix = f"{where}: " if where else ""
            raise UnknownComponentError(
                f"{prefix}Unknown {title} {name!r}.{did_you_mean(str(name), self.names(kind))} "
                f"Available: {available}"
            ) from None
