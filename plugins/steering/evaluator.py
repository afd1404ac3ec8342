"""The ``diffusion-steering`` evaluator: the paper's section 4 for one text-encoder SAE.

1. **Discovery** (``discovery_split``, e.g. COCO captions): features whose top-activating words
   are nouns, adjectives or adverbs (:mod:`.discovery`); or the ``features`` given.
2. **Labelling**: for each candidate, original and steered images of ``label_prompts`` prompts
   (the paper: 4 Midjourney prompts); the labeller plugin names the differences; each
   feature's attribute is its dominant keyword by IDF over all features' keywords.
3. **Validation** (Table 3): ``validation_pairs`` prompt-attribute pairs (the remaining
   prompts, cycled over the labelled features); CLIP embeddings of I_orig, I_steer, t_orig and
   t_attr; the three similarities of Table 3, the control sim(I_orig, t_attr), paired t-tests
   of sim(I_steer, t_attr) − sim(I_orig, t_attr) and of sim(I_steer, t_attr) −
   sim(I_steer, t_orig), and the image-image preservation sim(I_orig, I_steer).
4. **Figures 5 / 9**: a grid of original and steered images per labelled feature and a λ sweep
   row each, as PNG files under the cell's artifacts, with ``steering.json`` holding the
   candidates, their words, the labeller's answers and every pair's similarities.

Generated images and labeller answers are cached by content (``cache_dir``): a repeated or
resumed run regenerates nothing, and a kill loses at most the pipeline call in flight.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from saebench_vision_plugins.steering.configs import DiffusionSteeringConfig

from saebench_vision.errors import ConfigError
from saebench_vision.interfaces import EvalContext, Evaluator, LabellerAnswer, Record

SIMILARITIES = {
    "clip_orig_prompt": "sim(I_orig, t_orig)",
    "clip_steer_prompt": "sim(I_steer, t_orig)",
    "clip_steer_attr": "sim(I_steer, t_attr)",
    "clip_orig_attr": "sim(I_orig, t_attr) (control)",
}


def validation_pairs(n_prompts: int, n_features: int, n: int) -> list[tuple[int, int]]:
    """``n`` distinct (prompt, feature) index pairs, at most ``n_prompts × n_features``.

    Round ``r`` pairs prompt ``p`` with feature ``(p + r) mod n_features``: every prompt is used
    once before any is reused, features take turns, and no pair repeats.
    """
    out = []
    for r in range(n_features):
        for p in range(n_prompts):
            if len(out) == n:
                return out
            out.append((p, (p + r) % n_features))
    return out


def load_labeller(name: str, args: dict[str, Any], where: str) -> Any:
    """A labeller plugin instance by name, its args checked against its Config."""
    from saebench_vision.config import build_config
    from saebench_vision.plugins import get_plugin_manager

    entry = get_plugin_manager().registry().get("labeller", name, where=where)
    cls = entry.load()
    return cls(build_config(cls.Config, dict(args), where=where, what=f"labeller `{name}`"))


class DiffusionSteeringEvaluator(Evaluator):
    name = "diffusion-steering"
    version = "1"
    Config = DiffusionSteeringConfig
    needs_adapter = True
    metrics = {
        "clip_orig_prompt": True,
        "clip_steer_prompt": True,
        "clip_steer_attr": True,
        "clip_orig_attr": None,
        "attr_gain": True,
        "attr_gain_p": False,
        "attr_gain_effect": True,
        "attr_over_prompt": True,
        "attr_over_prompt_p": False,
        "preservation": True,
        "candidate_features": True,
        "candidate_fraction": True,
        "labelled_features": True,
        "abstained_features": False,
    }
    headline = ("clip_steer_attr", "attr_gain", "attr_gain_p", "preservation")

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._pipelines: dict[int, Any] = {}

    def evaluate(self, ctx: EvalContext) -> list[Record]:
        from saebench_vision_plugins.steering.discovery import discover, sd_row_offsets
        from saebench_vision_plugins.steering.steering import (
            AnswerStore,
            DiffusionSteerer,
            GenerationSettings,
            ImageStore,
            SteeringOptions,
            typical_activations,
        )
        from saebench_vision_plugins.steering.words import dominant_keywords

        cfg: DiffusionSteeringConfig = self.config
        sae = ctx.sae
        if sae is None:
            return []
        for split in (cfg.prompt_split, cfg.discovery_split, cfg.validation_split):
            if split is not None and split not in ctx.splits:
                raise ConfigError(
                    f"evaluator `{self.name}`: no split {split!r} in the suite "
                    f"(splits: {', '.join(ctx.splits)}); fix prompt_split / discovery_split / validation_split"
                )
        adapter = ctx.adapter
        # One diffusion pipeline per adapter for the whole run (every SAE cell of the model).
        cached = self._pipelines.get(id(adapter))
        steerer = DiffusionSteerer(
            adapter,
            sae,
            ctx.layer,
            pipeline=cached,
            settings=GenerationSettings(
                cfg.num_inference_steps, cfg.guidance_scale, cfg.height, cfg.width
            ),
            options=SteeringOptions(cfg.positions, cfg.negative, cfg.scale, cfg.quantile),
        )
        root = (
            Path(cfg.cache_dir) if cfg.cache_dir else ctx.output_dir.parents[1] / "steering-cache"
        )
        images, answers = ImageStore(root / "images"), AnswerStore(root / "answers")
        base_key = {"steerer": steerer.identity(), "sae": ctx.sae_id, "sae_layer": ctx.layer}
        report: dict[str, Any] = {"sae": ctx.sae_id, "layer": ctx.layer, "model": ctx.model_name}

        # 1. discovery
        words: dict[int, Any] = {}
        n_candidates = None
        if cfg.discovery_split is not None:
            texts = [str(t) for t in ctx.dataset(cfg.discovery_split)]
            tagger: Any = {"auto": "auto", "nltk": "auto", "wordnet": None, "none": None}[
                cfg.pos_tagger
            ]
            if cfg.pos_tagger == "nltk":
                from saebench_vision_plugins.steering.words import _nltk_tagger

                tagger = _nltk_tagger()
                if tagger is None:
                    raise ConfigError(
                        f"evaluator `{self.name}`: pos_tagger nltk: the tagger data is not "
                        f"installed; run nltk.download('averaged_perceptron_tagger_eng') or use "
                        f"pos_tagger: auto (WordNet's parts of speech)"
                    )
            wordnet: Any = None if cfg.pos_tagger == "none" else "auto"
            found, candidates = discover(
                sae,
                ctx.activations(cfg.discovery_split),
                texts,
                sd_row_offsets(adapter, ctx.layer),
                top_rows=cfg.top_rows,
                min_word_share=cfg.min_word_share,
                pos_keep=cfg.pos_keep,
                tagger=tagger,
                wordnet=wordnet,
                device=ctx.device,
            )
            words = {fw.feature: fw for fw in found}
            n_candidates = len(candidates)
            report["firing_features"] = len(found)
            report["candidates"] = [fw.as_dict() for fw in candidates]
            chosen = [fw.feature for fw in candidates]
        else:
            chosen = []
        if cfg.features is not None:
            chosen = list(cfg.features)
        if not chosen:
            raise ConfigError(
                f"evaluator `{self.name}`: no features to steer (discovery found no candidates "
                f"and `features` is empty); lower min_word_share or give features"
            )
        features = chosen[: cfg.max_features]
        scales = typical_activations(
            sae,
            ctx.activations(ctx.split_names("train")[0]),
            features,
            mode=cfg.scale,
            quantile=cfg.quantile,
            device=ctx.device,
        )
        scale_of = {f: float(s) for f, s in zip(features, scales)}
        report["scales"] = {str(f): s for f, s in scale_of.items()}

        prompts = [str(p) for p in ctx.dataset(cfg.prompt_split)]
        label_prompts = prompts[: cfg.label_prompts]
        if cfg.validation_split is not None:
            val_prompts = [str(p) for p in ctx.dataset(cfg.validation_split)]
            val_offset = 1_000_000  # seeds of validation images never collide with labelling's
        else:
            val_prompts, val_offset = prompts[cfg.label_prompts :], cfg.label_prompts
        if len(label_prompts) < cfg.label_prompts or not val_prompts:
            raise ConfigError(
                f"evaluator `{self.name}`: split {cfg.prompt_split!r} has {len(prompts)} prompts; "
                f"it needs label_prompts ({cfg.label_prompts}) + at least 1 for validation, or "
                f"a validation_split"
            )

        def pair_images(prompt: str, seed: int, feature: int, strengths: list[float]) -> list[Any]:
            payload = base_key | {
                "prompt": prompt,
                "seed": seed,
                "feature": feature,
                "strengths": strengths,
                "scale": scale_of[feature],
            }
            return images.get_or_make(
                payload,
                lambda: steerer.generate(prompt, seed, feature, strengths, scale_of[feature]),
            )

        # 2. labelling
        given = {int(k): v for k, v in (cfg.attributes or {}).items()}
        labeller = None
        keywords: dict[int, list[str]] = {}
        label_sets: dict[int, tuple[list[Any], list[Any]]] = {}
        raw: dict[int, dict[str, Any]] = {}
        for f in features:
            made = [
                pair_images(p, cfg.seed + i, f, [cfg.strength]) for i, p in enumerate(label_prompts)
            ]
            label_sets[f] = ([m[0] for m in made], [m[1] for m in made])
            if f in given:
                keywords[f] = [given[f]]
                raw[f] = {"given": given[f]}
                continue
            if labeller is None:
                labeller = load_labeller(
                    cfg.labeller, cfg.labeller_args, f"evaluator `{self.name}`.labeller_args"
                )
            hints = [w for w, _ in words[f].words[:5] if w] if f in words else []
            key = base_key | {
                "labeller": labeller.identity(),
                "feature": f,
                "strength": cfg.strength,
                "prompts": label_prompts,
                "hints": hints,
            }

            def ask(
                f: int = f, hints: list[str] = hints, labeller: Any = labeller
            ) -> dict[str, Any]:
                try:
                    a = labeller.label(*label_sets[f], prompts=label_prompts, hints=hints)
                except ValueError as exc:  # an unreadable answer abstains, never crashes
                    a = LabellerAnswer(keywords=[], abstained=True, raw=f"error: {exc}")
                return {"keywords": a.keywords, "abstained": a.abstained, "raw": a.raw}

            answer = answers.get_or_make(key, ask)
            keywords[f] = [] if answer["abstained"] else list(answer["keywords"])
            raw[f] = answer
        dominant = dominant_keywords({f: keywords[f] for f in features if f not in given})
        attribute = {f: given.get(f) or dominant.get(f) for f in features}
        labelled = [f for f in features if attribute[f]]
        report["labels"] = {
            str(f): {
                "attribute": attribute[f],
                "answer": raw.get(f),
                "words": words[f].as_dict() if f in words else None,
            }
            for f in features
        }

        records: list[Record] = []
        split = cfg.prompt_split
        if n_candidates is not None:
            records += [
                Record("candidate_features", float(n_candidates), split=cfg.discovery_split or ""),
                Record(
                    "candidate_fraction",
                    n_candidates / sae.d_sae,
                    split=cfg.discovery_split or "",
                    n=sae.d_sae,
                ),
            ]
        records += [
            Record("labelled_features", float(len(labelled)), split=split),
            Record("abstained_features", float(len(features) - len(labelled)), split=split),
        ]
        if labelled:
            records += self._validate(
                ctx, cfg, labelled, attribute, val_prompts, val_offset, pair_images, report
            )
            self._figures(
                ctx, cfg, labelled, attribute, label_sets, label_prompts, pair_images, report
            )
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        from saebench_vision_plugins.steering.steering import _atomic_write

        _atomic_write(
            ctx.output_dir / "steering.json", json.dumps(report, indent=1, default=str).encode()
        )
        return records

    def _validate(
        self,
        ctx: EvalContext,
        cfg: DiffusionSteeringConfig,
        labelled: list[int],
        attribute: dict[int, str | None],
        prompts: list[str],
        seed_offset: int,
        pair_images: Any,
        report: dict[str, Any],
    ) -> list[Record]:
        from saebench_vision_plugins.steering.scoring import CLIPScorer
        from saebench_vision_plugins.steering.stats import paired_ttest

        scorer = CLIPScorer(cfg.clip_backend, cfg.clip_model, cfg.clip_pretrained, ctx.device)
        pairs = []
        for p_index, f_index in validation_pairs(len(prompts), len(labelled), cfg.validation_pairs):
            f = labelled[f_index]
            prompt = prompts[p_index]
            seed = cfg.seed + seed_offset + p_index
            orig, steered = pair_images(prompt, seed, f, [cfg.strength])
            attr_text = cfg.attribute_template.format(prompt=prompt, attribute=attribute[f])
            pairs.append((f, prompt, attr_text, orig, steered))
        i_orig = scorer.images([p[3] for p in pairs])
        i_steer = scorer.images([p[4] for p in pairs])
        t_orig = scorer.texts([p[1] for p in pairs])
        t_attr = scorer.texts([p[2] for p in pairs])
        sims = {
            "clip_orig_prompt": (i_orig * t_orig).sum(1),
            "clip_steer_prompt": (i_steer * t_orig).sum(1),
            "clip_steer_attr": (i_steer * t_attr).sum(1),
            "clip_orig_attr": (i_orig * t_attr).sum(1),
        }
        preservation = (i_orig * i_steer).sum(1)
        split = cfg.validation_split or cfg.prompt_split
        extra = {"clip": scorer.identity(), "strength": cfg.strength, "scale": cfg.scale}
        records = []
        for metric, values in sims.items():
            records.append(
                Record(
                    metric,
                    float(values.mean()),
                    split=split,
                    stderr=float(values.std(ddof=1) / np.sqrt(len(values))),
                    n=len(values),
                    extra=extra | {"what": SIMILARITIES[metric]},
                )
            )
        for metric, a, b in (
            ("attr_gain", sims["clip_steer_attr"], sims["clip_orig_attr"]),
            ("attr_over_prompt", sims["clip_steer_attr"], sims["clip_steer_prompt"]),
        ):
            test = paired_ttest(a, b)
            stats = extra | test.as_dict()
            records += [
                Record(
                    metric,
                    test.mean_difference,
                    split=split,
                    stderr=test.stderr,
                    n=test.n,
                    extra=stats,
                ),
                Record(f"{metric}_p", test.p_value, split=split, n=test.n, extra=stats),
            ]
            if metric == "attr_gain":
                records.append(
                    Record("attr_gain_effect", test.effect_size, split=split, n=test.n, extra=stats)
                )
            report[metric] = test.as_dict()
        records.append(
            Record(
                "preservation",
                float(preservation.mean()),
                split=split,
                stderr=float(preservation.std(ddof=1) / np.sqrt(len(preservation))),
                n=len(preservation),
                extra=extra,
            )
        )
        report["pairs"] = [
            {
                "feature": p[0],
                "prompt": p[1],
                "t_attr": p[2],
                **{m: float(v[i]) for m, v in sims.items()},
                "preservation": float(preservation[i]),
            }
            for i, p in enumerate(pairs)
        ]
        return records

    def _figures(
        self,
        ctx: EvalContext,
        cfg: DiffusionSteeringConfig,
        labelled: list[int],
        attribute: dict[int, str | None],
        label_sets: dict[int, tuple[list[Any], list[Any]]],
        prompts: list[str],
        pair_images: Any,
        report: dict[str, Any],
    ) -> None:
        from saebench_vision_plugins.steering.figures import image_grid, save_png

        shown = labelled[: cfg.grid_features]
        originals = label_sets[shown[0]][0]
        rows = [[originals[i]] + [label_sets[f][1][i] for f in shown] for i in range(len(prompts))]
        labels = ["original"] + [f"#{f} {attribute[f]}" for f in shown]
        out = ctx.output_dir
        files = [str(save_png(image_grid(rows, labels), out / "steering_grid.png"))]
        sweep = [float(s) for s in cfg.sweep]
        sweep_rows, sweep_labels = [], []
        for f in shown:
            made = pair_images(prompts[0], cfg.seed, f, sweep)
            sweep_rows.append(made[1:])
            sweep_labels.append(f"#{f} {attribute[f]}")
            # the feature alone: its originals over its steered images, labelled with the attribute
            orig, steered = label_sets[f]
            per_feature = image_grid(
                [list(orig), list(steered), made[1:]],
                [f"#{f} {attribute[f]}"] + [""] * (max(len(orig), len(made) - 1) - 1),
                [
                    "original",
                    f"steered lambda={cfg.strength:g}",
                    "sweep " + ",".join(f"{s:g}" for s in sweep),
                ],
            )
            files.append(str(save_png(per_feature, out / f"feature_{f}.png")))
        files.append(
            str(
                save_png(
                    image_grid(sweep_rows, [f"lambda={s:g}" for s in sweep], sweep_labels),
                    out / "steering_sweep.png",
                )
            )
        )
        report["figures"] = files
