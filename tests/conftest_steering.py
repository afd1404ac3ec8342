"""Tiny offline Stable Diffusion pipelines, SAEs and CLIP models for the steering tests
(imported explicitly, not a pytest conftest)."""

from __future__ import annotations

from typing import Any

import torch
from saebench_vision_plugins.steering.tiny import SIZE, build_clip, build_sd1, build_sd3

__all__ = ["SIZE", "build_clip", "build_sd1", "build_sd3", "tiny_sae"]


def tiny_sae(d_in: int, expansion: int = 2, k: int = 4, seed: int = 0) -> Any:
    """A TopK SAE with random weights and a non-trivial input scale (so scales matter)."""
    from saebench_vision_plugins.saes.configs import TopKConfig
    from saebench_vision_plugins.saes.topk import TopKSAE

    torch.manual_seed(seed)
    sae = TopKSAE(d_in, TopKConfig(expansion=expansion, k=k))
    sae.input_scale.fill_(0.7)
    return sae.eval()
