"""The saebench command: help, validate, errors as one line, leaderboard from a folder."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, builtins_only_env

from saebench_vision.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "validate", "plugins", "layers", "leaderboard"):
        assert command in out
    for command in ("run", "validate", "plugins", "layers", "leaderboard"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "usage: saebench " + command in capsys.readouterr().out


def test_validate_quickstart_imports_no_torch():
    code = textwrap.dedent(
        f"""
        import sys
        from saebench_vision.cli import main
        code = main(["validate", "--light", {str(REPO / "suites" / "quickstart.yaml")!r}])
        print("EXIT", code, "TORCH", "torch" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=builtins_only_env(),
    )
    assert "EXIT 0 TORCH False" in out.stdout, out.stdout + out.stderr
    assert (
        "quickstart.yaml: ok (names, options and types checked) - 1 model(s), 2 layer(s)"
        in out.stdout
    )


def test_validate_checks_layer_names_by_default(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the suite's relative `output` would land here
    text = (
        (REPO / "suites" / "quickstart.yaml")
        .read_text()
        .replace("[blocks.10, final]", "[blocks.10, blocks.99]")
    )
    path = tmp_path / "q.yaml"
    path.write_text(text)
    assert main(["validate", "--light", str(path)]) == 0
    capsys.readouterr()
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {path}: models[0].layers: model `efficientnet-lite` has no layer 'blocks.99'"
    )
    assert not (tmp_path / "saebench-results").exists()


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "models: [{plugin: efficientnet-lite, args: {variant: lite9}}]\ndatasets: {}\nsaes: []\nevaluators: []\n"
    )
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        f"error: {bad}: models[0].args.variant: 'lite9' is not one of lite0, lite1, lite2"
    )
    assert main(["leaderboard", str(tmp_path / "nowhere")]) == 2
    assert "no results database here" in capsys.readouterr().err


def test_layers_lists_adapter_layers(capsys):
    assert main(["layers", "efficientnet-lite", "--arg", "variant=lite0"]) == 0
    layers = capsys.readouterr().out.split()
    assert layers[0] == "blocks.0" and layers[-1] == "final"
    assert main(["layers", "efficientnet-lite", "--arg", "variant"]) == 2
    assert "write KEY=VALUE" in capsys.readouterr().err


def test_plugins_verbose_lists_options(capsys):
    assert main(["plugins", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "sae `topk`" in out and "k: an integer" in out


def test_leaderboard_from_folder_writes_file(tmp_path, capsys):
    from saebench_vision.interfaces import Record
    from saebench_vision.results import CellKey, ResultsStore

    store = ResultsStore(tmp_path)
    cell = CellKey(
        "c1", "m", "final", "cls", "s1", "relu[k=1]", "relu", {}, "reconstruction", "1", 0
    )
    store.register_suite("abc", [cell], [("val", "eval")])
    run = store.start_run(
        suite_name="s", suite_path="s.yaml", suite_hash="abc", suite_json={}, versions={}, argv=[]
    )
    store.add_cell(run, cell, [Record("mse", 0.25, "val", higher_is_better=False)], 0.0)
    out = tmp_path / "board.html"
    assert main(["leaderboard", str(tmp_path), "--format", "html", "--out", str(out)]) == 0
    html = out.read_text()
    assert "<th>mse ↓</th>" in html and "<td>0.25</td>" in html
    assert main(["leaderboard", str(tmp_path), "--format", "md", "--layout", "wide"]) == 0
    assert "| relu[k=1] " in capsys.readouterr().out


def test_address_without_the_ray_executor_is_one_line(capsys):
    code = main(["run", str(REPO / "suites" / "quickstart.yaml"), "--address", "auto"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err == "error: --address auto: only the ray executor joins a cluster; add --executor ray\n"
    )


RANGE_SUITE = """\
models: [{plugin: efficientnet-lite, layers: [final]}]
datasets:
  train: {plugin: shapes, args: {split: train}}
  val: {plugin: shapes, args: {split: val}, role: eval}
saes:
  - {plugin: topk, args: {k: 8}}
  - SAE
evaluators: [reconstruction, EVALUATOR]
training: TRAINING
"""


@pytest.mark.parametrize(
    "sae,evaluator,training,expected",
    [
        (  # an SAE field's range, a tuple field shown as the YAML list it was written as
            "{plugin: matryoshka, args: {prefix_fractions: [0.5, 0.25, 1.0]}}",
            "ontology",
            "{}",
            "saes[1].args.prefix_fractions: [0.5, 0.25, 1.0] must be a list that increases "
            "strictly from above 0 to 1.0 (nested part sizes",
        ),
        (
            "{plugin: topk, args: {k: 0}}",
            "ontology",
            "{}",
            "saes[1].args.k: 0 must be at least 1 (latents kept per sample)",
        ),
        (  # a swept value is named where it is written
            "{plugin: batch-topk, sweep: {topk_warmup: [0.2, 1.5]}}",
            "ontology",
            "{}",
            "saes[1].sweep.topk_warmup[1]: 1.5 must be at least 0 and below 1 (fraction of",
        ),
        (
            "{plugin: relu}",
            "{plugin: ood-accuracy, args: {memory_budget_gb: -2}}",
            "{}",
            "evaluators[1].args.memory_budget_gb: -2.0 must be 0 or more",
        ),
        (  # two fields checked together: the path of the first, the other in the fix
            "{plugin: relu}",
            "ontology",
            "{warmup_fraction: 0.7, decay_fraction: 0.5}",
            "training.warmup_fraction: 0.7 must be at most 1 - decay_fraction (0.5)",
        ),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_config_range_errors_name_the_field_path_in_one_line(
    tmp_path, capsys, monkeypatch, command, sae, evaluator, training, expected
):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "suite.yaml"
    path.write_text(
        RANGE_SUITE.replace("SAE", sae)
        .replace("EVALUATOR", evaluator)
        .replace("TRAINING", training)
    )
    assert main([command, str(path)]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and "Traceback" not in err + captured.out, err
    assert err.startswith(f"error: {path}: {expected}"), err
    assert not (tmp_path / "saebench-results").exists()


@pytest.mark.parametrize(
    "model_args,shapes_args,expected",
    [
        ("{image_size: 4}", "{}", "models[0].args.image_size: 4 must be at least 8 pixels"),
        ("{}", "{severity: 9}", "datasets.train.args.severity: 9 must be between 1 and 5"),
    ],
)
def test_model_and_dataset_range_errors_name_the_field_path(
    tmp_path, capsys, model_args, shapes_args, expected
):
    path = tmp_path / "suite.yaml"
    path.write_text(
        f"models: [{{plugin: efficientnet-lite, layers: [final], args: {model_args}}}]\n"
        f"datasets: {{train: {{plugin: shapes, args: {shapes_args}}}}}\n"
        "saes: [topk]\nevaluators: [reconstruction]\n"
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: {expected}"), err
