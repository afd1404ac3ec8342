"""Figures: functions of a suite's results, registered by plugins, saved as PNG and SVG.

A figure is a function ``fn(results, options) -> matplotlib.figure.Figure`` that reads a
:class:`saebench_vision.resultset.ResultSet` (records, per-item values, the evaluators'
artifacts) and :class:`FigureOptions`. Plugins name theirs through the ``register_figures`` hook
(``{name: "module:function"}``, imported only when drawn); the built-in evaluators register the
paper's figures. A figure whose data the suite lacks raises :class:`FigureDataMissing` with one
line saying what it needs, instead of drawing empty axes.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas (no pyplot, no
global state, no display), and saved atomically; SVGs carry no date, so they are reproducible.
"""

from __future__ import annotations

import importlib
import io
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saebench_vision.errors import PluginError, SaebenchError
from saebench_vision.sparsity import DEFAULT_FRONT_BY

FORMATS = ("png", "svg")


class FigureDataMissing(SaebenchError):
    """The results hold none of the data a figure draws (the message says what it needs)."""


class FigureError(SaebenchError):
    """An unknown figure name or a figure function that is not usable."""


@dataclass(frozen=True)
class FigureOptions:
    """Settings every figure function receives (all optional)."""

    at_l0: tuple[float, ...] = ()
    """L0 values to mark on sparsity axes (``--at-l0``)."""
    l0_budget: float | None = None
    l0_metric: str = "l0"
    front_by: tuple[str, ...] = DEFAULT_FRONT_BY
    dpi: int = 110


@dataclass(frozen=True)
class FigureEntry:
    name: str
    target: str
    plugin: str


@dataclass
class FigureOutcome:
    """What drawing one figure gave: the saved files, or why there is nothing to draw."""

    name: str
    plugin: str
    files: list[Path] = field(default_factory=list)
    missing: str = ""
    error: str = ""
    """A figure function that raised: the one-line reason (the other figures are still drawn)."""
    figure: Any = None
    png: bytes = b""


def figure_entries(manager: Any) -> dict[str, FigureEntry]:
    """Every registered figure, in registration order; a name registered twice is an error."""
    entries: dict[str, FigureEntry] = {}
    caller = manager.pm.hook.register_figures
    for impl in reversed(caller.get_hookimpls()):
        plugin = manager.pm.get_name(impl.plugin) or repr(impl.plugin)
        result = impl.function()
        if result is None:
            continue
        if not isinstance(result, dict):
            raise PluginError(
                f"plugin `{plugin}`: register_figures() must return a dict of name -> "
                f"'module:function', not {type(result).__name__}"
            )
        for name, target in result.items():
            if name in entries:
                raise PluginError(
                    f"figure `{name}` is registered twice: by `{entries[name].plugin}` and by "
                    f"`{plugin}`; disable one of them (SAEBENCH_VISION_DISABLE_PLUGINS)"
                )
            entries[name] = FigureEntry(str(name), str(target), plugin)
    return entries


def _load(entry: FigureEntry) -> Any:
    module_name, _, attr = entry.target.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise FigureError(
            f"figure `{entry.name}` (plugin `{entry.plugin}`): cannot load {entry.target} ({exc})"
        ) from exc
    if not callable(fn):
        raise FigureError(f"figure `{entry.name}`: {entry.target} is not a function")
    return fn


def select(entries: dict[str, FigureEntry], names: Sequence[str]) -> list[FigureEntry]:
    """The entries named (all when ``names`` is empty); an unknown name suggests the closest."""
    if not names:
        return list(entries.values())
    out = []
    for name in names:
        if name not in entries:
            import difflib

            close = difflib.get_close_matches(name, list(entries), n=1)
            hint = f" Did you mean: {close[0]}?" if close else ""
            raise FigureError(
                f"--figure: unknown figure {name!r}.{hint} Available: {', '.join(entries)}"
            )
        out.append(entries[name])
    return out


def draw(entry: FigureEntry, results: Any, options: FigureOptions) -> FigureOutcome:
    """Call the figure function; missing data becomes ``outcome.missing`` and an exception
    ``outcome.error`` (one line each)."""
    fn = _load(entry)
    outcome = FigureOutcome(entry.name, entry.plugin)
    try:
        fig = fn(results, options)
    except FigureDataMissing as exc:
        outcome.missing = str(exc)
        return outcome
    except Exception as exc:  # noqa: BLE001 - one plugin's broken figure must not hide the rest
        outcome.error = (
            f"figure `{entry.name}` (plugin `{entry.plugin}`, {entry.target}) raised "
            f"{type(exc).__name__}: {exc}"
        )
        return outcome
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise FigureError(
            f"figure `{entry.name}` ({entry.target}) returned {type(fig).__name__}, not a "
            "matplotlib Figure"
        )
    outcome.figure = fig
    return outcome


LOG_TICK_STEPS = ((1.0, 2.0, 5.0), (1.0, 3.0), (1.0,))
"""Mantissas of the labelled ticks on a log axis, densest first (see :func:`log_ticks`)."""
LOG_TICK_FINE = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
"""Mantissas for an axis too narrow to hold two of ``1, 2, 5``."""


def log_ticks(ax: Any, axis: str = "x", max_labels: int = 5) -> list[float]:
    """Label a log axis with at most ``max_labels`` plain numbers (``8``, ``20``, ``100``,
    ``2k``) and no labels on the minor ticks; returns the labelled positions.

    matplotlib labels the minor ticks of a log axis that spans less than a decade as
    ``2×10^1, 3×10^1 ...``, which overlap in a panel a few inches wide (the L0 axes of the
    Pareto figures). Here the densest mantissa set of :data:`LOG_TICK_STEPS` that gives at most
    ``max_labels`` ticks inside the limits wins, decades are thinned beyond that; an axis too
    narrow for two of them takes :data:`LOG_TICK_FINE`, and failing that its two ends. Call it
    once the data are drawn."""
    import math

    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    which = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    if not (lo > 0 and math.isfinite(hi)):
        return []
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))

    def within(steps: Sequence[float], every: int = 1) -> list[float]:
        return [
            m * 10.0**d
            for d in range(first, last + 1)
            if (d - first) % every == 0
            for m in steps
            if lo <= m * 10.0**d <= hi
        ]

    ticks: list[float] = []
    for steps in LOG_TICK_STEPS:
        ticks = within(steps)
        if len(ticks) <= max_labels:
            break
    every = 1
    while len(ticks) > max_labels:
        every += 1
        ticks = within((1.0,), every)
    if len(ticks) < 2:
        ticks = within(LOG_TICK_FINE)
        ticks = ticks[:: -(-len(ticks) // max_labels)] if ticks else ticks
    if len(ticks) < 2:
        ticks = [float(f"{lo * 1.02:.3g}"), float(f"{hi / 1.02:.3g}")]
    which.set_major_locator(FixedLocator(ticks))
    which.set_major_formatter(FuncFormatter(lambda v, _pos: _plain(v)))
    which.set_minor_locator(LogLocator(base=10, subs="auto"))
    which.set_minor_formatter(NullFormatter())
    return ticks


def _plain(v: float) -> str:
    if v >= 1e4:
        return f"{v / 1e3:g}k" if v < 1e6 else f"{v:.0e}"
    return f"{v:g}"


def render_png(fig: Any, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def save(outcome: FigureOutcome, out_dir: Path, dpi: int, formats: Sequence[str] = FORMATS) -> None:
    """Write ``<out_dir>/<name>.png`` and ``.svg`` atomically; keeps the PNG bytes for reports."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        if fmt == "png":
            data = outcome.png or render_png(outcome.figure, dpi)
            outcome.png = data
        else:
            buf = io.BytesIO()
            outcome.figure.savefig(buf, format=fmt, metadata={"Date": None})
            data = buf.getvalue()
        path = out_dir / f"{outcome.name}.{fmt}"
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        outcome.files.append(path)


def draw_all(
    manager: Any,
    results: Any,
    *,
    names: Sequence[str] = (),
    options: FigureOptions | None = None,
    out_dir: Path | None = None,
) -> list[FigureOutcome]:
    """Draw the named (or all) figures; with ``out_dir`` save each as PNG and SVG."""
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = "saebench-vision"
    options = options or FigureOptions()
    outcomes = []
    for entry in select(figure_entries(manager), names):
        outcome = draw(entry, results, options)
        if outcome.figure is not None and out_dir is not None:
            save(outcome, out_dir, options.dpi)
        outcomes.append(outcome)
    return outcomes


def write_tables(
    results: Any, out_dir: Path, formats: Sequence[str] = ("md", "latex")
) -> list[Path]:
    """Each evaluator's headline metrics as a rendered table (rows: model, layer, SAE; columns:
    metric[split]), e.g. the paper's Table 1 (probe accuracy by split) and Table 2 (ontology
    counts); ``table-<evaluator>.md`` and ``.tex``, written atomically."""
    from saebench_vision.cache import atomic_write_text
    from saebench_vision.leaderboard import render

    frame = results.frame
    if not len(frame):
        return []
    versions = results.store.versions_for(results.suite_hash)
    paths = []
    for evaluator in results.evaluators():
        part = frame[frame["evaluator"] == evaluator]
        if not len(part):
            continue
        for fmt in formats:
            text = render(
                part,
                fmt=fmt,
                layout="wide",
                title=f"{results.suite_name} ({results.suite_hash}): {evaluator}",
                versions=versions,
                headline_only=True,
            )
            path = out_dir / f"table-{evaluator}.{'tex' if fmt == 'latex' else fmt}"
            atomic_write_text(path, text)
            paths.append(path)
    return paths
