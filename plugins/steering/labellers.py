"""Labellers: what tells a feature's steered images from the originals.

* ``clip`` (:class:`CLIPLabeller`): ranks attribute words by ``mean cos(steered, word) −
  mean cos(original, word)`` under a CLIP model; cheap, offline-testable, a second opinion.
* ``qwen2.5-vl`` (:class:`QwenVLLabeller`): shows Qwen2.5-VL the originals and the steered
  images (the paper: 4 of each) and asks for keywords in a strict format with an abstain word;
  :func:`parse_keywords` reads the answer robustly, and anything it cannot read is an
  abstention.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from saebench_vision_plugins.steering.configs import CLIPLabellerConfig, QwenLabellerConfig

from saebench_vision.interfaces import Labeller, LabellerAnswer

ATTRIBUTE_WORDS: tuple[str, ...] = tuple(
    """elderly young child baby woman man crowd portrait smiling sad angry beard glasses
    sunglasses hat helmet crown mask armor uniform dress suit jewelry tattoo makeup anime cartoon
    comic manga painting watercolor sketch drawing pencil charcoal ink oil pastel pixel
    photorealistic cinematic vintage retro futuristic cyberpunk steampunk gothic medieval
    ancient fantasy surreal abstract minimalist baroque renaissance impressionist cubist
    spiritual religious symbolism mystical magic dark bright colorful monochrome black white red
    blue green yellow purple orange pink golden silver neon glowing fire smoke water ice snow rain
    fog night sunset sunrise forest desert ocean beach mountain city street interior space
    galaxy stars moon flowers garden tree animal dog cat horse bird dragon robot car ship castle
    ruins skull blood horror cute happy dramatic lighting bokeh closeup aerial wide symmetrical
    detailed texture geometric pattern floral metallic wooden stone glass paper fabric""".split()
)
"""The CLIP labeller's default vocabulary: visual attributes of the kinds the paper reports."""

ABSTAIN = "NONE"


class CLIPLabeller(Labeller):
    name = "clip"
    version = "1"
    Config = CLIPLabellerConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._scorer: Any = None

    @property
    def scorer(self) -> Any:
        if self._scorer is None:
            from saebench_vision_plugins.steering.scoring import CLIPScorer

            c = self.config
            self._scorer = CLIPScorer(c.backend, c.model, c.pretrained, c.device)
        return self._scorer

    def label(
        self,
        originals: Sequence[Any],
        steered: Sequence[Any],
        *,
        prompts: Sequence[str] = (),
        hints: Sequence[str] = (),
    ) -> LabellerAnswer:
        vocab = list(self.config.vocabulary or ATTRIBUTE_WORDS)
        words = list(dict.fromkeys([w.lower() for w in hints] + vocab))
        text = self.scorer.texts([self.config.template.format(w) for w in words])
        orig = self.scorer.images(list(originals))
        steer = self.scorer.images(list(steered))
        gain = (steer @ text.T).mean(0) - (orig @ text.T).mean(0)
        order = np.argsort(-gain, kind="stable")
        best = [words[i] for i in order[: self.config.top_k] if gain[i] > self.config.min_margin]
        raw = ", ".join(f"{words[i]}:{gain[i]:+.4f}" for i in order[: self.config.top_k])
        return LabellerAnswer(keywords=best, abstained=not best, raw=raw)


_WORDLIKE = re.compile(r"^[a-z][a-z0-9' \-]*$")


def parse_keywords(text: str, max_keywords: int = 5) -> LabellerAnswer:
    """Keywords from a reply of the form ``KEYWORDS: a, b, c`` (or ``KEYWORDS: NONE``).

    Tolerates case, markdown, quotes, numbering and a missing prefix when the whole reply is a
    short comma list of words; parts that are not words are dropped; anything else (prose,
    empty, garbage) is an abstention.
    """
    raw = text
    clean = text.replace("*", "").replace("`", "").strip()
    match = re.search(r"keywords?\s*[:：]\s*(.+)", clean, flags=re.IGNORECASE)
    if match:
        body = match.group(1).splitlines()[0]
    elif (
        clean
        and "\n" not in clean
        and len(clean) <= 80
        and clean.count(" ") <= 2 * (clean.count(",") + 1)
    ):
        body = clean
    else:
        return LabellerAnswer(keywords=[], abstained=True, raw=raw)
    parts = [re.sub(r"^\s*(\d+[.)]\s*|[-•]\s*)", "", p) for p in re.split(r"[,;/]", body)]
    words = []
    for p in parts:
        p = " ".join(p.strip().strip("\"'.!").split()).lower()
        if p.upper() == ABSTAIN or p in {"none", "n/a", "no difference"}:
            return LabellerAnswer(keywords=[], abstained=True, raw=raw)
        if p and len(p) <= 40 and _WORDLIKE.match(p):
            words.append(p)
    words = list(dict.fromkeys(words))[:max_keywords]
    return LabellerAnswer(keywords=words, abstained=not words, raw=raw)


def qwen_prompt(n_original: int, n_steered: int, max_keywords: int) -> str:
    return (
        f"The first {n_original} images are originals. The next {n_steered} images were made "
        f"from the same prompts and seeds with one change. Name up to {max_keywords} single-word "
        f"keywords for visual attributes that the changed images share and the originals lack, "
        f"most important first. Reply with exactly one line: `KEYWORDS: word1, word2, ...`, or "
        f"`KEYWORDS: {ABSTAIN}` if there is no consistent difference."
    )


class QwenVLLabeller(Labeller):
    name = "qwen2.5-vl"
    version = "1"
    Config = QwenLabellerConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._model: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from saebench_vision_plugins.models.common import hf_dtype, hf_load
        from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

        from saebench_vision.errors import WeightsNotFoundError
        from saebench_vision.interfaces import resolve_device

        c = self.config
        kw = {"revision": c.revision} if c.revision else {}
        config = hf_load(self.name, AutoConfig.from_pretrained, c.model_id, **kw)
        if getattr(config, "model_type", "") != "qwen2_5_vl":
            raise WeightsNotFoundError(
                f"labeller `{self.name}`: {c.model_id!r} holds a {config.model_type!r} model, not "
                f"Qwen2.5-VL; set model_id to a Qwen2.5-VL id or folder"
            )
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        self._device = resolve_device(c.device)
        self._model = (
            hf_load(
                self.name,
                Qwen2_5_VLForConditionalGeneration.from_pretrained,
                c.model_id,
                **kw,
                **hf_dtype(dtype[c.dtype]),
            )
            .to(self._device)
            .eval()
        )
        self._processor = hf_load(self.name, AutoProcessor.from_pretrained, c.model_id, **kw)

    def ask(self, images: Sequence[Any], question: str) -> str:
        """The model's reply to ``question`` about ``images`` (greedy decoding)."""
        import torch

        self._load()
        side = self.config.image_size
        pics = [im.convert("RGB").resize((side, side)) for im in images]
        content: list[dict[str, Any]] = [{"type": "image"} for _ in pics]
        content.append({"type": "text", "text": question})
        chat = self._processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        inputs = self._processor(text=[chat], images=pics, return_tensors="pt").to(self._device)
        with torch.inference_mode():
            out = self._model.generate(
                **inputs, max_new_tokens=self.config.max_new_tokens, do_sample=False
            )
        reply = out[:, inputs["input_ids"].shape[1] :]
        return str(self._processor.batch_decode(reply, skip_special_tokens=True)[0])

    def label(
        self,
        originals: Sequence[Any],
        steered: Sequence[Any],
        *,
        prompts: Sequence[str] = (),
        hints: Sequence[str] = (),
    ) -> LabellerAnswer:
        question = qwen_prompt(len(originals), len(steered), self.config.max_keywords)
        reply = self.ask(list(originals) + list(steered), question)
        return parse_keywords(reply, self.config.max_keywords)
