"""Prompt and caption datasets: formats, selection, and one-line errors."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from saebench_vision_plugins.datasets import prompts
from saebench_vision_plugins.datasets.prompt_configs import (
    COCOCaptionsConfig,
    HFTextConfig,
    PromptCorpusConfig,
    PromptFileConfig,
)
from saebench_vision_plugins.datasets.prompts import (
    COCOCaptionsDataset,
    HFTextDataset,
    PromptCorpusDataset,
    PromptFileDataset,
)

from saebench_vision.errors import DatasetError

TEXTS = ["a red car", "A  red car", "an old man, anime style", "", "sunset over the sea", "a cat"]


def _file(path: Path, **kw: object) -> list[str]:
    return list(PromptFileDataset(PromptFileConfig(path=str(path), **kw)))  # type: ignore[arg-type]


def test_formats_agree(tmp_path: Path) -> None:
    want = ["a red car", "an old man, anime style", "sunset over the sea", "a cat"]
    (tmp_path / "p.txt").write_text("\n".join(TEXTS) + "\n")
    assert _file(tmp_path / "p.txt") == want
    pd.DataFrame({"id": range(6), "prompt": TEXTS}).to_csv(tmp_path / "p.csv", index=False)
    assert _file(tmp_path / "p.csv") == want
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"caption": t}) for t in TEXTS))
    assert _file(tmp_path / "p.jsonl") == want
    pd.DataFrame({"desc": TEXTS}).to_parquet(tmp_path / "p.parquet")
    assert _file(tmp_path / "p.parquet", column="desc") == want
    (tmp_path / "p.json").write_text(json.dumps(TEXTS))
    assert _file(tmp_path / "p.json") == want
    assert _file(tmp_path / "p.txt", dedup=False)[:2] == ["a red car", "A  red car"]


def test_selection_is_seeded_and_in_file_order(tmp_path: Path) -> None:
    lines = [f"prompt number {i}" for i in range(100)]
    (tmp_path / "p.txt").write_text("\n".join(lines))
    a = _file(tmp_path / "p.txt", max_items=10, sample_seed=1)
    assert a == _file(tmp_path / "p.txt", max_items=10, sample_seed=1)
    assert a != _file(tmp_path / "p.txt", max_items=10, sample_seed=2)
    assert len(a) == 10 and a == sorted(a, key=lines.index) and set(a) <= set(lines)
    assert _file(tmp_path / "p.txt", max_items=3, sample_seed=None) == lines[:3]


def test_coco_captions(tmp_path: Path) -> None:
    anns = [{"image_id": i // 5, "id": i, "caption": f"caption {i} "} for i in range(15)]
    (tmp_path / "captions_val2017.json").write_text(json.dumps({"images": [], "annotations": anns}))
    ds = COCOCaptionsDataset(COCOCaptionsConfig(path=str(tmp_path / "captions_val2017.json")))
    assert ds.modality == "text" and len(ds) == 15 and ds[0] == "caption 0"
    two = COCOCaptionsDataset(
        COCOCaptionsConfig(path=str(tmp_path / "captions_val2017.json"), per_image=2)
    )
    assert list(two) == [
        "caption 0",
        "caption 1",
        "caption 5",
        "caption 6",
        "caption 10",
        "caption 11",
    ]
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="not a COCO captions file"):
        len(COCOCaptionsDataset(COCOCaptionsConfig(path=str(tmp_path / "other.json"))))


def test_bad_files_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\x00\x00\x01")
    (tmp_path / "p.csv").write_text("a,b\n1,2\n")
    cases = [
        (tmp_path / "empty.txt", "no prompts"),
        (tmp_path / "bin.txt", "not a text file"),
        (tmp_path / "none.txt", "does not exist"),
        (tmp_path / "p.csv", "no prompt, text or caption column"),
    ]
    for path, message in cases:
        with pytest.raises(DatasetError, match=message) as err:
            _file(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_hf_text_without_datasets_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    real = prompts.importlib.util.find_spec
    monkeypatch.setattr(
        prompts.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "datasets" else real(name, *a),
    )
    with pytest.raises(DatasetError, match="pip install datasets"):
        len(HFTextDataset(HFTextConfig(dataset="vivym/midjourney-prompts")))


def test_builtin_corpus(tmp_path: Path) -> None:
    corpus = PromptCorpusDataset(PromptCorpusConfig(max_items=50))
    assert len(corpus) == 50 and all(isinstance(t, str) and t for t in corpus)
    full = PromptCorpusDataset(PromptCorpusConfig(class_names="imagenet", dedup=False))
    assert len(full) == 1000 * len(prompts.TEMPLATES) * len(prompts.STYLES)
    assert "a photo of a tench" in list(full)
    wheel = tmp_path / "clip_interrogator-0.6.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("clip_interrogator/data/flavors.txt", "highly detailed\nbokeh\nbokeh\n")
    flavors = PromptCorpusDataset(PromptCorpusConfig(source="flavors", flavors_path=str(wheel)))
    assert list(flavors) == ["highly detailed", "bokeh"]


def test_hf_text_from_local_folders(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")  # optional extra `hf`
    frame = {"prompt": TEXTS, "id": list(range(len(TEXTS)))}
    datasets.Dataset.from_dict(frame).save_to_disk(str(tmp_path / "saved"))
    want = ["a red car", "an old man, anime style", "sunset over the sea", "a cat"]
    saved = HFTextDataset(HFTextConfig(dataset=str(tmp_path / "saved")))
    assert list(saved) == want
    (tmp_path / "files").mkdir()
    pd.DataFrame({"caption": TEXTS}).to_csv(tmp_path / "files" / "train.csv", index=False)
    files = HFTextDataset(
        HFTextConfig(
            dataset=str(tmp_path / "files"), column="caption", cache_dir=str(tmp_path / "hf")
        )
    )
    assert list(files) == want
    with pytest.raises(DatasetError, match="no column 'text'; columns: prompt, id"):
        len(HFTextDataset(HFTextConfig(dataset=str(tmp_path / "saved"), column="text")))
