"""Image-text datasets for multimodal LMs (paper section 5), built over another split.

* ``image-captions``: ``{"image": <the split's image>, "text": "Describe this image."}``; the
  prompt does not name the class.
* ``class-questions``: text-only items ``"What is a {name}?"``, one per class (and template),
  with the class names of the wrapped split (WordNet lemmas for ImageNet ids).

Both keep the wrapped split's classes (ids and names) and give every item its class label, so an
evaluator pairs a class's image side with its text side by class id (captions of an unlabelled
folder are unlabelled too: enough for patch maps, not for class pairing). The wrapped split is written
like any suite entry (``dataset: {plugin: shapes, args: {split: val}}``) and opened through the
plugin registry, and its identity is part of the wrapper's (and so of every cache key).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from PIL import Image
from saebench_vision_plugins.datasets.image_text_config import (
    ClassQuestionsConfig,
    ImageCaptionsConfig,
    _registry,
)

from saebench_vision.config import build_config
from saebench_vision.errors import DatasetError, SaebenchError
from saebench_vision.interfaces import ClassInfo, Dataset


def open_inner(owner: str, spec: dict[str, Any]) -> Dataset:
    """Instantiate the wrapped split ``{plugin, args}``; errors name ``owner`` and the path."""
    where = f"dataset `{owner}`: args.dataset"
    plugin = str(spec["plugin"])
    entry = _registry().get("dataset", plugin, where=where)
    cls = entry.load()
    config = build_config(
        cls.Config, dict(spec.get("args") or {}), where=f"{where}.args", what=f"dataset `{plugin}`"
    )
    try:
        return cls(config)
    except SaebenchError:
        raise
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{where}: dataset `{plugin}`: {exc}") from exc


def _labelled(owner: str, inner: Dataset, plugin: str) -> tuple[np.ndarray, list[ClassInfo]]:
    labels, classes = inner.labels(), inner.classes()
    if labels is None or classes is None:
        raise DatasetError(
            f"dataset `{owner}`: args.dataset `{plugin}` is unlabelled; wrap a labelled split "
            f"(its classes pair the image and text sides)"
        )
    return np.asarray(labels, dtype=np.int64), list(classes)


class ImageCaptionsDataset(Dataset):
    """Every image of a split, asked ``prompt``; labels and classes are the split's (if any)."""

    name: ClassVar[str] = "image-captions"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = ImageCaptionsConfig
    modality: ClassVar[str] = "image-text"

    def __init__(self, config: ImageCaptionsConfig) -> None:
        super().__init__(config)
        plugin = str(config.dataset["plugin"])
        self.inner = open_inner(self.name, config.dataset)
        if getattr(self.inner, "modality", "image") == "text":
            raise DatasetError(
                f"dataset `{self.name}`: args.dataset `{plugin}` is text-only; captions need "
                f"an image split (e.g. imagenet-folder, shapes)"
            )
        self._classes: list[ClassInfo] | None = None
        self._labels: np.ndarray | None = None
        if self.inner.labels() is None:
            # Unlabelled folders are fine for patch maps; per-class limits need classes.
            if config.max_per_class is not None or config.max_classes is not None:
                raise DatasetError(
                    f"dataset `{self.name}`: args.dataset `{plugin}` is unlabelled, so "
                    f"max_per_class and max_classes cannot apply; drop them"
                )
            self.indices = np.arange(len(self.inner), dtype=np.int64)
        else:
            labels, classes = _labelled(self.name, self.inner, plugin)
            keep_classes = len(classes) if config.max_classes is None else config.max_classes
            self._classes = classes[:keep_classes]
            chosen: list[int] = []
            seen = np.zeros(len(classes), dtype=np.int64)
            for index, label in enumerate(labels.tolist()):
                if label >= keep_classes:
                    continue
                if config.max_per_class is not None and seen[label] >= config.max_per_class:
                    continue
                seen[label] += 1
                chosen.append(index)
            self.indices = np.asarray(chosen, dtype=np.int64)
            self._labels = labels[self.indices]
        if len(self.indices) == 0:
            raise DatasetError(f"dataset `{self.name}`: args.dataset `{plugin}` has no images")

    def identity(self) -> dict[str, Any]:
        # The wrapped split counts by its own identity (resolved paths, runtime fields left
        # out), not by how its entry is spelled.
        base = super().identity()
        config = {k: v for k, v in base["config"].items() if k != "dataset"}
        return {**base, "config": config, "inner": self.inner.identity()}

    def fingerprint(self) -> str | None:
        """The wrapped split's (its files on disk, for folder datasets)."""
        return self.inner.fingerprint()

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, index: int) -> Image.Image:
        """The image of item ``index`` (also what figures draw patch maps over)."""
        item = self.inner[int(self.indices[index])]
        if isinstance(item, dict):
            item = item.get("image")
        if not isinstance(item, Image.Image):
            raise DatasetError(
                f"dataset `{self.name}`: item {index} of args.dataset `{self.config.dataset['plugin']}` "
                f"is a {type(item).__name__}, not an image"
            )
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.image(index), "text": self.config.prompt}

    def labels(self) -> np.ndarray | None:
        return self._labels

    def classes(self) -> list[ClassInfo] | None:
        return None if self._classes is None else list(self._classes)

    def hierarchy(self) -> dict[str, list[str]] | None:
        return self.inner.hierarchy()


def class_name(info: ClassInfo) -> str:
    """The name a question uses: the class's name with WordNet-style underscores as spaces."""
    return info.name.replace("_", " ").strip() or info.id


def article(name: str) -> str:
    """'an' before a vowel letter, else 'a' (by spelling: 'a unicorn' comes out 'an unicorn')."""
    return "an" if name[:1].lower() in "aeiou" and name[:1] else "a"


class ClassQuestionsDataset(Dataset):
    """One text-only question per (class, template) of a labelled split; label = the class."""

    name: ClassVar[str] = "class-questions"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = ClassQuestionsConfig
    modality: ClassVar[str] = "text"

    def __init__(self, config: ClassQuestionsConfig) -> None:
        super().__init__(config)
        plugin = str(config.dataset["plugin"])
        self.inner = open_inner(self.name, config.dataset)
        _, classes = _labelled(self.name, self.inner, plugin)
        self._classes = classes if config.max_classes is None else classes[: config.max_classes]
        t = len(config.templates)
        self._labels = np.repeat(np.arange(len(self._classes), dtype=np.int64), t)
        self._texts = [
            template.format(name=class_name(info), article=article(class_name(info)))
            for info in self._classes
            for template in config.templates
        ]

    def identity(self) -> dict[str, Any]:
        # The questions depend only on the class list, not on where the wrapped split's
        # images live: its entry is replaced by the classes it gives.
        base = super().identity()
        config = {k: v for k, v in base["config"].items() if k != "dataset"}
        return {**base, "config": config, "classes": [[c.id, c.name] for c in self._classes]}

    def __len__(self) -> int:
        return len(self._texts)

    def __getitem__(self, index: int) -> str:
        return self._texts[index]

    def labels(self) -> np.ndarray:
        return self._labels

    def classes(self) -> list[ClassInfo]:
        return list(self._classes)

    def hierarchy(self) -> dict[str, list[str]] | None:
        return self.inner.hierarchy()
