"""Adversarial inputs for every command: an exit code of 0, 1 or 2, one line on error, never a
traceback, and never the catch-all's "this is a bug" line (every failure has its own message)."""

from __future__ import annotations

from pathlib import Path

import pytest

from saebench_vision import cli
from saebench_vision.interfaces import Record
from saebench_vision.results import CellKey, ResultsStore

GOOD_SUITE = """\
name: sweep
output: {out}
models:
  - plugin: efficientnet-lite
    args: {{variant: lite0, image_size: 32}}
    layers: [final]
    tokens: cls
datasets:
  train: {{plugin: shapes, args: {{split: train, size: 16, image_size: 32}}}}
  val: {{plugin: shapes, args: {{split: val, size: 16, image_size: 32}}, role: eval}}
saes:
  - plugin: relu
    args: {{expansion: 1}}
evaluators:
  - plugin: reconstruction
"""

FILES = {
    "empty.yaml": b"",
    "garbage.yaml": bytes(range(256)) * 4,
    "latin1.yaml": "name: caf\xe9\n".encode("latin-1"),
    "nul.yaml": b"name: a\x00b\n",
    "list.yaml": b"- 1\n- 2\n",
    "scalar.yaml": b"42\n",
    "syntax.yaml": b"name: [unclosed\nmodels: {\n",
    "tabs.yaml": b"name: x\n\tmodels: []\n",
    "name-only.yaml": b"name: x\n",
    "bad-models.yaml": b"name: x\nmodels: 3\ndatasets: {}\nsaes: []\nevaluators: []\n",
    "anchors.yaml": b"a: &a [1]\nb: *a\nc: *nope\n",
    "results/results.sqlite": b"",  # a zero-byte store
    "garbage-results/results.sqlite": b"SQLite format 3\x00" + b"\xff" * 4096,
    "text-results/results.sqlite": b"not a database at all\n" * 10,
    "notes.txt": b"hello\n",
}

RESULTS_COMMANDS = ("leaderboard", "plot", "report", "export")

BAD: list[list[str]] = [
    [],
    ["--no-such-flag"],
    ["nosuchcommand"],
    ["run"],
    ["run", "{tmp}/missing.yaml"],
    ["run", "{tmp}"],
    ["run", "{tmp}/good.yaml", "--threads", "abc"],
    ["run", "{tmp}/good.yaml", "--threads", "-3"],
    ["run", "{tmp}/good.yaml", "--executor", "slurm"],
    ["run", "{tmp}/good.yaml", "--address", "auto"],
    ["run", "{tmp}/good.yaml", "--format", "docx"],
    ["validate"],
    ["validate", "{tmp}/missing.yaml"],
    ["validate", "{tmp}"],
    ["validate", "--light", "{tmp}/notes.txt"],
    ["plugins", "--json"],
    ["plugins", "--verbose"],
    ["plugins", "extra"],
    ["layers"],
    ["layers", "no-such-model"],
    ["layers", "efficientnet-lite", "--arg", "novalue"],
    ["layers", "efficientnet-lite", "--arg", "variant=["],
    ["layers", "efficientnet-lite", "--arg", "nosuchkey=1"],
    ["layers", "efficientnet-lite", "--arg", "variant=lite9"],
    ["layers", "efficientnet-lite", "--arg", "image_size=abc"],
    ["layers", "shapes"],
]
BAD += [["validate", "{tmp}/" + name] for name in FILES if name.endswith(".yaml")]
BAD += [["validate", "--light", "{tmp}/" + name] for name in ("garbage.yaml", "syntax.yaml")]
for command in RESULTS_COMMANDS:
    BAD += [
        [command, "{tmp}/missing"],
        [command, "{tmp}/notes.txt"],
        [command, "{tmp}/empty.yaml"],
        [command, "{tmp}/syntax.yaml"],
        [command, "{tmp}/emptydir"],
        [command, "{tmp}/results"],
        [command, "{tmp}/garbage-results"],
        [command, "{tmp}/text-results"],
        [command, "{tmp}/good.yaml"],  # a valid suite that never ran
        [command, "{tmp}/store", "--suite-hash", "nosuchhash"],
        [command, "{tmp}/store", "--suite-hash", ""],
        [command, "{tmp}/store", "--results", "{tmp}/missing"],
    ]
BAD += [
    ["leaderboard", "{tmp}/store"],
    ["leaderboard", "{tmp}/store", "--metric", "nomatch*"],
    ["leaderboard", "{tmp}/store", "--split", "nosplit"],
    ["leaderboard", "{tmp}/store", "--format", "xlsx"],
    ["leaderboard", "{tmp}/store", "--layout", "tall"],
    ["leaderboard", "{tmp}/store", "--out", "{tmp}/missing/dir/board.md"],
    ["leaderboard", "{tmp}/store", "--out", "{tmp}/emptydir"],
    ["leaderboard", "{tmp}/store", "--format", "latex", "--all-metrics"],
    ["plot", "{tmp}/store", "--figure", "no-such-figure"],
    ["plot", "{tmp}/store", "--dpi", "0"],
    ["plot", "{tmp}/store", "--dpi", "-5"],
    ["plot", "{tmp}/store", "--dpi", "x"],
    ["plot", "{tmp}/store", "--at-l0", "abc"],
    ["plot", "{tmp}/store", "--at-l0", "-1,0"],
    ["plot", "{tmp}/store", "--l0-budget", "lots"],
    ["plot", "{tmp}/store", "--front-by", ""],
    ["plot", "{tmp}/store", "--front-by", "plugin,expanson"],
    ["export", "{tmp}/store", "--l0-budget", "16,32"],
    ["leaderboard", "{tmp}/store", "--metric", "mes"],
    ["plot", "{tmp}/store", "--out", "{tmp}/notes.txt"],
    ["plot", "--list"],
    ["report", "{tmp}/store", "--confidence", "2"],
    ["report", "{tmp}/store", "--confidence", "nan"],
    ["report", "{tmp}/store", "--resamples", "-1"],
    ["report", "{tmp}/store", "--bootstrap-max-items", "-5"],
    ["report", "{tmp}/store", "--compare", "nonsense"],
    ["report", "{tmp}/store", "--compare", "zeta vs nobody"],
    ["report", "{tmp}/store", "--out", "{tmp}/emptydir"],
    ["report", "{tmp}/store", "--out", "{tmp}/missing/dir/r.html"],
    ["report", "{tmp}/store", "--dpi", "0"],
    ["export", "{tmp}/store", "--format", "parquet"],
    ["export", "{tmp}/store", "--format", "xml"],
    ["export", "{tmp}/store", "--out", "{tmp}/emptydir"],
    ["export", "{tmp}/store", "--format", "csv", "--out", "{tmp}/missing/dir/x.csv"],
    ["export", "{tmp}/store", "--confidence", "0"],
]


# Suites that read well as YAML and fail on a value: (file name, replaced text, replacement).
BAD_VALUES = {
    "expansion-inf.yaml": ("expansion: 1", "expansion: .inf"),
    "seed-huge.yaml": ("saes:", "seeds: [1180591620717411303424]\nsaes:"),
    "lr-nan.yaml": ("evaluators:", "training: {{lr: .nan}}\nevaluators:"),
    "args-int.yaml": ("args: {{expansion: 1}}", "args: 5"),
    "layer-unknown.yaml": ("layers: [final]", "layers: [nope]"),
    "tokens-text.yaml": ("tokens: cls", "tokens: text"),
    "bad-on-bad-file.yaml": (
        "{{plugin: shapes, args: {{split: val, size: 16, image_size: 32}}, role: eval}}",
        "{{plugin: image-folder, args: {{root: /, on_bad_file: maybe}}, role: eval}}",
    ),
}
BAD += [["validate", "--light", "{tmp}/" + name] for name in BAD_VALUES]
BAD += [["validate", "{tmp}/layer-unknown.yaml"], ["validate", "{tmp}/tokens-text.yaml"]]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    for name, data in FILES.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    (tmp / "emptydir").mkdir()
    (tmp / "good.yaml").write_text(GOOD_SUITE.format(out=tmp / "never-ran"))
    for name, (old, new) in BAD_VALUES.items():
        assert old in GOOD_SUITE, name
        text = GOOD_SUITE.replace(old, new)
        (tmp / name).write_text(text.format(out=tmp / "never-ran"))
    store = ResultsStore(tmp / "store")
    cells = [
        CellKey(
            f"c{i}", "toy", "final", "cls", f"s{i}", label, "relu", {}, "reconstruction", "1", 0
        )
        for i, label in enumerate(("zeta", "alpha"))
    ]
    store.register_suite("h1", cells, [("val", "eval")])
    run = store.start_run(
        suite_name="toy", suite_path="x.yaml", suite_hash="h1", suite_json={}, versions={}, argv=[]
    )
    for i, c in enumerate(cells):
        store.add_cell(run, c, [Record("mse", 0.5 + i, "val", higher_is_better=False)], 0.1)
    store.finish_run(run, "finished")
    store.close()
    return tmp


@pytest.mark.parametrize("argv", BAD, ids=lambda a: " ".join(a)[:80] or "(none)")
def test_every_command_fails_cleanly(
    argv: list[str],
    sandbox: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(sandbox / "emptydir")
    monkeypatch.delenv("SAEBENCH_VISION_DEBUG", raising=False)
    args = [a.replace("{tmp}", str(sandbox)) for a in argv]
    try:
        code = cli.main(args)
    except SystemExit as exc:  # argparse: --help, usage errors
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert "this is a bug" not in err, err
    if code:
        # Informational lines (warnings, notes, figures skipped for want of data) may come
        # before; the failure itself is one line.
        info = ("warning:", "note:", "skipped ")
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith(info)]
        assert len(lines) == 1, err


def test_a_real_process_prints_one_line_and_debug_shows_the_traceback(sandbox: Path) -> None:
    import subprocess
    import sys

    argv = [sys.executable, "-m", "saebench_vision", "validate", str(sandbox / "nul.yaml")]
    plain = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr.count("\n") == 1 and plain.stderr.startswith("error: ")
    assert "nul.yaml" in plain.stderr
    debug = subprocess.run(
        [*argv[:3], "--debug", *argv[3:]], capture_output=True, text=True, timeout=120
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr
