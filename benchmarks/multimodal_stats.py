"""The statistics of the section 5 evaluators at the paper's scale, against plain references.

* ``modality-overlap``: top-1% sets of 1000 classes x 32,768 SAE features per side, the
  (classes x classes) Jaccard matrix, per-class p-values and 1000 derangements of the text
  sides, timed in full; side by side, a per-pair Python-set reference on a subsample of classes,
  which also checks that both give the same Jaccard values.
* ``persistence``: the streaming correlation of 2048 x 2048 candidate features over the 576
  patches of each of ``--images`` images, against ``np.corrcoef`` on the stacked rows (which
  holds them all in memory), checking both agree.

Prints seconds and ratios measured in one run (shared machines are noisy; compare within a run).

    python benchmarks/multimodal_stats.py [--classes 1000] [--features 32768] [--reference 150]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from saebench_vision_plugins.evaluators.modality_overlap import (
    mean_overlap_p_value,
    overlap_matrices,
    per_class_p_values,
    top_sets,
)
from saebench_vision_plugins.evaluators.persistence import CorrelationAccumulator


def reference_jaccard(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    sets_i = [set(np.nonzero(row)[0].tolist()) for row in image]
    sets_t = [set(np.nonzero(row)[0].tolist()) for row in text]
    out = np.zeros((len(sets_i), len(sets_t)))
    for i, a in enumerate(sets_i):
        for j, b in enumerate(sets_t):
            union = len(a | b)
            out[i, j] = len(a & b) / union if union else 0.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--features", type=int, default=32768)
    parser.add_argument("--reference", type=int, default=150, help="classes the reference scores")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=2048)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    c, d = args.classes, args.features
    k = math.ceil(0.01 * d)
    # Sparse class scores: each class has 3k features with positive mean activation.
    image_scores = np.zeros((c, d), np.float32)
    text_scores = np.zeros((c, d), np.float32)
    for scores in (image_scores, text_scores):
        for row in scores:
            row[rng.choice(d, 3 * k, replace=False)] = rng.random(3 * k, dtype=np.float32)

    started = time.perf_counter()
    a, b = top_sets(image_scores, k), top_sets(text_scores, k)
    jaccard, _ = overlap_matrices(a, b)
    per_class_p_values(jaccard)
    mean_overlap_p_value(jaccard, 1000, rng)
    full = time.perf_counter() - started

    r = args.reference
    started = time.perf_counter()
    fast = overlap_matrices(a[:r], b[:r])[0]
    fast_s = time.perf_counter() - started
    started = time.perf_counter()
    slow = reference_jaccard(a[:r], b[:r])
    slow_s = time.perf_counter() - started
    assert np.allclose(fast, slow), "vectorised and reference Jaccard differ"
    print(
        f"modality-overlap, {c} classes x {d} features (top {k}): all statistics in {full:.2f} s; "
        f"Jaccard on {r} classes: vectorised {fast_s * 1e3:.1f} ms, Python sets {slow_s:.2f} s "
        f"({slow_s / fast_s:.0f}x), identical"
    )

    n, f = args.images, args.candidates
    patches = [np.maximum(rng.normal(size=(576, 2 * f)), 0).astype(np.float32) for _ in range(n)]
    started = time.perf_counter()
    acc = CorrelationAccumulator(f, f)
    for z in patches:
        acc.update(z[:, :f], z[:, f:])
    streamed = acc.correlation()
    stream_s = time.perf_counter() - started
    started = time.perf_counter()
    stacked = np.concatenate(patches).astype(np.float64)
    reference = np.corrcoef(stacked[:, :f].T, stacked[:, f:].T)[:f, f:]
    ref_s = time.perf_counter() - started
    assert np.allclose(streamed, reference, atol=1e-8), "streaming and numpy correlations differ"
    held = stacked.nbytes / 2**20
    print(
        f"persistence matching, {n} images x 576 patches, {f} x {f} candidates: streaming "
        f"{stream_s:.2f} s (holds one image), np.corrcoef {ref_s:.2f} s (holds {held:.0f} MiB) "
        f"-> {ref_s / stream_s:.2f}x, identical"
    )


if __name__ == "__main__":
    main()
