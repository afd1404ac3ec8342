"""The offline steering suite end to end: an SAE trained on the text encoder's penultimate
layer through the runner, discovery, labelling, validation records, figures, and the content
caches of images and answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from saebench_vision_plugins.steering.tiny import build_clip, build_sd1
from scipy import stats

from saebench_vision.plugins import get_plugin_manager
from saebench_vision.runner import Runner
from saebench_vision.suite import load_suite

SUITE = Path(__file__).parents[1] / "suites" / "steering_offline.yaml"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-steering")
    return {"sd1": build_sd1(root / "sd1"), "clip": build_clip(root / "clip")}


def _suite(tmp: Path, models: dict[str, Path], name: str, cache: Path) -> Path:
    doc = yaml.safe_load(SUITE.read_text())
    doc["name"] = name
    doc["output"] = str(tmp / name)
    doc["cache_dir"] = str(tmp / "activations")
    doc["models"][0]["args"]["model_id"] = str(models["sd1"])
    args = doc["evaluators"][1]["args"]
    args["clip_model"] = str(models["clip"])
    args["labeller_args"]["model"] = str(models["clip"])
    args["cache_dir"] = str(cache)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run(path: Path) -> tuple[Any, Any]:
    manager = get_plugin_manager(load_entrypoints=False)
    suite = load_suite(path, manager.registry())
    runner = Runner(suite, manager, progress=False)
    runner.run()
    return suite, runner


def _groups(cache: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in cache.rglob("done.json")}


def test_offline_suite(tmp_path: Path, models: dict[str, Path]) -> None:
    cache = tmp_path / "steering-cache"
    suite, runner = _run(_suite(tmp_path, models, "steer-a", cache))
    frame = runner.store.records_frame(suite.hash)
    rows = frame[frame.evaluator == "diffusion-steering"]
    values = {m: float(v) for m, v in zip(rows.metric, rows.value)}
    for metric in (
        "clip_orig_prompt",
        "clip_steer_prompt",
        "clip_steer_attr",
        "clip_orig_attr",
        "attr_gain",
        "attr_gain_p",
        "attr_over_prompt",
        "preservation",
        "candidate_features",
    ):
        assert metric in values, metric
    assert 0 <= values["attr_gain_p"] <= 1 and -1 <= values["preservation"] <= 1
    report_file = next((tmp_path / "steer-a" / "artifacts").rglob("steering.json"))
    report = json.loads(report_file.read_text())
    pairs = report["pairs"]
    assert len(pairs) == 8
    gain = (
        np.array([p["clip_steer_attr"] for p in pairs]),
        np.array([p["clip_orig_attr"] for p in pairs]),
    )
    assert values["attr_gain"] == pytest.approx(float((gain[0] - gain[1]).mean()))
    assert values["attr_gain_p"] == pytest.approx(stats.ttest_rel(*gain).pvalue)
    assert values["clip_steer_attr"] == pytest.approx(float(gain[0].mean()))
    # every validation pair's attribute is appended to its prompt
    assert all(p["t_attr"].startswith(p["prompt"] + ", ") for p in pairs)
    labelled = {f for f, v in report["labels"].items() if v["attribute"]}
    assert {str(p["feature"]) for p in pairs} <= labelled
    assert report["candidates"] and all(c["top_word"] for c in report["candidates"])
    per_feature = [f"feature_{f}.png" for f in sorted(labelled, key=int)[:3]]
    for name in ["steering_grid.png", "steering_sweep.png", *per_feature]:
        with Image.open(report_file.parent / name) as img:
            assert img.width >= 128 * 2 and img.height > 128
    # a second suite with the same generation settings regenerates nothing
    before = _groups(cache)
    answers = sorted((cache / "answers").rglob("*.json"))
    assert before and answers
    suite_b, runner_b = _run(_suite(tmp_path, models, "steer-b", cache))
    assert _groups(cache) == before
    assert sorted((cache / "answers").rglob("*.json")) == answers
    frame_b = runner_b.store.records_frame(suite_b.hash)
    rows_b = frame_b[frame_b.evaluator == "diffusion-steering"]
    assert {m: float(v) for m, v in zip(rows_b.metric, rows_b.value)} == pytest.approx(values)


def test_given_features_attributes_and_validation_split(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    from saebench_vision.errors import ConfigError

    path = _suite(tmp_path, models, "steer-given", tmp_path / "cache")
    doc = yaml.safe_load(path.read_text())
    args = doc["evaluators"][1]["args"]
    del args["discovery_split"]
    args.update(
        features=[1, 2], attributes={"1": "anime"}, validation_split="captions", validation_pairs=5
    )
    path.write_text(yaml.safe_dump(doc))
    suite, runner = _run(path)
    frame = runner.store.records_frame(suite.hash)
    rows = frame[frame.evaluator == "diffusion-steering"]
    assert "candidate_features" not in set(rows.metric)  # no discovery
    assert set(rows[rows.metric == "attr_gain"].split) == {"captions"}
    report = json.loads(next((tmp_path / "steer-given").rglob("steering.json")).read_text())
    assert report["labels"]["1"] == {
        "attribute": "anime",
        "answer": {"given": "anime"},
        "words": None,
    }
    from saebench_vision.steps import Workspace

    captions = set(Workspace(suite, runner.manager).dataset("captions"))
    assert len(report["pairs"]) == 5 and all(p["prompt"] in captions for p in report["pairs"])
    assert all(p["t_attr"].endswith(", anime") for p in report["pairs"] if p["feature"] == 1)
    # a split the suite lacks is named in one line
    args["validation_split"] = "midjourney"
    path.write_text(yaml.safe_dump(doc | {"name": "steer-bad", "output": str(tmp_path / "bad")}))
    with pytest.raises(ConfigError, match="no split 'midjourney' in the suite") as err:
        _run(path)
    assert "\n" not in str(err.value)
