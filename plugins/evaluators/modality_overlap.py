"""Image/text feature overlap in a multimodal LM (paper section 5.1, Fig. 6), quantified.

Setting: an SAE trained on a middle LM layer of LLaVA while it generates captions (``tokens:
generated``). Two labelled splits over the same classes: the *image side* (LLaVA describing an
image of the class without being told the class, ``image-captions``) and the *text side* (LLaVA
answering "What is a {class}?" with no image, ``class-questions``). The rows are the response
tokens of each side, read from the activation cache; classes are paired by class id.

Per class c and side s, features are ranked by their mean activation (or firing rate) over the
side's response tokens of that class, and the top ``top_fraction`` of the SAE's features (the
paper's top 1%) with a positive score form the set ``S_s(c)``. Then:

* ``jaccard`` = |S_I(c) ∩ S_T(c)| / |S_I(c) ∪ S_T(c)| and ``overlap_coefficient`` =
  |S_I(c) ∩ S_T(c)| / min(|S_I(c)|, |S_T(c)|), averaged over classes;
* the null pairs class c's image side with *other* classes' text sides: the per-class p-value is
  ``(1 + #{c' != c: J(c, c') >= J(c, c)}) / C`` (exact over all other classes; uniform under
  independence), ``beats_null_fraction`` the share of classes with p <= ``alpha``, and
  ``p_value`` compares the mean overlap with ``permutations`` random derangements of the text
  sides (``(1 + #{null >= observed}) / (1 + permutations)``);
* per feature, the modality ratio r_I / (r_I + r_T), where r_s is its firing rate (or mean
  activation) per response token of side s, so longer image descriptions do not count more;
  ``shared_feature_fraction`` is the share of features active on either side whose ratio lies
  in ``shared_range`` ([0.2, 0.8]).

The baseline row scores the raw neurons the same way (a dimension is "active" when positive).

Memory: activations stream through the SAE in chunks; per class only running sums of size
(classes x d_sae) are kept, never (tokens x d_sae). ``fig6.json`` (per class: the top features
of both sides, their overlap, p-value and an example response of each side), ``fig6.png`` (per
class the union of its top sets: yellow shared, red image side only, blue text side only) and
``responses-<split>.jsonl`` (every response with its class) go to the cell's artifact folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from saebench_vision_plugins.evaluators.common import prepare_sae
from saebench_vision_plugins.evaluators.multimodal_configs import ModalityOverlapConfig

from saebench_vision.cache import ActivationSet, atomic_write_text
from saebench_vision.errors import ConfigError, DatasetError
from saebench_vision.interfaces import SAE, EvalContext, Evaluator, Record, resolve_device

# --------------------------------------------------------------------------------------------
# Statistics (pure numpy, tested against hand computations)


@dataclass
class ClassSums:
    """Per class: summed latents, fire counts and token counts of one side (float64)."""

    sums: np.ndarray  # (C, d_sae)
    fires: np.ndarray  # (C, d_sae)
    tokens: np.ndarray  # (C,)

    def scores(self, score: str) -> np.ndarray:
        per_token = self.sums if score == "mean-activation" else self.fires
        return per_token / np.maximum(self.tokens, 1)[:, None]


def class_sums(
    acts: ActivationSet, sae: SAE | None, n_classes: int, *, batch_size: int, device: str
) -> ClassSums:
    """Stream ``acts`` through ``sae`` (None: the raw neurons); accumulate per row label."""
    labels = acts.labels
    if labels is None:
        raise DatasetError(f"activations {acts.key[:12]} have no labels; use a labelled split")
    if sae is not None:
        model, dev = prepare_sae(sae, device)
        width = sae.d_sae
    else:
        dev, width = resolve_device(device), acts.d
    sums = torch.zeros((n_classes, width), dtype=torch.float64, device=dev)
    fires = torch.zeros_like(sums)
    with torch.no_grad():
        for start, chunk in acts.iter_chunks(batch_size):
            x = torch.from_numpy(np.array(chunk, dtype=np.float32)).to(dev)
            lab = torch.from_numpy(labels[start : start + len(chunk)]).to(dev)
            z = (model.encode(x) if sae is not None else x).double()
            sums.index_add_(0, lab, z)
            fires.index_add_(0, lab, (z > 0).double())
    tokens = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return ClassSums(sums.cpu().numpy(), fires.cpu().numpy(), tokens)


def top_sets(scores: np.ndarray, k: int) -> np.ndarray:
    """(C, D) bool: per row the ``k`` highest-scoring features among those scoring above 0."""
    c, d = scores.shape
    k = min(k, d)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    out = np.zeros((c, d), dtype=bool)
    np.put_along_axis(out, top, True, axis=1)
    return out & (scores > 0)


def overlap_matrices(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Jaccard and overlap coefficient of every image-side set (rows of ``a``) with every
    text-side set (rows of ``b``): two (C, C) arrays; empty sets give 0."""
    # Counts below 2**24 are exact in float32, and the product is 2x cheaper than in float64.
    inter = (a.astype(np.float32) @ b.T.astype(np.float32)).astype(np.float64)
    na, nb = a.sum(1).astype(np.float64), b.sum(1).astype(np.float64)
    union = na[:, None] + nb[None, :] - inter
    smaller = np.minimum(na[:, None], nb[None, :])
    jaccard = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    coefficient = np.divide(inter, smaller, out=np.zeros_like(inter), where=smaller > 0)
    return jaccard, coefficient


def per_class_p_values(overlap: np.ndarray) -> np.ndarray:
    """p_c = (1 + #{c' != c: O[c, c'] >= O[c, c]}) / C: class c's own overlap against its
    image side paired with every other class's text side (uniform under independence)."""
    c = overlap.shape[0]
    own = np.diag(overlap)
    at_least = (overlap >= own[:, None]).sum(1) - 1  # the diagonal always counts itself
    return (1.0 + at_least) / c


def derangements(c: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniformly random permutations of ``range(c)`` without fixed points (rejection)."""
    out = np.empty((n, c), dtype=np.int64)
    todo = np.arange(n)
    while len(todo):
        perms = np.argsort(rng.random((len(todo), c)), axis=1)
        ok = ~(perms == np.arange(c)).any(1)
        out[todo[ok]] = perms[ok]
        todo = todo[~ok]
    return out


def mean_overlap_p_value(
    overlap: np.ndarray, permutations: int, rng: np.random.Generator
) -> tuple[float, np.ndarray]:
    """p-value of the mean own-class overlap against derangements of the text sides, and the
    null means."""
    c = overlap.shape[0]
    observed = float(np.diag(overlap).mean())
    perms = derangements(c, permutations, rng)
    null = overlap[np.arange(c)[None, :], perms].mean(1)
    return (1.0 + float((null >= observed - 1e-12).sum())) / (1.0 + permutations), null


def modality_ratio(image: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ratio, active)``: r_I / (r_I + r_T) per feature (NaN where both are 0) and which
    features are active on either side. Inputs are per-token rates (already normalised)."""
    total = image + text
    active = total > 0
    ratio = np.full(image.shape, np.nan)
    ratio[active] = image[active] / total[active]
    return ratio, active


BOTH, IMAGE_ONLY, TEXT_ONLY = (250, 220, 30), (230, 40, 40), (40, 90, 240)


def overlap_png(rows: list[tuple[str, np.ndarray, np.ndarray]], cell: int = 12) -> Any:
    """Fig. 6 as a picture: one row per class (its name, then a cell per feature in the union
    of its two top sets: yellow in both, red image side only, blue text side only)."""
    from PIL import Image, ImageDraw

    label_width = 8 * max((len(name) for name, _, _ in rows), default=4) + 8
    widest = max((int((a | b).sum()) for _, a, b in rows), default=1)
    image = Image.new(
        "RGB", (label_width + max(widest, 1) * cell + 4, len(rows) * cell + 4), "white"
    )
    draw = ImageDraw.Draw(image)
    for r, (name, a, b) in enumerate(rows):
        y = 2 + r * cell
        draw.text((2, y), name, fill="black")
        both, only_a, only_b = np.nonzero(a & b)[0], np.nonzero(a & ~b)[0], np.nonzero(b & ~a)[0]
        colours = [BOTH] * len(both) + [IMAGE_ONLY] * len(only_a) + [TEXT_ONLY] * len(only_b)
        for i, colour in enumerate(colours):
            x = label_width + i * cell
            draw.rectangle((x, y, x + cell - 2, y + cell - 2), fill=colour)
    return image


# --------------------------------------------------------------------------------------------
# The evaluator


def pick_split(ctx: EvalContext, given: str | None, want_text: bool, option_name: str) -> str:
    """The split named by ``option_name``, or the one eval/shifted split of the wanted kind."""
    if given is not None:
        if given not in ctx.splits:
            raise ConfigError(
                f"modality-overlap: args.{option_name}: no split {given!r} (splits: "
                f"{', '.join(ctx.splits)})"
            )
        return given
    found = [
        s
        for s in ctx.split_names("eval", "shifted")
        if (getattr(ctx.dataset(s), "modality", "image") == "text") == want_text
    ]
    kind = "text-only" if want_text else "image"
    if len(found) != 1:
        raise ConfigError(
            f"modality-overlap: {len(found)} eval/shifted splits have {kind} items "
            f"({', '.join(found) or 'none'}); set args.{option_name}"
        )
    return found[0]


def check_width(sae: SAE, acts: ActivationSet, ctx: EvalContext, split: str) -> None:
    if sae.d_in != acts.d:
        raise ConfigError(
            f"SAE {ctx.sae_id or '?'} takes inputs of width {sae.d_in} but {ctx.model_name} "
            f"{ctx.layer} activations of split {split!r} are {acts.d} wide: an SAE from another "
            f"model or layer"
        )


class ModalityOverlapEvaluator(Evaluator):
    """Fig. 6 with statistics: do image and text about one class activate the same features?"""

    name: ClassVar[str] = "modality-overlap"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = ModalityOverlapConfig
    metrics: ClassVar[dict[str, bool | None]] = {
        "jaccard": True,
        "overlap_coefficient": True,
        "null_jaccard": None,
        "null_overlap_coefficient": None,
        "p_value": False,
        "beats_null_fraction": True,
        "shared_feature_fraction": None,
        "shared_top_feature_fraction": None,
        "image_only_fraction": None,
        "text_only_fraction": None,
        "top_k": None,
        "n_classes": None,
        "skipped_classes": None,
    }
    headline: ClassVar[tuple[str, ...]] = (
        "jaccard",
        "p_value",
        "beats_null_fraction",
        "shared_feature_fraction",
    )

    def baseline(self, ctx: EvalContext) -> list[Record]:
        """The same statistics on the raw neurons (the layer's dimensions, "active" when
        positive): how much of the overlap the SAE adds over the basis the model writes in."""
        return self.evaluate(ctx)

    def evaluate(self, ctx: EvalContext) -> list[Record]:
        cfg: ModalityOverlapConfig = self.config
        image_split = pick_split(ctx, cfg.image_split, False, "image_split")
        text_split = pick_split(ctx, cfg.text_split, True, "text_split")
        image_ds, text_ds = ctx.dataset(image_split), ctx.dataset(text_split)
        if getattr(image_ds, "modality", "image") == "text":
            raise ConfigError(
                f"modality-overlap: args.image_split {image_split!r} is text-only (dataset "
                f"`{image_ds.name}`); the image side needs images, e.g. image-captions"
            )
        if getattr(text_ds, "modality", "image") != "text":
            raise ConfigError(
                f"modality-overlap: args.text_split {text_split!r} has images (dataset "
                f"`{text_ds.name}`); the text side must be text-only, e.g. class-questions"
            )
        sides = {}
        for role, split, ds in (("image", image_split, image_ds), ("text", text_split, text_ds)):
            classes = ds.classes()
            if classes is None or ds.labels() is None:
                raise DatasetError(
                    f"modality-overlap: split {split!r} is unlabelled; both sides need classes"
                )
            acts = ctx.activations(split)
            if ctx.sae is not None:
                check_width(ctx.sae, acts, ctx, split)
            sums = class_sums(
                acts, ctx.sae, len(classes), batch_size=cfg.batch_size, device=cfg.device
            )
            sides[role] = (split, ds, classes, acts, sums)
        paired, skipped = self._pair(sides)
        img_idx = np.array([i for i, _ in paired], dtype=np.int64)
        txt_idx = np.array([t for _, t in paired], dtype=np.int64)
        img, txt = sides["image"][4], sides["text"][4]
        k = max(1, math.ceil(cfg.top_fraction * img.sums.shape[1]))
        img_scores = img.scores(cfg.score)[img_idx]
        txt_scores = txt.scores(cfg.score)[txt_idx]
        a, b = top_sets(img_scores, k), top_sets(txt_scores, k)
        jaccard, coefficient = overlap_matrices(a, b)
        c = len(paired)
        p_class = per_class_p_values(jaccard)
        rng = np.random.default_rng([ctx.seed, 6])
        p_mean, null = mean_overlap_p_value(jaccard, cfg.permutations, rng)
        off = ~np.eye(c, dtype=bool)

        basis = "mean-activation" if cfg.ratio_basis == "activation" else "firing-rate"
        per_token = {
            "image": (img.sums if basis == "mean-activation" else img.fires)[img_idx].sum(0)
            / max(img.tokens[img_idx].sum(), 1),
            "text": (txt.sums if basis == "mean-activation" else txt.fires)[txt_idx].sum(0)
            / max(txt.tokens[txt_idx].sum(), 1),
        }
        ratio, active = modality_ratio(per_token["image"], per_token["text"])
        lo, hi = cfg.shared_range
        n_active = max(int(active.sum()), 1)
        with np.errstate(invalid="ignore"):
            shared = active & (ratio >= lo) & (ratio <= hi)
            image_only = active & (ratio > hi)
            text_only = active & (ratio < lo)
        top_union = (a | b).any(0)
        diag_j, diag_c = np.diag(jaccard), np.diag(coefficient)

        def se(values: np.ndarray) -> float | None:
            return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None

        split = image_split
        records = [
            Record("jaccard", float(diag_j.mean()), split, se(diag_j), n=c),
            Record("overlap_coefficient", float(diag_c.mean()), split, se(diag_c), n=c),
            Record("null_jaccard", float(jaccard[off].mean()), split, n=c * (c - 1)),
            Record("null_overlap_coefficient", float(coefficient[off].mean()), split),
            Record("p_value", p_mean, split, n=cfg.permutations),
            Record("beats_null_fraction", float((p_class <= cfg.alpha).mean()), split, n=c),
            Record("shared_feature_fraction", float(shared.sum() / n_active), split),
            Record(
                "shared_top_feature_fraction",
                float((shared & top_union).sum() / max(int(top_union.sum()), 1)),
                split,
            ),
            Record("image_only_fraction", float(image_only.sum() / n_active), split),
            Record("text_only_fraction", float(text_only.sum() / n_active), split),
            Record("top_k", float(k), split),
            Record("n_classes", float(c), split),
            Record("skipped_classes", float(len(skipped)), split),
        ]
        self._write_figure(
            ctx, cfg, sides, paired, skipped, k, img_scores, txt_scores, a, b, jaccard,
            coefficient, p_class, p_mean, null, ratio, active,
        )  # fmt: skip
        return records

    def _pair(self, sides: dict[str, Any]) -> tuple[list[tuple[int, int]], list[str]]:
        """``[(image class index, text class index)]`` by class id, in image-side order."""
        cfg: ModalityOverlapConfig = self.config
        img_split, _, img_classes, _, img = sides["image"]
        txt_split, _, txt_classes, _, txt = sides["text"]
        text_of = {info.id: i for i, info in enumerate(txt_classes)}
        image_of = {info.id: i for i, info in enumerate(img_classes)}
        paired, skipped = [], []
        for info in list(img_classes) + [t for t in txt_classes if t.id not in image_of]:
            i, t = image_of.get(info.id), text_of.get(info.id)
            problem = ""
            if i is None or img.tokens[i] == 0:
                problem = f"has no image items with response tokens in split {img_split!r}"
            elif t is None or txt.tokens[t] == 0:
                problem = f"has no text items with response tokens in split {txt_split!r}"
            if problem:
                if cfg.missing_classes == "error":
                    raise DatasetError(
                        f"modality-overlap: class {info.id!r} ({info.name}) {problem}; add its "
                        f"items or set args.missing_classes: skip"
                    )
                skipped.append(info.id)
                continue
            assert i is not None and t is not None
            paired.append((i, t))
        if len(paired) < 2:
            raise DatasetError(
                f"modality-overlap: {len(paired)} class(es) have both sides in splits "
                f"{img_split!r} and {txt_split!r}; the null needs at least 2"
            )
        return paired, skipped

    def _write_figure(
        self,
        ctx: EvalContext,
        cfg: ModalityOverlapConfig,
        sides: dict[str, Any],
        paired: list[tuple[int, int]],
        skipped: list[str],
        k: int,
        img_scores: np.ndarray,
        txt_scores: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
        jaccard: np.ndarray,
        coefficient: np.ndarray,
        p_class: np.ndarray,
        p_mean: float,
        null: np.ndarray,
        ratio: np.ndarray,
        active: np.ndarray,
    ) -> None:
        examples = {}
        for role in ("image", "text"):
            _, ds, _, acts, _ = sides[role]
            responses = acts.responses() or {}
            first: dict[int, int] = {}
            for item, label in enumerate(np.asarray(ds.labels()).tolist()):
                first.setdefault(label, item)
            examples[role] = (first, responses)

        def top_list(scores: np.ndarray, chosen: np.ndarray) -> list[list[float]]:
            ids = np.nonzero(chosen)[0]
            ids = ids[np.argsort(-scores[ids], kind="stable")][: cfg.top_in_artifact]
            return [[int(f), round(float(scores[f]), 6)] for f in ids]

        rows = []
        img_classes, txt_sums = sides["image"][2], sides["text"][4]
        img_sums = sides["image"][4]
        for row, (i, t) in enumerate(paired):
            first_img = examples["image"][0].get(i)
            first_txt = examples["text"][0].get(t)
            rows.append(
                {
                    "id": img_classes[i].id,
                    "name": img_classes[i].name,
                    "image_tokens": int(img_sums.tokens[i]),
                    "text_tokens": int(txt_sums.tokens[t]),
                    "image_top": top_list(img_scores[row], a[row]),
                    "text_top": top_list(txt_scores[row], b[row]),
                    "shared": [int(f) for f in np.nonzero(a[row] & b[row])[0]],
                    "jaccard": float(jaccard[row, row]),
                    "overlap_coefficient": float(coefficient[row, row]),
                    "null_jaccard_mean": float(np.delete(jaccard[row], row).mean()),
                    "p_value": float(p_class[row]),
                    "image_response": examples["image"][1].get(first_img, "")
                    if first_img is not None
                    else "",
                    "text_response": examples["text"][1].get(first_txt, "")
                    if first_txt is not None
                    else "",
                }
            )
        hist, edges = np.histogram(ratio[active], bins=20, range=(0.0, 1.0))
        figure = {
            "figure": "Olson et al. 2025, Fig. 6",
            "sae_id": ctx.sae_id,
            "layer": ctx.layer,
            "image_split": sides["image"][0],
            "text_split": sides["text"][0],
            "top_k": k,
            "score": cfg.score,
            "mean_jaccard": float(np.diag(jaccard).mean()),
            "p_value": p_mean,
            "null_mean_jaccard": {
                "mean": float(null.mean()),
                "q95": float(np.quantile(null, 0.95)),
            },
            "skipped_classes": skipped,
            "modality_ratio_histogram": {
                "edges": [round(float(e), 4) for e in edges],
                "counts": hist.tolist(),
            },
            "classes": rows,
        }
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            ctx.output_dir / "fig6.json", json.dumps(figure, indent=1, ensure_ascii=False)
        )
        shown = [(r["name"], a[i], b[i]) for i, r in enumerate(rows)][: cfg.classes_in_png]
        overlap_png(shown).save(ctx.output_dir / "fig6.png")
        # Every response beside the figure, with its class, so a reader can check what LLaVA
        # said about each class on each side (the cache holds the same texts by item index).
        for role in ("image", "text"):
            split, ds, classes, _, _ = sides[role]
            responses = examples[role][1]
            labels = np.asarray(ds.labels()).tolist()
            lines = [
                json.dumps(
                    {"item": item, "class": classes[labels[item]].id, "text": text},
                    ensure_ascii=False,
                )
                for item, text in sorted(responses.items())
                if item < len(labels)
            ]
            atomic_write_text(
                ctx.output_dir / f"responses-{split}.jsonl", "".join(f"{x}\n" for x in lines)
            )
