"""The paper's figures, drawn from the built-in evaluators' records and artifacts.

* ``reconstruction-pareto`` (Fig. 2, middle and right): MSE and explained variance against L0
  on the first ``eval`` split, one panel row per (model, layer), one colour per front
  (architecture and expansion). Markers are the SAEs; the dashed line joins them in L0 order (on
  the log axis it is exactly the matched-sparsity interpolation); the solid line is the front's
  Pareto front (points no SAE of the front beats at equal or lower L0). ``--at-l0`` values are
  dotted vertical lines.
* ``ood-vs-sparsity`` (Fig. 2, left; Fig. 12): probe accuracy (``acc``) on every eval and shifted
  split against the front's sparsity knob (the config field that varies: ``k``, ``l1_coefficient``
  ...), one panel per (model, layer) and front; dashed horizontal lines are the raw-feature
  baseline on the same split.
* ``accuracy-vs-l0`` (Table 1 at matched sparsity): probe accuracy against L0, one panel per
  (model, layer) and test split, each front's values at ``--at-l0`` marked with diamonds where
  they can be interpolated (never extrapolated); the raw-feature baseline dashed.
* ``ontology-histograms`` (Fig. 3): 2-D histograms of LCH height by ontological coverage of the
  multi-class features, per layer (rows) and SAE or raw neurons (columns), read from the ontology
  evaluator's ``*_fig3.json`` artifacts.
* ``layer-sweep`` (Fig. 8): every metric of the layer-sweep evaluator against the layer.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from saebench_vision.figures import FigureDataMissing, FigureOptions, log_ticks
from saebench_vision.sparsity import front_label, pareto_front

SPARSITY_KNOBS = ("k", "l1_coefficient", "threshold", "sparsity_coefficient")
"""Config fields tried, in order, as the x axis of a front that has a single SAE."""


def _figure(rows: int, cols: int, width: float = 4.0, height: float = 3.1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    # Fixed margins in inches rather than a layout engine: constrained layout costs seconds on
    # many-panel figures, and the report must build in a few seconds.
    w, h = max(width * cols, 5.0), height * rows + 0.6
    fig = Figure(figsize=(w, h))
    fig.subplots_adjust(
        left=0.75 / w,
        right=1 - 0.3 / w,
        bottom=0.75 / h,
        top=1 - 0.75 / h,
        wspace=0.38,
        hspace=0.62,
    )
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _colour(i: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab10"](i % 10)


def _ordered(values: Any) -> list[Any]:
    return list(dict.fromkeys(values))


def _arrow(hib: Any) -> str:
    if hib is None or (isinstance(hib, float) and math.isnan(hib)):
        return ""
    return " ↑" if int(hib) == 1 else " ↓"


def _wrap(text: str, chars: int) -> str:
    """``text`` in lines of at most ``chars`` characters, broken after commas and brackets
    (an SAE label's options), a longer piece on a line of its own."""
    import re

    lines = [""]
    for piece in re.split(r"(?<=[,\[])", text):
        if lines[-1] and len(lines[-1]) + len(piece) > chars:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def _first_split(results: Any, frame: Any, roles: tuple[str, ...] = ("eval",)) -> str | None:
    present = set(frame["split"])
    for split, role in results.splits():
        if role in roles and split in present:
            return str(split)
    return str(frame["split"].iloc[0]) if len(frame) else None


def _per_sae(frame: Any) -> Any:
    """Mean over seeds per (model, layer, SAE, metric, split)."""
    keys = ["model", "layer", "sae_label", "metric", "split"]
    return (
        frame.groupby(keys, sort=False)
        .agg(
            value=("value", "mean"),
            higher_is_better=("higher_is_better", "first"),
            sae_plugin=("sae_plugin", "first"),
            sae_config=("sae_config", "first"),
        )
        .reset_index()
    )


def reconstruction_pareto(results: Any, options: FigureOptions) -> Any:
    df = results.frame
    sae = df[(df["sae_plugin"] != "") & df["value"].notna()] if len(df) else df
    metrics = [m for m in ("mse", "explained_variance") if len(sae) and (sae["metric"] == m).any()]
    if not len(sae) or not (sae["metric"] == options.l0_metric).any() or not metrics:
        raise FigureDataMissing(
            f"reconstruction-pareto: needs `{options.l0_metric}` and `mse` or "
            "`explained_variance` records of SAEs (the reconstruction evaluator); this suite has none"
        )
    split = _first_split(results, sae[sae["metric"] == options.l0_metric])
    agg = _per_sae(sae[sae["split"] == split])
    groups = _ordered(zip(agg["model"], agg["layer"]))
    fig, axes = _figure(len(groups), len(metrics))
    fronts_all = _ordered(
        front_label(p, c, options.front_by) for p, c in zip(agg["sae_plugin"], agg["sae_config"])
    )
    for r, (model, layer) in enumerate(groups):
        g = agg[(agg["model"] == model) & (agg["layer"] == layer)]
        l0 = {row.sae_label: row.value for row in g[g["metric"] == options.l0_metric].itertuples()}
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            m = g[g["metric"] == metric]
            hib = bool(m["higher_is_better"].iloc[0]) if len(m) else False
            by_front: dict[str, list[tuple[float, float]]] = {}
            for row in m.itertuples():
                if row.sae_label in l0 and l0[row.sae_label] > 0:
                    front = front_label(row.sae_plugin, row.sae_config, options.front_by)
                    by_front.setdefault(front, []).append((l0[row.sae_label], row.value))
            for front, pts in by_front.items():
                colour = _colour(fronts_all.index(front))
                pts.sort()
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                ax.plot(xs, ys, "o", color=colour, label=front, ms=5)
                ax.plot(xs, ys, "--", color=colour, lw=0.9, alpha=0.6)
                fx, fy = pareto_front(xs, ys, hib)
                ax.plot(fx, fy, "-", color=colour, lw=2.0, alpha=0.9)
            for t in options.at_l0:
                ax.axvline(t, color="0.6", ls=":", lw=1)
            ax.set_xscale("log")
            log_ticks(ax)
            ax.set_xlabel(f"L0 [{split}]")
            ax.set_ylabel(f"{metric} [{split}]{_arrow(hib)}")
            ax.set_title(f"{model} · {layer}", fontsize=10)
            ax.grid(True, which="both", alpha=0.25)
            if r == 0 and c == 0:
                ax.legend(fontsize=8, title="front", title_fontsize=8)
    fig.suptitle("Reconstruction against sparsity: SAEs (markers), Pareto fronts (solid)")
    return fig


def _knob(configs: list[dict[str, Any]]) -> str | None:
    keys = _ordered(k for cfg in configs for k in cfg)
    for k in keys:
        values = {json.dumps(cfg.get(k), sort_keys=True, default=str) for cfg in configs}
        if len(values) > 1:
            return str(k)
    for k in SPARSITY_KNOBS:
        if all(k in cfg for cfg in configs):
            return k
    return None


def ood_vs_sparsity(results: Any, options: FigureOptions) -> Any:
    df = results.frame
    acc = df[(df["metric"] == "acc") & df["role"].isin(["eval", "shifted"])] if len(df) else df
    sae = acc[acc["sae_plugin"] != ""] if len(acc) else acc
    if not len(sae):
        raise FigureDataMissing(
            "ood-vs-sparsity: needs `acc` records of SAEs on eval or shifted splits (the "
            "ood-accuracy evaluator); this suite has none"
        )
    agg = _per_sae(acc)
    splits = _ordered(agg["split"])
    saes = agg[agg["sae_plugin"] != ""]
    panels = _ordered(
        (model, layer, front_label(p, c, options.front_by))
        for model, layer, p, c in zip(
            saes["model"], saes["layer"], saes["sae_plugin"], saes["sae_config"]
        )
    )
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    fig, axes = _figure(rows, cols, width=3.6)
    for i, (model, layer, front) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        g = saes[(saes["model"] == model) & (saes["layer"] == layer)]
        g = g[
            [
                front_label(p, c, options.front_by) == front
                for p, c in zip(g["sae_plugin"], g["sae_config"])
            ]
        ]
        configs = _ordered(json.dumps(c, sort_keys=True, default=str) for c in g["sae_config"])
        knob = _knob([json.loads(c) for c in configs])
        base = agg[(agg["model"] == model) & (agg["layer"] == layer) & (agg["sae_plugin"] == "")]
        for s, split in enumerate(splits):
            colour = _colour(s)
            pts = sorted(
                (float(c.get(knob, j)) if knob else float(j), v)
                for j, (c, v) in enumerate(
                    zip(g[g["split"] == split]["sae_config"], g[g["split"] == split]["value"])
                )
            )
            if pts:
                ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], "o-", color=colour, label=split, ms=4
                )
            b = base[base["split"] == split]["value"]
            if len(b):
                ax.axhline(float(b.iloc[0]), color=colour, ls="--", lw=1, alpha=0.7)
        xs = [float(c.get(knob, 0)) for c in g["sae_config"]] if knob else []
        if xs and min(xs) > 0 and max(xs) / min(xs) >= 4:
            ax.set_xscale("log")
            log_ticks(ax)
        if len(set(xs)) == 1:
            ax.set_xticks(xs[:1])
        ax.set_xlabel(knob or "SAE")
        ax.set_ylabel("probe accuracy ↑")
        ax.set_title(f"{model} · {layer} · {front}", fontsize=9)
        ax.grid(True, alpha=0.25)
        if i == 0:
            ax.legend(fontsize=7, title="split (dashed: raw)", title_fontsize=7)
    for j in range(len(panels), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle("Linear-probe accuracy against the sparsity knob, in and out of distribution")
    return fig


def ontology_histograms(results: Any, options: FigureOptions) -> Any:
    df = results.frame
    if not len(df):
        raise FigureDataMissing("ontology-histograms: this suite has no records")
    has = df["extra"].map(lambda e: str((e or {}).get("figure_data", "")).endswith("_fig3.json"))
    recs = df[has & ~df["metric"].astype(str).str.startswith("random_")]
    if not len(recs):
        raise FigureDataMissing(
            "ontology-histograms: needs the ontology evaluator's Fig. 3 data (`*_fig3.json`); "
            "this suite has none"
        )
    seed = recs["seed"].min()
    recs = recs[recs["seed"] == seed].drop_duplicates(["model", "layer", "sae_label", "split"])
    groups = _ordered(zip(recs["model"], recs["layer"]))
    labels = _ordered(recs["sae_label"])
    fig, axes = _figure(len(groups), len(labels), width=3.0, height=3.0)
    drawn = title_lines = 0
    image = None
    for r, (model, layer) in enumerate(groups):
        for c, label in enumerate(labels):
            ax = axes[r][c]
            hit = recs[
                (recs["model"] == model) & (recs["layer"] == layer) & (recs["sae_label"] == label)
            ]
            if not len(hit):
                ax.set_visible(False)
                continue
            row = hit.iloc[0]
            path = results.artifact_dir(row["cell_id"]) / row["extra"]["figure_data"]
            try:
                doc = json.loads(path.read_text())
                counts = np.asarray(doc["counts_multiclass"], dtype=float)
                h, cov = doc["height_edges"], doc["coverage_edges"]
            except (OSError, KeyError, ValueError):
                ax.text(0.5, 0.5, f"unreadable:\n{path.name}", ha="center", va="center", fontsize=7)
                ax.set_axis_off()
                continue
            image = ax.imshow(
                np.log1p(counts),
                origin="lower",
                aspect="auto",
                extent=(cov[0], cov[-1], h[0], h[-1]),
                cmap="viridis",
            )
            drawn += 1
            name = "neurons" if label == "baseline" else str(label)
            # Long SAE labels wrap at their commas to the panel's width, so titles never
            # run into their neighbours'.
            width_pt = ax.get_position().width * fig.get_figwidth() * 72
            title = (
                _wrap(f"{layer} · {name}", int(width_pt / (7.5 * 0.62)))
                + f"\n{int(counts.sum())} multi-class features"
            )
            title_lines = max(title_lines, title.count("\n") + 1)
            ax.set_title(title, fontsize=7.5)
            ax.set_xlabel("ontological coverage")
            ax.set_ylabel("LCH height")
    if not drawn:
        raise FigureDataMissing(
            "ontology-histograms: the Fig. 3 data files are unreadable; run the suite again"
        )
    # Room above the first row for its titles (7.5 pt lines) under the figure's title.
    fig.subplots_adjust(top=1 - (0.5 + 0.14 * title_lines) / fig.get_figheight())
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="log(1 + features)")
    fig.suptitle("LCH height against ontological coverage of multi-class features")
    return fig


def layer_sweep(results: Any, options: FigureOptions) -> Any:
    df = results.frame
    recs = df[df["evaluator"] == "layer-sweep"] if len(df) else df
    if not len(recs):
        raise FigureDataMissing(
            "layer-sweep: needs records of the layer-sweep evaluator (suites/paper/fig8*); "
            "this suite has none"
        )
    agg = _per_sae(recs)
    metrics = _ordered(agg["metric"])
    layers = _ordered(recs["layer"])
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = _figure(rows, cols, width=3.8)
    lines = _ordered(zip(agg["model"], agg["sae_label"]))
    for i, metric in enumerate(metrics):
        ax = axes[i // cols][i % cols]
        m = agg[agg["metric"] == metric]
        for j, (model, label) in enumerate(lines):
            g = m[(m["model"] == model) & (m["sae_label"] == label)]
            if not len(g):
                continue
            pos = {layer: k for k, layer in enumerate(layers)}
            pts = sorted((pos[layer], v) for layer, v in zip(g["layer"], g["value"]))
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                "--" if label == "baseline" else "o-",
                color=_colour(j),
                label=f"{model} {label}",
                ms=4,
            )
        ax.set_xticks(range(len(layers)), layers, rotation=60, fontsize=7)
        hib = m["higher_is_better"].iloc[0] if len(m) else None
        ax.set_ylabel(metric + _arrow(hib))
        ax.grid(True, alpha=0.25)
        if i == 0:
            ax.legend(fontsize=7)
    for j in range(len(metrics), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle("Every metric of every layer")
    return fig


def accuracy_vs_l0(results: Any, options: FigureOptions) -> Any:
    """Probe accuracy against L0 per split, each front interpolated as in matched sparsity."""
    from saebench_vision.sparsity import interpolate_log_l0

    df = results.frame
    acc = df[(df["metric"] == "acc") & df["role"].isin(["eval", "shifted"])] if len(df) else df
    has_l0 = len(df) and (df["metric"] == options.l0_metric).any()
    if not len(acc) or not (acc["sae_plugin"] != "").any() or not has_l0:
        raise FigureDataMissing(
            f"accuracy-vs-l0: needs `acc` records of SAEs (the ood-accuracy evaluator) and their "
            f"`{options.l0_metric}` (the reconstruction evaluator); this suite lacks them"
        )
    agg = _per_sae(df[df["metric"].isin(["acc", options.l0_metric])])
    l0 = {
        (r.model, r.layer, r.sae_label, r.split): r.value
        for r in agg[agg["metric"] == options.l0_metric].itertuples()
    }
    eval_split = _first_split(results, acc)
    accs = agg[(agg["metric"] == "acc") & agg["split"].isin(set(acc["split"]))]
    groups = _ordered(zip(accs["model"], accs["layer"]))
    splits = _ordered(accs["split"])
    fig, axes = _figure(len(groups), len(splits), width=3.4)
    fronts_all = _ordered(
        front_label(p, c, options.front_by)
        for p, c in zip(accs["sae_plugin"], accs["sae_config"])
        if p
    )
    for r, (model, layer) in enumerate(groups):
        for c, split in enumerate(splits):
            ax = axes[r][c]
            g = accs[(accs["model"] == model) & (accs["layer"] == layer) & (accs["split"] == split)]
            by_front: dict[str, list[tuple[float, float]]] = {}
            for row in g.itertuples():
                if not row.sae_plugin:
                    ax.axhline(row.value, color="0.35", ls="--", lw=1, label="raw features")
                    continue
                # L0 on the same split, else on the first eval split (as matched sparsity does).
                x = l0.get((model, layer, row.sae_label, split))
                x = x if x is not None else l0.get((model, layer, row.sae_label, eval_split))
                if x is not None and x > 0:
                    front = front_label(row.sae_plugin, row.sae_config, options.front_by)
                    by_front.setdefault(front, []).append((x, row.value))
            for front, pts in by_front.items():
                colour = _colour(fronts_all.index(front))
                pts.sort()
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                ax.plot(xs, ys, "o-", color=colour, label=front, ms=4)
                at = [t for t in options.at_l0]
                vals = interpolate_log_l0(xs, ys, at)
                shown = [(t, v) for t, v in zip(at, vals) if v == v]
                if shown:
                    ax.plot(*zip(*shown), "D", mfc="white", color=colour, ms=6)
            for t in options.at_l0:
                ax.axvline(t, color="0.6", ls=":", lw=1)
            ax.set_xscale("log")
            log_ticks(ax)
            ax.set_xlabel("L0")
            ax.set_ylabel(f"acc [{split}] ↑")
            ax.set_title(f"{model} · {layer}", fontsize=9)
            ax.grid(True, which="both", alpha=0.25)
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    fig.suptitle(
        "Probe accuracy against L0; ◇ read at L0 = "
        + ", ".join(f"{t:g}" for t in options.at_l0)
        + " (piecewise linear in log L0)"
        if options.at_l0
        else "Probe accuracy against L0, one line per front (raw features dashed)"
    )
    return fig
