"""Attribute discovery (paper 4.2): which SAE features fire on descriptive words.

Token-wise SAE activations over a caption corpus are streamed from the activation cache; for
every feature the ``top_rows`` most strongly activating tokens are kept (a running top-k over
chunks: memory ``top_rows × d_sae``, never ``N × d_sae``), mapped back to the caption and to the
whole word each token sits in (tokenizer offsets), and counted. A feature is a candidate when
its most frequent top word holds at least ``min_word_share`` of those tokens, is not a stop
word, and is a noun, adjective or adverb (or of unknown part of speech when neither a tagger
nor WordNet is available).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from saebench_vision_plugins.steering.words import content_pos, token_words

from saebench_vision.errors import ConfigError


@dataclass
class FeatureWords:
    """A feature's top-activating words: ``words`` as (word, count) with None for non-words."""

    feature: int
    rows: int
    max_activation: float
    words: list[tuple[str | None, int]]
    pos: str = ""
    examples: list[str] = field(default_factory=list)

    @property
    def top_word(self) -> str | None:
        return self.words[0][0] if self.words else None

    @property
    def share(self) -> float:
        return self.words[0][1] / self.rows if self.words and self.rows else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "rows": self.rows,
            "max_activation": self.max_activation,
            "top_word": self.top_word,
            "share": self.share,
            "pos": self.pos,
            "words": [[w, c] for w, c in self.words[:10]],
            "examples": self.examples[:3],
        }


def top_activating_rows(
    sae: Any, activations: Any, top: int, *, batch_size: int = 4096, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """``(values, rows)``, each (top, d_sae): each feature's largest activations and their rows."""
    dev = torch.device(device)
    sae = sae.to(dev)
    best_v = torch.full((0, sae.d_sae), -torch.inf, device=dev)
    best_i = torch.zeros((0, sae.d_sae), dtype=torch.long, device=dev)
    with torch.no_grad():
        for start, chunk in activations.iter_chunks(batch_size):
            x = torch.from_numpy(np.array(chunk, dtype=np.float32)).to(dev)
            z = sae.encode(x).float()
            rows = torch.arange(start, start + len(chunk), device=dev).unsqueeze(1).expand_as(z)
            v = torch.cat([best_v, z])
            i = torch.cat([best_i, rows])
            k = min(top, v.shape[0])
            best_v, pick = v.topk(k, dim=0)
            best_i = i.gather(0, pick)
    return best_v.cpu().numpy(), best_i.cpu().numpy()


def sd_row_offsets(adapter: Any, layer: str) -> Callable[[str], list[tuple[int, int] | None]]:
    """Character offsets of the rows an ``sd-text-encoder`` layer gives for one text.

    SD 1.x layers: the CLIP tokens (start, words, end); SD 3 ``prompt-embeds``: CLIP-L's tokens,
    then T5's (``clip-l.penultimate`` / ``clip-g.penultimate`` / ``t5.final``: one of them).
    """
    toks = getattr(adapter, "tokenizers", None)
    if not isinstance(toks, dict):
        raise ConfigError(
            f"attribute discovery maps tokens to words through the tokenizer; model "
            f"`{adapter.name}` exposes none"
        )
    t5_len = int(getattr(adapter.config, "t5_max_length", 256))
    parts = {
        "prompt-embeds": [("clip-l", 77), ("t5", t5_len)],
        "clip-l.penultimate": [("clip-l", 77)],
        "clip-g.penultimate": [("clip-g", 77)],
        "t5.final": [("t5", t5_len)],
    }.get(layer, [("clip", 77)])
    for key, _ in parts:
        if key not in toks:
            raise ConfigError(f"attribute discovery cannot map layer {layer!r} (pooled) to words")

    def offsets(text: str) -> list[tuple[int, int] | None]:
        out: list[tuple[int, int] | None] = []
        for key, length in parts:
            enc = toks[key](text, max_length=length, truncation=True, return_offsets_mapping=True)
            out += [tuple(o) if o[1] > o[0] else None for o in enc["offset_mapping"]]
        return out

    return offsets


def discover(
    sae: Any,
    activations: Any,
    texts: Sequence[str],
    offsets: Callable[[str], list[tuple[int, int] | None]],
    *,
    top_rows: int = 64,
    min_word_share: float = 0.25,
    pos_keep: Sequence[str] = ("noun", "adj", "adv"),
    tagger: Any = "auto",
    wordnet: Any = "auto",
    device: str = "cpu",
) -> tuple[list[FeatureWords], list[FeatureWords]]:
    """``(every firing feature's words, the candidates)``, candidates by share then activation."""
    values, rows = top_activating_rows(sae, activations, top_rows, device=device)
    sample_index = np.asarray(activations.sample_index)
    first_row = np.searchsorted(sample_index, sample_index, side="left")
    words_of: dict[int, list[str | None]] = {}

    def word_at(row: int) -> tuple[str | None, int]:
        item = int(sample_index[row])
        if item not in words_of:
            words_of[item] = token_words(texts[item], offsets(texts[item]))
        pos = int(row - first_row[row])
        ws = words_of[item]
        return (ws[pos] if pos < len(ws) else None), item

    found: list[FeatureWords] = []
    for f in range(values.shape[1]):
        live = values[:, f] > 0
        if not live.any():
            continue
        counts: Counter[str | None] = Counter()
        examples: list[str] = []
        for r in rows[live, f]:
            word, item = word_at(int(r))
            counts[word] += 1
            if len(examples) < 3 and texts[item] not in examples:
                examples.append(texts[item])
        found.append(
            FeatureWords(
                feature=f,
                rows=int(live.sum()),
                max_activation=float(values[0, f]),
                words=counts.most_common(),
                examples=examples,
            )
        )
    tops = sorted({fw.top_word for fw in found if fw.top_word is not None})
    context: dict[str, list[str]] = {}
    for fw in found:
        if fw.top_word is not None and fw.top_word not in context and fw.examples:
            context[fw.top_word] = [fw.examples[0]]
    pos = content_pos(tops, tagger=tagger, wordnet=wordnet, context=context)
    for fw in found:
        fw.pos = pos.get(fw.top_word, "none") if fw.top_word is not None else "none"
    keep = set(pos_keep) | {"unknown"}  # no tagger and no WordNet: stop words alone filter
    candidates = [fw for fw in found if fw.pos in keep and fw.share >= min_word_share]
    candidates.sort(key=lambda fw: (-fw.share, -fw.max_activation, fw.feature))
    return found, candidates
