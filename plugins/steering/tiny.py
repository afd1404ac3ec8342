"""Tiny Stable Diffusion pipelines and a tiny CLIP, built from configs of the real classes with
random weights, for the offline steering suite and the tests (meaningless images: real weights
are needed for meaningful ones).

    python -m saebench_vision_plugins.steering.tiny saebench-results/tiny-steering

writes ``sd1/``, ``sd3/`` and ``clip/`` folders there, loadable with ``from_pretrained``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch


def byte_level_vocab(specials: list[str]) -> dict[str, int]:
    """``specials`` then the byte-level alphabet with CLIP's ``</w>`` variants (no merges)."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {token: i for i, token in enumerate(specials)}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return vocab


def tiny_clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    vocab = byte_level_vocab(["<|startoftext|>", "<|endoftext|>"])
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_clip_text_config(**overrides: Any) -> dict[str, Any]:
    config = dict(
        vocab_size=len(byte_level_vocab(["a", "b"])),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=16,
    )
    config.update(overrides)
    return config


SIZE = 16
"""Image side: the tiny VAE has 2 blocks (scale 2), so latents are 8 x 8."""


def _scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_sd1(path: Path, seed: int = 0) -> Path:
    """A complete tiny SD 1.x pipeline (CLIP text encoder of width 32, UNet, VAE) in ``path``."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=SIZE,
    )
    text = CLIPTextModel(CLIPTextConfig(**tiny_clip_text_config(num_hidden_layers=3)))
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text.eval(),
        tokenizer=tiny_clip_tokenizer(),
        unet=unet.eval(),
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def t5_tokenizer() -> Any:
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [
        (c, -3.0) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:?!'"
    ]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def build_sd3(path: Path, seed: int = 0) -> Path:
    """A complete tiny SD 3 pipeline (two CLIPs + T5, SD3 transformer, 16-channel VAE)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok3 = t5_tokenizer()
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(tok3), d_model=64, d_kv=16, d_ff=64, num_layers=2, num_heads=2)
    )
    clip_l = CLIPTextModelWithProjection(
        CLIPTextConfig(**tiny_clip_text_config(hidden_size=16, projection_dim=16))
    )
    clip_g = CLIPTextModelWithProjection(
        CLIPTextConfig(**tiny_clip_text_config(hidden_size=24, projection_dim=24))
    )
    transformer = SD3Transformer2DModel(
        sample_size=SIZE // 2,
        patch_size=1,
        in_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=64,
        caption_projection_dim=16,
        pooled_projection_dim=40,
        out_channels=16,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=SIZE,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae.eval(),
        text_encoder=clip_l.eval(),
        tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=clip_g.eval(),
        tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=t5.eval(),
        tokenizer_3=tok3,
    )
    pipe.save_pretrained(path)
    return path


def build_clip(path: Path, seed: int = 0) -> Path:
    """A tiny HF CLIPModel with its tokenizer and image processor, saved to ``path``."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
    )

    torch.manual_seed(seed)
    text = tiny_clip_text_config()
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
        tokenizer=tiny_clip_tokenizer(),
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else "saebench-results/tiny-steering")
    for name, build in (("sd1", build_sd1), ("sd3", build_sd3), ("clip", build_clip)):
        print(build(root / name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
