"""Results store and leaderboard tables: order, arrows, seeds, formats."""

from __future__ import annotations

import csv
import io

import pytest

from saebench_vision.interfaces import Record
from saebench_vision.leaderboard import pivot, render, t95
from saebench_vision.results import CellKey, ResultsStore


def cell(
    i: int, sae: str, seed: int = 0, layer: str = "final", evaluator: str = "reconstruction"
) -> CellKey:
    return CellKey(
        f"cell{i}", "toy", layer, "cls", f"sae{i}", sae, "relu", {}, evaluator, "1", seed
    )


@pytest.fixture
def store(tmp_path):
    s = ResultsStore(tmp_path)
    # Suite order deliberately not alphabetical: zeta before alpha, layer b before a.
    cells = [
        cell(0, "zeta", 0, "b"),
        cell(1, "alpha", 0, "b"),
        cell(2, "zeta", 1, "b"),
        cell(3, "alpha", 1, "b"),
        cell(4, "zeta", 0, "a"),
    ]
    s.register_suite("h1", cells, [("val", "eval"), ("sketch", "shifted")])
    run = s.start_run(
        suite_name="toy",
        suite_path="x.yaml",
        suite_hash="h1",
        suite_json={},
        versions={"builtin-saes": "saebench-vision 0.1.0"},
        argv=[],
    )
    values = {0: 1.0, 1: 3.0, 2: 2.0, 3: 3.0, 4: 5.0}
    for c in cells:
        v = values[int(c.cell_id[-1])]
        s.add_cell(
            run,
            c,
            [
                Record("mse", v, "sketch", higher_is_better=False),
                Record("mse", v / 10, "val", higher_is_better=False),
                Record("ev", 0.5, "val", higher_is_better=True),
            ],
            0.1,
        )
    s.finish_run(run, "finished")
    return s


def test_records_keep_suite_order_and_seeds_average(store):
    frame = store.records_frame("h1")
    headers, rows, raw = pivot(frame, layout="wide")
    assert headers == ["model", "layer", "SAE", "mse[val] ↓", "mse[sketch] ↓", "ev[val] ↑"]
    assert [r[:3] for r in rows] == [
        ["toy", "b", "zeta"],
        ["toy", "b", "alpha"],
        ["toy", "a", "zeta"],
    ]
    # zeta on layer b: seeds give 1.0 and 2.0 -> mean 1.5, CI = t(1) * sd / sqrt(2)
    assert raw[0][4] == pytest.approx(1.5)
    ci = t95(1) * (0.5**0.5) / 2**0.5  # 6.35: two significant digits, the mean to match
    assert rows[0][4] == f"1.5 ± {ci:.1f}" == "1.5 ± 6.4"
    assert rows[1][4] == "3"  # two equal seeds: CI zero, not shown
    assert rows[2][4] == "5"  # one seed, no stderr: no interval


def test_long_layout_puts_splits_in_rows(store):
    headers, rows, _ = pivot(store.records_frame("h1"), layout="long")
    assert headers == ["model", "layer", "SAE", "split", "mse ↓", "ev ↑"]
    assert [r[3] for r in rows[:2]] == ["val", "sketch"]
    assert rows[1][5] == "–"


def test_filters(store):
    headers, _, _ = pivot(store.records_frame("h1"), layout="wide", metrics=["reconstruction/ev"])
    assert headers[3:] == ["ev[val] ↑"]
    headers, _, _ = pivot(store.records_frame("h1"), layout="wide", splits=["sketch"])
    assert headers[3:] == ["mse[sketch] ↓"]


@pytest.mark.parametrize("fmt", ["md", "csv", "latex", "html"])
def test_formats(store, fmt):
    text = render(
        store.records_frame("h1"),
        fmt=fmt,
        layout="wide",
        title="toy (h1)",
        versions=store.versions_for("h1"),
    )
    if fmt == "md":
        assert (
            "| model   | layer   | SAE" in text
            and "mse[val] ↓" in text
            and "plugins: builtin-saes saebench-vision 0.1.0" in text
        )
    elif fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))
        assert rows[0] == [
            "model",
            "layer",
            "SAE",
            *(
                f"{m}{suffix}"
                for m in ("mse[val]", "mse[sketch]", "ev[val]")
                for suffix in ("", " stderr", " ci95")
            ),
            "interval",
        ]
        # Each row says what its ci95 is: zeta and alpha on layer b have two seeds, a one.
        assert [r[-1] for r in rows[1:]] == [
            "student-t over 2 seeds",
            "student-t over 2 seeds",
            "1.96 x evaluator stderr",
        ]
        # zeta on layer b, sketch: seeds 1.0 and 2.0 -> sd 0.707, stderr 0.5, CI t(1) x 0.5.
        assert float(rows[1][6]) == 1.5
        assert float(rows[1][7]) == pytest.approx(0.5)
        assert float(rows[1][8]) == pytest.approx(t95(1) * 0.5)
        assert rows[3][7] == rows[3][8] == ""  # one seed and no stderr: no interval
    elif fmt == "latex":
        assert r"\toprule" in text and r"$\downarrow$" in text and r"$\pm$" in text
    else:
        assert (
            text.startswith("<!DOCTYPE html>")
            and "<th>mse[val] ↓</th>" in text
            and "</table>" in text
        )


def test_cell_is_replaced_not_duplicated(store):
    run = store.start_run(
        suite_name="toy", suite_path="x", suite_hash="h1", suite_json={}, versions={}, argv=[]
    )
    store.add_cell(run, cell(0, "zeta", 0, "b"), [Record("mse", 9.0, "sketch")], 0.1)
    frame = store.records_frame("h1")
    sub = frame[(frame.sae_label == "zeta") & (frame.seed == 0) & (frame.layer == "b")]
    assert sub["value"].tolist() == [9.0]
    assert store.progress("h1") == (5, 5)


def test_empty_and_missing(tmp_path):
    from saebench_vision.errors import ResultsError
    from saebench_vision.results import open_store

    with pytest.raises(ResultsError, match="no results database here"):
        open_store(tmp_path / "nothing", must_exist=True)
    s = ResultsStore(tmp_path)
    with pytest.raises(ResultsError, match="no runs recorded"):
        s.latest_suite_hash()
    assert render(s.records_frame("none"), fmt="md") == "(no results yet)\n"


def test_corrupt_database_is_one_line(tmp_path):
    from saebench_vision.errors import ResultsError

    (tmp_path / "results.sqlite").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(
        ResultsError, match="the results database is damaged .*; move it aside"
    ) as info:
        ResultsStore(tmp_path)
    assert "\n" not in str(info.value)


def test_versions_come_from_the_runs_that_computed_cells(store):
    # A warm run that computed nothing does not change the provenance shown.
    warm = store.start_run(
        suite_name="toy",
        suite_path="x",
        suite_hash="h1",
        suite_json={},
        versions={"torch": "9"},
        argv=[],
    )
    store.finish_run(warm, "finished")
    assert store.versions_for("h1") == {"builtin-saes": "saebench-vision 0.1.0"}
    # A run that recomputed a cell with other versions shows both.
    newer = store.start_run(
        suite_name="toy",
        suite_path="x",
        suite_hash="h1",
        suite_json={},
        versions={"builtin-saes": "saebench-vision 0.2.0"},
        argv=[],
    )
    store.add_cell(newer, cell(0, "zeta", 0, "b"), [Record("mse", 1.0, "sketch")], 0.1)
    assert store.versions_for("h1") == {
        "builtin-saes": "saebench-vision 0.1.0 / saebench-vision 0.2.0"
    }
    assert store.suite_name("h1") == "toy"


def test_row_order_does_not_depend_on_the_metric_filter(tmp_path):
    s = ResultsStore(tmp_path)
    base_a = CellKey("a0", "m", "final", "cls", "", "baseline", "", {}, "recon", "1", 0)
    sae_a = CellKey("a1", "m", "final", "cls", "s", "relu", "relu", {}, "recon", "1", 0)
    base_b = CellKey("b0", "m", "final", "cls", "", "baseline", "", {}, "probe", "1", 0)
    sae_b = CellKey("b1", "m", "final", "cls", "s", "relu", "relu", {}, "probe", "1", 0)
    s.register_suite("h", [base_a, sae_a, base_b, sae_b], [("val", "eval")])
    run = s.start_run(
        suite_name="t", suite_path="t", suite_hash="h", suite_json={}, versions={}, argv=[]
    )
    s.add_cell(run, base_a, [], 0.0)  # this evaluator has no baseline rows
    s.add_cell(run, sae_a, [Record("mse", 1.0, "val")], 0.0)
    s.add_cell(run, base_b, [Record("acc", 0.9, "val")], 0.0)
    s.add_cell(run, sae_b, [Record("acc", 0.8, "val")], 0.0)
    for metrics in ((), ("acc",), ("mse", "acc")):
        _, rows, _ = pivot(s.records_frame("h"), layout="wide", metrics=metrics)
        assert [r[2] for r in rows] == ["baseline", "relu"], metrics


def test_interval_formatting():
    from saebench_vision.leaderboard import format_value

    assert format_value(0.88889, 0.03749) == "0.889 ± 0.037"
    assert format_value(854.2, 14.56) == "854 ± 15"
    assert format_value(87.92, 1.99) == "87.9 ± 2.0"
    assert format_value(2560.0) == "2560" and format_value(0.5056) == "0.5056"
    assert format_value(None) == "–"
    assert format_value(float("nan")) == "nan" and format_value(float("-inf")) == "-inf"


def test_filter_matching_nothing_says_what_exists(store):
    from saebench_vision.leaderboard import FilterError

    # Each filter matches something, but not together: what exists is listed.
    with pytest.raises(
        FilterError, match="no results match the filters; metrics: mse, ev; splits: val, sketch"
    ):
        pivot(store.records_frame("h1"), metrics=["ev"], splits=["sketch"])


def test_a_metric_or_split_typo_is_an_error_with_a_suggestion(store):
    from saebench_vision.leaderboard import FilterError

    frame = store.records_frame("h1")
    # One good pattern beside the typo: the typo is not silently dropped.
    with pytest.raises(
        FilterError,
        match=r"^--metric mes: matches no stored metric\. Did you mean: mse\? \(metrics: mse, ev\)$",
    ):
        pivot(frame, metrics=["ev", "mes"])
    with pytest.raises(FilterError, match=r"--metric nosuch: .*\(metrics: mse, ev\)$"):
        pivot(frame, metrics=["nosuch"])
    with pytest.raises(FilterError, match=r"Did you mean: reconstruction/mse[,?]"):
        pivot(frame, metrics=["reconstruction/mes"])
    with pytest.raises(
        FilterError, match=r"^--split skech: no results on that split\. Did you mean: sketch\?"
    ):
        pivot(frame, splits=["val", "skech"])
    # Globs and evaluator/metric names that match are accepted.
    headers, _, _ = pivot(frame, layout="wide", metrics=["m*", "reconstruction/ev"])
    assert headers[3:] == ["mse[val] ↓", "mse[sketch] ↓", "ev[val] ↑"]


def test_every_format_says_which_interval_its_plus_minus_is(store, tmp_path):
    # Two seeds per row: Student t over seeds, as the report shows too.
    frame = store.records_frame("h1")
    md = render(frame[frame["layer"] == "b"], fmt="md", layout="wide", metrics=["mse"])
    assert "1.5 ± 6.4" in md
    (line,) = [x for x in md.splitlines() if x.startswith("±:")]
    assert "Student-t interval over seeds" in line and "1.96" not in line
    assert "shows the same Student-t interval" in line
    # Layer a has one seed: both kinds are named.
    (line,) = [x for x in render(frame, fmt="md").splitlines() if x.startswith("±:")]
    assert "where a row has several seeds, else 1.96 x the standard error" in line
    # One seed with evaluator stderrs: 1.96 SE, and the report's bootstrap named as different.
    s = ResultsStore(tmp_path)
    c = cell(0, "zeta")
    s.register_suite("h9", [c, cell(1, "alpha")], [("val", "eval")])
    run = s.start_run(
        suite_name="toy", suite_path="x.yaml", suite_hash="h9", suite_json={}, versions={}, argv=[]
    )
    s.add_cell(run, c, [Record("acc", 0.8, "val", stderr=0.02, higher_is_better=True)], 0.1)
    one = s.records_frame("h9")
    for fmt, prefix in (("md", "±: "), ("latex", "% ±: "), ("html", "<p><small>±: ")):
        text = render(one, fmt=fmt, layout="wide")
        assert "0.800 ± 0.039" in text or r"0.800 $\pm$ 0.039" in text
        (line,) = [x for x in text.splitlines() if prefix in x]
        assert "1.96 x the standard error the evaluator reported" in line
        assert "bootstrap" in line and "Student" not in line
    # Nothing with ± in the table: no footnote.
    s.add_cell(run, cell(1, "alpha"), [Record("n", 3.0, "val")], 0.1)
    assert "±" not in render(s.records_frame("h9"), fmt="md", metrics=["n"])


def test_roles_filter(store):
    headers, _, _ = pivot(store.records_frame("h1"), layout="wide", roles=["shifted"])
    assert headers[3:] == ["mse[sketch] ↓"]


def test_long_layout_follows_suite_split_order(tmp_path):
    s = ResultsStore(tmp_path)
    cells = [cell(0, "baseline", evaluator="probe"), cell(1, "zeta", evaluator="reconstruction")]
    s.register_suite("h2", cells, [("train", "train"), ("val", "eval"), ("sketch", "shifted")])
    run = s.start_run(
        suite_name="t", suite_path="x", suite_hash="h2", suite_json={}, versions={}, argv=[]
    )
    # The first row has no train records; train must still come first, as in the suite.
    s.add_cell(run, cells[0], [Record("acc", 0.5, "sketch"), Record("acc", 0.7, "val")], 0.1)
    s.add_cell(run, cells[1], [Record("mse", 1.0, "val"), Record("mse", 2.0, "train")], 0.1)
    s.finish_run(run, "finished")
    frame = s.records_frame("h2")
    _, rows, _ = pivot(frame, layout="long")
    assert [(r[2], r[3]) for r in rows] == [
        ("baseline", "val"),
        ("baseline", "sketch"),
        ("zeta", "train"),
        ("zeta", "val"),
    ]
    headers, _, _ = pivot(frame, layout="wide")
    assert headers[3:] == ["acc[val]", "acc[sketch]", "mse[train]", "mse[val]"]


def test_leaderboard_finds_results_folders(tmp_path, monkeypatch, capsys):
    from saebench_vision.cli import find_results_folder, main
    from saebench_vision.errors import SaebenchError

    with pytest.raises(SaebenchError, match="no results database"):
        find_results_folder(tmp_path)
    first = tmp_path / "saebench-results" / "quickstart"
    ResultsStore(first)
    assert find_results_folder(tmp_path) == first
    ResultsStore(tmp_path / "saebench-results" / "table1")
    with pytest.raises(SaebenchError) as err:
        find_results_folder(tmp_path)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("2 results folders")
    assert lines[1].strip().endswith("saebench-results/quickstart") and "table1" in lines[2]
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard"]) == 2
    assert "saebench leaderboard saebench-results/table1" in capsys.readouterr().err
    for command in ("plot", "report", "export"):  # the same default for every results reader
        assert main([command]) == 2
        assert f"saebench {command} saebench-results/table1" in capsys.readouterr().err


def _nonfinite_store(tmp_path, sae_label="zeta"):
    s = ResultsStore(tmp_path)
    cells = [cell(0, sae_label), cell(1, "alpha")]
    s.register_suite("h2", cells, [("val", "eval")])
    run = s.start_run(
        suite_name="toy", suite_path="x.yaml", suite_hash="h2", suite_json={}, versions={}, argv=[]
    )
    s.add_cell(
        run,
        cells[0],
        [
            Record("ev", float("nan"), "val", higher_is_better=True),
            Record("mse", float("inf"), "val", stderr=float("nan"), higher_is_better=False),
            Record("big", 3.0e61, "val"),
        ],
        0.1,
    )
    # alpha computed mse only: its ev is "not computed", not NaN.
    s.add_cell(run, cells[1], [Record("mse", 0.25, "val", higher_is_better=False)], 0.1)
    s.finish_run(run, "finished")
    return s


def test_nonfinite_values_are_stored_and_shown_unlike_missing_ones(tmp_path, capsys):
    import math

    s = _nonfinite_store(tmp_path)
    err = capsys.readouterr().err
    assert (
        "warning: cell cell0 (toy final zeta reconstruction): metric ev on split val is value nan"
        in err
    )
    assert "metric mse on split val is value inf, stderr nan" in err
    frame = s.records_frame("h2")
    got = {(r.sae_label, r.metric): (r.value, r.stderr) for r in frame.itertuples()}
    assert math.isnan(got[("zeta", "ev")][0])
    assert got[("zeta", "mse")][0] == math.inf and math.isnan(got[("zeta", "mse")][1])
    assert got[("alpha", "mse")] == (0.25, pytest.approx(float("nan"), nan_ok=True))
    assert "extra_json" not in frame.columns
    headers, display, _ = pivot(frame, layout="wide")
    row = {h.split(" ")[0]: v for h, v in zip(headers, display[0])}
    other = {h.split(" ")[0]: v for h, v in zip(headers, display[1])}
    assert row["ev[val]"] == "nan" and row["mse[val]"] == "inf"
    assert other["ev[val]"] == "–" and other["mse[val]"] == "0.25"
    lines = list(csv.reader(io.StringIO(render(frame, fmt="csv", layout="wide"))))
    table = {h: (a, b) for h, a, b in zip(lines[0], lines[1], lines[2])}
    assert table["ev[val]"] == ("nan", "") and table["mse[val]"] == ("inf", "0.25")


def test_huge_numbers_print_in_scientific_notation(tmp_path):
    frame = _nonfinite_store(tmp_path).records_frame("h2")
    md = render(frame, fmt="md", layout="wide", metrics=["big"])
    assert "3.0000e+61" in md and "0000000000" not in md
    from saebench_vision.leaderboard import format_value

    assert format_value(3.0e61, 2.0e60) == "3.0000e+61 ± 2.0000e+60"
    assert format_value(123456789012.0) == "123456789012"


def test_markdown_escapes_pipes_in_labels(tmp_path):
    frame = _nonfinite_store(tmp_path, sae_label="a|b").records_frame("h2")
    md = render(frame, fmt="md", layout="wide", metrics=["mse"])
    rows = [line for line in md.splitlines() if line.startswith("| toy")]
    assert any("a\\|b" in line for line in rows)
    # Unescaped pipes are cell borders: every row has as many as the header.
    borders = {
        line.replace("\\|", "").count("|") for line in md.splitlines() if line.startswith("|")
    }
    assert len(borders) == 1


def test_report_tables_show_a_computed_nan_unlike_a_missing_value(tmp_path):
    from saebench_vision.report import _wide_table
    from saebench_vision.resultset import ResultSet
    from saebench_vision.summary import summarise

    rows = summarise(ResultSet.load(_nonfinite_store(tmp_path), "h2"))
    by = {(r.sae_label, r.metric): r for r in rows}
    assert by[("zeta", "mse")].value == float("inf") and by[("zeta", "mse")].interval is None
    table = _wide_table("t", rows)
    zeta = next(line for line in table.split("<tr>") if ">zeta<" in line)
    alpha = next(line for line in table.split("<tr>") if ">alpha<" in line)
    assert ">nan<" in zeta and ">inf<" in zeta
    assert ">nan<" not in alpha and ">–<" in alpha
