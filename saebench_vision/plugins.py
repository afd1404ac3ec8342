"""The plugin manager: built-ins from an explicit tuple, then entry points, each isolated.

Environment variables:

``SAEBENCH_VISION_DISABLE_PLUGINS``
    Comma-separated plugin names (entry-point names or built-in names) that are not imported.
``SAEBENCH_VISION_STRICT_PLUGINS``
    ``1``/``true``/``yes`` turns a plugin that fails to import, or whose discovery hook raises,
    into an error instead of a warning; ``0``/``false``/``no`` or unset keeps warnings; any other
    value is an error. A lifecycle hook that raises is always a warning (see :meth:`PluginManager.notify`).
``SAEBENCH_VISION_NO_ENTRYPOINTS``
    ``1`` loads only the built-ins (and ``SAEBENCH_VISION_PLUGINS``).
``SAEBENCH_VISION_PLUGINS``
    Comma-separated importable module names loaded as plugins, like entry points but without
    packaging (pytest's ``-p``); handy for a plugin under development.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import pluggy

from saebench_vision import PROJECT_NAME, hookspecs
from saebench_vision.errors import DuplicateComponentError, PluginError
from saebench_vision.registry import KINDS, Registry

DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("builtin-models", "saebench_vision_plugins.models.hooks"),
    ("builtin-saes", "saebench_vision_plugins.saes.hooks"),
    ("builtin-datasets", "saebench_vision_plugins.datasets.hooks"),
    ("builtin-evaluators", "saebench_vision_plugins.evaluators.hooks"),
    ("builtin-steering", "saebench_vision_plugins.steering.hooks"),
)
"""(plugin name, module) of the plugins that ship with saebench-vision."""

ENV_DISABLE = "SAEBENCH_VISION_DISABLE_PLUGINS"
ENV_STRICT = "SAEBENCH_VISION_STRICT_PLUGINS"
ENV_NO_ENTRYPOINTS = "SAEBENCH_VISION_NO_ENTRYPOINTS"
ENV_EXTRA = "SAEBENCH_VISION_PLUGINS"


@dataclass
class LoadFailure:
    """A plugin that could not be imported; the others still work."""

    name: str
    distribution: str
    error: str


@dataclass
class PluginManager:
    """pluggy's manager plus what the project needs around it."""

    pm: pluggy.PluginManager
    failures: list[LoadFailure] = field(default_factory=list)
    disabled: set[str] = field(default_factory=set)
    distributions: dict[str, tuple[str, str]] = field(default_factory=dict)
    strict: bool = False
    _registry: Registry | None = None
    _warned: set[tuple[str, str]] = field(default_factory=set)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def register(self, plugin: Any, name: str, distribution: tuple[str, str] | None = None) -> None:
        """Register an in-process plugin (tests and notebooks use this)."""
        self.pm.register(plugin, name=name)
        self.pm.check_pending()
        self.distributions[name] = distribution or ("(in-process)", "")
        self._registry = None

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.distributions.pop(name, None)
        self._registry = None

    def registry(self) -> Registry:
        """All components, attributed to the plugin that registered each."""
        if self._registry is None:
            registry = Registry()
            for kind, hook_name in KINDS.items():
                caller = getattr(self.pm.hook, hook_name)
                # Call each implementation alone so that every name is attributed to its plugin.
                for impl in reversed(caller.get_hookimpls()):
                    plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
                    try:
                        result = impl.function()
                    except KeyboardInterrupt:
                        raise
                    except BaseException as exc:  # noqa: BLE001 - a plugin's bug must not hide others
                        self._hook_failed(
                            plugin_name, hook_name, f"raised {type(exc).__name__}: {exc}"
                        )
                        continue
                    if result is None:
                        continue
                    if not isinstance(result, dict):
                        self._hook_failed(
                            plugin_name,
                            hook_name,
                            f"must return a dict of name -> 'module:Class', not "
                            f"{type(result).__name__}",
                        )
                        continue
                    for name, ref in result.items():
                        try:
                            registry.add(kind, name, ref, plugin_name)
                        except DuplicateComponentError:
                            raise
                        except PluginError as exc:
                            self._hook_failed(plugin_name, hook_name, f"gave a bad entry: {exc}")
            self._registry = registry
        return self._registry

    def _hook_failed(self, plugin_name: str, hook_name: str, problem: str) -> None:
        """A discovery hook that raised: an error when strict, else a named warning."""
        message = f"plugin `{plugin_name}`: {hook_name}() {problem}"
        if self.strict:
            raise PluginError(f"{message}; fix or uninstall it, or unset {ENV_STRICT} to skip it")
        if (plugin_name, hook_name) not in self._warned:
            self._warned.add((plugin_name, hook_name))
            self.failures.append(
                LoadFailure(
                    plugin_name,
                    self.distributions.get(plugin_name, ("", ""))[0],
                    f"{hook_name}() {problem}",
                )
            )
            print(
                f"warning: {message}; what it registers there is skipped "
                f"(disable it with {ENV_DISABLE}={plugin_name})",
                file=sys.stderr,
            )

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call a lifecycle hook's implementations one by one, each isolated: an observer that
        raises is reported in a named one-line warning (once per plugin and hook) and the others,
        and the run, go on. Observers never stop a run, not even under ``SAEBENCH_VISION_STRICT_PLUGINS``:
        a dashboard's bug must not cost hours of training. ``KeyboardInterrupt`` still stops it."""
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            try:
                if impl.hookwrapper or impl.wrapper:
                    raise TypeError("a wrapper cannot observe a run; drop wrapper=True")
                impl.function(**{name: kwargs[name] for name in impl.argnames})
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - an observer's bug must not end the run
                if (plugin_name, hook_name) in self._warned:
                    continue
                self._warned.add((plugin_name, hook_name))
                problem = str(exc).strip().splitlines()
                print(
                    f"warning: plugin `{plugin_name}`: {hook_name}() raised "
                    f"{type(exc).__name__}{': ' + problem[0] if problem else ''}; the run goes on "
                    f"(shown once; disable the plugin with {ENV_DISABLE}={plugin_name})",
                    file=sys.stderr,
                )

    def plugin_info(self) -> list[dict[str, Any]]:
        """One row per registered plugin: name, distribution, version, hooks, components."""
        registry = self.registry()
        rows = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda item: item[0]):
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            dist, version = self.distributions.get(name, ("", ""))
            components = {
                kind: [e.name for e in registry.entries(kind) if e.plugin == name] for kind in KINDS
            }
            rows.append(
                {
                    "name": name,
                    "distribution": dist,
                    "version": version,
                    "hooks": hooks,
                    "components": {k: v for k, v in components.items() if v},
                }
            )
        return rows

    def versions(self) -> dict[str, str]:
        """``{plugin name: "distribution version"}`` for provenance records."""
        return {name: f"{d} {v}".strip() for name, (d, v) in sorted(self.distributions.items())}


def _env_list(name: str) -> set[str]:
    return {part.strip() for part in os.environ.get(name, "").split(",") if part.strip()}


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"", "0", "false", "no", "off"}:
        return False
    raise PluginError(
        f"{name}={os.environ[name]!r} is not a yes/no value; use 1, true or yes to turn it on, "
        "or 0, false, no or leave it unset to turn it off"
    )


def get_plugin_manager(
    *,
    load_entrypoints: bool | None = None,
    disabled: set[str] | None = None,
    strict: bool | None = None,
) -> PluginManager:
    """A fresh plugin manager with the built-ins and (unless turned off) entry-point plugins.

    A plugin that fails to import is recorded in ``failures`` and skipped, unless ``strict``
    (or ``SAEBENCH_VISION_STRICT_PLUGINS=1``) makes that an error. Disabled plugins are never
    imported.
    """
    from saebench_vision import __version__

    if load_entrypoints is None:
        load_entrypoints = not _env_flag(ENV_NO_ENTRYPOINTS)
    from_env = disabled is None
    disabled = set(disabled if disabled is not None else _env_list(ENV_DISABLE))
    strict = _env_flag(ENV_STRICT) if strict is None else strict

    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    manager = PluginManager(pm=pm, disabled=disabled, strict=strict)

    for name, module_name in DEFAULT_PLUGINS:
        if name in disabled:
            continue
        module = importlib.import_module(module_name)
        pm.register(module, name=name)
        manager.distributions[name] = ("saebench-vision", __version__)

    candidates: list[tuple[str, str, str, Any]] = []
    entry_points = _entry_points() if load_entrypoints or (from_env and disabled) else []
    if load_entrypoints:
        for ep in entry_points:
            dist_name, dist_version = _dist_of(ep)
            candidates.append((ep.name, dist_name, dist_version, ep))
    for module_name in sorted(_env_list(ENV_EXTRA)):
        candidates.append((module_name, f"${ENV_EXTRA}", "", module_name))
    if from_env and disabled:
        # Names of every plugin that could load (entry points too, loaded or not).
        known = [n for n, _ in DEFAULT_PLUGINS] + sorted(
            {ep.name for ep in entry_points} | {c[0] for c in candidates}
        )
        _check_disabled(disabled, known, strict)
    for name, dist_name, dist_version, source in candidates:
        if name in disabled:
            continue
        value = source if isinstance(source, str) else source.value
        try:
            if pm.get_plugin(name) is not None:
                raise PluginError(f"a plugin named `{name}` is already registered")
            plugin = importlib.import_module(source) if isinstance(source, str) else source.load()
            pm.register(plugin, name=name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - isolate each plugin, sys.exit() included
            message = (
                f"plugin `{name}` from {dist_name or 'an unknown distribution'} failed to "
                f"load ({value}): {type(exc).__name__}: {exc}"
            )
            if strict:
                raise PluginError(
                    f"{message}; fix or uninstall it, or unset {ENV_STRICT} to skip it"
                ) from exc
            manager.failures.append(LoadFailure(name, dist_name, f"{type(exc).__name__}: {exc}"))
            print(
                f"warning: {message}; skipped (disable it with {ENV_DISABLE}={name})",
                file=sys.stderr,
            )
            continue
        manager.distributions[name] = (dist_name, dist_version)
    pm.check_pending()
    return manager


def _check_disabled(disabled: set[str], known: list[str], strict: bool) -> None:
    """A name in ``SAEBENCH_VISION_DISABLE_PLUGINS`` that matches no plugin is a typo that
    would leave the plugin meant enabled: a warning naming it, an error when strict."""
    from saebench_vision.registry import did_you_mean

    for name in sorted(disabled - set(known)):
        message = (
            f"{ENV_DISABLE}={os.environ.get(ENV_DISABLE, '')}: `{name}` matches no plugin, so "
            f"it disables nothing.{did_you_mean(name, known)} (plugins: {', '.join(known)})"
        )
        if strict:
            raise PluginError(f"{message}; fix the name, or unset {ENV_STRICT}")
        print(f"warning: {message}", file=sys.stderr)


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    eps = importlib.metadata.entry_points(group=PROJECT_NAME)
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in sorted(eps, key=lambda e: e.name):
        if (ep.name, ep.value) not in seen:  # a package on sys.path twice lists its eps twice
            seen.add((ep.name, ep.value))
            unique.append(ep)
    return unique


def _dist_of(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "", ""
    return dist.metadata["Name"] or "", dist.version or ""
