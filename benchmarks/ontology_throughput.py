"""Ontology scoring at the paper's scale: 491,520 features x 1000 ImageNet classes (Table 2).

Times the vectorised path of the ``ontology`` evaluator (class sets, LCH, height, coverage,
summary and Fig. 3 data) and, side by side in the same run, a plain per-feature Python reference
on a subsample, which also checks that both give the same coverage. Prints seconds and the ratio.

    python benchmarks/ontology_throughput.py [--features 491520] [--reference 3000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
from saebench_vision_plugins.datasets.hierarchy import HierarchyIndex, wordnet_hierarchy_for
from saebench_vision_plugins.datasets.imagenet import imagenet_class_list
from saebench_vision_plugins.evaluators.configs import OntologyConfig
from saebench_vision_plugins.evaluators.ontology import (
    class_sets,
    score_class_sets,
    summary,
    write_figure_data,
)


def random_class_means(k: int, c: int, seed: int) -> np.ndarray:
    """Sparse features: each fires on 1 to 39 random classes with random strengths."""
    rng = np.random.default_rng(seed)
    means = np.zeros((k, c), np.float32)
    active = rng.integers(1, 40, size=k)
    rows = np.repeat(np.arange(k), active)
    means[rows, rng.integers(0, c, size=len(rows))] = rng.random(len(rows), dtype=np.float32)
    return means


def reference_scores(
    sets: np.ndarray, leaves: list[str], parents: dict[str, list[str]]
) -> tuple[np.ndarray, np.ndarray]:
    """Eqs. 9-12 feature by feature with Python sets and dicts: the obvious, slow way.

    Returns (coverage, height); height is the mean shortest-path distance from the class set to
    its LCH, the smallest common ancestor (ties broken by name, so heights may differ from the
    evaluator's tie rule on a tie; coverage cannot).
    """
    distance: dict[str, dict[str, int]] = {}
    for leaf in leaves:
        dist, todo = {leaf: 0}, deque([leaf])
        while todo:
            node = todo.popleft()
            for p in parents.get(node, []):
                if p not in dist:
                    dist[p] = dist[node] + 1
                    todo.append(p)
        distance[leaf] = dist
    leaf_set_size: dict[str, int] = {}
    for leaf in leaves:
        for node in distance[leaf]:
            leaf_set_size[node] = leaf_set_size.get(node, 0) + 1
    coverage = np.full(len(sets), np.nan)
    height = np.full(len(sets), np.nan)
    for i, row in enumerate(sets):
        chosen = [leaves[j] for j in np.flatnonzero(row)]
        if not chosen:
            continue
        common = set.intersection(*(set(distance[leaf]) for leaf in chosen))
        lch = min(common, key=lambda h: (leaf_set_size[h], h))
        coverage[i] = len(chosen) / leaf_set_size[lch]
        height[i] = sum(distance[leaf][lch] for leaf in chosen) / len(chosen)
    return coverage, height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=491_520)
    parser.add_argument(
        "--reference", type=int, default=3000, help="features scored by the reference"
    )
    args = parser.parse_args()

    ids = list(imagenet_class_list("imagenet-1k"))
    t = time.perf_counter()
    parents, names = wordnet_hierarchy_for(ids)
    index = HierarchyIndex.build(parents, ids, names=names)
    t_index = time.perf_counter() - t
    means = random_class_means(args.features, len(ids), seed=0)
    cfg = OntologyConfig()

    t = time.perf_counter()
    sets, pivot = class_sets(
        means, rule=cfg.class_rule, threshold=cfg.threshold, min_class_mean=cfg.min_class_mean
    )
    t_sets = time.perf_counter() - t
    t = time.perf_counter()
    scores = score_class_sets(sets, pivot, index)
    t_score = time.perf_counter() - t
    t = time.perf_counter()
    summary(scores, cfg)
    write_figure_data(Path(tempfile.mkdtemp()), "bench", scores, index, cfg)
    t_out = time.perf_counter() - t
    total = t_sets + t_score + t_out

    n_ref = min(args.reference, args.features)
    t = time.perf_counter()
    ref_coverage, _ = reference_scores(sets[:n_ref], ids, parents)
    t_ref = (time.perf_counter() - t) * args.features / n_ref
    same = np.allclose(ref_coverage, scores.coverage[:n_ref], equal_nan=True)

    print(
        f"{args.features:,} features x {len(ids)} classes (hierarchy index built in {t_index:.2f} s)"
    )
    print(f"{'step':<40}{'seconds':>9}")
    print(f"{'class sets (eq. C_k rule)':<40}{t_sets:>9.2f}")
    print(f"{'LCH, height, coverage (eqs. 10-12)':<40}{t_score:>9.2f}")
    print(f"{'summary + Fig. 3 data':<40}{t_out:>9.2f}")
    print(f"{'whole evaluator scoring':<40}{total:>9.2f}")
    print(f"{'per-feature Python, eqs. 10-12':<40}{t_ref:>9.2f}  (extrapolated from {n_ref:,})")
    print(
        f"eqs. 10-12: vectorised / per-feature = {t_score / t_ref:.2f}; coverage identical: {same}"
    )


if __name__ == "__main__":
    main()
