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
        assert rows[0] == ["model", "layer", "SAE", "mse[val]", "mse[sketch]", "ev[val]"]
        assert float(rows[1][4]) == 1.5
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
    assert format_value(float("nan")) == "–"


def test_filter_matching_nothing_says_what_exists(store):
    from saebench_vision.leaderboard import FilterError

    with pytest.raises(
        FilterError, match="no results match the filters; metrics: mse, ev; splits: val, sketch"
    ):
        pivot(store.records_frame("h1"), metrics=["nosuch"])


def test_roles_filter(store):
    headers, _, _ = pivot(store.records_frame("h1"), layout="wide", roles=["shifted"])
    assert headers[3:] == ["mse[sketch] ↓"]
