"""validate knows what run will find: input kinds, per-layer token kinds, per-layer token
selections (parsed, planned and extracted), every unopenable split at once."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from test_runner import SUITE, write_suite

from saebench_vision.cache import ActivationCache
from saebench_vision.errors import SaebenchError, SuiteError
from saebench_vision.runner import Runner, plan_suite, preflight
from saebench_vision.suite import load_suite

SHAPES = {
    "train": {"plugin": "shapes", "args": {"split": "train", "size": 16}},
    "val": {"plugin": "shapes", "args": {"split": "val", "size": 16}, "role": "eval"},
}


def _suite(tmp_path: Path, manager: Any, models: list[dict[str, Any]], **extra: Any) -> Any:
    doc = {
        "name": "checks",
        "output": str(tmp_path / "out"),
        "models": models,
        "datasets": extra.pop("datasets", SHAPES),
        "saes": [{"plugin": "topk", "args": {"k": 4}}],
        "evaluators": [{"plugin": "reconstruction"}],
        **extra,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_suite(path, manager.registry())


def test_text_model_on_image_dataset_is_refused(tmp_path: Path, manager: Any) -> None:
    suite = _suite(tmp_path, manager, [{"plugin": "sd-text-encoder", "layers": ["final"]}])
    with pytest.raises(SuiteError) as err:
        preflight(suite, manager)
    text = str(err.value)
    assert text.startswith(f"{suite.path}: datasets.train:")
    assert "gives image items" in text and "reads text" in text and "\n" not in text


@pytest.mark.parametrize(
    ("model", "where", "offers"),
    [
        (
            {"plugin": "efficientnet-lite", "layers": ["final"], "tokens": "text"},
            "models[0].tokens",
            "cls, mean-patch, patch, all",
        ),
        (
            {
                "plugin": "sd-text-encoder",
                "args": {"variant": "sd3"},
                "layers": ["pooled"],
                "tokens": "text",
            },
            "models[0].tokens",
            "cls, all",
        ),
        (
            {
                "plugin": "sd-text-encoder",
                "layers": ["penultimate"],
                "tokens": {"penultimate": "cls"},
            },
            "models[0].tokens.penultimate",
            "text, all",
        ),
        (
            {
                "plugin": "hf-clip",
                "layers": ["blocks.3", "final"],
                "tokens": {"final": "mean-patch"},
            },
            "models[0].tokens.final",
            "cls, all",
        ),
    ],
)
def test_selection_a_layer_cannot_serve(
    tmp_path: Path, manager: Any, model: dict[str, Any], where: str, offers: str
) -> None:
    datasets = SHAPES
    if model["plugin"] == "sd-text-encoder":  # give it text, so only the tokens are wrong
        datasets = {
            name: {"plugin": "toy-prompts", "role": spec.get("role", "train")}
            for name, spec in SHAPES.items()
        }
        manager.register(_PromptPlugin, "prompts")
    try:
        suite = _suite(tmp_path, manager, [model], datasets=datasets)
        with pytest.raises(SuiteError) as err:
            preflight(suite, manager)
    finally:
        if model["plugin"] == "sd-text-encoder":
            manager.unregister("prompts")
    text = str(err.value)
    layer = model["layers"][-1]
    assert text.startswith(f"{suite.path}: {where}: model `{model['plugin']}` layer `{layer}`")
    assert f"(it offers: {offers})" in text, text


class _PromptPlugin:
    from saebench_vision import hookimpl

    @staticmethod
    @hookimpl
    def register_datasets() -> dict[str, str]:
        return {"toy-prompts": "test_checks:PromptDataset"}


def _prompt_dataset() -> type:
    from dataclasses import dataclass

    from saebench_vision.interfaces import Dataset

    @dataclass(frozen=True)
    class PromptConfig:
        pass

    class PromptDataset(Dataset):
        name = "toy-prompts"
        Config = PromptConfig
        modality = "text"

        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int) -> str:
            return ["a red square", "a blue circle"][index]

    return PromptDataset


PromptDataset = _prompt_dataset()


def test_sd3_default_tokens_follow_each_layer(tmp_path: Path, manager: Any) -> None:
    from saebench_vision_plugins.models.configs import SDTextEncoderConfig
    from saebench_vision_plugins.models.sd_text import SDTextEncoderAdapter

    adapter = SDTextEncoderAdapter(SDTextEncoderConfig(variant="sd3"))
    assert adapter.default_tokens_for("prompt-embeds") == "text"
    assert adapter.default_tokens_for("pooled") == "cls"  # a single CLS token, not text


def test_per_layer_tokens_parse_and_refuse_bad_entries(tmp_path: Path, toy_manager: Any) -> None:
    doc = copy.deepcopy(SUITE)
    doc["models"][0]["tokens"] = {"layer.0": "mean-patch"}
    suite = load_suite(write_suite(tmp_path, doc), toy_manager.registry())
    model = suite.models[0]
    assert model.tokens_for("layer.0") == "mean-patch" and model.tokens_for("final") is None
    for bad, where in (({"layer.9": "cls"}, "tokens.layer.9"), ({"final": "clz"}, "tokens.final")):
        doc["models"][0]["tokens"] = bad
        with pytest.raises(SuiteError, match=f"models\\[0\\].{where}"):
            load_suite(write_suite(tmp_path, doc), toy_manager.registry())


def test_per_layer_tokens_identity(tmp_path: Path, toy_manager: Any) -> None:
    def cells(tokens: Any) -> dict[tuple[str, str, str], str]:
        doc = copy.deepcopy(SUITE)
        if tokens is not None:
            doc["models"][0]["tokens"] = tokens
        suite = load_suite(write_suite(tmp_path, doc), toy_manager.registry())
        return {
            (c.layer, c.sae_label, c.evaluator): c.cell_id
            for c in plan_suite(suite, toy_manager).cells
        }

    everywhere = cells("cls")
    per_layer = cells({"layer.0": "cls", "final": "cls"})
    assert per_layer == everywhere  # the same selections are the same cells
    mixed = cells({"layer.0": "mean-patch"})
    default = cells(None)
    changed = {k for k in default if mixed[k] != default[k]}
    assert changed and {layer for layer, _, _ in changed} == {"layer.0"}


def test_per_layer_tokens_reach_the_extraction(tmp_path: Path, toy_manager: Any) -> None:
    doc = copy.deepcopy(SUITE)
    doc["models"][0]["tokens"] = {"layer.0": "mean-patch"}
    doc["saes"] = [{"plugin": "relu", "args": {"expansion": 2, "l1_coefficient": 0.1}}]
    doc["evaluators"] = [{"plugin": "reconstruction"}]
    doc["training"] = {"epochs": 1}
    doc["cache_dir"] = str(tmp_path / "cache")
    suite = load_suite(write_suite(tmp_path, doc), toy_manager.registry())
    Runner(suite, toy_manager, progress=False).run()
    entries = {
        (e.meta["layer"], e.meta["split"]): e for e in ActivationCache(tmp_path / "cache").entries()
    }
    assert entries[("layer.0", "train")].meta["tokens"] == "mean-patch"
    assert entries[("final", "train")].meta["tokens"] == "cls"
    # The toy model's patches are h0, h0/2, h0/4 and its CLS is h0: the mean is 7/12 of CLS.
    import torch
    from toyplugin import ToyModel, ToyModelConfig

    model = ToyModel(ToyModelConfig())
    model.load()
    dataset = Runner(suite, toy_manager, progress=False).workspace().dataset("train")
    x = model.preprocess([dataset[i] for i in range(4)])
    h0 = torch.relu(x @ model.w0).numpy()
    np.testing.assert_allclose(
        entries[("layer.0", "train")].read(np.arange(4)), h0 * 7 / 12, rtol=1e-5
    )


def test_validate_datasets_reports_every_missing_path(tmp_path: Path, manager: Any) -> None:
    datasets = {
        name: {"plugin": "imagenet-folder", "args": {"root": str(tmp_path / name)}, "role": role}
        for name, role in (("train", "train"), ("val", "eval"), ("sketch", "shifted"))
    }
    suite = _suite(
        tmp_path, manager, [{"plugin": "efficientnet-lite", "layers": ["final"]}], datasets=datasets
    )
    # Without --datasets nothing is opened, but paths that must exist are checked, all at once.
    with pytest.raises(SaebenchError, match=r"3 path\(s\) do not exist: datasets.train.args"):
        preflight(suite, manager)
    with pytest.raises(SuiteError) as err:
        preflight(suite, manager, datasets=True)
    lines = str(err.value).splitlines()
    assert lines[0] == "3 of 3 dataset splits cannot be opened:"
    for line, name in zip(lines[1:], ("train", "val", "sketch"), strict=True):
        assert line.strip().startswith(f"{suite.path}: datasets.{name}: imagenet-folder: root")
        assert str(tmp_path / name) in line


def test_run_dataset_error_names_suite_and_split(tmp_path: Path, toy_manager: Any) -> None:
    doc = copy.deepcopy(SUITE)
    doc["datasets"]["train"] = {"plugin": "image-folder", "args": {"root": str(tmp_path / "nope")}}
    suite = load_suite(write_suite(tmp_path, doc), toy_manager.registry())
    runner = Runner(suite, toy_manager, progress=False)
    with pytest.raises(SaebenchError) as err:
        runner.workspace().dataset("train")
    assert str(err.value).startswith(f"{suite.path}: datasets.train: image-folder: root")
    with pytest.raises(SaebenchError) as err:
        Runner(suite, toy_manager, progress=False, log=io.StringIO()).run()
    # run's preflight finds the missing root before any work, naming suite and location.
    assert str(err.value).startswith(f"{suite.path}: 1 path(s) do not exist: datasets.train")


def test_declared_kinds_are_the_implementations_and_shown_lightly(
    manager: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from saebench_vision.cli import main

    registry = manager.registry()
    for entry in registry.entries("model"):
        cls, config = entry.load(), entry.config_class()
        assert cls.input_kind == getattr(config, "input_kind", cls.input_kind), entry.name
        assert cls.default_tokens == getattr(config, "default_tokens", cls.default_tokens)
    for entry in registry.entries("dataset"):
        cls = entry.load()
        assert cls.modality == getattr(entry.config_class(), "modality", cls.modality)
    assert main(["plugins", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "model `sd-text-encoder`" in out and "(reads text, default tokens: text)" in out
    assert "(reads image-text, default tokens: all)" in out and "(gives image items)" in out


def test_validate_checks_training_memory_from_widths_known_offline(
    tmp_path: Path, toy_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from saebench_vision import training

    free = 8 * 2**30
    monkeypatch.setattr(training, "available_memory", lambda device: free)
    doc = copy.deepcopy(SUITE)
    doc["saes"][1]["args"]["expansion"] = 10_000_000
    suite = load_suite(write_suite(tmp_path, doc), toy_manager.registry())
    with pytest.raises(SaebenchError) as info:
        preflight(suite, toy_manager)
    # The toy layers are 24 wide (ToyModelConfig.width): the trainer's own estimate of the
    # SAEs with Adam, summed over the sweep, by hand.
    per_param = training.SAE_BYTES_PER_PARAM
    need = sum(2 * 24 * 24 * e * per_param for e in (2, 2, 10_000_000))
    message = str(info.value)
    assert message.startswith(f"{suite.path}: saes[1].args.expansion: 10000000 (3 SAE(s)")
    assert f"the largest 24 x 240000000) needs about {training._size(need)}" in message
    assert "lower the expansion" in message and "\n" not in message
    # A batch far too large for memory names training.batch_size.
    doc = copy.deepcopy(SUITE)
    doc["training"]["batch_size"] = 10**9
    suite = load_suite(write_suite(tmp_path, doc), toy_manager.registry())
    with pytest.raises(SaebenchError, match=r"toy.yaml: training.batch_size: 1000000000 \(rows"):
        preflight(suite, toy_manager)
    # Steps that run elsewhere (Ray) are not checked against this machine.
    preflight(suite, toy_manager, devices=False)


def test_validate_notes_what_it_cannot_check(
    tmp_path: Path, toy_manager: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import toyplugin

    from saebench_vision.cli import main

    monkeypatch.setattr(toyplugin.ToyModel, "layer_width", lambda self, layer: None)
    doc = copy.deepcopy(SUITE)
    doc["saes"][1]["args"]["expansion"] = 10_000_000
    suite = load_suite(write_suite(tmp_path, doc), toy_manager.registry())
    notes: list[str] = []
    preflight(suite, toy_manager, notes=notes)
    assert notes == [
        f"{suite.path}: models[0]: model `toy-model` knows the width of layer.0, final only once "
        "its weights load, so training memory there is checked when the run starts training"
    ]
    # A batch above the training rows (240 toy items, one CLS row each per layer) is noted
    # once the splits are opened; the entry that sets it is named.
    monkeypatch.undo()
    doc = copy.deepcopy(SUITE)
    doc["saes"][0]["training"] = {"batch_size": 1000}
    path = write_suite(tmp_path, doc)
    monkeypatch.setenv("SAEBENCH_VISION_PLUGINS", "toyplugin")
    assert main(["validate", "--datasets", str(path)]) == 0
    err = capsys.readouterr().err
    assert (
        f"note: {path}: saes[0].training.batch_size: 1000 is more than the 240 training rows "
        "of toy-model/layer.0, final: every step repeats rows" in err
    )
    # Patch tokens give several rows per item: no note for a layer read that way.
    doc["models"][0]["tokens"] = {"layer.0": "patch"}
    assert main(["validate", "--datasets", str(write_suite(tmp_path, doc))]) == 0
    assert "training rows of toy-model/final: every" in capsys.readouterr().err
