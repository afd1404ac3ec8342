"""Config of the ``head-accuracy`` evaluator. Light: stdlib and ``saebench_vision.config`` only."""

from __future__ import annotations

from dataclasses import dataclass

from saebench_vision.config import FieldValueError, option


@dataclass(frozen=True)
class HeadAccuracyConfig:
    """Top-1 / top-5 accuracy of the model's own classifier on every labelled split."""

    prompts: tuple[str, ...] = option(
        ("a photo of a {}.",),
        "CLIP zero-shot: prompt templates, {} becomes the class name; each class's text "
        "embeddings are averaged over them (ignored by models with a trained head)",
    )
    batch_size: int = option(64, "images per forward pass", identity=False)
    roles: tuple[str, ...] = option(
        ("train", "eval", "shifted"),
        "split roles to score (OOD roles are unlabelled, or labelled with other classes)",
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise FieldValueError("batch_size", self.batch_size, "at least 1")
        if not self.prompts or not all("{}" in p for p in self.prompts):
            raise FieldValueError(
                "prompts",
                self.prompts,
                "a non-empty list of templates, each with {} for the class name",
            )
