"""Figures, the HTML report (in a real headless browser) and the export, on a small suite run
end to end with the toy model: two layers, ReLU and TopK sweeps, reconstruction, probes, ontology."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats
import yaml
from conftest import REPO, builtins_only_env

from saebench_vision import hookimpl
from saebench_vision.cli import main
from saebench_vision.errors import PluginError
from saebench_vision.export import RECORD_COLUMNS, SCHEMA, SCHEMA_VERSION, export
from saebench_vision.figures import FigureOptions, draw_all, figure_entries
from saebench_vision.interfaces import Record
from saebench_vision.items import load_item_values
from saebench_vision.report import build_report
from saebench_vision.results import CellKey, ResultsStore
from saebench_vision.resultset import ResultSet, open_results
from saebench_vision.sparsity import matched_rows
from saebench_vision.summary import paired_rows, summarise

SUITE: dict[str, Any] = {
    "name": "toy-report",
    "seeds": [0],
    "models": [{"plugin": "toy-model", "layers": ["layer.0", "final"]}],
    "datasets": {
        "train": {"plugin": "toy-clusters", "args": {"split": "train"}},
        "val": {"plugin": "toy-clusters", "args": {"split": "val"}, "role": "eval"},
        "shifted": {"plugin": "toy-clusters", "args": {"split": "shifted"}, "role": "shifted"},
        "far": {"plugin": "toy-clusters", "args": {"split": "ood", "size": 96}, "role": "far-ood"},
    },
    "saes": [
        {"plugin": "relu", "args": {"expansion": 2}, "sweep": {"l1_coefficient": [0.003, 0.1]}},
        {"plugin": "topk", "args": {"expansion": 2}, "sweep": {"k": [2, 8]}},
    ],
    "training": {"epochs": 3, "lr": 0.003},
    "evaluators": [
        {"plugin": "reconstruction"},
        {"plugin": "ood-accuracy"},
        {"plugin": "ontology"},
    ],
}
LAYERS = ["layer.0", "final"]
SAES = ["relu[expansion=2,l1_coefficient=0.003]", "relu[expansion=2,l1_coefficient=0.1]"]
SAES += ["topk[expansion=2,k=2]", "topk[expansion=2,k=8]"]


def _manager() -> Any:
    import toyplugin

    from saebench_vision.plugins import get_plugin_manager

    manager = get_plugin_manager(load_entrypoints=False)
    manager.register(toyplugin, "toy", ("saebench-vision-tests", "0"))
    return manager


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    from saebench_vision.runner import Runner
    from saebench_vision.suite import load_suite

    root = tmp_path_factory.mktemp("report-suite")
    doc = dict(SUITE, output=str(root / "out"))
    path = root / "toy.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    manager = _manager()
    suite = load_suite(path, manager.registry())
    Runner(suite, manager, cache_dir=root / "cache", progress=False, log=io.StringIO()).run()
    return root / "out"


@pytest.fixture(scope="module")
def results(output) -> ResultSet:
    return open_results(output)


# -- per-item values written by the evaluators -------------------------------------------------


def test_evaluators_store_per_item_values_that_average_to_their_records(results):
    df = results.frame
    checked = set()
    for _, r in df.iterrows():
        info = r["extra"].get("items")
        if info is None:
            continue
        path = results.artifact_dir(r["cell_id"]) / info["file"]
        items = load_item_values(path, expect_n=int(r["n"]))
        # Toy-model rows are items (cls tokens): the stored values average to the record.
        assert items.values.mean() == pytest.approx(r["value"], rel=1e-9, abs=1e-12)
        checked.add((r["evaluator"], r["metric"]))
    assert {("ood-accuracy", "acc"), ("reconstruction", "mse"), ("reconstruction", "l0")} <= checked
    # Baseline and SAE probes on one split are scored on the same items: one pairing token.
    acc = df[(df["metric"] == "acc") & (df["split"] == "val") & (df["layer"] == "final")]
    assert len({e["items"]["pairing"] for e in acc["extra"]}) == 1


# -- figures -----------------------------------------------------------------------------------


def _records(results, metric, split=None):
    df = results.frame
    df = df[df["metric"] == metric]
    return df if split is None else df[df["split"] == split]


def test_figures_are_saved_as_png_and_svg_with_the_expected_panels(results, tmp_path):
    outcomes = {
        o.name: o
        for o in draw_all(
            _manager(), results, options=FigureOptions(at_l0=(3.0,)), out_dir=tmp_path
        )
    }
    for name in (
        "reconstruction-pareto",
        "ood-vs-sparsity",
        "accuracy-vs-l0",
        "ontology-histograms",
    ):
        o = outcomes[name]
        assert not o.missing
        png, svg = tmp_path / f"{name}.png", tmp_path / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in svg.read_bytes()[:2000]

    # Fig. 2 (reconstruction): a row per layer, MSE and explained variance against log L0.
    fig = outcomes["reconstruction-pareto"].figure
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 4
    assert [ax.get_ylabel() for ax in axes[:2]] == ["mse [val] ↓", "explained_variance [val] ↑"]
    assert all(ax.get_xlabel() == "L0 [val]" and ax.get_xscale() == "log" for ax in axes)
    assert [ax.get_title() for ax in axes[::2]] == [f"toy-model · {layer}" for layer in LAYERS]
    # The relu markers of the first panel sit at the SAEs' (L0, MSE) on val.
    l0 = _records(results, "l0", "val").set_index(["layer", "sae_label"])["value"]
    mse = _records(results, "mse", "val").set_index(["layer", "sae_label"])["value"]
    marker = next(line for line in axes[0].lines if line.get_label().startswith("relu"))
    expected = sorted((l0[("layer.0", s)], mse[("layer.0", s)]) for s in SAES[:2])
    assert list(zip(marker.get_xdata(), marker.get_ydata())) == pytest.approx(expected)
    assert any(list(line.get_xdata()) == [3.0, 3.0] for line in axes[0].lines)  # --at-l0 mark

    # Fig. 2 (probes): a panel per layer and front, x = the sweep's knob, baseline dashed.
    fig = outcomes["ood-vs-sparsity"].figure
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_xlabel() for ax in axes] == ["l1_coefficient", "k"] * 2
    base = _records(results, "acc", "val")
    base_acc = base[(base["sae_label"] == "baseline") & (base["layer"] == "layer.0")]["value"]
    dashed = [line for line in axes[0].lines if line.get_linestyle() == "--"]
    assert float(base_acc.iloc[0]) in [pytest.approx(line.get_ydata()[0]) for line in dashed]
    knob_line = next(line for line in axes[1].lines if line.get_label() == "val")
    assert list(knob_line.get_xdata()) == [2.0, 8.0]

    # Fig. 3: a histogram per layer and feature set, equal to the evaluator's JSON counts.
    fig = outcomes["ontology-histograms"].figure
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 2 * 5  # neurons + 4 SAEs, per layer
    assert images[0].get_xlabel() == "ontological coverage"
    assert images[0].get_ylabel() == "LCH height"
    rec = results.frame[
        (results.frame["evaluator"] == "ontology") & (results.frame["sae_label"] == "baseline")
    ].iloc[0]
    doc = json.loads(
        (results.artifact_dir(rec["cell_id"]) / rec["extra"]["figure_data"]).read_text()
    )
    np.testing.assert_allclose(
        images[0].images[0].get_array(), np.log1p(np.asarray(doc["counts_multiclass"]))
    )

    # Fig. 8 needs the layer-sweep evaluator: one line saying so, no file, no empty axes.
    missing = outcomes["layer-sweep"]
    assert missing.figure is None and not missing.files
    assert "layer-sweep" in missing.missing and "\n" not in missing.missing
    assert not (tmp_path / "layer-sweep.png").exists()


def test_a_figure_without_its_data_says_so_in_one_line(tmp_path, capsys):
    store = ResultsStore(tmp_path / "empty")
    cell = CellKey("c0", "m", "l", "cls", "s0", "relu[k=1]", "relu", {}, "other", "1", 0)
    store.register_suite("h", [cell], [("val", "eval")])
    run = store.start_run(
        suite_name="x", suite_path="x.yaml", suite_hash="h", suite_json={}, versions={}, argv=[]
    )
    store.add_cell(run, cell, [Record("score", 1.0, "val")], 0.1)
    assert main(["plot", str(tmp_path / "empty"), "--out", str(tmp_path / "figs")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(figure_entries(_manager()))
    assert all(line.startswith("skipped ") for line in err)
    assert not list((tmp_path / "figs").glob("*.png"))
    assert main(["plot", str(tmp_path / "empty"), "--figure", "ood-vs-sparsty"]) == 2
    assert "Did you mean: ood-vs-sparsity?" in capsys.readouterr().err


class FigurePlugin:
    @hookimpl
    def register_figures(self):
        return {"my-figure": f"{__name__}:my_figure"}


def my_figure(results, options):
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.subplots()
    ax.bar(["records"], [len(results.frame)])
    return fig


def broken_figure(results, options):
    return 1 / 0


def test_plugins_add_figures_and_duplicates_name_both(results, tmp_path):
    manager = _manager()
    manager.register(FigurePlugin(), "my-figures")
    try:
        assert figure_entries(manager)["my-figure"].plugin == "my-figures"
        (o,) = draw_all(manager, results, names=["my-figure"], out_dir=tmp_path)
        assert o.figure.axes[0].patches[0].get_height() == len(results.frame)
        assert (tmp_path / "my-figure.svg").exists()

        class Clash:
            @hookimpl
            def register_figures(self):
                return {"layer-sweep": f"{__name__}:my_figure"}

        class Broken:
            @hookimpl
            def register_figures(self):
                return {"broken": f"{__name__}:broken_figure"}

        manager.register(Broken(), "broken")
        outcomes = {o.name: o for o in draw_all(manager, results, out_dir=tmp_path)}
        assert (
            "ZeroDivisionError" in outcomes["broken"].error
            and "`broken`" in outcomes["broken"].error
        )
        assert outcomes["reconstruction-pareto"].files  # the others are still drawn
        manager.unregister("broken")

        manager.register(Clash(), "clash")
        with pytest.raises(
            PluginError, match="builtin-evaluators.*clash|clash.*builtin-evaluators"
        ):
            figure_entries(manager)
    finally:
        manager.unregister("my-figures")


# -- statistics on the suite ---------------------------------------------------------------------


def test_summary_bootstraps_means_over_items_and_pairs_rows_on_the_same_items(results):
    rows = {(r.layer, r.sae_label, r.metric, r.split): r for r in summarise(results)}
    acc = rows[("final", SAES[3], "acc", "val")]
    assert "percentile bootstrap over" in acc.interval.over
    assert acc.interval.low <= acc.value <= acc.interval.high
    # Counts over latents are not means over items: no interval is invented for them.
    assert rows[("final", SAES[3], "n_features", "val")].interval is None

    pairs = {(p.layer, p.a, p.split): p for p in paired_rows(results) if p.metric == "acc"}
    p = pairs[("final", SAES[3], "val")]
    recs = _records(results, "acc", "val")
    recs = recs[recs["layer"] == "final"].set_index("sae_label")
    a = load_item_values(results.artifact_dir(recs.loc[SAES[3], "cell_id"]) / "items_acc_val.npz")
    b = load_item_values(
        results.artifact_dir(recs.loc["baseline", "cell_id"]) / "items_acc_val.npz"
    )
    n01 = int(((a.values == 1) & (b.values == 0)).sum())
    n10 = int(((a.values == 0) & (b.values == 1)).sum())
    assert p.comparison.test == "exact McNemar"
    assert n01 + n10 > 0
    assert p.comparison.p_value == pytest.approx(scipy.stats.binomtest(n01, n01 + n10, 0.5).pvalue)
    assert p.comparison.difference.value == pytest.approx(
        recs.loc[SAES[3], "value"] - recs.loc["baseline", "value"]
    )


def test_matched_sparsity_interpolates_each_front_between_its_saes(results):
    l0 = _records(results, "l0", "val").set_index(["layer", "sae_label"])["value"]
    ev = _records(results, "explained_variance", "val").set_index(["layer", "sae_label"])["value"]
    (x0, y0), (x1, y1) = sorted((l0[("final", s)], ev[("final", s)]) for s in SAES[2:])
    mid = float(np.sqrt(x0 * x1))  # halfway in log L0 -> the mean of the two values
    rows = matched_rows(results.frame, at_l0=[mid, x1 * 2], budget=x1)
    (row,) = [
        r
        for r in rows
        if (r.layer, r.front, r.metric, r.split)
        == ("final", "topk[expansion=2]", "explained_variance", "val")
    ]
    assert row.at_l0[mid] == pytest.approx((y0 + y1) / 2)
    assert np.isnan(row.at_l0[x1 * 2])  # beyond the densest SAE: not extrapolated
    assert row.best[0] == pytest.approx(max(y0, y1))


# -- the report ----------------------------------------------------------------------------------


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.fixture(scope="module")
def report_file(output, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", str(output), "--out", str(out), "--at-l0", "3,6"]) == 0
    return out


def test_the_report_is_one_self_contained_file_with_every_section(report_file):
    text = report_file.read_text()
    parser = _Parser()
    parser.feed(text)
    tags = parser.tags
    sections = {a.get("id") for t, a in tags if t == "section"}
    assert {"overview", "figures", "matched", "paired", "provenance"} <= sections
    assert {"ev-reconstruction", "ev-ood-accuracy", "ev-ontology"} <= sections
    assert sum(t == "table" and "data" in (a.get("class") or "") for t, a in tags) >= 7
    images = [a["src"] for t, a in tags if t == "img"]
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    # Nothing is fetched: no external script, style, image or link.
    for t, a in tags:
        for attr in ("src", "href"):
            value = a.get(attr) or ""
            assert not value.startswith(("http:", "https:", "//")), (t, value)
    assert "percentile bootstrap over" in text
    assert "layer-sweep: needs records of the layer-sweep evaluator" in text
    assert "exact McNemar" in text


def test_building_a_report_imports_no_model_code(output, tmp_path):
    code = (
        "import sys\n"
        "from saebench_vision.cli import main\n"
        f"assert main(['report', {str(output)!r}, '--out', {str(tmp_path / 'r.html')!r}]) == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'open_clip') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=builtins_only_env(), cwd=REPO)
    assert (tmp_path / "r.html").stat().st_size > 10_000


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--hide-scrollbars",
]


@pytest.mark.skipif(
    _chromium() is None,
    reason="no headless browser: install Debian's chromium (apt-get install -y chromium); .ci/run does",
)
def test_the_report_works_in_a_real_browser(report_file, tmp_path):
    browser = _chromium()
    assert browser is not None
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    done = subprocess.run(
        [
            browser,
            *CHROMIUM_FLAGS,
            *profile,
            "--virtual-time-budget=10000",
            "--dump-dom",
            report_file.as_uri() + "#selftest",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    start = done.stdout.index('<pre id="selftest"')
    body = done.stdout[done.stdout.index(">", start) + 1 : done.stdout.index("</pre>", start)]
    result = json.loads(
        body.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    )
    assert result["tables"] >= 7 and result["rows"] > 20
    check = result["sort_checked"]
    assert check["ascending"] and check["descending"] and check["reordered"], check
    # Filtering by the first row's SAE label hides the other SAEs' rows.
    assert 0 < result["filtered"]["visible"] < result["filtered"]["total"], result["filtered"]
    assert result["images"] == 4 and result["images_ok"] == 4
    assert all(w > 100 and h > 100 for w, h in result["image_sizes"])
    assert result["errors"] == []
    assert "Uncaught" not in done.stderr

    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            *CHROMIUM_FLAGS,
            *profile,
            "--window-size=1400,2400",
            f"--screenshot={shot}",
            report_file.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1400, 2400)


# -- export --------------------------------------------------------------------------------------


def _db_records(output: Path) -> list[tuple]:
    db = sqlite3.connect(output / "results.sqlite")
    return db.execute("SELECT cell_id, metric, split, value FROM records").fetchall()


def test_export_json_carries_schema_provenance_and_every_record(results, output):
    doc = json.loads(export(results, "json", None))
    assert doc["schema"] == SCHEMA and doc["schema_version"] == SCHEMA_VERSION
    assert doc["provenance"]["suite_hash"] == results.suite_hash
    assert doc["provenance"]["seeds"] == [0]
    got = sorted((r["cell_id"], r["metric"], r["split"], r["value"]) for r in doc["records"])
    assert got == sorted(_db_records(output))
    rec = next(r for r in doc["records"] if r["sae_label"] == SAES[3] and r["metric"] == "acc")
    assert rec["sae_config"]["k"] == 8 and rec["sae_plugin"] == "topk"
    assert "builtin-evaluators" in rec["plugin_versions"] and rec["evaluator_version"]
    assert set(RECORD_COLUMNS) == set(rec)
    assert any(s["interval_over"] for s in doc["summary"])
    assert doc["paired"] and doc["matched"] == []


def test_export_csv_and_parquet_hold_the_same_table(results, output, tmp_path, capsys):
    assert main(["export", str(output), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == list(RECORD_COLUMNS)
    assert len(rows) == len(_db_records(output))
    pq = pytest.importorskip("pyarrow.parquet")
    target = tmp_path / "r.parquet"
    assert main(["export", str(output), "--format", "parquet", "--out", str(target)]) == 0
    table = pq.read_table(target)
    assert table.column_names == list(RECORD_COLUMNS)
    assert table.num_rows == len(rows)
    meta = json.loads(table.schema.metadata[b"saebench_vision"])
    assert meta["schema_version"] == SCHEMA_VERSION
    assert sorted(table.column("value").to_pylist(), key=lambda v: (v is None, v)) == sorted(
        (None if r["value"] == "" else float(r["value"]) for r in rows),
        key=lambda v: (v is None, v),
    )
    assert main(["export", str(output), "--format", "parquet"]) == 2
    assert "--out" in capsys.readouterr().err


def test_bad_report_options_are_one_line_errors(output, capsys):
    assert main(["report", str(output), "--at-l0", "16,x"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: --at-l0 16,x: 'x' is not a number; write e.g. --at-l0 16,32,64"
    )
    assert main(["report", str(output), "--compare", "nope vs baseline", "--out", "/dev/null"]) == 2
    assert "no row is labelled 'nope'" in capsys.readouterr().err
    assert main(["report", str(output), "--confidence", "2"]) == 2


def test_a_suite_file_works_as_target(output, monkeypatch, capsys):
    monkeypatch.setenv("SAEBENCH_VISION_PLUGINS", "toyplugin")
    assert main(["export", str(output.parent / "toy.yaml"), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(_db_records(output))


def _sweep_store(root: Path) -> ResultSet:
    """A layer sweep stored through the results API: 3 layers x 2 seeds, one SAE + baseline."""
    store = ResultsStore(root)
    cells, records = [], {}
    for li, layer in enumerate(["blocks.0", "blocks.5", "blocks.11"]):
        for seed in (0, 1):
            for label in ("topk[k=8]", "baseline"):
                cid = f"{layer}-{seed}-{label}"
                plugin = "" if label == "baseline" else "topk"
                cells.append(
                    CellKey(
                        cid, "vit", layer, "cls", cid, label, plugin, {}, "layer-sweep", "1", seed
                    )
                )
                recs = [Record("coverage_gt_0.99", 10.0 * li + seed, "val", higher_is_better=True)]
                if label != "baseline":
                    recs.append(
                        Record("mse", 1.0 / (li + 1) + 0.1 * seed, "val", higher_is_better=False)
                    )
                records[cid] = recs
    store.register_suite("h", cells, [("val", "eval")])
    run = store.start_run(
        suite_name="sweep", suite_path="s.yaml", suite_hash="h", suite_json={}, versions={}, argv=[]
    )
    for c in cells:
        store.add_cell(run, c, records[c.cell_id], 0.1)
    # An evaluator's own image (a steering grid, say) is shown by the report as it is.
    from PIL import Image

    art = root / "artifacts" / cells[0].cell_id
    art.mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(art / "grid.png")
    return ResultSet.load(store, "h")


def test_layer_sweep_figure_plots_every_metric_against_the_layer(tmp_path):
    results = _sweep_store(tmp_path / "sweep")
    (o,) = draw_all(_manager(), results, names=["layer-sweep"], out_dir=tmp_path / "figs")
    axes = [ax for ax in o.figure.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in axes] == ["coverage_gt_0.99 ↑", "mse ↓"]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == [
        "blocks.0",
        "blocks.5",
        "blocks.11",
    ]
    sae = next(line for line in axes[1].lines if "topk" in line.get_label())
    # Seeds averaged: mse = 1/(layer+1) + 0.05.
    assert list(sae.get_ydata()) == pytest.approx([1.05, 0.55, 1 / 3 + 0.05])
    assert (tmp_path / "figs" / "layer-sweep.svg").exists()


def test_report_intervals_over_seeds_and_stored_images(tmp_path):
    results = _sweep_store(tmp_path / "sweep")
    rows = {(r.layer, r.sae_label, r.metric): r for r in summarise(results)}
    r = rows[("blocks.5", "topk[k=8]", "mse")]
    assert r.seeds == 2 and r.value == pytest.approx(0.55)
    half = scipy.stats.t.ppf(0.975, 1) * np.std([0.5, 0.6], ddof=1) / np.sqrt(2)
    assert (r.interval.low, r.interval.high) == (
        pytest.approx(0.55 - half),
        pytest.approx(0.55 + half),
    )
    assert r.interval.over == "95% Student t over 2 seeds"
    text = build_report(_manager(), results)
    assert "Student t over 2 seeds" in text
    assert 'id="artifacts"' in text and "grid.png" in text
    parser = _Parser()
    parser.feed(text)
    srcs = [a["src"] for t, a in parser.tags if t == "img"]
    assert any(s.startswith("data:image/png;base64,") for s in srcs)


def test_accuracy_vs_l0_marks_each_front_at_the_requested_l0(results):
    l0 = _records(results, "l0", "val").set_index(["layer", "sae_label"])["value"]
    acc = _records(results, "acc", "val").set_index(["layer", "sae_label"])["value"]
    (x0, y0), (x1, y1) = sorted((l0[("final", s)], acc[("final", s)]) for s in SAES[2:])
    mid = float(np.sqrt(x0 * x1))
    (o,) = draw_all(
        _manager(), results, names=["accuracy-vs-l0"], options=FigureOptions(at_l0=(mid, 1e6))
    )
    axes = [ax for ax in o.figure.axes if ax.get_visible()]
    assert len(axes) == 2 * 2  # (layer.0, final) x (val, shifted)
    ax = next(a for a in axes if a.get_title() == "toy-model · final" and "[val]" in a.get_ylabel())
    diamonds = [line for line in ax.lines if line.get_marker() == "D"]
    topk = next(d for d in diamonds if list(d.get_xdata()) == [pytest.approx(mid)])
    # Halfway in log L0 between the two TopK SAEs: the mean of their accuracies; 1e6 is beyond
    # every SAE and is not drawn.
    assert list(topk.get_ydata()) == [pytest.approx((y0 + y1) / 2)]
    assert all(1e6 not in list(d.get_xdata()) for d in diamonds)


def _drawn(fig: Any) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _disjoint(boxes: list[Any]) -> bool:
    return not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def _tick_labels(ax: Any, renderer: Any) -> list[Any]:
    """The x tick labels drawn inside the view limits (major and minor), as text objects."""
    lo, hi = sorted(ax.get_xlim())
    ticks = ax.xaxis.get_major_ticks() + ax.xaxis.get_minor_ticks()
    return [
        t.label1
        for t in ticks
        if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi
    ]


def test_figure_labels_and_titles_do_not_overlap(results):
    import dataclasses

    # Labels as long as the quickstart's, so that the ontology titles must wrap.
    long = {s: s.replace("[", "[b_dec_init=geometric-median,dead_after=2000,") for s in SAES}
    relabelled = dataclasses.replace(
        results, frame=results.frame.assign(sae_label=results.frame["sae_label"].replace(long))
    )
    outcomes = {
        o.name: o
        for o in draw_all(
            _manager(),
            relabelled,
            names=["reconstruction-pareto", "accuracy-vs-l0", "ontology-histograms"],
        )
    }
    for name in ("reconstruction-pareto", "accuracy-vs-l0"):
        fig = outcomes[name].figure
        renderer = _drawn(fig)
        for ax in (a for a in fig.axes if a.get_visible()):
            labels = _tick_labels(ax, renderer)
            assert 2 <= len(labels) <= 5, [t.get_text() for t in labels]
            # Plain numbers, no 2×10^1 mantissa labels.
            assert all(t.get_text().replace(".", "").isdigit() for t in labels)
            assert _disjoint([t.get_window_extent(renderer) for t in labels]), name
    # Without --at-l0 the title promises no diamonds.
    assert "--at-l0" not in outcomes["accuracy-vs-l0"].figure.get_suptitle()
    (o,) = draw_all(_manager(), results, names=["accuracy-vs-l0"], options=FigureOptions((4.0,)))
    assert "read at L0 = 4 " in o.figure.get_suptitle()

    fig = outcomes["ontology-histograms"].figure
    renderer = _drawn(fig)
    titles = [ax.title for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(titles) == 2 * 5 and any(t.get_text().count("\n") >= 2 for t in titles)
    boxes = [t.get_window_extent(renderer) for t in titles]
    boxes.append(fig._suptitle.get_window_extent(renderer))
    assert _disjoint(boxes)
    # Nor does a title run into the panel above it.
    panels = [ax.get_window_extent(renderer) for ax in fig.axes if ax.images]
    assert not any(b.overlaps(p) for b in boxes for p in panels)


def test_log_ticks_label_a_narrow_axis_with_a_few_plain_numbers():
    from matplotlib.figure import Figure

    from saebench_vision.figures import log_ticks

    for lo, hi, expected in (
        (8, 60, [10, 20, 50]),
        (8, 300, [10, 20, 50, 100, 200]),
        (2, 9000, [10, 100, 1000]),
        (1, 1e7, [1, 100, 1e4, 1e6]),
        (25, 45, [30, 40]),
        (31, 33, [31.6, 32.4]),
    ):
        ax = Figure().subplots()
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        assert log_ticks(ax) == pytest.approx(expected, rel=0.05), (lo, hi)


def test_export_json_matched_rows_record_their_options(output, capsys):
    assert main(["export", str(output), "--l0-budget", "1000", "--front-by", "plugin"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = [m for m in doc["matched"] if m["metric"] == "mse" and m["split"] == "val"]
    assert {m["front"] for m in rows} == {"relu", "topk"}
    for m in rows:
        assert m["front_by"] == ["plugin"] and m["l0_metric"] == "l0" and m["budget"] == 1000
        # Lower MSE is better: the best under a budget above every L0 is the front's minimum.
        assert m["best"]["value"] == min(p["value"] for p in m["points"])


def test_front_by_and_l0_budget_typos_are_one_line_errors(output, capsys):
    # A misspelt field would otherwise merge every expansion into one front, silently.
    assert main(["export", str(output), "--at-l0", "16", "--front-by", "plugin,expanson"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --front-by plugin,expanson: `expanson` is not a field")
    assert "Did you mean: expansion?" in err and len(err.splitlines()) == 1
    assert main(["export", str(output), "--l0-budget", "16,32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --l0-budget 16,32: one L0 value, not 2; write e.g. --l0-budget 64"
    assert main(["export", str(output), "--l0-budget", "abc"]) == 2
    assert "--l0-budget abc: 'abc' is not a number; write e.g. --l0-budget 64" in (
        capsys.readouterr().err
    )


def test_plot_writes_every_figure_and_each_evaluators_table(output, tmp_path, capsys):
    assert main(["plot", str(output), "--out", str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    assert {Path(p).name for p in written} >= {"reconstruction-pareto.svg", "table-ontology.tex"}
    table = (tmp_path / "table-ood-accuracy.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert "acc[val] ↑" in header and "acc[shifted] ↑" in header
    body = [line for line in table.splitlines() if line.startswith("| toy-model")]
    assert len(body) == 2 * 5  # (baseline + 4 SAEs) x 2 layers
    assert all(any(label in line for line in body) for label in SAES)
