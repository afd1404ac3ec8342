"""How visual features persist from LLaVA's projector into its language model (paper section
5.2, Fig. 7), quantified.

Setting: two SAEs of one suite on image patch tokens (``tokens: patch``), one at the projector
output (``from_layer``) and one at LM layer 6 (``to_layer``). For every image, each feature has
an activation map over the patch grid (24 x 24 for LLaVA-1.5's 336 px / 14 px patches); a patch
is *active* for a feature when its latent exceeds ``threshold``.

1. **Matching.** On ``match_split`` (the train split by default, so matching and scoring use
   different images), each SAE's ``max_features`` most often firing features are candidates;
   the Pearson correlation of their activations over all patches of up to ``match_images``
   images is accumulated in one streaming pass, and each from-layer feature is matched to the
   to-layer feature it correlates with most, if that correlation is at least
   ``min_correlation``.
2. **Scoring.** Per image of ``split``, over the matched pairs whose from-layer feature is
   active on the image: ``iou`` = |A ∩ B| / |A ∪ B| of the two active patch sets,
   ``persistence`` = |A ∩ B| / |A| (the share of projector-active patches still active at
   layer 6) and ``added_patch_fraction`` = |B \\ A| / |B| (patches layer 6 adds, the paper's
   observation). The null pairs the same from-layer feature with a random *other* to-layer
   feature active on the same image (``iou_null``, ``persistence_null``); ``p_value``
   is a one-sided sign-flip test of the per-image differences ``iou - iou_null``.

Images stream one at a time: at most (patches x d_sae) per SAE is held, never a split's worth.
Overlay PNGs (image, from-layer map, to-layer map, overlay: red from-layer only, blue to-layer
only, yellow both) and ``fig7.json`` go to the cell's artifact folder. Cells of layers other than
``from_layer`` report nothing (the to-layer SAE is compared from the from-layer's cell).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from saebench_vision_plugins.evaluators.common import prepare_sae
from saebench_vision_plugins.evaluators.multimodal_configs import PersistenceConfig

from saebench_vision.cache import ActivationSet, atomic_write_text
from saebench_vision.errors import ConfigError, DatasetError
from saebench_vision.interfaces import SAE, EvalContext, Evaluator, Record

# --------------------------------------------------------------------------------------------
# Patch-set statistics (pure numpy, tested on hand-made maps)


def patch_set_scores(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """For bool maps ``a``, ``b`` of shape (P, M) (M feature pairs): per pair ``iou`` =
    |A ∩ B| / |A ∪ B|, ``persistence`` = |A ∩ B| / |A| and ``added`` = |B \\ A| / |B|
    (NaN where the denominator is 0)."""
    inter = (a & b).sum(0).astype(np.float64)
    union = (a | b).sum(0).astype(np.float64)
    na, nb = a.sum(0).astype(np.float64), b.sum(0).astype(np.float64)
    added = (b & ~a).sum(0).astype(np.float64)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)

    return {"iou": ratio(inter, union), "persistence": ratio(inter, na), "added": ratio(added, nb)}


class CorrelationAccumulator:
    """Streaming Pearson correlation between two sets of columns observed on the same rows.

    Sums are float64 on ``device`` (the cross-product is the costly part: on a GPU it is
    milliseconds per image at LLaVA's 576 patches and 2048 candidates)."""

    def __init__(self, fa: int, fb: int, device: torch.device | str = "cpu") -> None:
        self.n = 0
        self.device = torch.device(device)

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=self.device)

        self.sa, self.sb = zeros(fa), zeros(fb)
        self.saa, self.sbb = zeros(fa), zeros(fb)
        self.sab = zeros(fa, fb)

    def update(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> None:
        xt = torch.as_tensor(x).to(self.device, torch.float64)
        yt = torch.as_tensor(y).to(self.device, torch.float64)
        self.n += len(xt)
        self.sa += xt.sum(0)
        self.sb += yt.sum(0)
        self.saa += (xt * xt).sum(0)
        self.sbb += (yt * yt).sum(0)
        self.sab += xt.T @ yt

    def correlation(self) -> np.ndarray:
        n = max(self.n, 1)
        ma, mb = self.sa / n, self.sb / n
        va = (self.saa / n - ma * ma).clamp(min=0.0)
        vb = (self.sbb / n - mb * mb).clamp(min=0.0)
        cov = self.sab / n - torch.outer(ma, mb)
        den = torch.sqrt(torch.outer(va, vb))
        corr = torch.where(den > 1e-24, cov / den.clamp(min=1e-300), torch.zeros_like(cov))
        return corr.cpu().numpy()


def sign_flip_p_value(diffs: np.ndarray, rng: np.random.Generator, n: int = 10_000) -> float:
    """One-sided p-value that the mean of paired differences exceeds 0 (random sign flips)."""
    if len(diffs) == 0:
        return float("nan")
    observed = diffs.mean()
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n, len(diffs)))
    null = (signs * np.abs(diffs)).mean(1)
    return (1.0 + float((null >= observed - 1e-12).sum())) / (1.0 + n)


def null_partners(active: np.ndarray, matched: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each matched to-layer feature, a uniformly random *other* feature from the sorted
    ``active`` ids (-1 where there is none)."""
    n = len(active)
    pos = np.searchsorted(active, matched)
    inside = (pos < n) & (active[np.minimum(pos, max(n - 1, 0))] == matched) if n else pos < 0
    choices = n - inside.astype(np.int64)  # how many others each one may take
    out = np.full(len(matched), -1, dtype=np.int64)
    ok = choices > 0
    r = np.floor(rng.random(len(matched)) * np.maximum(choices, 1)).astype(np.int64)
    r = np.where(inside & (r >= pos), r + 1, r)  # skip the matched feature's own slot
    out[ok] = active[r[ok]]
    return out


def image_rows(acts: ActivationSet) -> dict[int, tuple[int, int]]:
    """``{dataset item: (first row, end row)}``: an item's patch rows are contiguous."""
    index = acts.sample_index
    if len(index) and np.any(np.diff(index) < 0):
        raise DatasetError(f"activations {acts.key[:12]}: rows are not grouped by item")
    items, starts, counts = np.unique(index, return_index=True, return_counts=True)
    return {int(i): (int(s), int(s + c)) for i, s, c in zip(items, starts, counts)}


def grid_shape(patches: int) -> tuple[int, int]:
    """(rows, cols) of the patch grid: square when ``patches`` is a square number."""
    rows = max(1, math.isqrt(patches))
    return rows, math.ceil(patches / rows)


# --------------------------------------------------------------------------------------------
# Overlay figure


def _image_of(item: Any, split: str) -> Image.Image:
    if isinstance(item, dict):
        item = item.get("image")
    if not isinstance(item, Image.Image):
        raise DatasetError(f"persistence: split {split!r} has an item without an image")
    return item.convert("RGB")


def overlay_png(
    image: Image.Image, a: np.ndarray, b: np.ndarray, threshold: float, cell: int
) -> Image.Image:
    """Four panels: the image (centre square, as the processor crops it), the from-layer map,
    the to-layer map, and the overlay of their active patches (red: from only, blue: to only,
    yellow: both)."""
    rows, cols = grid_shape(len(a))
    h, w = rows * cell, cols * cell
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    base = image.crop((left, top, left + side, top + side)).resize((w, h), Image.Resampling.BICUBIC)
    pixels = np.asarray(base, dtype=np.float32)

    def grid(values: np.ndarray) -> np.ndarray:
        full = np.zeros(rows * cols)
        full[: len(values)] = values
        return np.kron(full.reshape(rows, cols), np.ones((cell, cell)))

    def heat(values: np.ndarray) -> np.ndarray:
        v = grid(values / values.max()) if values.max() > 0 else grid(values)
        colour = np.stack([255 * v, 255 * v**2, 40 * (1 - v)], -1)
        return 0.35 * pixels + 0.65 * colour

    on_a, on_b = grid(a > threshold) > 0, grid(b > threshold) > 0
    over = 0.45 * pixels
    colours = {
        (True, False): (230, 40, 40),
        (False, True): (40, 90, 240),
        (True, True): (250, 220, 30),
    }
    for (in_a, in_b), colour in colours.items():
        mask = (on_a == in_a) & (on_b == in_b)
        over[mask] = 0.3 * pixels[mask] + 0.7 * np.array(colour, dtype=np.float32)
    gap = np.full((h, max(2, cell // 3), 3), 255.0)
    panels = [pixels, gap, heat(a), gap, heat(b), gap, over]
    return Image.fromarray(np.concatenate(panels, axis=1).clip(0, 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------
# The evaluator


class PersistenceEvaluator(Evaluator):
    """Fig. 7 with statistics: do projector features stay on the same patches at LM layer 6?"""

    name: ClassVar[str] = "persistence"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = PersistenceConfig
    metrics: ClassVar[dict[str, bool | None]] = {
        "iou": True,
        "iou_null": None,
        "iou_gain": True,
        "persistence": True,
        "persistence_null": None,
        "added_patch_fraction": None,
        "p_value": False,
        "matched_features": None,
        "match_correlation": None,
        "n_images": None,
    }
    headline: ClassVar[tuple[str, ...]] = ("iou", "iou_null", "persistence", "p_value")

    def reads_layers(self, layer: str, layers: Sequence[str]) -> tuple[str, ...]:
        """The from-layer's cells read the to-layer's activations and SAE."""
        cfg: PersistenceConfig = self.config
        return (cfg.to_layer,) if layer == cfg.from_layer else ()

    def evaluate(self, ctx: EvalContext) -> list[Record]:
        cfg: PersistenceConfig = self.config
        for option_name in ("from_layer", "to_layer"):
            layer = getattr(cfg, option_name)
            if layer not in ctx.layers:
                raise ConfigError(
                    f"persistence: args.{option_name} {layer!r} is not a layer of "
                    f"{ctx.model_name} in this suite (layers: {', '.join(ctx.layers)}): no SAE "
                    f"is trained on it; add it to the model's layers"
                )
        if ctx.tokens != "patch":
            raise ConfigError(
                f"persistence: model {ctx.model_name} extracts tokens: {ctx.tokens}; patch maps "
                f"need tokens: patch (one row per image patch)"
            )
        if ctx.sae is None or ctx.layer != cfg.from_layer:
            return []
        split = cfg.split or next(iter(ctx.split_names("eval")), None)
        match_split = cfg.match_split or next(iter(ctx.split_names("train")), None)
        for option_name, name in (("split", split), ("match_split", match_split)):
            if name is None or name not in ctx.splits:
                raise ConfigError(
                    f"persistence: args.{option_name}: no split {name!r} (splits: "
                    f"{', '.join(ctx.splits)})"
                )
            if getattr(ctx.dataset(name), "modality", "image") == "text":
                raise ConfigError(
                    f"persistence: split {name!r} is text-only (dataset "
                    f"`{ctx.dataset(name).name}`); patch maps need images"
                )
        assert split is not None and match_split is not None
        partner, partner_id = self._partner(ctx)
        from_sae, dev = prepare_sae(ctx.sae, cfg.device)
        to_sae, _ = prepare_sae(partner, cfg.device)
        for sae, layer, sae_id in (
            (from_sae, cfg.from_layer, ctx.sae_id),
            (to_sae, cfg.to_layer, partner_id),
        ):
            width = ctx.layer_activations(split, layer).d
            if sae.d_in != width:
                raise ConfigError(
                    f"persistence: SAE {sae_id} takes width {sae.d_in} but {ctx.model_name} "
                    f"{layer} activations are {width} wide: an SAE from another model or layer"
                )

        def maps(name: str, limit: int | None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
            acts_a = ctx.layer_activations(name, cfg.from_layer)
            acts_b = ctx.layer_activations(name, cfg.to_layer)
            rows_a, rows_b = image_rows(acts_a), image_rows(acts_b)
            items = sorted(rows_a)
            if limit is not None and len(items) > limit:
                items = [
                    items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)
                ]
            for item in items:
                (a0, a1), (b0, b1) = rows_a[item], rows_b.get(item, (0, 0))
                if a1 - a0 != b1 - b0:
                    raise DatasetError(
                        f"persistence: item {item} of split {name!r} has {a1 - a0} patch tokens "
                        f"at {cfg.from_layer} but {b1 - b0} at {cfg.to_layer}"
                    )
                with torch.no_grad():
                    xa = torch.from_numpy(acts_a.read(np.arange(a0, a1))).to(dev)
                    xb = torch.from_numpy(acts_b.read(np.arange(b0, b1))).to(dev)
                    za = from_sae.encode(xa).float().cpu().numpy()
                    zb = to_sae.encode(xb).float().cpu().numpy()
                yield item, za, zb

        pairs, correlations = self._match(cfg, lambda: maps(match_split, cfg.match_images), dev)
        if len(pairs) == 0:
            raise DatasetError(
                f"persistence: no {cfg.from_layer} feature correlates with a {cfg.to_layer} "
                f"feature at >= {cfg.min_correlation} on split {match_split!r}; lower "
                f"args.min_correlation or check that both SAEs have live features"
            )
        records = self._score(
            ctx, cfg, split, maps(split, cfg.max_images), pairs, correlations, partner_id
        )
        for record in records:
            record.extra["partner_sae"] = partner_id
        return records

    def _partner(self, ctx: EvalContext) -> tuple[SAE, str]:
        cfg: PersistenceConfig = self.config
        if cfg.partner_sae is None:
            return ctx.suite_sae(cfg.to_layer)
        from saebench_vision.checkpoint import load_sae
        from saebench_vision.plugins import get_plugin_manager

        registry = get_plugin_manager().registry()
        path = Path(cfg.partner_sae).expanduser()
        sae, meta = load_sae(path, lambda name: registry.get("sae", name).load())
        model, layer = meta.get("model"), meta.get("layer")
        if model != ctx.model_name or layer != cfg.to_layer:
            raise ConfigError(
                f"persistence: args.partner_sae {str(path)!r} was trained on {model} {layer}, not "
                f"{ctx.model_name} {cfg.to_layer}: an SAE from another model or layer"
            )
        return sae, str(meta.get("sae_id", path.name))

    @staticmethod
    def _match(
        cfg: PersistenceConfig,
        images: Callable[[], Iterator[tuple[int, np.ndarray, np.ndarray]]],
        device: torch.device,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(pairs (M, 2) of feature ids, their correlations)`` from one pass over the images
        for firing counts and one for correlations (the images are re-encoded, never held)."""
        counts_a: np.ndarray | None = None
        counts_b: np.ndarray | None = None
        for _, za, zb in images():
            fa, fb = (za > cfg.threshold).sum(0), (zb > cfg.threshold).sum(0)
            counts_a = fa if counts_a is None else counts_a + fa
            counts_b = fb if counts_b is None else counts_b + fb
        if counts_a is None or counts_b is None:
            return np.zeros((0, 2), dtype=np.int64), np.zeros(0)

        def candidates(counts: np.ndarray) -> np.ndarray:
            order = np.argsort(-counts, kind="stable")[: cfg.max_features]
            return np.sort(order[counts[order] > 0])

        ca, cb = candidates(np.asarray(counts_a)), candidates(np.asarray(counts_b))
        if len(ca) == 0 or len(cb) == 0:
            return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
        acc = CorrelationAccumulator(len(ca), len(cb), device)
        for _, za, zb in images():
            acc.update(za[:, ca], zb[:, cb])
        corr = acc.correlation()
        best = corr.argmax(1)
        best_corr = corr[np.arange(len(ca)), best]
        keep = best_corr >= cfg.min_correlation
        pairs = np.stack([ca[keep], cb[best[keep]]], 1).astype(np.int64)
        return pairs, best_corr[keep]

    def _score(
        self,
        ctx: EvalContext,
        cfg: PersistenceConfig,
        split: str,
        images: Iterator[tuple[int, np.ndarray, np.ndarray]],
        pairs: np.ndarray,
        correlations: np.ndarray,
        partner_id: str,
    ) -> list[Record]:
        rng = np.random.default_rng([ctx.seed, 7])
        per_image: list[dict[str, Any]] = []
        dataset = ctx.dataset(split)
        out_dir = ctx.output_dir / "fig7"
        for item, za, zb in images:
            a = za[:, pairs[:, 0]] > cfg.threshold
            b = zb[:, pairs[:, 1]] > cfg.threshold
            present = a.any(0)
            if not present.any():
                continue
            scores = patch_set_scores(a[:, present], b[:, present])
            # Null: the same from-layer feature with another to-layer feature active here.
            others = null_partners(
                np.nonzero((zb > cfg.threshold).any(0))[0], pairs[present, 1], rng
            )
            has_other = others >= 0
            null = patch_set_scores(
                a[:, present][:, has_other], zb[:, others[has_other]] > cfg.threshold
            )
            null_iou, null_share = null["iou"], null["persistence"]
            row = {
                "item": item,
                "pairs": int(present.sum()),
                "iou": float(np.nanmean(scores["iou"])),
                "persistence": float(np.nanmean(scores["persistence"])),
                "added_patch_fraction": float(np.nanmean(scores["added"]))
                if np.isfinite(scores["added"]).any()
                else float("nan"),
                "iou_null": float(np.nanmean(null_iou)) if len(null_iou) else float("nan"),
                "persistence_null": float(np.nanmean(null_share))
                if len(null_share)
                else float("nan"),
            }
            if len(per_image) < cfg.figures:
                strongest = int(np.argmax(np.where(present, za[:, pairs[:, 0]].sum(0), -np.inf)))
                fa, fb = (int(f) for f in pairs[strongest])
                png = overlay_png(
                    _image_of(dataset[item], split),
                    za[:, fa],
                    zb[:, fb],
                    cfg.threshold,
                    cfg.cell_pixels,
                )
                out_dir.mkdir(parents=True, exist_ok=True)
                name = f"item{item:06d}_{cfg.from_layer}-f{fa}_{cfg.to_layer}-f{fb}.png"
                png.save(out_dir / name)
                row["figure"] = f"fig7/{name}"
            per_image.append(row)
        if not per_image:
            raise DatasetError(
                f"persistence: no image of split {split!r} activates a matched feature"
            )

        def column(key: str) -> np.ndarray:
            values = np.array([r[key] for r in per_image], dtype=np.float64)
            return values[np.isfinite(values)]

        def mean_se(key: str) -> tuple[float, float | None, int]:
            v = column(key)
            if len(v) == 0:
                return float("nan"), None, 0
            se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
            return float(v.mean()), se, len(v)

        both = [
            (r["iou"], r["iou_null"])
            for r in per_image
            if np.isfinite(r["iou"]) and np.isfinite(r["iou_null"])
        ]
        diffs = np.array([x - y for x, y in both])
        records = []
        for metric, key in (
            ("iou", "iou"),
            ("iou_null", "iou_null"),
            ("persistence", "persistence"),
            ("persistence_null", "persistence_null"),
            ("added_patch_fraction", "added_patch_fraction"),
        ):
            value, se, n = mean_se(key)
            records.append(Record(metric, value, split, se, n=n))
        gain_se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else None
        records += [
            Record("iou_gain", float(diffs.mean()) if len(diffs) else float("nan"), split, gain_se),
            Record("p_value", sign_flip_p_value(diffs, rng), split, n=len(diffs)),
            Record("matched_features", float(len(pairs)), split),
            Record("match_correlation", float(correlations.mean()), split),
            Record("n_images", float(len(per_image)), split),
        ]
        figure = {
            "figure": "Olson et al. 2025, Fig. 7",
            "from": {"layer": cfg.from_layer, "sae_id": ctx.sae_id},
            "to": {"layer": cfg.to_layer, "sae_id": partner_id},
            "split": split,
            "pairs": [
                [int(p[0]), int(p[1]), round(float(c), 6)] for p, c in zip(pairs, correlations)
            ],
            "images": per_image,
        }
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ctx.output_dir / "fig7.json", json.dumps(figure, indent=1))
        return records
