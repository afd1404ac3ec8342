"""Steering's pure parts on hand examples: the t-test against scipy, word mapping, parts of
speech with and without the tagger, IDF keyword choice, answer parsing, the CLIP labeller."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from saebench_vision_plugins.steering import words as words_mod
from saebench_vision_plugins.steering.configs import CLIPLabellerConfig
from saebench_vision_plugins.steering.labellers import CLIPLabeller, parse_keywords
from saebench_vision_plugins.steering.stats import paired_ttest
from saebench_vision_plugins.steering.tiny import tiny_clip_tokenizer
from saebench_vision_plugins.steering.words import content_pos, dominant_keywords, token_words
from scipy import stats

from saebench_vision import hookimpl


@pytest.mark.parametrize("n,shift", [(100, 0.012), (5, -0.3), (30, 0.0)])
def test_paired_ttest_equals_scipy(n: int, shift: float) -> None:
    rng = np.random.default_rng(n)
    b = rng.normal(0.2, 0.03, size=n)
    a = b + shift + rng.normal(0, 0.02, size=n)
    ours = paired_ttest(a, b)
    ref = stats.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert ours.t == pytest.approx(ref.statistic, rel=1e-10)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    d = a - b
    assert ours.mean_difference == pytest.approx(d.mean())
    assert ours.effect_size == pytest.approx(d.mean() / d.std(ddof=1))
    assert ours.n == n


def test_paired_ttest_degenerate() -> None:
    same = paired_ttest([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert same.t == 0 and same.p_value == 1.0
    with pytest.raises(ValueError):
        paired_ttest([1.0], [2.0])


def test_tokens_map_to_whole_words() -> None:
    tok = tiny_clip_tokenizer()  # byte-level, no merges: every letter is its own BPE piece
    text = "An old man, wearing sun-glasses!"
    enc = tok(text, return_offsets_mapping=True)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    mapped = token_words(text, enc["offset_mapping"])
    assert len(mapped) == len(pieces)
    assert mapped[0] is None and mapped[-1] is None  # start and end of text
    got = [w for w in mapped if w is not None]
    assert list(dict.fromkeys(got)) == ["an", "old", "man", "wearing", "sun-glasses"]
    assert got.count("sun-glasses") == len("sun-glasses")  # 11 one-letter pieces, one word
    assert mapped[pieces.index(",</w>")] is None  # punctuation is no word


def test_pos_with_tagger_in_context() -> None:
    calls: list[list[str]] = []

    def tagger(tokens: list[str]) -> list[tuple[str, str]]:
        calls.append(tokens)
        table = {"old": "JJ", "man": "NN", "quickly": "RB", "runs": "VBZ"}
        return [(t, table.get(t.lower(), "DT")) for t in tokens]

    pos = content_pos(
        ["old", "man", "quickly", "runs", "the", "42"],
        tagger=tagger,
        context={"old": ["an old man runs quickly"]},
    )
    assert pos == {
        "old": "adj",
        "man": "noun",
        "quickly": "adv",
        "runs": "other",
        "the": "stop",
        "42": "stop",
    }
    assert calls[0] == ["an", "old", "man", "runs", "quickly"]  # tagged in its sentence


class _FakeWordNet:
    """The few entries of WordNet the test needs (``synsets(word, pos)``)."""

    table = {("elderly", "a"), ("elderly", "n"), ("glasses", "n"), ("quickly", "r"), ("run", "v")}

    def synsets(self, word: str, pos: str) -> list[str]:
        return [word] if (word, pos) in self.table else []


def test_pos_without_tagger_data_uses_wordnet(monkeypatch: pytest.MonkeyPatch) -> None:
    import nltk

    def missing(*_: Any, **__: Any) -> Any:
        raise LookupError("Resource averaged_perceptron_tagger_eng not found.")

    monkeypatch.setattr(nltk, "pos_tag", missing)
    assert words_mod._nltk_tagger() is None
    pos = content_pos(["elderly", "glasses", "quickly", "run", "of"], wordnet=_FakeWordNet())
    assert pos == {
        "elderly": "noun",
        "glasses": "noun",
        "quickly": "adv",
        "run": "other",
        "of": "stop",
    }
    assert content_pos(["glasses"], tagger=None, wordnet=None) == {"glasses": "unknown"}


def test_dominant_keyword_by_idf() -> None:
    answers = {
        1: ["colorful", "elderly", "wrinkles"],
        2: ["colorful", "anime"],
        3: ["colorful", "sunglasses", "anime"],
        4: [],
    }
    # colorful is everywhere (idf 0); anime in 2 of 3; elderly, sunglasses in one each
    assert dominant_keywords(answers) == {1: "elderly", 2: "anime", 3: "sunglasses", 4: None}


@pytest.mark.parametrize(
    "reply,keywords,abstained",
    [
        ("KEYWORDS: elderly, wrinkles, grey hair", ["elderly", "wrinkles", "grey hair"], False),
        ("**Keywords:** 1. Anime; 2. Cartoon.", ["anime", "cartoon"], False),
        ("keywords: NONE", [], True),
        ("I cannot see any clear difference between the two sets of pictures here.", [], True),
        ("", [], True),
        ("sunglasses, beach", ["sunglasses", "beach"], False),
    ],
)
def test_parse_keywords(reply: str, keywords: list[str], abstained: bool) -> None:
    answer = parse_keywords(reply)
    assert answer.keywords == keywords and answer.abstained is abstained and answer.raw == reply


class _Scorer:
    """CLIP stand-in: word i has embedding e_i; an image is its stored vector."""

    def __init__(self, vocab: list[str]) -> None:
        self.vocab = vocab

    def texts(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.vocab)))
        for i, t in enumerate(texts):
            out[i, self.vocab.index(t.removeprefix("a photo of "))] = 1
        return out

    def images(self, images: list[np.ndarray]) -> np.ndarray:
        return np.stack(images)


def test_clip_labeller_ranks_the_gain() -> None:
    vocab = ["anime", "elderly", "red", "sunglasses"]
    labeller = CLIPLabeller(CLIPLabellerConfig(vocabulary=vocab, top_k=2))
    labeller._scorer = _Scorer(vocab)
    orig = [np.array([0.5, 0.1, 0.8, 0.1]), np.array([0.5, 0.2, 0.7, 0.0])]
    steer = [np.array([0.5, 0.9, 0.8, 0.3]), np.array([0.5, 0.7, 0.6, 0.2])]
    answer = labeller.label(orig, steer)
    assert answer.keywords == ["elderly", "sunglasses"] and not answer.abstained
    flat = labeller.label(orig, orig)
    assert flat.abstained and flat.keywords == []


class _Spy:
    """Wraps a processor, recording the keyword arguments of its calls."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.processor(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.processor, name)


def test_qwen_labeller_on_a_tiny_model(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest_steering import build_qwen
    from PIL import Image
    from saebench_vision_plugins.steering.configs import QwenLabellerConfig
    from saebench_vision_plugins.steering.labellers import QwenVLLabeller, qwen_prompt
    from saebench_vision_plugins.steering.tiny import build_clip

    from saebench_vision.errors import WeightsNotFoundError

    folder = build_qwen(tmp_path / "qwen")
    labeller = QwenVLLabeller(
        QwenLabellerConfig(
            model_id=str(folder), device="cpu", dtype="float32", image_size=56, max_new_tokens=6
        )
    )
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    labeller._load()
    spy = _Spy(labeller._processor)
    labeller._processor = spy
    answer = labeller.label(images[:2], images[2:])
    # all four images reach the model, one vision block each, with the strict question
    (call,) = spy.calls
    assert len(call["images"]) == 4 and call["text"][0].count("<|vision_start|>") == 4
    assert qwen_prompt(2, 2, 5) in call["text"][0] and "KEYWORDS: NONE" in call["text"][0]
    # the random model's reply is kept raw and parsed: garbage abstains, never raises
    assert answer.raw == labeller.ask(images, qwen_prompt(2, 2, 5))
    assert answer.abstained or all(k.isascii() for k in answer.keywords)
    monkeypatch.setattr(labeller, "ask", lambda imgs, q: "KEYWORDS: Elderly, wrinkles")
    assert labeller.label(images[:2], images[2:]).keywords == ["elderly", "wrinkles"]
    wrong = QwenVLLabeller(QwenLabellerConfig(model_id=str(build_clip(tmp_path / "clip"))))
    with pytest.raises(WeightsNotFoundError, match="not Qwen2.5-VL"):
        wrong.label(images[:1], images[1:2])


@pytest.mark.parametrize("prompts,features,n", [(4, 2, 8), (10, 3, 7), (3, 5, 20), (100, 20, 100)])
def test_validation_pairs_are_distinct_and_spread(prompts: int, features: int, n: int) -> None:
    from saebench_vision_plugins.steering.evaluator import validation_pairs

    pairs = validation_pairs(prompts, features, n)
    assert len(pairs) == min(n, prompts * features) == len(set(pairs))
    used = [p for p, _ in pairs]
    assert sorted(used[:prompts]) == list(range(min(prompts, len(used))))
    assert all(0 <= f < features for _, f in pairs)


def test_clip_scorer_matches_the_models_own_embeddings(tmp_path: Any) -> None:
    import json

    import open_clip
    import torch
    from PIL import Image
    from saebench_vision_plugins.steering.scoring import CLIPScorer
    from saebench_vision_plugins.steering.tiny import build_clip
    from transformers import CLIPModel, CLIPProcessor

    from saebench_vision.errors import WeightsNotFoundError

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    texts = ["a red car", "an old man", "sunset"]
    folder = build_clip(tmp_path / "clip")
    scorer = CLIPScorer("hf", str(folder))
    got_i, got_t = scorer.images(images, batch_size=2), scorer.texts(texts, batch_size=2)
    model, proc = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        out = model(**proc(text=texts, images=images, return_tensors="pt", padding=True))
    ref_i = out.image_embeds / out.image_embeds.norm(dim=1, keepdim=True)
    ref_t = out.text_embeds / out.text_embeds.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(got_i, ref_i.double().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_t, ref_t.double().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(WeightsNotFoundError, match="not CLIP"):
        from conftest_steering import build_qwen

        CLIPScorer("hf", str(build_qwen(tmp_path / "qwen"))).texts(["x"])
    # open_clip: a tiny registered config with random weights
    cfg = tmp_path / "tiny-steer-clip.json"
    cfg.write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "vision_cfg": {
                    "image_size": 32,
                    "layers": 1,
                    "width": 32,
                    "patch_size": 8,
                    "head_width": 16,
                },
                "text_cfg": {
                    "context_length": 77,
                    "vocab_size": 49408,
                    "width": 32,
                    "heads": 2,
                    "layers": 1,
                },
            }
        )
    )
    open_clip.add_model_config(cfg)
    oc = CLIPScorer("open-clip", "tiny-steer-clip")
    emb_i, emb_t = oc.images(images), oc.texts(texts)
    assert emb_i.shape == (3, 16) and emb_t.shape == (3, 16)
    with torch.no_grad():
        ref = oc._model.encode_text(open_clip.get_tokenizer("tiny-steer-clip")(texts))
    np.testing.assert_allclose(
        emb_t, (ref / ref.norm(dim=1, keepdim=True)).double().numpy(), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(np.linalg.norm(emb_i, axis=1), 1.0)


class _ApiLabellerPlugin:
    """A third party's labeller (an API model, say), registered in-process."""

    @staticmethod
    @hookimpl
    def register_labellers() -> dict[str, str]:
        return {"api-vlm": "saebench_vision_plugins.steering.labellers:CLIPLabeller"}


def test_labellers_are_a_component_kind(manager: Any) -> None:
    from saebench_vision.errors import DuplicateComponentError, UnknownComponentError

    registry = manager.registry()
    assert registry.names("labeller") == ["clip", "qwen2.5-vl"]
    assert registry.get("labeller", "clip").config_class().__name__ == "CLIPLabellerConfig"
    with pytest.raises(UnknownComponentError, match="Unknown labeller 'qwen'. Did you mean"):
        registry.get("labeller", "qwen")
    manager.register(_ApiLabellerPlugin(), "api")
    try:
        assert "api-vlm" in manager.registry().names("labeller")
        info = {row["name"]: row for row in manager.plugin_info()}
        assert info["api"]["components"] == {"labeller": ["api-vlm"]}
    finally:
        manager.unregister("api")

    class _Clash:
        @staticmethod
        @hookimpl
        def register_labellers() -> dict[str, str]:
            return {"clip": "x:Y"}

    manager.register(_Clash(), "clash")
    try:
        with pytest.raises(DuplicateComponentError, match="labeller `clip` is registered twice"):
            manager.registry()
    finally:
        manager.unregister("clash")
