"""Config dataclasses of the multimodal-LM evaluators (paper section 5). Light: imports no torch.

Where the paper is silent (how "top 1%" features are ranked, which null a class's overlap is
compared with, how features of two layers are matched) the choice is a field here whose help
says what the default is and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saebench_vision.config import FieldValueError, option


@dataclass(frozen=True)
class ModalityOverlapConfig:
    """Options of the ``modality-overlap`` evaluator (paper section 5.1, Fig. 6)."""

    image_split: str | None = option(
        None,
        "split of image-text items (LLaVA describing an image, e.g. image-captions); null: the "
        "one eval/shifted split whose dataset has images",
    )
    text_split: str | None = option(
        None,
        "split of text-only items about the same classes (class-questions); null: the one "
        "eval/shifted split whose dataset is text-only",
    )
    top_fraction: float = option(
        0.01, "per class and side, the top this fraction of the SAE's features (paper: 1%)"
    )
    score: Literal["mean-activation", "firing-rate"] = option(
        "mean-activation",
        "how a class side ranks features: mean activation over its response tokens (the "
        "'most activated' features of Fig. 6) or the fraction of those tokens it fires on",
    )
    permutations: int = option(
        1000,
        "random pairings of every class's image side with another class's text side for the "
        "null of the mean overlap (per-class p-values use every other class exactly)",
    )
    alpha: float = option(0.05, "a class beats the null when its per-class p-value is at most this")
    ratio_basis: Literal["firing-rate", "activation"] = option(
        "firing-rate",
        "the modality ratio r_I / (r_I + r_T) of a feature uses per-token firing rates (robust "
        "to a few huge activations) or mean activation per token; both normalise by the token "
        "counts of each side, as image responses and text answers differ in length",
    )
    shared_range: tuple[float, float] = option(
        (0.2, 0.8), "a feature is shared when its modality ratio lies in this closed range"
    )
    missing_classes: Literal["error", "skip"] = option(
        "error",
        "a class with no items (or no response tokens) on one side: error names it, skip "
        "leaves it out (and reports how many were left out)",
    )
    top_in_artifact: int = option(20, "Fig. 6 data: the top features listed per class and side")
    classes_in_png: int = option(24, "fig6.png: the first this many classes, one row each")
    batch_size: int = option(
        4096, "activation rows per chunk streamed through the SAE", identity=False
    )
    device: str = option("auto", "torch device for encoding: cpu, cuda, auto", identity=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.top_fraction <= 1.0:
            raise FieldValueError("top_fraction", self.top_fraction, "more than 0 and at most 1")
        lo, hi = self.shared_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise FieldValueError(
                "shared_range", self.shared_range, "[low, high] with 0 <= low <= high <= 1"
            )
        if self.permutations < 1:
            raise FieldValueError("permutations", self.permutations, "at least 1")
        if not 0.0 < self.alpha < 1.0:
            raise FieldValueError("alpha", self.alpha, "more than 0 and below 1")


@dataclass(frozen=True)
class PersistenceConfig:
    """Options of the ``persistence`` evaluator (paper section 5.2, Fig. 7)."""

    from_layer: str = option(
        "projector", "the earlier layer (its SAE's cells report; cells of other layers do not)"
    )
    to_layer: str = option("lm.6", "the later layer whose SAE's features are compared")
    split: str | None = option(
        None, "split of images whose patch maps are scored; null: the first eval-role split"
    )
    match_split: str | None = option(
        None,
        "split whose images match features of the two SAEs by activation correlation over "
        "patches; null: the train split (matching and scoring on different images keeps the "
        "selection from inflating the scores)",
    )
    match_images: int = option(256, "at most this many images of match_split (evenly strided)")
    max_images: int | None = option(None, "score at most this many images (evenly strided)")
    max_features: int = option(
        2048,
        "per SAE, the most often firing features on the match images are candidates for "
        "matching (bounds the correlation matrix at max_features^2)",
    )
    min_correlation: float = option(
        0.2, "a from-layer feature is matched only when its best correlation is at least this"
    )
    threshold: float = option(0.0, "a patch is active for a feature whose latent exceeds this")
    partner_sae: str | None = option(
        None,
        "a saved SAE folder (saes/<id> of any results folder) to use as the to_layer SAE "
        "instead of this suite's; it must come from the same model and layer",
    )
    figures: int = option(8, "overlay PNGs (image, from-layer map, to-layer map, overlay) written")
    cell_pixels: int = option(14, "side of one patch in the PNGs, in pixels")
    device: str = option("auto", "torch device for encoding: cpu, cuda, auto", identity=False)

    def __post_init__(self) -> None:
        if self.from_layer == self.to_layer:
            raise FieldValueError(
                "from_layer", self.from_layer, f"another layer than to_layer ({self.to_layer!r})"
            )
        for name in ("match_images", "max_features", "cell_pixels"):
            if getattr(self, name) < 1:
                raise FieldValueError(name, getattr(self, name), "at least 1")
        if not -1.0 <= self.min_correlation <= 1.0:
            raise FieldValueError("min_correlation", self.min_correlation, "between -1 and 1")
        if self.figures < 0:
            raise FieldValueError("figures", self.figures, "0 or more")
