"""The plugin contract: every hook saebench-vision calls, in one place.

A plugin is any module or object with functions marked ``@saebench_vision.hookimpl`` whose names
match the specs below. Built-in plugins are listed in ``saebench_vision.plugins.DEFAULT_PLUGINS``;
third-party plugins are found through the ``saebench_vision`` entry-point group::

    [project.entry-points.saebench_vision]
    my_sae = "my_pkg.hooks"

Discovery hooks (``register_*``) must stay light: they return a mapping from a component name
(lower-kebab, e.g. ``"topk"``) to a *reference*, never to an imported class, so that listing
plugins or validating a suite imports no torch. A reference is either

* a string ``"package.module:ClassName"``; validation then imports that module to read
  ``ClassName.Config``; or
* a :class:`saebench_vision.registry.ComponentRef` that also names a light module holding the
  Config dataclass, so that validation never imports the implementation.

Lifecycle hooks are called by the runner with keyword arguments; every argument is optional for
an implementation (pluggy passes only the ones it names).
"""

from __future__ import annotations

from typing import Any

from saebench_vision import hookspec


@hookspec
def register_models() -> dict[str, Any]:
    """Name the model adapters this plugin provides.

    Called once per plugin manager, when a registry is first built. Returns
    ``{name: "module:Class" | ComponentRef}``; each class subclasses
    :class:`saebench_vision.interfaces.ModelAdapter`. Results of all plugins are merged; a
    name registered twice is an error naming both plugins.
    """


@hookspec
def register_saes() -> dict[str, Any]:
    """Name the SAE architectures this plugin provides.

    Same contract as :func:`register_models`; classes subclass
    :class:`saebench_vision.interfaces.SAE`.
    """


@hookspec
def register_datasets() -> dict[str, Any]:
    """Name the datasets this plugin provides.

    Same contract as :func:`register_models`; classes subclass
    :class:`saebench_vision.interfaces.Dataset`. One configured instance is one split.
    """


@hookspec
def register_evaluators() -> dict[str, Any]:
    """Name the evaluators this plugin provides.

    Same contract as :func:`register_models`; classes subclass
    :class:`saebench_vision.interfaces.Evaluator`.
    """


@hookspec
def register_figures() -> dict[str, str]:
    """Name the figures this plugin draws.

    Called when ``saebench plot`` or ``saebench report`` lists figures. Returns
    ``{name: "module:function"}`` (lower-kebab names, e.g. ``"reconstruction-pareto"``); the
    module is imported only when the figure is drawn. The function is called as
    ``fn(results, options)`` with a :class:`saebench_vision.resultset.ResultSet` and a
    :class:`saebench_vision.figures.FigureOptions`, and returns a ``matplotlib.figure.Figure``;
    when the results lack its data it raises :class:`saebench_vision.figures.FigureDataMissing`
    with one line saying what it needs. Results of all plugins are merged; a name registered
    twice is an error naming both plugins.
    """


@hookspec
def saebench_run_start(suite: Any, run_id: str, cells: list[Any]) -> None:
    """Called once when ``saebench run`` starts, after the suite is validated and expanded.

    ``suite`` is the frozen :class:`saebench_vision.suite.Suite`, ``cells`` the evaluation
    cells still to run (finished ones are already filtered out). All results are ignored.
    """


@hookspec
def saebench_cell_finished(cell: Any, records: list[Any]) -> None:
    """Called after each evaluation cell is committed to the results store.

    ``records`` are the :class:`saebench_vision.interfaces.Record` objects stored for it.
    Useful for live dashboards or remote loggers. All results are ignored.
    """


@hookspec
def saebench_run_finished(suite: Any, run_id: str, status: str) -> None:
    """Called once when a run ends; ``status`` is ``"finished"`` or ``"failed"``."""
