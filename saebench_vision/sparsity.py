"""Comparison at matched sparsity: every metric of a sweep read off at chosen L0 values.

SAEs of one architecture trade sparsity for everything else, so comparing a TopK SAE with k=32
against a ReLU SAE with λ=3 compares two points on two curves. For each (model, layer, front,
split, metric), where a *front* is the SAEs of one architecture that differ only in their
sparsity knob (by default: same plugin and same ``expansion``, see ``front_by``), this module

* interpolates the metric **piecewise linearly in log L0** between the measured SAEs. Log L0
  because sweeps are geometric (k = 8, 16, 32; λ spaced by factors) and metrics such as MSE are
  close to linear in log L0 between neighbouring points. It **never extrapolates**: a target L0
  below the sparsest or above the densest SAE of the front has no value (NaN, shown as "–");
* reports the best measured value among SAEs with L0 ≤ a budget (no interpolation), with the SAE
  that achieves it: the Pareto front read at that budget.

Seeds are averaged first (both the metric and L0). L0 is the ``l0_metric`` record ("l0", the
reconstruction evaluator's mean number of active latents) on the same split as the metric when
one exists, else on the first split of role ``eval``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from saebench_vision.errors import SaebenchError

DEFAULT_FRONT_BY = ("plugin", "expansion")


class SparsityError(SaebenchError):
    """A matched-sparsity option is malformed."""


def parse_l0_list(text: str, where: str = "--at-l0", *, single: bool = False) -> list[float]:
    """``"16,32,64"`` -> ``[16.0, 32.0, 64.0]``; a bad entry is a one-line error. ``single``:
    exactly one value (``--l0-budget``)."""
    example = f"{where} 64" if single else f"{where} 16,32,64"
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise SparsityError(
                f"{where} {text}: {part!r} is not a number; write e.g. {example}"
            ) from None
        if not value > 0 or math.isinf(value):
            raise SparsityError(
                f"{where} {text}: L0 must be a positive number, not {part}; write e.g. {example}"
            )
        out.append(value)
    if not out:
        raise SparsityError(f"{where} {text!r}: no L0 values given; write e.g. {example}")
    if single and len(out) > 1:
        raise SparsityError(f"{where} {text}: one L0 value, not {len(out)}; write e.g. {example}")
    return out


def check_front_by(front_by: Sequence[str], configs: Any) -> None:
    """Every ``front_by`` field is ``plugin`` or a config field of some stored SAE
    (``configs``: their config dicts); a typo would otherwise silently merge fronts."""
    from saebench_vision.registry import did_you_mean

    known = ["plugin", *dict.fromkeys(k for c in configs if isinstance(c, dict) for k in c)]
    for name in front_by:
        if name not in known:
            raise SparsityError(
                f"--front-by {','.join(front_by)}: `{name}` is not a field of any stored SAE."
                f"{did_you_mean(name, known)} (fields: {', '.join(known)})"
            )


def _points(l0: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Finite points with L0 > 0, sorted by L0; values at equal L0 are averaged."""
    x = np.asarray(l0, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    if not len(x):
        return x, y
    ux, inverse = np.unique(x, return_inverse=True)
    uy = np.bincount(inverse, weights=y) / np.bincount(inverse)
    return ux, uy


def interpolate_log_l0(
    l0: Sequence[float], values: Sequence[float], targets: Sequence[float]
) -> list[float]:
    """Values at ``targets``, piecewise linear in log L0; NaN outside the measured L0 range."""
    x, y = _points(l0, values)
    out = []
    for t in targets:
        if not len(x) or not (x[0] <= t <= x[-1]) or t <= 0:
            out.append(float("nan"))
            continue
        out.append(float(np.interp(math.log(t), np.log(x), y)))
    return out


def best_within_budget(
    l0: Sequence[float],
    values: Sequence[float],
    budget: float,
    higher_is_better: bool,
    labels: Sequence[str] | None = None,
) -> tuple[float, float, str] | None:
    """``(value, its L0, its label)`` of the best measured point with L0 ≤ ``budget``, or None."""
    best: tuple[float, float, str] | None = None
    for i, (x, y) in enumerate(zip(l0, values)):
        if not (np.isfinite(x) and np.isfinite(y)) or x > budget:
            continue
        if best is None or (y > best[0] if higher_is_better else y < best[0]):
            best = (float(y), float(x), labels[i] if labels is not None else "")
    return best


def pareto_front(
    l0: Sequence[float], values: Sequence[float], higher_is_better: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The points no other point beats at equal or lower L0, sorted by L0."""
    x = np.asarray(l0, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    order = np.lexsort((-y if higher_is_better else y, x))
    fx: list[float] = []
    fy: list[float] = []
    for i in order:
        if not fy or (y[i] > fy[-1] if higher_is_better else y[i] < fy[-1]):
            fx.append(x[i])
            fy.append(y[i])
    return np.array(fx), np.array(fy)


def front_label(plugin: str, config: dict[str, Any], front_by: Sequence[str]) -> str:
    keys = [k for k in front_by if k != "plugin" and k in config]
    inner = ",".join(f"{k}={_short(config[k])}" for k in keys)
    return f"{plugin}[{inner}]" if inner else plugin


def _short(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


@dataclass
class MatchedRow:
    """One (model, layer, front, split, metric) read at the target L0s and under the budget."""

    model: str
    layer: str
    front: str
    metric: str
    split: str
    higher_is_better: bool | None
    at_l0: dict[float, float]
    budget: float | None
    best: tuple[float, float, str] | None
    points: list[tuple[float, float, str]] = field(default_factory=list)
    front_by: tuple[str, ...] = DEFAULT_FRONT_BY
    l0_metric: str = "l0"


def matched_rows(
    frame: Any,
    *,
    at_l0: Sequence[float] = (),
    budget: float | None = None,
    l0_metric: str = "l0",
    front_by: Sequence[str] = DEFAULT_FRONT_BY,
    metrics: Sequence[str] = (),
) -> list[MatchedRow]:
    """Matched-sparsity rows from a results frame (:class:`saebench_vision.resultset.ResultSet`).

    ``frame`` needs the columns of ``ResultsStore.records_frame`` plus ``sae_plugin`` and
    ``sae_config``. Baseline rows (no SAE) have no L0 and are left out. ``metrics`` limits the
    metrics (default: every metric reported on SAEs that have an L0).
    """
    if not len(frame):
        return []
    df = frame[frame["sae_plugin"] != ""]
    if not len(df):
        return []
    # Mean over seeds of every (model, layer, SAE, evaluator, metric, split).
    keys = ["model", "layer", "sae_label", "evaluator", "metric", "split"]
    agg = df.groupby(keys, sort=False).agg(
        value=("value", "mean"),
        higher_is_better=("higher_is_better", "first"),
        sae_plugin=("sae_plugin", "first"),
        sae_config=("sae_config", "first"),
        role=("role", "first"),
    )
    agg = agg.reset_index()
    l0 = agg[agg["metric"] == l0_metric]
    if not len(l0):
        return []
    l0_of = {
        (r.model, r.layer, r.sae_label, r.split): float(r.value) for r in l0.itertuples(index=False)
    }
    eval_split: dict[tuple[str, str, str], str] = {}
    for r in l0.itertuples(index=False):
        if r.role == "eval":
            eval_split.setdefault((r.model, r.layer, r.sae_label), r.split)
    rows: dict[tuple[str, ...], MatchedRow] = {}
    for r in agg.itertuples(index=False):
        if r.metric == l0_metric or (metrics and r.metric not in metrics):
            continue
        x = l0_of.get((r.model, r.layer, r.sae_label, r.split))
        if x is None:
            fallback = eval_split.get((r.model, r.layer, r.sae_label))
            x = l0_of.get((r.model, r.layer, r.sae_label, fallback)) if fallback else None
        if x is None or r.value is None or not math.isfinite(r.value):
            continue
        front = front_label(r.sae_plugin, r.sae_config, front_by)
        hib = (
            None
            if r.higher_is_better is None or r.higher_is_better != r.higher_is_better
            else bool(r.higher_is_better)
        )
        key = (r.model, r.layer, front, r.evaluator, r.metric, r.split)
        row = rows.setdefault(
            key,
            MatchedRow(
                r.model,
                r.layer,
                front,
                r.metric,
                r.split,
                hib,
                {},
                budget,
                None,
                front_by=tuple(front_by),
                l0_metric=l0_metric,
            ),
        )
        row.points.append((x, float(r.value), r.sae_label))
    out = []
    for row in rows.values():
        xs = [p[0] for p in row.points]
        ys = [p[1] for p in row.points]
        row.at_l0 = dict(zip(at_l0, interpolate_log_l0(xs, ys, at_l0)))
        if budget is not None and row.higher_is_better is not None:
            row.best = best_within_budget(
                xs, ys, budget, row.higher_is_better, [p[2] for p in row.points]
            )
        out.append(row)
    return out
