"""Cost of steering against a plain diffusers pipeline call on the same settings.

A steering call (``DiffusionSteerer.generate``: the prompt's conditioning through the
``sd-text-encoder`` adapter, the SAE feature's delta added, the negative pushed away, one
batched pipeline call for the original and the steered image) against the plain
``StableDiffusionPipeline`` call that makes the same two images from the prompt text
(``pipe(prompt=[p, p], negative_prompt=["", ""])``, which encodes the prompt itself). The ratio
is the steering overhead; generation dominates, so it should stay within 5%. A steering
evaluation per feature is ``label_prompts`` + its share of the validation pairs of such calls,
plus one pass of the SAE over the training tokens for the feature scale (shared by all features,
measured separately below).

Models are built from configs with random weights (no download): ``--size sd14`` is the real
SD 1.4 architecture (CLIP ViT-L/14 text encoder, the 860M-parameter UNet, the VAE),
``small`` a scaled-down one for CPUs, ``tiny`` the test-suite pipeline. Calls alternate between
the two paths; medians of ``--repeats`` are reported.

    python benchmarks/steering_overhead.py --quick                        # CPU, ~1 minute
    python benchmarks/steering_overhead.py --size sd14 --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def build(size: str, path: Path) -> Path:
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from saebench_vision_plugins.steering.tiny import build_sd1, tiny_clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    if size == "tiny":
        return build_sd1(path)
    torch.manual_seed(0)
    if size == "sd14":
        text = CLIPTextConfig(
            vocab_size=len(tiny_clip_tokenizer()),
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        )
    else:
        text = CLIPTextConfig(
            vocab_size=len(tiny_clip_tokenizer()),
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
        unet = UNet2DConditionModel(
            block_out_channels=(64, 128, 256),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=256,
            attention_head_dim=8,
            layers_per_block=1,
            sample_size=32,
        )
        vae = AutoencoderKL(
            block_out_channels=(32, 64, 64, 64),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=32,
            sample_size=256,
        )
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=CLIPTextModel(text).eval(),
        tokenizer=tiny_clip_tokenizer(),
        unet=unet.eval(),
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["tiny", "small", "sd14"], default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--px", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small model, 4 steps, 128 px")
    args = parser.parse_args()
    if args.quick:
        args.size, args.steps, args.px, args.repeats = "small", 4, 128, 3
    steps = args.steps or {"tiny": 2, "small": 10, "sd14": 25}[args.size]
    px = args.px or {"tiny": 16, "small": 256, "sd14": 512}[args.size]

    from saebench_vision_plugins.models.configs import SDTextEncoderConfig
    from saebench_vision_plugins.models.sd_text import SDTextEncoderAdapter
    from saebench_vision_plugins.saes.configs import ReLUConfig
    from saebench_vision_plugins.saes.relu import ReLUSAE
    from saebench_vision_plugins.steering.steering import (
        DiffusionSteerer,
        GenerationSettings,
        typical_activations,
    )

    with tempfile.TemporaryDirectory() as tmp:
        folder = build(args.size, Path(tmp) / "pipe")
        adapter = SDTextEncoderAdapter(
            SDTextEncoderConfig(model_id=str(folder), device=args.device, dtype=args.dtype)
        )
        adapter.ensure_loaded()
        width = adapter.encoders["clip"].config.hidden_size
        sae = ReLUSAE(width, ReLUConfig(expansion=16)).to(adapter.device)
        settings = GenerationSettings(steps, 7.5, px, px)
        steerer = DiffusionSteerer(adapter, sae, "penultimate", settings=settings)
        pipe = steerer.pipeline
        prompt = "an old man wearing sunglasses, anime style"

        def plain() -> Any:
            return pipe(
                prompt=[prompt, prompt],
                negative_prompt=["", ""],
                num_inference_steps=steps,
                guidance_scale=7.5,
                height=px,
                width=px,
                generator=[torch.Generator("cpu").manual_seed(0) for _ in range(2)],
            ).images

        def steered() -> Any:
            return steerer.generate(prompt, 0, 5, [10.0], 1.3)

        def timed(fn: Any) -> float:
            if adapter.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if adapter.device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        plain(), steered()  # warm-up
        t_plain, t_steer = [], []
        for _ in range(args.repeats):
            t_plain.append(timed(plain))
            t_steer.append(timed(steered))
        mp, ms = statistics.median(t_plain), statistics.median(t_steer)

        class _Rows:
            def __init__(self, n: int) -> None:
                self.rows = np.random.default_rng(0).normal(size=(n, width)).astype(np.float32)

            def iter_chunks(self, k: int) -> Any:
                for lo in range(0, len(self.rows), k):
                    yield lo, self.rows[lo : lo + k]

        tokens = _Rows(100_000)
        start = time.perf_counter()
        typical_activations(sae, tokens, list(range(100)), device=args.device)
        t_scale = time.perf_counter() - start

    print(
        f"steering overhead ({args.size}, {args.device} {args.dtype}, {steps} steps, {px} px, "
        f"2 images a call, median of {args.repeats}; torch {torch.__version__})"
    )
    print(f"{'path':<44}{'s / call':>10}{'ratio':>8}")
    print(f"{'plain pipeline (prompt text)':<44}{mp:>10.3f}{1.0:>8.3f}")
    print(f"{'steering (adapter + SAE delta + pipeline)':<44}{ms:>10.3f}{ms / mp:>8.3f}")
    print(f"steering overhead: {100 * (ms / mp - 1):+.1f}% of generation (target <= 5%)")
    print(
        f"feature scales: one SAE pass over 100k training tokens for 100 features: {t_scale:.2f} s "
        f"(once per SAE, = {t_scale / mp:.2f} plain calls)"
    )


if __name__ == "__main__":
    main()
