"""Words behind tokens, parts of speech, stop words, and the IDF choice of a dominant keyword.

* :func:`word_spans` splits a text into words (letters and digits with inner apostrophes or
  hyphens); :func:`token_words` maps each tokenizer position to the word its characters fall
  in (tokenizer offsets), so BPE pieces ``sun``+``glasses`` both map to ``sunglasses``.
* :func:`content_pos` tags words as noun / adjective / adverb / other: with nltk's perceptron
  tagger when its data is installed (words tagged in their sentence), else with WordNet's parts
  of speech (a word is a noun, adjective or adverb if WordNet lists it as one; the first listed
  wins in WordNet's noun, adjective, adverb order), else ``unknown`` (only stop words are
  filtered).
* :func:`dominant_keywords` picks, for each feature, the keyword that best singles it out: the
  one with the highest inverse document frequency over all features' keyword lists (each
  feature's list is a document), ties broken by the labeller's own order.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

WORD_RE = re.compile(r"[A-Za-z0-9]+(?:['\-][A-Za-z0-9]+)*")

STOP_WORDS = frozenset(
    """a an the and or but if then else of at by for with about against between into through
    during before after above below to from up down in out on off over under again further once
    here there when where why how all any both each few more most other some such no nor not only
    own same so than too very s t can will just don should now is are was were be been being have
    has had having do does did doing i me my myself we our ours you your yours he him his she her
    hers it its itself they them their theirs what which who whom this that these those am as
    until while one two three very also near next onto its it's there's""".split()
)
"""English function words (nltk's list, plus a few caption fillers); never attributes."""

POS_KEEP = ("noun", "adj", "adv")


def word_spans(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, lower-cased word)`` of each word in ``text``."""
    return [(m.start(), m.end(), m.group().lower()) for m in WORD_RE.finditer(text)]


def token_words(text: str, offsets: Sequence[tuple[int, int] | None]) -> list[str | None]:
    """The word each token sits in (None for special tokens and punctuation).

    ``offsets`` are the tokenizer's ``(start, end)`` character offsets per position (``(0, 0)``
    or None for special tokens). A token belongs to the word its characters overlap.
    """
    spans = word_spans(text)
    out: list[str | None] = []
    for off in offsets:
        if off is None or off[1] <= off[0]:
            out.append(None)
            continue
        start, end = int(off[0]), int(off[1])
        word = next((w for s, e, w in spans if s < end and start < e), None)
        out.append(word)
    return out


def _nltk_tagger() -> Callable[[list[str]], list[tuple[str, str]]] | None:
    try:
        import nltk

        nltk.pos_tag(["test"])
    except (LookupError, ImportError, OSError):
        return None
    return nltk.pos_tag  # type: ignore[no-any-return]


def _penn_to_pos(tag: str) -> str:
    if tag.startswith("NN"):
        return "noun"
    if tag.startswith("JJ"):
        return "adj"
    if tag.startswith("RB"):
        return "adv"
    return "other"


def _wordnet() -> Any:
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("dog")
    except (LookupError, ImportError, OSError):
        try:
            from saebench_vision_plugins.datasets.wordnet import wordnet_reader

            return wordnet_reader()
        except Exception:  # noqa: BLE001 - no WordNet at all: the caller falls back
            return None
    return wordnet


def content_pos(
    words: Sequence[str],
    *,
    tagger: Callable[[list[str]], list[tuple[str, str]]] | None | str = "auto",
    wordnet: Any = "auto",
    context: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    """``{word: "noun" | "adj" | "adv" | "other" | "stop" | "unknown"}``.

    ``tagger`` is nltk's ``pos_tag`` (``"auto"``: when its data is installed; None: never);
    ``context`` maps a word to a sentence it occurs in, so the tagger sees it in context (a
    word's tag is the most common over the sentences given). ``wordnet`` is an nltk WordNet
    reader (``"auto"``: nltk's, or the one :mod:`saebench_vision_plugins.datasets.wordnet`
    sets up), used when there is no tagger; with neither, every non-stop word is ``"unknown"``.
    """
    out: dict[str, str] = {}
    rest = []
    for w in words:
        if w.lower() in STOP_WORDS or not WORD_RE.fullmatch(w) or w.isdigit():
            out[w] = "stop"
        else:
            rest.append(w)
    if not rest:
        return out
    tag = _nltk_tagger() if tagger == "auto" else tagger
    if callable(tag):
        for w in rest:
            sentence = list((context or {}).get(w, ())) or [w]
            tokens = [t for t in re.findall(r"\w+|[^\w\s]", " ".join(sentence))]
            tags = [_penn_to_pos(t) for tok, t in tag(tokens) if tok.lower() == w.lower()]
            out[w] = Counter(tags).most_common(1)[0][0] if tags else _penn_to_pos(tag([w])[0][1])
        return out
    wn = _wordnet() if wordnet == "auto" else wordnet
    for w in rest:
        if wn is None:
            out[w] = "unknown"
            continue
        pos = "other"
        for code, name in (("n", "noun"), ("a", "adj"), ("s", "adj"), ("r", "adv")):
            if wn.synsets(w, pos=code):
                pos = name
                break
        out[w] = pos
    return out


def dominant_keywords(answers: Mapping[Any, Sequence[str]]) -> dict[Any, str | None]:
    """For each feature, its keyword with the highest IDF across all features' keywords.

    ``idf(w) = log(N / df(w))`` where N is the number of features with any keyword and df the
    number whose list contains ``w``. A word shared by many features (``colorful``) says little
    about any one of them; ties keep the labeller's order. Features without keywords get None.
    """
    docs = {
        f: list(dict.fromkeys(k.strip().lower() for k in kws if k.strip()))
        for f, kws in answers.items()
    }
    n = sum(1 for kws in docs.values() if kws)
    df: Counter[str] = Counter(w for kws in docs.values() for w in kws)
    out: dict[Any, str | None] = {}
    for f, kws in docs.items():
        if not kws:
            out[f] = None
            continue
        out[f] = max(kws, key=lambda w: (math.log(n / df[w]), -kws.index(w)))
    return out
