"""Aggregated rows with honest intervals, shared by the report and the export.

For every (model, layer, SAE, evaluator, metric, split) the value is the mean over seeds, and
its interval is, in this order of preference:

1. with two or more seeds: the Student-t interval over seeds (as the leaderboard shows);
2. with one seed and per-item values stored by the evaluator (:mod:`saebench_vision.items`): a
   seeded percentile bootstrap over the test items;
3. with one seed and a standard error: ± z standard errors as the evaluator reported;
4. otherwise none (counts, fractions over latents, metrics that are not means over items).

Each interval says which of these it is (``Interval.over``). :func:`paired_rows` compares two
rows item by item where both stored per-item values of the same items (same pairing token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from saebench_vision import stats
from saebench_vision.errors import ResultsError
from saebench_vision.items import EXTRA_KEY, ItemValues, load_item_values


@dataclass(frozen=True)
class StatsOptions:
    """Settings of every interval in a report or export (they are printed beside them)."""

    resamples: int = stats.DEFAULT_RESAMPLES
    level: float = stats.DEFAULT_LEVEL
    seed: int = 0
    max_items: int | None = stats.DEFAULT_MAX_ITEMS
    """Continuous values over more items use the normal limit of the bootstrap."""

    def describe(self) -> str:
        text = (
            f"{self.level:.0%} intervals; bootstrap: {self.resamples} resamples, seed {self.seed}"
        )
        if self.max_items:
            text += f"; normal limit beyond {self.max_items} continuous items"
        return text


@dataclass
class SummaryRow:
    model: str
    layer: str
    sae_label: str
    evaluator: str
    metric: str
    split: str
    role: str
    higher_is_better: bool | None
    headline: bool
    value: float
    interval: stats.Interval | None
    seeds: int
    n: int | None

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "interval"}
        d["low"] = self.interval.low if self.interval else None
        d["high"] = self.interval.high if self.interval else None
        d["interval_over"] = self.interval.over if self.interval else None
        return d


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _hib(v: Any) -> bool | None:
    return None if _nan(v) else bool(int(v))


def item_values(results: Any, record: Any) -> ItemValues | None:
    """The per-item values a record points at, or None when the evaluator stored none."""
    extra = record["extra"] if isinstance(record["extra"], dict) else {}
    info = extra.get(EXTRA_KEY)
    if not isinstance(info, dict) or "file" not in info:
        return None
    path = results.artifact_dir(record["cell_id"]) / str(info["file"])
    if not path.exists():
        return None
    n = record["n"]
    return load_item_values(
        path, over=str(info.get("over", "test items")), expect_n=None if _nan(n) else int(n)
    )


def summarise(results: Any, options: StatsOptions | None = None) -> list[SummaryRow]:
    """One row per (model, layer, SAE, evaluator, metric, split), in suite order."""
    options = options or StatsOptions()
    df = results.frame
    if not len(df):
        return []
    keys = ["model", "layer", "sae_label", "evaluator", "metric", "split"]
    out = []
    for key, g in df.groupby(keys, sort=False):
        values = [float(v) for v in g["value"] if not _nan(v)]
        if not values:
            continue
        first = g.iloc[0]
        interval: stats.Interval | None = None
        if len(values) > 1:
            interval = stats.seed_interval(values, level=options.level)
        else:
            items = item_values(results, first)
            if items is not None and len(items.values) > 1:
                interval = stats.bootstrap_mean(
                    items.values,
                    resamples=options.resamples,
                    level=options.level,
                    seed=options.seed,
                    over=items.over,
                    max_items=options.max_items,
                )
            elif not _nan(first["stderr"]):
                interval = stats.stderr_interval(
                    values[0],
                    float(first["stderr"]),
                    level=options.level,
                    n=None if _nan(first["n"]) else int(first["n"]),
                )
        out.append(
            SummaryRow(
                model=str(key[0]),
                layer=str(key[1]),
                sae_label=str(key[2]),
                evaluator=str(key[3]),
                metric=str(key[4]),
                split=str(key[5]),
                role=str(first["role"]) if not _nan(first["role"]) else "",
                higher_is_better=_hib(first["higher_is_better"]),
                headline=bool(first["headline"]),
                value=sum(values) / len(values),
                interval=interval,
                seeds=len(values),
                n=None if _nan(first["n"]) else int(first["n"]),
            )
        )
    return out


@dataclass
class PairedRow:
    model: str
    layer: str
    evaluator: str
    metric: str
    split: str
    seed: int
    a: str
    b: str
    mean_a: float
    mean_b: float
    comparison: stats.PairedComparison
    higher_is_better: bool | None

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "comparison"}
        d.update({f"difference_{k}": v for k, v in self.comparison.as_dict().items()})
        return d


def paired_rows(
    results: Any,
    pairs: list[tuple[str, str]] | None = None,
    options: StatsOptions | None = None,
) -> list[PairedRow]:
    """Item-wise comparisons ``a - b``; by default every SAE against the baseline.

    Only rows scored on the same items (same evaluator, metric, split, seed and pairing token)
    are compared; others are skipped. ``pairs`` holds ``(label a, label b)``.
    """
    options = options or StatsOptions()
    df = results.frame
    if not len(df):
        return []
    has_items = df["extra"].map(lambda e: isinstance(e, dict) and EXTRA_KEY in e)
    df = df[has_items]
    if not len(df):
        return []
    labels = list(dict.fromkeys(df["sae_label"]))
    if pairs is None:
        pairs = [(label, "baseline") for label in labels if label != "baseline"]
    else:
        for a, b in pairs:
            for label in (a, b):
                if label not in set(results.frame["sae_label"]):
                    raise ResultsError(
                        f"--compare: no row is labelled {label!r}; rows: "
                        + ", ".join(dict.fromkeys(results.frame["sae_label"]))
                    )
    index = {
        (
            r["model"],
            r["layer"],
            r["evaluator"],
            r["metric"],
            r["split"],
            int(r["seed"]),
            r["sae_label"],
        ): r
        for _, r in df.iterrows()
    }
    out = []
    for (model, layer, evaluator, metric, split, seed, label), rec in index.items():
        for a, b in pairs:
            if label != a:
                continue
            other = index.get((model, layer, evaluator, metric, split, seed, b))
            if other is None:
                continue
            ia, ib = item_values(results, rec), item_values(results, other)
            if (
                ia is None
                or ib is None
                or ia.pairing != ib.pairing
                or len(ia.values) != len(ib.values)
            ):
                continue
            comparison = stats.paired_bootstrap(
                ia.values,
                ib.values,
                resamples=options.resamples,
                level=options.level,
                seed=options.seed,
                over=ia.over,
                max_items=options.max_items,
            )
            out.append(
                PairedRow(
                    model,
                    layer,
                    evaluator,
                    metric,
                    split,
                    seed,
                    a,
                    b,
                    float(ia.values.mean()),
                    float(ib.values.mean()),
                    comparison,
                    _hib(rec["higher_is_better"]),
                )
            )
    return out
