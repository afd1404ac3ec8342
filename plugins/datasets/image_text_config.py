"""Configs of the image-text datasets that wrap another labelled split. Light: stdlib only."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

from saebench_vision.config import FieldValueError, build_config, option
from saebench_vision.errors import SaebenchError


@lru_cache(maxsize=1)
def _registry() -> Any:
    from saebench_vision.plugins import get_plugin_manager

    return get_plugin_manager().registry()


def check_inner_spec(spec: Any, field: str = "dataset") -> None:
    """The wrapped split must be written ``{plugin: NAME, args: {...}}`` like any suite entry;
    its plugin and options are checked here (light: only its Config is imported), so
    ``saebench validate`` catches a wrong nested option before anything runs."""
    if not isinstance(spec, dict) or not isinstance(spec.get("plugin"), str):
        raise ValueError(
            f"{field}: {spec!r} is not a dataset entry; write {{plugin: NAME, args: {{...}}}} "
            f"(e.g. {{plugin: shapes, args: {{split: val}}}})"
        )
    unknown = set(spec) - {"plugin", "args"}
    if unknown:
        raise ValueError(f"{field}: unknown key `{sorted(unknown)[0]}` (expected: plugin, args)")
    if not isinstance(spec.get("args", {}) or {}, dict):
        raise ValueError(f"{field}.args: must be a mapping, not {spec.get('args')!r}")
    plugin = spec["plugin"]
    try:
        entry = _registry().get("dataset", plugin, where=f"{field}.plugin")
        build_config(
            entry.config_class(),
            dict(spec.get("args") or {}),
            where=f"{field}.args",
            what=f"dataset `{plugin}`",
        )
    except SaebenchError as exc:
        raise ValueError(str(exc)) from None


@dataclass(frozen=True)
class ImageCaptionsConfig:
    """Captioning items ``{image, text: prompt}`` over a labelled image split (paper section 5).

    The prompt never names the class: the model is asked to describe what it sees.
    """

    modality: ClassVar[str] = "image-text"
    """What the dataset's items are, readable without importing the implementation."""

    dataset: dict[str, Any] = option(
        help="the image split to caption, as a suite entry: {plugin: imagenet-folder, args: "
        "{root: /data/imagenet/val}} (any image dataset; labelled ones keep their classes)"
    )
    prompt: str = option("Describe this image.", "the question asked with every image")
    max_per_class: int | None = option(
        None, "keep at most this many images per class (the first in the split's order)"
    )
    max_classes: int | None = option(
        None, "keep only the first this many classes of the split's class list"
    )

    def __post_init__(self) -> None:
        check_inner_spec(self.dataset)
        if not self.prompt.strip():
            raise FieldValueError("prompt", self.prompt, "a question that is not empty")
        for name in ("max_per_class", "max_classes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FieldValueError(name, value, "at least 1, or null for all")


@dataclass(frozen=True)
class ClassQuestionsConfig:
    """Text-only questions about the classes of a labelled split ("What is a clock?")."""

    modality: ClassVar[str] = "text"

    dataset: dict[str, Any] = option(
        help="the labelled split whose classes are asked about, as a suite entry (its class "
        "names are used: ImageNet's are WordNet lemmas)"
    )
    templates: tuple[str, ...] = option(
        ("What is a {name}?",),
        "questions asked for every class; {name} is the class name and {article} 'a' or 'an' "
        "before it (by its first letter); one item per class and template",
    )
    max_classes: int | None = option(
        None, "keep only the first this many classes of the split's class list"
    )

    def __post_init__(self) -> None:
        check_inner_spec(self.dataset)
        if not self.templates:
            raise FieldValueError("templates", self.templates, "a list of at least one question")
        for template in self.templates:
            if "{name}" not in template:
                raise FieldValueError(
                    "templates",
                    self.templates,
                    f"questions that each have a {{name}} placeholder ({template!r} lacks the "
                    "{name} placeholder)",
                )
            try:
                template.format(name="clock", article="a")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"templates: {template!r} has a placeholder other than {{name}} and "
                    f"{{article}} ({exc}); double literal braces as {{{{ }}}}"
                ) from None
        if self.max_classes is not None and self.max_classes < 1:
            raise FieldValueError("max_classes", self.max_classes, "at least 1, or null for all")
