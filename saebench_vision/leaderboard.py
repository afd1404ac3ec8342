"""Leaderboard tables: pivots of long-form records, in suite order, with ↑/↓ on every metric.

Rows are (model, layer, SAE); with ``layout="wide"`` each column is one metric on one split, with
``layout="long"`` splits become rows and columns are metrics. Several seeds are averaged and
shown with a 95% confidence interval (Student t). Formats: markdown, CSV, LaTeX, HTML.
"""

from __future__ import annotations

import fnmatch
import html
import math
from collections.abc import Sequence
from typing import Any

from saebench_vision.errors import SaebenchError

FORMATS = ("md", "csv", "latex", "html")


class FilterError(SaebenchError):
    """A leaderboard filter matched none of the stored results."""


LAYOUTS = ("wide", "long")

# Two-sided 95% Student t quantiles for 1..30 degrees of freedom; 1.96 beyond.
_T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def t95(dof: int) -> float:
    return _T95[dof - 1] if 1 <= dof <= len(_T95) else 1.96


def arrow(higher_is_better: Any) -> str:
    if higher_is_better is None or (
        isinstance(higher_is_better, float) and math.isnan(higher_is_better)
    ):
        return ""
    return " ↑" if int(higher_is_better) == 1 else " ↓"


MISSING = "–"
"""What a table shows where no record exists (not computed); a computed non-finite value
shows as ``nan``, ``inf`` or ``-inf``."""


def format_value(value: float | None, ci: float | None = None) -> str:
    """``0.889 ± 0.037``: the interval to two significant digits, the value to the same place.

    None is a value that was not computed (``–``); NaN and infinities were computed and show as
    ``nan``, ``inf`` and ``-inf``.
    """
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if ci is None or math.isnan(ci) or ci <= 0 or math.isinf(ci):
        return _num(value)
    decimals = min(8, max(0, 1 - math.floor(math.log10(ci))))
    if abs(value) >= 1e15 or abs(ci) >= 1e15:
        return f"{_num(value)} ± {_num(ci)}"
    return f"{value:.{decimals}f} ± {ci:.{decimals}f}"


def _num(v: float) -> str:
    if v == 0:
        return "0"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    if abs(v) >= 1e15:  # beyond exact float integers: 62 digits say no more than 4 do
        return f"{v:.4e}"
    if abs(v) >= 1000:
        return f"{v:.1f}"
    if abs(v) < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4g}"


def _check_filters(frame: Any, metrics: Sequence[str], splits: Sequence[str]) -> None:
    """Every ``--metric`` pattern and ``--split`` name matches something stored: a typo is an
    error that suggests the near names, not a column silently missing."""
    if not len(frame):
        return
    from saebench_vision.registry import did_you_mean

    names = list(dict.fromkeys(frame["metric"]))
    qualified = list(dict.fromkeys(f"{e}/{m}" for e, m in zip(frame["evaluator"], frame["metric"])))
    for pattern in metrics:
        if not any(fnmatch.fnmatch(n, pattern) for n in names + qualified):
            raise FilterError(
                f"--metric {pattern}: matches no stored metric."
                f"{did_you_mean(pattern, names + qualified if '/' in pattern else names)} "
                f"(metrics: {', '.join(names)})"
            )
    stored = [s for s in dict.fromkeys(frame["split"]) if s]
    for split in splits:
        if split not in stored:
            raise FilterError(
                f"--split {split}: no results on that split.{did_you_mean(split, stored)} "
                f"(splits: {', '.join(stored)})"
            )


def pivot(
    frame: Any,
    *,
    layout: str = "wide",
    metrics: Sequence[str] = (),
    splits: Sequence[str] = (),
    headline_only: bool = False,
    roles: Sequence[str] = (),
    intervals: bool = False,
) -> tuple[list[str], list[list[Any]], list[list[Any]]]:
    """Turn records into ``(headers, display rows, raw rows)`` in a stable, suite-defined order.

    ``metrics`` are glob patterns on ``metric`` or ``evaluator/metric``; ``splits`` names splits;
    ``headline_only`` keeps the evaluators' headline metrics unless ``metrics`` is given; ``roles``
    keeps splits of those roles (eval, shifted, ...). Raw rows hold floats (means) for CSV, None
    where nothing was computed (NaN is a computed NaN); display rows hold formatted strings.
    With ``intervals``, headers and raw rows carry, after each metric column, its standard
    error and the half-width of its 95% interval (across seeds, Student t; with one seed the
    evaluator's stderr times 1.96); display rows are unchanged.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    _check_filters(frame, metrics, splits)
    df = frame
    if headline_only and not metrics and "headline" in df.columns:
        df = df[df["headline"] == 1]
    if metrics:
        keep = (
            df.apply(
                lambda r: any(
                    fnmatch.fnmatch(r["metric"], p)
                    or fnmatch.fnmatch(f"{r['evaluator']}/{r['metric']}", p)
                    for p in metrics
                ),
                axis=1,
            )
            if len(df)
            else df.index == df.index
        )
        df = df[keep]
    if splits:
        df = df[df["split"].isin(list(splits)) | (df["split"] == "")]
    if roles and "role" in df.columns:
        df = df[df["role"].isin(list(roles)) | (df["split"] == "")]
    if not len(df):
        if len(frame) and (metrics or splits or roles):
            raise FilterError(
                "no results match the filters; metrics: "
                + ", ".join(dict.fromkeys(frame["metric"]))
                + "; splits: "
                + ", ".join(s for s in dict.fromkeys(frame["split"]) if s)
            )
        return [], [], []

    # Metric names that two evaluators share are shown as evaluator/metric.
    owners = df.groupby("metric")["evaluator"].nunique()
    df = df.assign(
        metric_name=[
            m if owners[m] == 1 else f"{e}/{m}" for m, e in zip(df["metric"], df["evaluator"])
        ]
    )

    row_keys = ["model", "layer", "sae_label"] + (["split"] if layout == "long" else [])
    col_keys = ["metric_name"] + (["split"] if layout == "wide" else [])

    # Stable order: first appearance in suite order (the frame is sorted by position, split).
    def first_seen(keys: list[str]) -> list[tuple[Any, ...]]:
        seen: dict[tuple[Any, ...], None] = {}
        for t in df[keys].itertuples(index=False, name=None):
            seen.setdefault(t, None)
        return list(seen)

    rows = first_seen(row_keys)
    # Splits in the suite's order (split_position), whatever order rows first show them in.
    first = {s[0]: i for i, s in enumerate(first_seen(["split"]))}
    if "split_position" in df.columns:
        position = df.groupby("split")["split_position"].min().to_dict()
    else:
        position = {}
    split_rank = {
        s: i
        for i, s in enumerate(
            sorted(first, key=lambda s: (s != "", position.get(s, math.inf), first[s]))
        )
    }
    if layout == "long":
        base = {r[:3]: i for i, r in reversed(list(enumerate(rows)))}
        rows.sort(key=lambda r: (base[r[:3]], split_rank[r[3]]))
    # Columns: metrics in the order evaluators emit them, then splits in suite order.
    metric_rank = {
        m: i
        for i, m in enumerate(dict.fromkeys(df.sort_values(["position", "rid"])["metric_name"]))
    }
    cols = sorted(
        first_seen(col_keys),
        key=lambda c: (metric_rank[c[0]], split_rank[c[1]] if len(c) > 1 else 0),
    )

    grouped = df.groupby(row_keys + col_keys, sort=False)
    stats: dict[tuple[Any, ...], tuple[float, float | None, float | None]] = {}
    direction: dict[tuple[Any, ...], Any] = {}
    seeds_of: dict[tuple[Any, ...], int] = {}
    for key, g in grouped:
        # Every record was computed: a NaN or infinity among them is the cell's value.
        values = [float("nan") if v is None else float(v) for v in g["value"].tolist()]
        n = len(values)
        row_key = key[: len(row_keys)]
        seeds_of[row_key] = max(seeds_of.get(row_key, 0), n)
        mean = sum(values) / n if n else float("nan")
        ci = stderr = None
        if not math.isfinite(mean):
            pass
        elif n > 1:
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
            stderr = sd / math.sqrt(n)
            ci = t95(n - 1) * stderr
        elif n == 1:
            se = g["stderr"].iloc[0]
            if se is not None and not (isinstance(se, float) and math.isnan(se)):
                stderr = float(se)
                ci = 1.96 * stderr
        stats[key] = (mean, ci, stderr)
        col = key[len(row_keys) :]
        direction.setdefault(col, g["higher_is_better"].iloc[0])

    headers = ["model", "layer", "SAE"] + (["split"] if layout == "long" else [])
    for col in cols:
        name = col[0] if layout == "long" or not col[1] else f"{col[0]}[{col[1]}]"
        headers.append(name + arrow(direction.get(col)))
        if intervals:
            headers += [f"{name} stderr", f"{name} ci95"]
    if intervals:
        headers.append("interval")
    display, raw = [], []
    for r in rows:
        d_row: list[Any] = list(r)
        raw_row: list[Any] = list(r)
        for col in cols:
            if r + col not in stats:
                d_row.append(MISSING)
                raw_row += [None] * (3 if intervals else 1)
                continue
            mean, ci, stderr = stats[r + col]
            d_row.append(format_value(mean, ci))
            raw_row.append(mean)
            if intervals:
                raw_row += [stderr, ci]
        if intervals:
            raw_row.append(_interval_kind(seeds_of.get(tuple(r), 1)))
        display.append(d_row)
        raw.append(raw_row)
    return headers, display, raw


def _interval_kind(seeds: int) -> str:
    """What a row's ``ci95`` is (the CSV's ``interval`` column)."""
    return f"student-t over {seeds} seeds" if seeds > 1 else "1.96 x evaluator stderr"


def interval_note(frame: Any) -> str:
    """One line saying what ``±`` is in a table of ``frame``: a Student-t interval over seeds,
    or 1.96 of the evaluator's standard errors with one seed; and that ``saebench report``
    shows a bootstrap interval instead (:mod:`saebench_vision.summary`)."""
    if not len(frame):
        return ""
    seeds = frame.groupby(["model", "layer", "sae_label"])["seed"].nunique()
    several, single = bool((seeds > 1).any()), bool((seeds == 1).any())
    t_part = "the 95% Student-t interval over seeds (t x sd / sqrt(seeds))"
    se_part = "1.96 x the standard error the evaluator reported (one seed)"
    if several and single:
        what = f"{t_part} where a row has several seeds, else {se_part}"
    else:
        what = t_part if several else se_part
    report = (
        "`saebench report` shows the same Student-t interval"
        if several and not single
        else "`saebench report` shows a seeded percentile bootstrap over the test items "
        "instead (docs/design.md, Which interval)"
    )
    return f"±: {what}; {report}."


def render(
    frame: Any,
    *,
    fmt: str = "md",
    layout: str = "wide",
    metrics: Sequence[str] = (),
    splits: Sequence[str] = (),
    title: str = "",
    versions: dict[str, str] | None = None,
    headline_only: bool = False,
    roles: Sequence[str] = (),
) -> str:
    """The leaderboard as text in ``fmt`` (md, csv, latex, html)."""
    from tabulate import tabulate

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    headers, display, raw = pivot(
        frame,
        layout=layout,
        metrics=metrics,
        splits=splits,
        headline_only=headline_only,
        roles=roles,
        intervals=fmt == "csv",
    )
    versions = versions or {}
    plugin_line = ", ".join(f"{k} {v}".strip() for k, v in versions.items())
    if not headers:
        return "(no results yet)\n" if fmt != "csv" else ""
    note = interval_note(frame) if any("±" in str(v) for row in display for v in row) else ""
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([h.replace(" ↑", "").replace(" ↓", "") for h in headers])
        for row in raw:
            writer.writerow(
                ["" if v is None else (_csv_number(v) if isinstance(v, float) else v) for v in row]
            )
        return buf.getvalue()
    if fmt == "md":
        head = f"**{title}**\n\n" if title else ""
        foot = (f"\n\n{_md_text(note)}" if note else "") + (
            f"\n\nplugins: {plugin_line}\n" if plugin_line else "\n"
        )
        return (
            head
            + tabulate(
                [[_md(v) for v in row] for row in display],
                headers=[_md(h) for h in headers],
                tablefmt="github",
                disable_numparse=True,
            )
            + foot
        )
    if fmt == "latex":

        def tex(text: str) -> str:
            for a, b in (
                ("\\", r"\textbackslash{}"),
                ("&", r"\&"),
                ("%", r"\%"),
                ("_", r"\_"),
                ("#", r"\#"),
                ("$", r"\$"),
                ("{", r"\{"),
                ("}", r"\}"),
            ):
                text = text.replace(a, b)
            return (
                text.replace(" ↑", r" $\uparrow$")
                .replace(" ↓", r" $\downarrow$")
                .replace("±", r"$\pm$")
            )

        n_keys = 4 if layout == "long" else 3
        spec = "l" * n_keys + "r" * (len(headers) - n_keys)
        lines = [
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(tex(h) for h in headers) + r" \\",
            "\\midrule",
        ]
        lines += [" & ".join(tex(str(v)) for v in row) + r" \\" for row in display]
        lines += ["\\bottomrule", "\\end{tabular}"]
        body = "\n".join(lines)
        caption = f"% {title}\n% plugins: {plugin_line}\n" if title or plugin_line else ""
        if note:
            caption += f"% {note}\n"
        return caption + body + "\n"
    table = _html_table(headers, display, 4 if layout == "long" else 3)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title or 'saebench-vision leaderboard')}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}"
        "td.key{text-align:left}caption{caption-side:bottom;color:#666;padding-top:.5em}</style>"
        f"</head><body><h1>{html.escape(title or 'saebench-vision leaderboard')}</h1>\n{table}\n"
        + (f"<p><small>{html.escape(note)}</small></p>" if note else "")
        + f"<p><small>plugins: {html.escape(plugin_line)}</small></p></body></html>\n"
    )


def _md_text(text: str) -> str:
    """A markdown paragraph: ``*`` and ``_`` are literal."""
    return text.replace("*", "\\*").replace("_", "\\_")


def _md(text: Any) -> str:
    """A markdown table cell: ``|`` escaped (it ends a cell), line breaks as spaces."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _csv_number(v: float) -> str:
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def _html_table(headers: list[str], rows: list[list[Any]], n_keys: int) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "\n".join(
        "<tr>"
        + "".join(
            f"<td{' class=key' if i < n_keys else ''}>{html.escape(str(v))}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
