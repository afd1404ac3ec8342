"""Config dataclasses of the steering evaluator and the labellers. Light: stdlib only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from saebench_vision.config import FieldValueError, option

DEFAULT_SWEEP = (0.0, 2.5, 5.0, 10.0, 20.0)


@dataclass(frozen=True)
class DiffusionSteeringConfig:
    """Section 4 of the paper as one evaluation: discover attribute features, label them by
    steering, validate with CLIP (Table 3), and draw Figures 5 / 9."""

    prompt_split: str = option(
        help="split of prompts to steer (the paper: Midjourney prompts); the first "
        "`label_prompts` label each feature, the rest validate"
    )
    validation_split: str | None = option(
        None,
        "split of prompts for the validation pairs; null: the prompts of prompt_split after "
        "the first label_prompts",
    )
    discovery_split: str | None = option(
        None,
        "split of captions for attribute discovery (the paper: MS-COCO); null: steer the "
        "`features` given",
    )
    features: list[int] | None = option(
        None, "SAE features to steer (skips discovery's selection; discovery words still recorded)"
    )
    attributes: dict[str, str] | None = option(
        None, "feature index -> attribute word, skipping the labeller for those features"
    )
    max_features: int = option(20, "most candidate features to label and validate")
    top_rows: int = option(64, "top-activating tokens per feature that discovery maps to words")
    min_word_share: float = option(
        0.25,
        "a candidate's top word must hold at least this share of its top-activating tokens "
        "(features spread over many words, or on punctuation and special tokens, are not "
        "attribute-like)",
    )
    pos_keep: tuple[str, ...] = option(
        ("noun", "adj", "adv"), "parts of speech a candidate's top word may have"
    )
    pos_tagger: Literal["auto", "nltk", "wordnet", "none"] = option(
        "auto",
        "auto: nltk's tagger when its data is installed, else WordNet's parts of speech; nltk: "
        "the tagger or an error; wordnet: WordNet only; none: stop words only",
    )
    label_prompts: int = option(4, "prompts whose original and steered images the labeller sees")
    labeller: str = option(
        "clip", "labeller plugin: clip (offline), qwen2.5-vl, or a third party's"
    )
    labeller_args: dict[str, Any] = option(factory=dict, help="the labeller's options")
    validation_pairs: int = option(
        100,
        "prompt-attribute pairs in the paired t-test (the paper: n = 100); distinct pairs, so "
        "at most validation prompts x labelled features",
    )
    strength: float = option(
        10.0,
        "λ in units of the feature's typical activation (see `scale`): 10 pushes well past any "
        "natural firing (the paper gives no value)",
    )
    sweep: tuple[float, ...] = option(DEFAULT_SWEEP, "λ values of the Figure 5 / 9 sweep row")
    positions: Literal["tokens", "active", "all"] = option(
        "tokens",
        "where the feature is added: every non-padding token, only where it fires, or every "
        "position",
    )
    negative: bool = option(True, "push the negative embedding away from the feature (CFG)")
    scale: Literal["active-mean", "quantile", "max", "unit"] = option(
        "active-mean",
        "the feature's typical activation over the training tokens: mean where it fires, a "
        "quantile of its active values, its max, or unit (λ absolute along the unit direction)",
    )
    quantile: float = option(0.9, "scale: quantile: which quantile of the active values")
    num_inference_steps: int = option(25, "denoising steps")
    guidance_scale: float = option(7.5, "classifier-free guidance scale")
    height: int = option(512, "image height (SD 1.4: 512; SD 3.5: 1024)")
    width: int = option(512, "image width")
    seed: int = option(0, "prompt i is generated from seed + i (original and steered alike)")
    attribute_template: str = option(
        "{prompt}, {attribute}", "t_attr: how the attribute is appended to the prompt"
    )
    clip_backend: Literal["hf", "open-clip"] = option(
        "hf", "CLIP for validation: a transformers CLIPModel or an open_clip model"
    )
    clip_model: str = option(
        "openai/clip-vit-large-patch14",
        "hf: hub id or folder; open-clip: model name (e.g. ViT-L-14)",
    )
    clip_pretrained: str | None = option(
        None, "open-clip: pretrained tag (e.g. openai) or checkpoint file"
    )
    grid_features: int = option(8, "features drawn in the Figure 5 grid (and a sweep row each)")
    cache_dir: str | None = option(
        None,
        "content-addressed store of generated images and labeller answers (default: <output>/steering-cache)",
        identity=False,
    )

    def __post_init__(self) -> None:
        for name in ("max_features", "top_rows", "label_prompts", "num_inference_steps"):
            if getattr(self, name) < 1:
                raise FieldValueError(name, getattr(self, name), "at least 1")
        if self.validation_pairs < 2:
            raise FieldValueError("validation_pairs", self.validation_pairs, "at least 2")
        if not 0 < self.quantile < 1:
            raise FieldValueError("quantile", self.quantile, "more than 0 and below 1")
        if (
            "{prompt}" not in self.attribute_template
            or "{attribute}" not in self.attribute_template
        ):
            raise FieldValueError(
                "attribute_template",
                self.attribute_template,
                "a template containing {prompt} and {attribute}",
            )


@dataclass(frozen=True)
class CLIPLabellerConfig:
    """Ranks attribute words by how much closer CLIP puts them to the steered images."""

    backend: Literal["hf", "open-clip"] = option("hf", "hf CLIPModel or open_clip")
    model: str = option("openai/clip-vit-large-patch14", "hub id / folder, or open_clip name")
    pretrained: str | None = option(None, "open-clip: pretrained tag or checkpoint file")
    vocabulary: list[str] | None = option(
        None, "attribute words to rank (null: the built-in list); the feature's own words are added"
    )
    template: str = option("a photo of {}", "how a word becomes a CLIP text")
    top_k: int = option(3, "keywords returned")
    min_margin: float = option(0.0, "abstain unless the best word's similarity gain exceeds this")
    device: str = option("cpu", "torch device", identity=False)


@dataclass(frozen=True)
class QwenLabellerConfig:
    """Asks Qwen2.5-VL (transformers) for the keywords that tell the two image sets apart."""

    model_id: str = option("Qwen/Qwen2.5-VL-7B-Instruct", "hub id or local folder")
    revision: str | None = option(None, "hub revision to pin")
    max_new_tokens: int = option(48, "tokens generated")
    max_keywords: int = option(5, "keywords asked for")
    image_size: int = option(448, "images are resized to this side before the processor")
    device: str = option("auto", "torch device", identity=False)
    dtype: Literal["float32", "float16", "bfloat16"] = option("bfloat16", "model dtype")
