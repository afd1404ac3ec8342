"""Accuracy of the model's own head: is the model the one the user thinks it is?

For every labelled split (roles ``train``, ``eval`` and ``shifted`` by default), the model
adapter's :meth:`~saebench_vision.interfaces.ModelAdapter.classify` scores each image against
the split's classes: an ImageNet-1k head (EfficientNet-Lite, torchvision ResNet) restricted to
those classes' columns (the standard protocol for the 200-class ImageNet-A/-R), or CLIP
zero-shot with class-name prompts. Reported as ``top1`` and ``top5`` (top-k with k capped at
the number of classes), each with its binomial standard error.

The head does not depend on the layer, the SAE or the seed: the numbers are baseline rows,
computed once per model and split in a run and repeated for its other layers; SAE cells add
nothing.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from saebench_vision_plugins.evaluators.head_config import HeadAccuracyConfig

from saebench_vision.errors import ConfigError
from saebench_vision.interfaces import EvalContext, Evaluator, Record


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Whether each row's label is among its ``k`` best scores (ties broken by index)."""
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == labels.unsqueeze(1)).any(dim=1)


class HeadAccuracyEvaluator(Evaluator):
    """Top-1 / top-5 of the model's own classifier on every labelled split."""

    name: ClassVar[str] = "head-accuracy"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = HeadAccuracyConfig
    metrics: ClassVar[dict[str, bool | None]] = {"top1": True, "top5": True}
    headline: ClassVar[tuple[str, ...]] = ("top1",)
    needs_adapter: ClassVar[bool] = True

    def __init__(self, config: HeadAccuracyConfig) -> None:
        super().__init__(config)
        self._done: dict[tuple[str, str], list[Record]] = {}

    def evaluate(self, ctx: EvalContext) -> list[Record]:
        return []  # an SAE does not change the model's head

    def baseline(self, ctx: EvalContext) -> list[Record]:
        records: list[Record] = []
        for split in ctx.split_names(*self.config.roles):
            key = (ctx.model_name, split)
            if key not in self._done:
                self._done[key] = self._score(ctx, split)
            records.extend(self._done[key])
        return records

    def _score(self, ctx: EvalContext, split: str) -> list[Record]:
        dataset = ctx.dataset(split)
        labels, classes = dataset.labels(), dataset.classes()
        if labels is None or not classes:
            return []
        adapter: Any = ctx.adapter
        correct = {1: 0, 5: 0}
        n = len(dataset)
        size = self.config.batch_size
        for start in range(0, n, size):
            items = [dataset[i] for i in range(start, min(start + size, n))]
            with torch.inference_mode():
                scores = adapter.classify(adapter.preprocess(items), classes, self.config.prompts)
            if scores is None:
                raise ConfigError(
                    f"evaluator `{self.name}`: model `{adapter.name}` has no classification head "
                    f"(built-in heads: efficientnet-lite, resnet with ImageNet weights, open-clip "
                    f"and hf-clip zero-shot); remove head-accuracy from this suite's evaluators"
                )
            target = torch.as_tensor(np.asarray(labels[start : start + len(items)]))
            scores = scores.float().cpu()
            for k in correct:
                correct[k] += int(topk_correct(scores, target, k).sum())
        out = []
        for k, hits in correct.items():
            p = hits / n
            out.append(
                Record(
                    metric=f"top{k}",
                    value=p,
                    split=split,
                    stderr=math.sqrt(p * (1 - p) / n),
                    higher_is_better=True,
                    n=n,
                    extra={"classes": len(classes)},
                )
            )
        return out
