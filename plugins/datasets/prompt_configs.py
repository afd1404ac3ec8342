"""Config dataclasses of the prompt and caption datasets. Light: stdlib and ``saebench_vision.config``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saebench_vision.config import FieldValueError, option


@dataclass(frozen=True)
class TextSelection:
    """How many texts a split keeps and which: shared by every prompt dataset."""

    max_items: int | None = option(
        None, "keep at most this many texts (after deduplication); null keeps all"
    )
    sample_seed: int | None = option(
        0,
        "with max_items: a seeded random sample of that size (kept in file order); null takes "
        "the first max_items",
    )
    dedup: bool = option(
        True, "drop repeated texts (compared after collapsing whitespace and case)"
    )
    min_chars: int = option(1, "drop texts shorter than this after stripping")

    def __post_init__(self) -> None:
        if self.max_items is not None and self.max_items < 1:
            raise FieldValueError("max_items", self.max_items, "at least 1, or null")


@dataclass(frozen=True, kw_only=True)
class PromptFileConfig(TextSelection):
    """Prompts from a file: one a line (.txt), or a column of a CSV / TSV / JSON Lines / JSON /
    Parquet table."""

    path: str = option(
        help="the file: .txt (one prompt a line), .csv, .tsv, .jsonl, .json, .parquet", exists=True
    )
    column: str | None = option(
        None,
        "table files: the column (or JSON key) holding the text; null: `prompt`, `text` or "
        "`caption`, whichever exists",
    )
    format: Literal["auto", "text", "csv", "tsv", "jsonl", "json", "parquet"] = option(
        "auto", "file format; auto decides from the suffix"
    )


@dataclass(frozen=True, kw_only=True)
class COCOCaptionsConfig(TextSelection):
    """MS-COCO captions from ``annotations/captions_{train,val}2017.json`` (or 2014)."""

    path: str = option(
        help="a COCO captions file, e.g. /data/coco/annotations/captions_val2017.json", exists=True
    )
    per_image: int | None = option(
        None, "keep at most this many captions per image (the first ones); null keeps all five"
    )


@dataclass(frozen=True, kw_only=True)
class HFTextConfig(TextSelection):
    """A text column of a Hugging Face dataset: a hub id (e.g. ``vivym/midjourney-prompts``) or
    a local folder (``save_to_disk`` output, or data files ``load_dataset`` reads). Needs the
    optional ``datasets`` package (``pip install datasets``)."""

    dataset: str = option(
        help="hub id (vivym/midjourney-prompts) or a local dataset folder", path=True
    )
    column: str = option("prompt", "the text column (COCO-style datasets: caption)")
    split: str = option("train", "the dataset split")
    name: str | None = option(None, "the dataset configuration name, if it has several")
    revision: str | None = option(None, "hub revision (branch, tag or commit) to pin")
    cache_dir: str | None = option(
        None,
        "where `datasets` keeps downloads and prepared files (default: its own cache)",
        identity=False,
    )


@dataclass(frozen=True, kw_only=True)
class PromptCorpusConfig(TextSelection):
    """The built-in offline corpus: prompt templates filled with the shipped ImageNet-1k and
    shapes class names and a few styles, or clip-interrogator's ``flavors.txt`` phrases."""

    source: Literal["templates", "flavors"] = option(
        "templates",
        "templates: composed prompts (no download); flavors: the ~100k phrases of "
        "clip-interrogator's flavors.txt (MIT; `pip install --no-deps clip-interrogator`, or "
        "give flavors_path)",
    )
    class_names: Literal["imagenet", "shapes", "both"] = option(
        "both", "templates: which shipped class names fill the templates"
    )
    flavors_path: str | None = option(
        None, "flavors: a flavors.txt or a clip_interrogator wheel to read it from", exists=True
    )
