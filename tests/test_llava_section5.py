"""Section 5 end to end on a tiny random LLaVA built from a config: the image-text datasets,
image-token masks against the processor, greedy responses stored with the activations, and
both offline suites through the runner (SAEs on generated tokens and on patch tokens)."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from saebench_vision_plugins.datasets.image_text import ClassQuestionsDataset, ImageCaptionsDataset
from saebench_vision_plugins.datasets.image_text_config import (
    ClassQuestionsConfig,
    ImageCaptionsConfig,
)
from saebench_vision_plugins.datasets.shapes import ShapesDataset
from saebench_vision_plugins.datasets.shapes_config import ShapesConfig
from saebench_vision_plugins.models.configs import LlavaConfig as AdapterConfig
from saebench_vision_plugins.models.llava import LlavaAdapter
from saebench_vision_plugins.models.tiny_llava import build_tiny_llava

from saebench_vision.cache import ActivationCache
from saebench_vision.config import build_config
from saebench_vision.errors import ConfigError, DatasetError, SaebenchError
from saebench_vision.interfaces import TokenKind
from saebench_vision.runner import Runner
from saebench_vision.suite import load_suite

REPO = Path(__file__).resolve().parent.parent
SHAPES = {"plugin": "shapes", "args": {"split": "val", "size": 36, "image_size": 56}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


def test_captions_keep_images_labels_and_classes() -> None:
    inner = ShapesDataset(ShapesConfig(split="val", size=36, image_size=56))
    captions = ImageCaptionsDataset(
        ImageCaptionsConfig(dataset=SHAPES, max_per_class=1, max_classes=5)
    )
    assert len(captions) == 5
    assert captions.classes() == inner.classes()[:5]
    labels = inner.labels()
    first = [int(np.nonzero(labels == c)[0][0]) for c in range(5)]
    assert captions.labels().tolist() == labels[first].tolist()
    item = captions[2]
    assert item["text"] == "Describe this image."
    assert np.array_equal(np.asarray(item["image"]), np.asarray(inner[first[2]]))
    other = ImageCaptionsDataset(ImageCaptionsConfig(dataset={**SHAPES, "args": {"size": 18}}))
    assert other.identity() != captions.identity()  # the wrapped split is part of the identity


def test_questions_name_the_classes() -> None:
    questions = ClassQuestionsDataset(
        ClassQuestionsConfig(dataset=SHAPES, templates=("What is a {name}?", "Draw a {name}."))
    )
    assert len(questions) == 36 and questions.modality == "text"
    assert questions[0] == "What is a equilateral triangle?"
    assert questions[1] == "Draw a equilateral triangle."
    assert questions.labels()[:4].tolist() == [0, 0, 1, 1]
    assert questions.classes()[1].id == "right-triangle"
    polite = ClassQuestionsDataset(
        ClassQuestionsConfig(dataset=SHAPES, templates=("What is {article} {name}?",))
    )
    assert (
        polite[0] == "What is an equilateral triangle?" and polite[1] == "What is a right triangle?"
    )
    # Questions depend on the class list only: another size of the same split asks the same.
    same = ClassQuestionsDataset(
        ClassQuestionsConfig(
            dataset={"plugin": "shapes", "args": {"split": "val", "size": 54}},
            templates=("What is a {name}?", "Draw a {name}."),
        )
    )
    assert same.identity() == questions.identity()
    assert ClassQuestionsDataset(ClassQuestionsConfig(dataset=SHAPES)).identity() != (
        questions.identity()
    )


def test_image_text_dataset_errors() -> None:
    with pytest.raises(DatasetError, match="is text-only; captions need an image split"):
        ImageCaptionsDataset(
            ImageCaptionsConfig(dataset={"plugin": "class-questions", "args": {"dataset": SHAPES}})
        )
    with pytest.raises(DatasetError, match="unlabelled"):
        ClassQuestionsDataset(
            ClassQuestionsConfig(dataset={"plugin": "shapes", "args": {"split": "ood-far"}})
        )
    with pytest.raises(DatasetError, match="unlabelled, so max_per_class and max_classes"):
        ImageCaptionsDataset(
            ImageCaptionsConfig(
                dataset={"plugin": "shapes", "args": {"split": "ood-far"}}, max_per_class=2
            )
        )
    # The nested entry is checked with the Config, before anything is opened.
    with pytest.raises(ConfigError, match="dataset.plugin: Unknown dataset 'shapez'"):
        build_config(ImageCaptionsConfig, {"dataset": {"plugin": "shapez"}})
    with pytest.raises(ConfigError, match=r"dataset.args: unknown key `sise`"):
        build_config(ImageCaptionsConfig, {"dataset": {"plugin": "shapes", "args": {"sise": 3}}})
    with pytest.raises(ConfigError, match="is not a dataset entry"):
        build_config(ImageCaptionsConfig, {"dataset": {"args": {}}}, where="datasets.val.args")
    with pytest.raises(ConfigError, match=r"lacks the \{name\} placeholder"):
        build_config(ClassQuestionsConfig, {"dataset": SHAPES, "templates": ["What?"]})
    with pytest.raises(ConfigError, match="placeholder other than"):
        build_config(ClassQuestionsConfig, {"dataset": SHAPES, "templates": ["{name} {kind}?"]})


def test_captions_of_an_unlabelled_split() -> None:
    far = {"plugin": "shapes", "args": {"split": "ood-far", "size": 4, "image_size": 56}}
    captions = ImageCaptionsDataset(ImageCaptionsConfig(dataset=far, prompt="What is shown?"))
    assert len(captions) == 4 and captions.labels() is None and captions.classes() is None
    assert captions[3]["text"] == "What is shown?" and captions[3]["image"].size == (56, 56)


def test_nested_errors_name_the_suite_path(tmp_path: Path, manager: Any) -> None:
    doc = yaml.safe_load((REPO / "suites" / "llava_tiny_persistence.yaml").read_text())
    doc["datasets"]["val"]["args"]["dataset"]["args"]["splt"] = "val"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SaebenchError) as err:
        load_suite(path, manager.registry())
    message = str(err.value)
    assert message.startswith(f"{path}: datasets.val.args: dataset.args: unknown key `splt`")
    assert "Did you mean: split?" in message and "\n" not in message


def test_image_token_masks_match_the_processor(model_dir: Path) -> None:
    adapter = LlavaAdapter(AdapterConfig(model_id=str(model_dir)))
    adapter.ensure_loaded()
    captions = ImageCaptionsDataset(ImageCaptionsConfig(dataset=SHAPES, max_classes=2))
    items = [captions[0], "What is a circle?", captions[1]]
    batch = adapter.preprocess(items)
    with torch.inference_mode():
        out = adapter.forward(batch, ["lm.0"])["lm.0"]
    processor = adapter.processor
    expected = batch["input_ids"] == processor.image_token_id
    assert torch.equal(out.kinds == TokenKind.PATCH, expected)
    per_image = processor._get_num_multimodal_tokens(image_sizes=[[56, 56]]).num_image_tokens[0]
    assert per_image == 16
    assert (out.kinds == TokenKind.PATCH).sum(1).tolist() == [per_image, 0, per_image]


def test_greedy_responses_are_deterministic_and_stored(model_dir: Path, tmp_path: Path) -> None:
    from saebench_vision.extraction import extract_activations

    adapter = LlavaAdapter(AdapterConfig(model_id=str(model_dir), generate_tokens=5))
    adapter.ensure_loaded()
    questions = ClassQuestionsDataset(ClassQuestionsConfig(dataset=SHAPES, max_classes=3))
    batch = adapter.preprocess([questions[i] for i in range(3)])
    with torch.inference_mode():
        first = adapter.forward(batch, ["lm.1"])["lm.1"]
        again = adapter.forward(batch, ["lm.1"])["lm.1"]
    assert first.responses is not None and first.responses == again.responses
    assert first.responses == [text.strip() for text in adapter.decode_response(batch)]
    cache = ActivationCache(tmp_path)
    writer = cache.writer("e" * 64, 32, {"layer": "lm.1"})
    extract_activations(adapter, questions, ["lm.1"], "generated", {"lm.1": writer}, progress=False)
    stored = writer.commit()
    assert stored.responses() == dict(enumerate(first.responses))
    assert cache.lookup("e" * 64).responses() == stored.responses()  # verified like a shard


def _suite(
    model_dir: Path, tmp_path: Path, name: str, output: str, sweep: list[float] | None = None
) -> Path:
    doc: dict[str, Any] = yaml.safe_load((REPO / "suites" / name).read_text())
    doc = copy.deepcopy(doc)
    doc["models"][0]["args"]["model_id"] = str(model_dir)
    doc["output"] = str(tmp_path / output)
    for split in doc["datasets"].values():  # smaller than the shipped suite: a quick test
        inner = split["args"]["dataset"]["args"]
        inner["size"] = min(inner["size"], 36)
    if sweep:
        del doc["saes"][0]["args"]["l1_coefficient"]
        doc["saes"][0]["sweep"] = {"l1_coefficient": sweep}
    path = tmp_path / f"{output}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _run(path: Path, manager: Any) -> tuple[Any, str]:
    log = io.StringIO()
    runner = Runner(load_suite(path, manager.registry()), manager, progress=False, log=log)
    summary = runner.run()
    return (summary, runner), log.getvalue()


def _sae_records(runner: Any, baseline: bool = False) -> dict[str, float]:
    query = (
        "SELECT r.metric, r.value FROM records r JOIN cells c ON r.cell_id = c.cell_id "
        f"WHERE c.sae_id {'=' if baseline else '!='} ''"
    )
    return dict(runner.store.db.execute(query).fetchall())


def test_overlap_suite_end_to_end(model_dir: Path, tmp_path: Path, manager: Any) -> None:
    path = _suite(model_dir, tmp_path, "llava_tiny_overlap.yaml", "overlap")
    (summary, runner), log = _run(path, manager)
    assert summary.status == "finished" and summary.computed_cells == 2
    values = _sae_records(runner)
    baseline = _sae_records(runner, baseline=True)
    assert baseline["n_classes"] == 18 and 0.0 <= baseline["jaccard"] <= 1.0
    assert 0.0 <= values["jaccard"] <= 1.0 and 0.0 < values["p_value"] <= 1.0
    assert values["n_classes"] == 18
    figures = [
        json.loads(f.read_text()) for f in (tmp_path / "overlap").glob("artifacts/*/fig6.json")
    ]
    assert sorted(bool(f["sae_id"]) for f in figures) == [False, True]  # baseline and SAE
    classes = next(f for f in figures if f["sae_id"])["classes"]
    assert len(classes) == 18 and all(c["image_tokens"] > 0 for c in classes)
    # The responses are stored beside the generated-token activations of every split.
    cache = ActivationCache(runner.cache_dir)
    stored = [e for e in cache.entries() if e.meta.get("split") == "questions"]
    assert len(stored) == 1 and len(stored[0].responses() or {}) == 36
    assert classes[0]["text_response"] == stored[0].responses()[0]
    # Another results folder over the same cache: no extraction, the same numbers.
    again = _suite(model_dir, tmp_path, "llava_tiny_overlap.yaml", "overlap-again")
    (summary2, runner2), log2 = _run(again, manager)
    assert "extracting" in log and "extracting" not in log2
    assert _sae_records(runner2) == values


def test_persistence_suite_end_to_end(model_dir: Path, tmp_path: Path, manager: Any) -> None:
    path = _suite(
        model_dir, tmp_path, "llava_tiny_persistence.yaml", "persistence", sweep=[0.3, 1.0]
    )
    (summary, runner), log = _run(path, manager)
    assert summary.status == "finished" and summary.computed_cells == 6  # 2 layers x (2 + baseline)
    # The projector cells read the lm.1 SAEs: the plan trains them first, once, in one pass.
    assert log.count("training 2 SAE(s) on tiny-llava/lm.1") == 1
    assert log.count("training 2 SAE(s) on tiny-llava/projector") == 1
    assert log.index("SAE(s) on tiny-llava/lm.1") < log.index("SAE(s) on tiny-llava/projector")
    # Each projector SAE is compared with the lm.1 SAE of the same sweep variant.
    saes = {
        sae_id: (layer, label)
        for sae_id, layer, label in runner.store.db.execute("SELECT sae_id, layer, label FROM saes")
    }
    figures = list((tmp_path / "persistence" / "artifacts").glob("*/fig7.json"))
    assert len(figures) == 2
    for figure in figures:
        data = json.loads(figure.read_text())
        mine, partner = saes[data["from"]["sae_id"]], saes[data["to"]["sae_id"]]
        assert mine[0] == "projector" and partner == ("lm.1", mine[1])

    def layer_records(layer: str) -> dict[str, float]:
        query = (
            "SELECT r.metric, r.value FROM records r JOIN cells c ON r.cell_id = c.cell_id "
            "WHERE c.layer = ?"
        )
        return dict(runner.store.db.execute(query, (layer,)).fetchall())

    records = layer_records("projector")
    assert 0.0 <= records["iou"] <= 1.0 and records["n_images"] == 18
    assert records["p_value"] > 0
    assert layer_records("lm.1") == {}  # the partner's cells report nothing
    pngs = list((tmp_path / "persistence" / "artifacts").glob("*/fig7/*.png"))
    assert len(pngs) == 8
    (summary2, _), _ = _run(path, manager)
    assert summary2.computed_cells == 0


def test_persistence_plan_trains_the_partner_layer_first(
    model_dir: Path, manager: Any, tmp_path: Path
) -> None:
    """The projector's cells read lm.1's SAEs (``reads_layers``): every executor finds them
    trained, since those cells need lm.1's training step and lm.1 is extracted with them, even
    when lm.1's own cells are finished."""
    from saebench_vision_plugins.evaluators.persistence import PersistenceEvaluator

    from saebench_vision.plan import EvaluateStep, ExtractStep, TrainStep, plan_suite, schedule
    from saebench_vision.suite import parse_suite

    doc = yaml.safe_load((REPO / "suites" / "llava_tiny_persistence.yaml").read_text())
    doc["output"] = str(tmp_path / "out")
    doc["models"][0]["args"]["model_id"] = str(model_dir)
    del doc["saes"][0]["args"]["l1_coefficient"]
    doc["saes"][0]["sweep"] = {"l1_coefficient": [0.3, 1.0]}
    suite = parse_suite(doc, tmp_path / "s.yaml", manager.registry())
    evaluator = PersistenceEvaluator(
        build_config(PersistenceEvaluator.Config, doc["evaluators"][0]["args"])
    )
    assert evaluator.reads_layers("projector", ("projector", "lm.1")) == ("lm.1",)
    assert evaluator.reads_layers("lm.1", ("projector", "lm.1")) == ()
    plan = plan_suite(suite, manager)

    def reads(model: Any, layer: str, spec: Any) -> tuple[str, ...]:
        return evaluator.reads_layers(layer, tuple(model.layers))

    def steps(done: set[str], trained: set[str]) -> tuple[Any, dict[str, str], list[Any]]:
        out = schedule(plan, done, trained, reads)
        train = {s.layer: s.id for s in out.steps if isinstance(s, TrainStep)}
        evaluate = [s for s in out.steps if isinstance(s, EvaluateStep)]
        return out, train, evaluate

    out, train, evaluate = steps(set(), set())
    assert [s.layers for s in out.steps if isinstance(s, ExtractStep)] == [
        ("projector", "lm.1")
    ] * 2
    assert len(evaluate) == 6
    for step in evaluate:
        own = {train[step.layer]} if step.sae_id else set()
        read = {train["lm.1"]} if step.layer == "projector" else set()
        assert set(out.needs[step.id]) - {"extract tiny-llava/train", "extract tiny-llava/val"} == (
            own | read
        )
    order = [s.id for s in out.steps]
    first_projector_cell = min(order.index(s.id) for s in evaluate if s.layer == "projector")
    assert order.index(train["lm.1"]) < first_projector_cell

    # lm.1's cells finished, its SAEs not saved (say, a removed saes/ folder): still trained.
    lm1_cells = {c.key.cell_id for g in plan.groups if g.layer == "lm.1" for c in g.cells}
    out, train, evaluate = steps(lm1_cells, set())
    assert {s.layer for s in evaluate} == {"projector"} and set(train) == {"projector", "lm.1"}
    assert all(s.layers == ("projector", "lm.1") for s in out.steps if isinstance(s, ExtractStep))
    # ... and with its checkpoints present, only read back: no training of lm.1 at all.
    lm1_saes = {p.sae_id for g in plan.groups if g.layer == "lm.1" for p in g.saes}
    out, train, evaluate = steps(lm1_cells, lm1_saes)
    assert set(train) == {"projector"}
    assert all(s.layers == ("projector", "lm.1") for s in out.steps if isinstance(s, ExtractStep))
    # A read the evaluator did not declare finds nothing trained or extracted: one line each.
    from saebench_vision.steps import Workspace

    ws = Workspace(suite, manager, cache_dir=tmp_path / "cache", plan=plan)
    model = suite.models[0]
    mine = next(g for g in plan.groups if g.layer == "projector").saes[0]
    with pytest.raises(SaebenchError, match="must name it in Evaluator.reads_layers"):
        ws.suite_sae(model, 0, "projector", "lm.1", mine.sae_id, None)
    with pytest.raises(SaebenchError, match="no SAE labelled 'relu' on layer 'lm.1'"):
        ws.suite_sae(model, 0, "projector", "lm.1", mine.sae_id, "relu")
    with pytest.raises(SaebenchError, match="no SAE is trained on layer 'lm.2'"):
        ws.suite_sae(model, 0, "projector", "lm.2", mine.sae_id, None)
    with pytest.raises(SaebenchError, match="so that the plan extracts it"):
        ws.layer_activations(model, "projector", "lm.1", "val")


def test_captions_of_a_folder_follow_its_files(tmp_path: Path, monkeypatch: Any) -> None:
    """The wrapped folder's fingerprint and resolved root enter the cache key, not the spelling
    of its entry: edited images are re-extracted, the same folder read from elsewhere is not."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 90, 0, 0)).save(folder / f"{i}.png")
    monkeypatch.chdir(tmp_path)

    def captions(root: str) -> ImageCaptionsDataset:
        spec = {"plugin": "image-folder", "args": {"root": root}}
        return ImageCaptionsDataset(build_config(ImageCaptionsConfig, {"dataset": spec}))

    relative, absolute = captions("images"), captions(str(folder))
    assert relative.identity() == absolute.identity()
    before = relative.fingerprint()
    assert before is not None and before == relative.inner.fingerprint()
    Image.new("RGB", (9, 9)).save(folder / "0.png")
    assert captions("images").fingerprint() != before
