"""The one-file HTML report: every table (sortable, filterable, with intervals), the figures,
the evaluators' own images, matched-sparsity and paired comparisons, and provenance.

The file is self-contained: figures and images are ``data:`` URIs, the style and the small
script are inline, nothing is fetched, so it can be mailed or served as is. The script sorts a
table when its header is clicked (numerically where cells carry numbers) and filters rows by
the words typed above it. Opened with ``#selftest`` appended to its URL, the page checks itself
(tables present, sorting reorders rows, images decoded, no script errors) and writes the result
as JSON into ``<pre id="selftest">``; the test suite reads it through a headless browser.
"""

from __future__ import annotations

import base64
import html
import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saebench_vision import __version__
from saebench_vision.figures import FigureOptions, draw_all, render_png
from saebench_vision.leaderboard import arrow, format_value
from saebench_vision.sparsity import matched_rows
from saebench_vision.summary import PairedRow, StatsOptions, SummaryRow, paired_rows, summarise

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
}
MAX_IMAGE_BYTES = 4 * 2**20
MAX_IMAGES = 60


@dataclass(frozen=True)
class ReportOptions:
    stats: StatsOptions = field(default_factory=StatsOptions)
    figures: FigureOptions = field(default_factory=FigureOptions)
    figure_names: tuple[str, ...] = ()
    compare: tuple[tuple[str, str], ...] | None = None
    title: str = ""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))


def _cell(
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    over: str = "",
    computed: bool = False,
) -> str:
    """A number's cell; NaN is "not available" (``–``) unless ``computed`` (a stored record),
    where NaN and infinities show as ``nan`` / ``inf``."""
    if computed and value is not None and not math.isfinite(value):
        return f'<td class="num" data-v="">{_e(format_value(value))}</td>'
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td class="num" data-v="">–</td>'
    if low is not None and high is not None and high > low:
        half = (high - low) / 2
        text = format_value(value, half).split(" ± ")[0]
        digits = len(text.split(".")[1]) if "." in text else 0
        rng = f"{low:.{digits}f} – {high:.{digits}f}"
        return (
            f'<td class="num" data-v="{_num(value)}" title="{_e(over)}">{_e(text)}'
            f'<span class="ci">{_e(rng)}</span></td>'
        )
    return f'<td class="num" data-v="{_num(value)}">{_e(format_value(value))}</td>'


def _table(
    tid: str, headers: list[str], rows: list[list[str]], n_keys: int, notes: Sequence[str] = ()
) -> str:
    head = "".join(
        f'<th class="{"key" if i < n_keys else "num"}" data-col="{i}">{_e(h)}</th>'
        for i, h in enumerate(headers)
    )
    body = "\n".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    note = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return (
        f'<div class="tablewrap"><input class="filter" type="search" placeholder="filter rows…" '
        f'data-table="{tid}" aria-label="filter rows">'
        f'<span class="count" id="{tid}-count">{len(rows)} rows</span>'
        f'<div class="scroll"><table class="data" id="{tid}"><thead><tr>{head}</tr></thead>'
        f"<tbody>\n{body}\n</tbody></table></div>"
        + (f'<ul class="notes">{note}</ul>' if note else "")
        + "</div>"
    )


def _key_cells(values: Sequence[str]) -> list[str]:
    return [f'<td class="key">{_e(v)}</td>' for v in values]


def _over_kind(over: str) -> str:
    """``over`` without the item count, so a table lists each kind of interval once."""
    import re

    return re.sub(r" over \d+ ", " over ", over)


def _wide_table(tid: str, rows: list[SummaryRow]) -> str:
    """Rows (model, layer, SAE), columns metric[split] in first-seen order."""
    row_keys = list(dict.fromkeys((r.model, r.layer, r.sae_label) for r in rows))
    col_keys = list(dict.fromkeys((r.metric, r.split) for r in rows))
    by = {(r.model, r.layer, r.sae_label, r.metric, r.split): r for r in rows}
    hib = {(r.metric, r.split): r.higher_is_better for r in rows}
    headers = ["model", "layer", "SAE"] + [
        (f"{m}[{s}]" if s else m) + arrow(hib[(m, s)]) for m, s in col_keys
    ]
    out: list[list[str]] = []
    kinds: set[str] = set()
    for rk in row_keys:
        cells = _key_cells(rk)
        for ck in col_keys:
            cells.append(_summary_cell(by.get(rk + ck), kinds))
        out.append(cells)
    return _table(tid, headers, out, 3, sorted(kinds))


def _summary_cell(r: SummaryRow | None, kinds: set[str]) -> str:
    """A table cell for one summary row (``–``: not computed); notes the interval's kind."""
    if r is None:
        return '<td class="num" data-v="">–</td>'
    iv = r.interval
    if iv:
        kinds.add(_over_kind(iv.over))
    return _cell(
        r.value,
        iv.low if iv else None,
        iv.high if iv else None,
        iv.over if iv else "",
        computed=True,
    )


def _long_table(tid: str, rows: list[SummaryRow]) -> str:
    """Rows (model, layer, SAE, split), columns metrics."""
    row_keys = list(dict.fromkeys((r.model, r.layer, r.sae_label, r.split) for r in rows))
    metrics = list(dict.fromkeys(r.metric for r in rows))
    by = {(r.model, r.layer, r.sae_label, r.split, r.metric): r for r in rows}
    hib = {r.metric: r.higher_is_better for r in rows}
    headers = ["model", "layer", "SAE", "split"] + [m + arrow(hib[m]) for m in metrics]
    out: list[list[str]] = []
    kinds: set[str] = set()
    for rk in row_keys:
        cells = _key_cells(rk)
        for m in metrics:
            cells.append(_summary_cell(by.get(rk + (m,)), kinds))
        out.append(cells)
    return _table(tid, headers, out, 4, sorted(kinds))


def _matched_table(results: Any, options: ReportOptions, headline: set[tuple[str, str]]) -> str:
    fo = options.figures
    rows = matched_rows(
        results.frame,
        at_l0=fo.at_l0,
        budget=fo.l0_budget,
        l0_metric=fo.l0_metric,
        front_by=fo.front_by,
    )
    rows = [r for r in rows if (r.metric, r.split) in headline or not headline]
    # A front with nothing to read at the targets or under the budget adds only dashes.
    rows = [r for r in rows if r.best is not None or any(v == v for v in r.at_l0.values())]
    if not rows:
        return "<p class=missing>No front has an SAE in range of the targets, or no SAE has an L0 record (the reconstruction evaluator's <code>l0</code>); nothing to match.</p>"
    headers = ["model", "layer", "front", "metric", "split"]
    headers += [f"at L0={_short(t)}" for t in fo.at_l0]
    if fo.l0_budget is not None:
        headers += [f"best, L0 ≤ {_short(fo.l0_budget)}", "by SAE", "its L0"]
    headers.append("SAEs (L0 range)")
    out = []
    for r in rows:
        cells = _key_cells(
            [r.model, r.layer, r.front, r.metric + arrow(r.higher_is_better), r.split]
        )
        cells += [_cell(r.at_l0.get(t)) for t in fo.at_l0]
        if fo.l0_budget is not None:
            if r.best:
                cells += [
                    _cell(r.best[0]),
                    f'<td class="key">{_e(r.best[2])}</td>',
                    _cell(r.best[1]),
                ]
            else:
                cells += [_cell(None), '<td class="key">–</td>', _cell(None)]
        xs = [p[0] for p in r.points]
        cells.append(
            f'<td class="key" data-v="{len(xs)}">{len(xs)} ({format_value(min(xs))} – {format_value(max(xs))})</td>'
        )
        out.append(cells)
    notes = [
        "Piecewise linear in log L0 between the front's SAEs (seeds averaged); never extrapolated: "
        "– where the target lies outside the front's L0 range.",
    ]
    if fo.l0_budget is not None:
        notes.append(
            "Best: the best measured SAE of the front with L0 within the budget (no interpolation)."
        )
    return _table("matched", headers, out, 5, notes)


def _short(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _paired_table(pairs: list[PairedRow]) -> str:
    if not pairs:
        return (
            "<p class=missing>No two rows share per-item values (evaluators store them for means "
            "over test items, e.g. probe accuracy); nothing to pair.</p>"
        )
    headers = [
        "model",
        "layer",
        "metric",
        "split",
        "seed",
        "row A",
        "row B",
        "mean A",
        "mean B",
        "A − B",
        "paired test",
        "p",
    ]
    out = []
    for p in pairs:
        d = p.comparison.difference
        cells = _key_cells(
            [p.model, p.layer, p.metric + arrow(p.higher_is_better), p.split, str(p.seed), p.a, p.b]
        )
        cells += [_cell(p.mean_a), _cell(p.mean_b), _cell(d.value, d.low, d.high, d.over)]
        cells.append(f'<td class="key">{_e(p.comparison.test)}</td>')
        sig = " sig" if p.comparison.p_value < 0.05 else ""
        cells.append(
            f'<td class="num{sig}" data-v="{_num(p.comparison.p_value)}">{p.comparison.p_value:.2g}</td>'
        )
        out.append(cells)
    kinds = sorted({_over_kind(p.comparison.difference.over) for p in pairs})
    notes = kinds + [
        "Test: exact McNemar for 0/1 outcomes (accuracy), paired Student t otherwise; bold p < 0.05 "
        "(not corrected for multiple comparisons)."
    ]
    return _table("paired", headers, out, 7, notes)


def _images(results: Any) -> list[tuple[str, str, str]]:
    """(caption, mime, data URI) of the images the evaluators stored for this suite's cells."""
    df = results.frame
    if not len(df):
        return []
    seen: dict[str, str] = {}
    for _, r in df.drop_duplicates("cell_id").iterrows():
        seen.setdefault(
            r["cell_id"],
            f"{r['evaluator']} · {r['model']} · {r['layer']} · {r['sae_label']} · seed {r['seed']}",
        )
    out = []
    for cell_id, caption in seen.items():
        folder = results.artifact_dir(cell_id)
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            mime = IMAGE_TYPES.get(path.suffix.lower())
            if mime is None or path.name.startswith(".") or path.stat().st_size > MAX_IMAGE_BYTES:
                continue
            data = base64.b64encode(path.read_bytes()).decode()
            out.append((f"{caption} · {path.name}", mime, f"data:{mime};base64,{data}"))
            if len(out) >= MAX_IMAGES:
                return out
    return out


def _provenance(results: Any, options: ReportOptions, seconds: float) -> str:
    prov = results.provenance()
    rows = [
        ("suite", prov["suite_name"]),
        ("suite hash", prov["suite_hash"]),
        ("results", prov["results"]),
        ("cells", f"{prov['cells_done']} of {prov['cells_total']} finished"),
        ("seeds", ", ".join(map(str, prov["seeds"]))),
        ("evaluation time", f"{prov['evaluation_seconds']:.1f} s over all cells"),
        ("intervals", options.stats.describe()),
        (
            "report",
            f"saebench-vision {__version__}, python {platform.python_version()}, "
            f"built {time.strftime('%Y-%m-%d %H:%M:%S %Z')} in {seconds:.1f} s",
        ),
    ]
    kv = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    versions = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in prov["versions"].items()
    )
    runs = "".join(
        f"<tr><td>{_e(r['run_id'])}</td><td>{_e(r['host'])}</td><td>{_e(_when(r['started_at']))}</td>"
        f"<td>{_e(_when(r['finished_at']))}</td><td>{_e(r['status'])}</td><td><code>{_e(' '.join(r['argv']))}</code></td></tr>"
        for r in prov["runs"]
    )
    suite = json.dumps(results.suite_document(), indent=2, default=str)
    return (
        f'<table class="kv">{kv}</table><h3>Plugin versions</h3><table class="kv">{versions}</table>'
        f'<h3>Runs</h3><div class="scroll"><table class="plain"><thead><tr><th>run</th><th>host</th>'
        f"<th>started</th><th>finished</th><th>status</th><th>command</th></tr></thead><tbody>{runs}"
        f"</tbody></table></div><details><summary>The suite as run</summary><pre>{_e(suite)}</pre></details>"
    )


def _when(t: float | None) -> str:
    return "–" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def build_report(manager: Any, results: Any, options: ReportOptions | None = None) -> str:
    """The report of ``results`` as one HTML document (a string)."""
    started = time.perf_counter()
    options = options or ReportOptions()
    summary = summarise(results, options.stats)
    pairs = paired_rows(
        results, list(options.compare) if options.compare is not None else None, options.stats
    )
    outcomes = draw_all(manager, results, names=options.figure_names, options=options.figures)
    sections: list[tuple[str, str, str]] = []  # (id, title, html)

    eval_roles = {"eval"}
    head = [r for r in summary if r.headline and (r.role in eval_roles or r.split == "")]
    if head:
        sections.append(
            (
                "overview",
                "Overview",
                "<p>Headline metrics on the in-distribution splits, one row per SAE.</p>"
                + _wide_table("t-overview", head),
            )
        )

    figs = []
    for o in outcomes:
        if o.error:
            figs.append(
                f'<figure class="missing failed"><figcaption><b>{_e(o.name)}</b>: {_e(o.error)}'
                "</figcaption></figure>"
            )
            continue
        if o.figure is None:
            figs.append(
                f'<figure class="missing"><figcaption><b>{_e(o.name)}</b>: {_e(o.missing)}</figcaption></figure>'
            )
            continue
        png = base64.b64encode(render_png(o.figure, options.figures.dpi)).decode()
        figs.append(
            f'<figure id="fig-{_e(o.name)}"><img alt="{_e(o.name)}" src="data:image/png;base64,{png}">'
            f"<figcaption><b>{_e(o.name)}</b> <span class=dim>({_e(o.plugin)})</span></figcaption></figure>"
        )
    if figs:
        sections.append(("figures", "Figures", "".join(figs)))

    for i, evaluator in enumerate(results.evaluators()):
        rows = [r for r in summary if r.evaluator == evaluator]
        if not rows:
            continue
        heads = [r for r in rows if r.headline]
        body = ""
        if heads:
            body += f"<h3>Headline metrics by split</h3>{_wide_table(f't-ev{i}-head', heads)}"
        n_rows = len({(r.model, r.layer, r.sae_label, r.split) for r in rows})
        body += (
            f"<details><summary>Every metric, every split ({n_rows} rows)</summary>"
            f"{_long_table(f't-ev{i}-all', rows)}</details>"
        )
        sections.append((f"ev-{evaluator}", f"Evaluator: {evaluator}", body))

    fo = options.figures
    # Headline metrics with a direction, on test splits (and aggregates such as ood-mean).
    headline = {
        (r.metric, r.split)
        for r in summary
        if r.headline and r.higher_is_better is not None and r.role in ("eval", "shifted", "")
    }
    desc = (
        f"<p>Every front (SAEs of one architecture: {', '.join(fo.front_by)}) read at L0 = "
        f"{', '.join(_short(t) for t in fo.at_l0) or '(none: pass --at-l0)'}"
        + (
            f", and its best SAE with L0 ≤ {_short(fo.l0_budget)}"
            if fo.l0_budget is not None
            else ""
        )
        + '. Headline metrics; the fronts are drawn in <a href="#fig-reconstruction-pareto">reconstruction-pareto</a>.</p>'
    )
    sections.append(
        ("matched", "Matched sparsity", desc + _matched_table(results, options, headline))
    )
    sections.append(
        (
            "paired",
            "Paired comparisons",
            "<p>Differences between two rows on the same test items.</p>" + _paired_table(pairs),
        )
    )

    images = _images(results)
    if images:
        gallery = "".join(
            f'<figure class="thumb"><img alt="{_e(c)}" src="{uri}"><figcaption>{_e(c)}</figcaption></figure>'
            for c, _, uri in images
        )
        sections.append(
            ("artifacts", "Images stored by evaluators", f'<div class="gallery">{gallery}</div>')
        )

    seconds = time.perf_counter() - started
    sections.append(("provenance", "Provenance", _provenance(results, options, seconds)))
    prov = results.provenance()
    title = options.title or f"{results.suite_name}: saebench-vision report"
    nav = "".join(f'<a href="#{sid}">{_e(t)}</a>' for sid, t, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{_e(t)}</h2>{content}</section>' for sid, t, content in sections
    )
    sub = (
        f"suite hash <code>{_e(prov['suite_hash'])}</code> · {prov['cells_done']}/{prov['cells_total']} cells · "
        f"seeds {', '.join(map(str, prov['seeds']))} · {_e(options.stats.describe())}"
    )
    return _PAGE.format(title=_e(title), sub=sub, nav=nav, body=body, css=_CSS, js=_JS)


_CSS = """
:root{--fg:#1d232b;--dim:#68727d;--line:#e2e6ea;--head:#f5f7f9;--acc:#2f6fb0;--good:#1f7a3d}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:#fff}
header{padding:22px 32px 14px;border-bottom:1px solid var(--line);background:linear-gradient(#f8fafc,#fff)}
header h1{margin:0 0 4px;font-size:22px;font-weight:650}header .sub{color:var(--dim);font-size:13px}
nav{position:sticky;top:0;z-index:5;background:#fffffff2;border-bottom:1px solid var(--line);padding:8px 32px;display:flex;gap:16px;flex-wrap:wrap;backdrop-filter:blur(4px)}
nav a{color:var(--acc);text-decoration:none;font-size:13px}nav a:hover{text-decoration:underline}
main{padding:8px 32px 40px;max-width:1500px}section{margin-top:26px}
h2{font-size:18px;margin:0 0 10px;padding-bottom:4px;border-bottom:2px solid var(--line)}h3{font-size:14px;margin:18px 0 6px;color:#333}
.tablewrap{margin:6px 0 14px}.filter{padding:5px 9px;border:1px solid #cfd5db;border-radius:6px;width:260px;font:inherit}
.count{color:var(--dim);font-size:12px;margin-left:10px}.scroll{overflow-x:auto;margin-top:6px}
table.data{border-collapse:collapse;font-size:12.5px;font-variant-numeric:tabular-nums}
table.data th{background:var(--head);position:sticky;top:0;cursor:pointer;user-select:none;white-space:nowrap;padding:6px 9px;border-bottom:1px solid #cfd5db;font-weight:600}
table.data th:hover{background:#e9eef3}table.data th.asc:after{content:" ▲";font-size:9px}table.data th.desc:after{content:" ▼";font-size:9px}
table.data td{padding:4px 9px;border-bottom:1px solid var(--line);white-space:nowrap;vertical-align:top}
table.data tbody tr:nth-child(even){background:#fafbfc}table.data tbody tr:hover{background:#eef4fb}
td.num,th.num{text-align:right}td.key,th.key{text-align:left}td.sig{font-weight:700;color:var(--good)}
.ci{display:block;color:var(--dim);font-size:10.5px}
ul.notes{margin:6px 0 0;padding-left:18px;color:var(--dim);font-size:12px}
figure{margin:10px 0 22px}figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:4px}
figcaption{font-size:12.5px;color:#444;margin-top:4px}.dim{color:var(--dim)}
figure.missing figcaption,p.missing{color:#8a5a00;background:#fff8e6;border:1px solid #f1dfb0;padding:6px 10px;border-radius:6px;display:inline-block}
.gallery{display:flex;flex-wrap:wrap;gap:14px}.thumb{width:300px;margin:0}.thumb img{width:100%}
table.kv th{text-align:left;padding:3px 14px 3px 0;color:var(--dim);font-weight:500;vertical-align:top}table.kv td{padding:3px 0}
table.plain{border-collapse:collapse;font-size:12px}table.plain th,table.plain td{padding:3px 10px;border-bottom:1px solid var(--line);text-align:left}
details{margin:10px 0}summary{cursor:pointer;font-weight:600;font-size:13.5px;color:#333}
pre{background:#f6f8fa;padding:10px;border-radius:6px;overflow:auto;font-size:12px}code{font-size:12px}
#selftest{display:none}
"""

_JS = r"""
(function(){
  var errors=[];
  window.addEventListener('error',function(e){errors.push(String(e.message||e));});
  var oldError=console.error;console.error=function(){errors.push(Array.prototype.join.call(arguments,' '));oldError.apply(console,arguments);};
  function key(td){var v=td.getAttribute('data-v');if(v!==null&&v!==''&&!isNaN(+v))return {n:+v};if(v==='')return {n:null};return {s:td.textContent.trim().toLowerCase()};}
  function cmp(a,b){if('n' in a||'n' in b){var x=a.n,y=b.n;if(x==null&&y==null)return 0;if(x==null)return 1;if(y==null)return -1;return x-y;}return a.s<b.s?-1:a.s>b.s?1:0;}
  function sortTable(table,col,dir){
    var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
    var keyed=rows.map(function(r,i){return {r:r,k:key(r.cells[col]),i:i};});
    keyed.sort(function(a,b){var c=cmp(a.k,b.k);if(a.k.n===null||b.k.n===null)return c||a.i-b.i;return (dir*c)||a.i-b.i;});
    keyed.forEach(function(o){body.appendChild(o.r);});
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th){th.classList.remove('asc','desc');});
    table.tHead.rows[0].cells[col].classList.add(dir>0?'asc':'desc');
  }
  function filterTable(table,text){
    var words=text.toLowerCase().split(/\s+/).filter(Boolean),shown=0;
    Array.prototype.forEach.call(table.tBodies[0].rows,function(r){var t=r.textContent.toLowerCase();var ok=words.every(function(w){return t.indexOf(w)>=0;});r.style.display=ok?'':'none';if(ok)shown++;});
    var c=document.getElementById(table.id+'-count');if(c)c.textContent=shown+' of '+table.tBodies[0].rows.length+' rows';
  }
  window.saebenchSort=sortTable;window.saebenchFilter=filterTable;
  document.addEventListener('DOMContentLoaded',function(){
    Array.prototype.forEach.call(document.querySelectorAll('table.data'),function(table){
      Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,col){
        th.addEventListener('click',function(){sortTable(table,col,th.classList.contains('asc')?-1:1);});
      });
    });
    Array.prototype.forEach.call(document.querySelectorAll('input.filter'),function(inp){
      inp.addEventListener('input',function(){filterTable(document.getElementById(inp.getAttribute('data-table')),inp.value);});
    });
    if(location.hash==='#selftest')window.addEventListener('load',selftest);
  });
  function selftest(){
    var out={tables:0,rows:0,sorted:false,sort_checked:null,filtered:null,images:0,images_ok:0,image_sizes:[],errors:errors};
    var tables=document.querySelectorAll('table.data');out.tables=tables.length;
    Array.prototype.forEach.call(tables,function(t){out.rows+=t.tBodies[0].rows.length;});
    // Sort the first table with at least three numeric rows of distinct values by that column.
    for(var i=0;i<tables.length&&out.sort_checked===null;i++){
      var t=tables[i],hdr=t.tHead.rows[0].cells;
      for(var c=0;c<hdr.length;c++){
        var vals=Array.prototype.map.call(t.tBodies[0].rows,function(r){var v=r.cells[c].getAttribute('data-v');return v===null||v===''?null:+v;}).filter(function(v){return v!==null&&!isNaN(v);});
        var distinct=vals.filter(function(v,j){return vals.indexOf(v)===j;});
        if(vals.length<3||distinct.length<3)continue;
        var before=Array.prototype.map.call(t.tBodies[0].rows,function(r){return r.textContent;}).join('|');
        hdr[c].click();
        var asc=Array.prototype.map.call(t.tBodies[0].rows,function(r){return +r.cells[c].getAttribute('data-v');}).filter(function(v){return !isNaN(v);});
        hdr[c].click();
        var desc=Array.prototype.map.call(t.tBodies[0].rows,function(r){return +r.cells[c].getAttribute('data-v');}).filter(function(v){return !isNaN(v);});
        var after=Array.prototype.map.call(t.tBodies[0].rows,function(r){return r.textContent;}).join('|');
        var up=asc.every(function(v,j){return j===0||asc[j-1]<=v;}),down=desc.every(function(v,j){return j===0||desc[j-1]>=v;});
        out.sort_checked={table:t.id,column:hdr[c].textContent,ascending:up,descending:down,reordered:before!==after};
        out.sorted=up&&down&&before!==after;
        var cells0=t.tBodies[0].rows[0].cells,first=cells0[Math.min(2,cells0.length-1)].textContent;
        var inp=document.querySelector('input.filter[data-table="'+t.id+'"]');
        filterTable(t,first);var vis=Array.prototype.filter.call(t.tBodies[0].rows,function(r){return r.style.display!=='none';}).length;
        out.filtered={text:first,visible:vis,total:t.tBodies[0].rows.length};filterTable(t,'');
        break;
      }
    }
    var imgs=document.images;out.images=imgs.length;
    Array.prototype.forEach.call(imgs,function(im){if(im.complete&&im.naturalWidth>0&&im.naturalHeight>0){out.images_ok++;}out.image_sizes.push([im.naturalWidth,im.naturalHeight]);});
    var pre=document.getElementById('selftest');pre.textContent=JSON.stringify(out);pre.setAttribute('data-done','1');
  }
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title><link rel="icon" href="data:,"><style>{css}</style><script>{js}</script></head>
<body><header><h1>{title}</h1><div class="sub">{sub}</div></header><nav>{nav}</nav>
<main>{body}</main><pre id="selftest"></pre></body></html>
"""


def write_report(path: Path, text: str) -> None:
    from saebench_vision.cache import atomic_write_text

    atomic_write_text(path, text)
