"""Prompt and caption datasets: text items for text encoders (``sd-text-encoder``).

* ``prompt-file``: a text file (one prompt a line) or a column of a CSV / TSV / JSON Lines /
  JSON / Parquet table;
* ``coco-captions``: MS-COCO's ``captions_*.json``;
* ``hf-text``: a text column of a Hugging Face dataset (hub id or local folder), with the
  optional ``datasets`` package;
* ``prompt-corpus``: an offline built-in corpus (templates x shipped class names, or
  clip-interrogator's ``flavors.txt``).

Every one keeps ``max_items`` (a seeded sample by default), drops duplicates and empty texts, and
refuses an empty result or a file that is not text with one line naming the file and the fix.

Licences: the templates and styles are this project's (Apache-2.0); ImageNet-1k class names
come from WordNet 3.0 (Princeton licence, see the hierarchy file); clip-interrogator's
``flavors.txt`` is MIT-licensed (pharmapsychotic/clip-interrogator) and is read from the user's
installed package or wheel, not shipped.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from saebench_vision_plugins.datasets.prompt_configs import (
    COCOCaptionsConfig,
    HFTextConfig,
    PromptCorpusConfig,
    PromptFileConfig,
)

from saebench_vision.errors import DatasetError
from saebench_vision.interfaces import Dataset

_DATA = Path(__file__).parent / "data"

TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a close-up photo of a {}",
    "a painting of a {}",
    "a drawing of a {}",
    "a {} in the wild",
    "a {} on a table",
    "a small {} next to a large one",
    "an old {}",
)
STYLES: tuple[str, ...] = (
    "",
    ", oil painting",
    ", anime style",
    ", black and white photograph",
    ", watercolor",
    ", at sunset",
    ", studio lighting, highly detailed",
)
_DEFAULT_COLUMNS = ("prompt", "text", "caption")


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def select_texts(texts: Iterable[Any], config: Any, source: str) -> list[str]:
    """Strip, drop short and non-string entries, deduplicate, then keep ``max_items``."""
    out: list[str] = []
    seen: set[str] = set()
    for text in texts:
        if not isinstance(text, str):
            continue
        text = text.strip()
        if len(text) < config.min_chars:
            continue
        if config.dedup:
            key = _normal(text)
            if key in seen:
                continue
            seen.add(key)
        out.append(text)
    if not out:
        raise DatasetError(
            f"{source}: no prompts (empty, or no text in the chosen column); check the file and column"
        )
    if config.max_items is not None and len(out) > config.max_items:
        if config.sample_seed is None:
            out = out[: config.max_items]
        else:
            rng = np.random.default_rng(config.sample_seed)
            keep = np.sort(rng.choice(len(out), size=config.max_items, replace=False))
            out = [out[i] for i in keep]
    return out


class TextDataset(Dataset):
    """A list of prompt strings."""

    modality = "text"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._texts: list[str] | None = None

    def _read(self) -> list[Any]:
        raise NotImplementedError

    def _source(self) -> str:
        return f"dataset `{self.name}`"

    @property
    def texts(self) -> list[str]:
        if self._texts is None:
            self._texts = select_texts(self._read(), self.config, self._source())
        return self._texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> str:
        return self.texts[index]


def _read_text_file(path: Path, what: str) -> str:
    if not path.is_file():
        raise DatasetError(f"{what}: {str(path)!r} does not exist; fix `path`")
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise DatasetError(
            f"{what}: {str(path)!r} is not a text file (binary data); give a UTF-8 text, CSV, JSONL or Parquet file"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{what}: {str(path)!r} is not UTF-8 text (byte {exc.start}); re-encode it as UTF-8"
        ) from None


def _column(
    rows: list[dict[str, Any]] | Any, column: str | None, path: Path, what: str
) -> list[Any]:
    """``rows`` is a list of dicts or a pandas DataFrame."""
    names = list(rows.columns) if hasattr(rows, "columns") else sorted({k for r in rows for k in r})
    if column is None:
        column = next((c for c in _DEFAULT_COLUMNS if c in names), None)
        if column is None:
            raise DatasetError(
                f"{what}: {str(path)!r} has no prompt, text or caption column; set `column` "
                f"(columns: {', '.join(map(str, names[:10]))})"
            )
    if column not in names:
        raise DatasetError(
            f"{what}: {str(path)!r} has no column {column!r}; columns: {', '.join(map(str, names[:10]))}"
        )
    if hasattr(rows, "columns"):
        return list(rows[column])
    return [r.get(column) for r in rows]


class PromptFileDataset(TextDataset):
    """Prompts from a text file or a table column (see :class:`PromptFileConfig`)."""

    name = "prompt-file"
    version = "1"
    Config = PromptFileConfig

    def _source(self) -> str:
        return f"dataset `prompt-file` ({self.config.path})"

    def _read(self) -> list[Any]:
        path = Path(self.config.path).expanduser()
        what = "dataset `prompt-file`"
        fmt = self.config.format
        if fmt == "auto":
            suffix = path.suffix.lower()
            fmt = {
                ".csv": "csv",
                ".tsv": "tsv",
                ".jsonl": "jsonl",
                ".ndjson": "jsonl",
                ".json": "json",
                ".parquet": "parquet",
            }.get(suffix, "text")
        if fmt == "parquet":
            if not path.is_file():
                raise DatasetError(f"{what}: {str(path)!r} does not exist; fix `path`")
            import pandas as pd

            try:
                frame = pd.read_parquet(path)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
                raise DatasetError(
                    f"{what}: {str(path)!r} is not a readable Parquet file ({type(exc).__name__}); check the file"
                ) from None
            return _column(frame, self.config.column, path, what)
        text = _read_text_file(path, what)
        if fmt == "text":
            return text.splitlines()
        if fmt in ("csv", "tsv"):
            import csv
            import io

            reader = csv.DictReader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t")
            return _column(list(reader), self.config.column, path, what)
        if fmt == "jsonl":
            rows = []
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(
                        f"{what}: {str(path)!r} line {n} is not JSON ({exc.msg}); fix that line"
                    ) from None
                rows.append(row if isinstance(row, dict) else {"text": row})
            return _column(rows, self.config.column, path, what)
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{what}: {str(path)!r} is not JSON ({exc.msg} at line {exc.lineno})"
            ) from None
        if isinstance(doc, list) and all(isinstance(x, str) for x in doc):
            return list(doc)
        if isinstance(doc, list):
            return _column([r for r in doc if isinstance(r, dict)], self.config.column, path, what)
        raise DatasetError(f"{what}: {str(path)!r} must hold a JSON list of strings or of objects")


class COCOCaptionsDataset(TextDataset):
    """MS-COCO captions, in the file's annotation order (see :class:`COCOCaptionsConfig`)."""

    name = "coco-captions"
    version = "1"
    Config = COCOCaptionsConfig

    def _source(self) -> str:
        return f"dataset `coco-captions` ({self.config.path})"

    def _read(self) -> list[Any]:
        path = Path(self.config.path).expanduser()
        what = "dataset `coco-captions`"
        try:
            doc = json.loads(_read_text_file(path, what))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{what}: {str(path)!r} is not JSON ({exc.msg})") from None
        anns = doc.get("annotations") if isinstance(doc, dict) else None
        if not isinstance(anns, list) or not all(
            isinstance(a, dict) and "caption" in a for a in anns[:10]
        ):
            raise DatasetError(
                f"{what}: {str(path)!r} is not a COCO captions file (no annotations with a "
                f"caption); use annotations/captions_val2017.json"
            )
        per: dict[Any, int] = {}
        out = []
        for ann in anns:
            if self.config.per_image is not None:
                count = per.get(ann.get("image_id"), 0)
                if count >= self.config.per_image:
                    continue
                per[ann.get("image_id")] = count + 1
            out.append(ann.get("caption"))
        return out


class HFTextDataset(TextDataset):
    """A Hugging Face dataset's text column (see :class:`HFTextConfig`)."""

    name = "hf-text"
    version = "1"
    Config = HFTextConfig

    def _source(self) -> str:
        return f"dataset `hf-text` ({self.config.dataset})"

    def _read(self) -> list[Any]:
        what = f"dataset `hf-text` ({self.config.dataset})"
        if importlib.util.find_spec("datasets") is None:
            raise DatasetError(f"{what}: needs the `datasets` package; pip install datasets")
        import datasets

        target = Path(self.config.dataset).expanduser()
        try:
            saved = (target / "dataset_info.json").exists() or (
                target / "dataset_dict.json"
            ).exists()
            if target.is_dir() and saved:
                loaded: Any = datasets.load_from_disk(str(target))
                if isinstance(loaded, datasets.DatasetDict):
                    loaded = loaded[self.config.split]
            else:
                loaded = datasets.load_dataset(
                    str(target) if target.is_dir() else self.config.dataset,
                    self.config.name,
                    split=self.config.split,
                    revision=self.config.revision,
                    cache_dir=self.config.cache_dir,
                )
        except (OSError, ValueError, KeyError, FileNotFoundError) as exc:
            text = " ".join(str(exc).split())[:160]
            raise DatasetError(f"{what}: cannot load split {self.config.split!r}: {text}") from None
        if self.config.column not in loaded.column_names:
            raise DatasetError(
                f"{what}: no column {self.config.column!r}; columns: {', '.join(loaded.column_names)}"
            )
        return list(loaded[self.config.column])


def _class_names(which: str) -> list[str]:
    names: list[str] = []
    if which in ("imagenet", "both"):
        with gzip.open(_DATA / "imagenet1k_hierarchy.json.gz", "rt") as fh:
            doc = json.load(fh)
        names += [doc["names"][leaf].split(",")[0] for leaf in doc["leaves"]]
    if which in ("shapes", "both"):
        from saebench_vision_plugins.datasets.shapes_config import LEAF_CLASSES

        names += [c.replace("-", " ").replace("_", " ") for c in LEAF_CLASSES]
    return names


def read_flavors(path: str | None) -> list[str]:
    """clip-interrogator's ``data/flavors.txt``: from ``path`` (the text file or the wheel),
    else from the installed ``clip_interrogator`` package (never imported: it pulls BLIP)."""
    what = "dataset `prompt-corpus` (flavors)"
    if path is not None:
        p = Path(path).expanduser()
        if p.suffix == ".whl":
            if not p.is_file():
                raise DatasetError(f"{what}: {str(p)!r} does not exist; fix `flavors_path`")
            with zipfile.ZipFile(p) as wheel:
                member = next((n for n in wheel.namelist() if n.endswith("data/flavors.txt")), None)
                if member is None:
                    raise DatasetError(f"{what}: {str(p)!r} holds no data/flavors.txt")
                return wheel.read(member).decode("utf-8").splitlines()
        return _read_text_file(p, what).splitlines()
    spec = importlib.util.find_spec("clip_interrogator")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            f"{what}: clip-interrogator is not installed; pip install --no-deps clip-interrogator, "
            f"or set flavors_path to its wheel or flavors.txt"
        )
    file = Path(next(iter(spec.submodule_search_locations))) / "data" / "flavors.txt"
    return _read_text_file(file, what).splitlines()


class PromptCorpusDataset(TextDataset):
    """The built-in offline prompt corpus (see :class:`PromptCorpusConfig`)."""

    name = "prompt-corpus"
    version = "1"
    Config = PromptCorpusConfig

    def _read(self) -> list[Any]:
        if self.config.source == "flavors":
            return read_flavors(self.config.flavors_path)
        names = _class_names(self.config.class_names)
        return [t.format(n) + s for n in names for t in TEMPLATES for s in STYLES]
