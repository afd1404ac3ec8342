"""Class hierarchies: WordNet hypernym DAGs (precomputed or built with nltk) and datasets' own trees.

A hierarchy is a parents map ``{node: [parent, ...]}``; the label set's classes are its leaves
Omega (paper section 3.2). :class:`HierarchyIndex` turns it into the arrays the ontology metrics
need: the set S of ancestors-or-self of the leaves, each node's leaf set L(h) (eq. 9) as
bitsets, and the hypernym-path distance from every leaf to each of its ancestors.

The ImageNet-1k hierarchy is shipped precomputed (``data/imagenet1k_hierarchy.json.gz``), so
ImageNet runs need no WordNet download; other WordNet ids are resolved with nltk through
:func:`saebench_vision_plugins.datasets.wordnet.ensure_wordnet`. Hypernyms are
``hypernyms() + instance_hypernyms()`` of the noun synset ``wn.synset_from_pos_and_offset('n',
int(id[1:]))``: WordNet is a DAG, so a synset may have several parents.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from saebench_vision.errors import DatasetError

DATA_DIR = Path(__file__).parent / "data"
SHIPPED_FILES = ("imagenet1k_hierarchy.json.gz", "quickdraw_emoji_hierarchy.json.gz")
VIRTUAL_ROOT = "<root>"
WORDNET_NOTICE = (
    "Derived from WordNet 3.0. WordNet 3.0 Copyright 2006 by Princeton University. All rights "
    "reserved. THIS SOFTWARE AND DATABASE IS PROVIDED 'AS IS' AND PRINCETON UNIVERSITY MAKES NO "
    "REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED."
)


def is_wordnet_id(node: str) -> bool:
    """``n01440764``-style noun ids (the ImageNet convention)."""
    return len(node) == 9 and node[0] == "n" and node[1:].isdigit()


# --------------------------------------------------------------------------------------------
# Building parents maps


def wordnet_parents(
    wnids: Iterable[str], wordnet: Any = None
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The hypernym closure of ``wnids``: ``({node: [parents]}, {node: name})``, WordNet ids throughout.

    ``wordnet`` defaults to :func:`~saebench_vision_plugins.datasets.wordnet.wordnet_reader`.
    """
    if wordnet is None:
        from saebench_vision_plugins.datasets.wordnet import wordnet_reader

        wordnet = wordnet_reader()

    def wnid(synset: Any) -> str:
        return f"{synset.pos()}{synset.offset():08d}"

    parents: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    todo = []
    for node in wnids:
        if not is_wordnet_id(node):
            raise DatasetError(f"class id {node!r} is not a WordNet noun id like n01440764")
        try:
            todo.append(wordnet.synset_from_pos_and_offset("n", int(node[1:])))
        except Exception as exc:  # nltk raises WordNetError, a bare Exception subclass
            raise DatasetError(
                f"class id {node!r} is not a WordNet 3.0 noun synset ({exc})"
            ) from exc
    while todo:
        synset = todo.pop()
        key = wnid(synset)
        if key in parents:
            continue
        ups = sorted(synset.hypernyms() + synset.instance_hypernyms(), key=wnid)
        parents[key] = [wnid(s) for s in ups]
        names[key] = synset.lemma_names()[0].replace("_", " ")
        todo.extend(ups)
    return dict(sorted(parents.items())), dict(sorted(names.items()))


def write_hierarchy_file(
    path: str | os.PathLike[str], wnids: Sequence[str], wordnet: Any = None
) -> dict[str, Any]:
    """Write the WordNet closure of ``wnids`` as gzipped JSON (the shipped files' format)."""
    parents, names = wordnet_parents(wnids, wordnet)
    doc = {
        "format": 1,
        "source": "WordNet 3.0 noun hypernyms and instance hypernyms, via nltk",
        "license": WORDNET_NOTICE,
        "leaves": list(wnids),
        "parents": parents,
        "names": names,
    }
    # mtime=0 keeps the file byte-identical across rebuilds.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
        fh.write(json.dumps(doc, indent=0, sort_keys=True).encode())
    return doc


def read_hierarchy_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A hierarchy file written by :func:`write_hierarchy_file`."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return dict(json.load(fh))
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"{path}: unreadable hierarchy file ({exc}); reinstall the package"
        ) from exc


@lru_cache(maxsize=1)
def shipped_wordnet() -> tuple[dict[str, list[str]], dict[str, str]]:
    """Parents and names of every WordNet node in the hierarchy files shipped with the package."""
    parents: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for name in SHIPPED_FILES:
        path = DATA_DIR / name
        if path.exists():
            doc = read_hierarchy_file(path)
            parents.update(doc["parents"])
            names.update(doc["names"])
    return parents, names


def closure(parents: dict[str, list[str]], nodes: Iterable[str]) -> set[str]:
    """``nodes`` and all their ancestors (nodes missing from ``parents`` are roots)."""
    seen: set[str] = set()
    todo = list(nodes)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(parents.get(node, ()))
    return seen


def wordnet_hierarchy_for(class_ids: Sequence[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Parents map for WordNet class ids: the shipped data when it covers them, else nltk."""
    parents, names = shipped_wordnet()
    if all(c in parents for c in class_ids):
        keep = closure(parents, class_ids)
        return {n: parents[n] for n in keep if n in parents}, {n: names.get(n, n) for n in keep}
    return wordnet_parents(class_ids)


# --------------------------------------------------------------------------------------------
# The index the ontology metrics run on


@dataclass
class HierarchyIndex:
    """Arrays over S (ancestors-or-self of the leaves) for vectorised LCH / height / coverage.

    * ``leaves``: Omega in class order; ``nodes``: S (the leaves' own nodes included), plus
      ``<root>`` when the leaves have no common ancestor (a forest).
    * ``leaf_count[h]`` = |L(h)| (eq. 9; a leaf's L is itself plus any leaves below it).
    * ``leaf_bits[h]``: L(h) as a little-endian bitset of ``words`` uint64.
    * ``dist[c, h]``: hypernym-path length from leaf ``c`` to node ``h`` (-1 if not an ancestor),
      the shortest or longest path as chosen.
    * ``candidates[c]``: ancestors-or-self of leaf ``c`` sorted by (|L(h)|, tie-break), padded
      with the top node, so the first candidate containing a class set is its LCH (eq. 10).
    """

    leaves: list[str]
    nodes: list[str]
    names: dict[str, str]
    leaf_count: np.ndarray
    leaf_bits: np.ndarray
    dist: np.ndarray
    candidates: np.ndarray
    top: int
    tie_break: Literal["lowest", "highest"] = "lowest"

    @property
    def n_classes(self) -> int:
        return len(self.leaves)

    @property
    def words(self) -> int:
        return int(self.leaf_bits.shape[1])

    def name(self, node_index: int) -> str:
        node = self.nodes[node_index]
        return self.names.get(node, node)

    def leaf_set(self, node_index: int) -> np.ndarray:
        """L(h) as class indices."""
        return np.nonzero(
            unpack_bits(self.leaf_bits[node_index : node_index + 1], self.n_classes)[0]
        )[0]

    @classmethod
    def build(
        cls,
        parents: dict[str, list[str]],
        leaves: Sequence[str],
        *,
        names: dict[str, str] | None = None,
        tie_break: Literal["lowest", "highest"] = "lowest",
        distance: Literal["shortest", "longest"] = "shortest",
    ) -> HierarchyIndex:
        """Index ``parents`` (``{node: [parents]}``; absent nodes are roots) over ``leaves``."""
        leaves = list(leaves)
        if len(set(leaves)) != len(leaves):
            dup = next(x for x in leaves if leaves.count(x) > 1)
            raise DatasetError(f"hierarchy: class id {dup!r} appears twice among the classes")
        # Distances from each leaf to each ancestor, min and max over hypernym paths.
        memo: dict[str, dict[str, tuple[int, int]]] = {}

        def up(node: str, stack: tuple[str, ...]) -> dict[str, tuple[int, int]]:
            if node in memo:
                return memo[node]
            if node in stack:
                raise DatasetError(f"hierarchy: cycle through {node!r}; a hierarchy must be a DAG")
            out = {node: (0, 0)}
            for parent in parents.get(node, ()):
                for anc, (lo, hi) in up(parent, stack + (node,)).items():
                    old = out.get(anc)
                    out[anc] = (
                        (lo + 1, hi + 1)
                        if old is None
                        else (min(old[0], lo + 1), max(old[1], hi + 1))
                    )
            memo[node] = out
            return out

        ancestry = [up(leaf, ()) for leaf in leaves]
        nodes = sorted(set().union(*ancestry)) if ancestry else []
        roots = [n for n in nodes if not parents.get(n)]
        n_leaves = len(leaves)
        if len(roots) != 1:
            nodes.append(VIRTUAL_ROOT)
        position = {n: i for i, n in enumerate(nodes)}
        pick = 0 if distance == "shortest" else 1
        dist = np.full((n_leaves, len(nodes)), -1, dtype=np.int16)
        member = np.zeros((len(nodes), n_leaves), dtype=bool)
        for c, anc in enumerate(ancestry):
            for node, pair in anc.items():
                dist[c, position[node]] = pair[pick]
                member[position[node], c] = True
            if nodes[-1] == VIRTUAL_ROOT:
                to_roots = [pair[pick] for node, pair in anc.items() if node in roots]
                dist[c, -1] = (min(to_roots) if pick == 0 else max(to_roots)) + 1
                member[-1, c] = True
        top = position[roots[0]] if len(roots) == 1 else len(nodes) - 1
        leaf_count = member.sum(1).astype(np.int64)
        sign = 1 if tie_break == "lowest" else -1
        width = max(int((dist >= 0).sum(1).max()) if n_leaves else 1, 1)
        candidates = np.full((n_leaves, width), top, dtype=np.int32)
        for c in range(n_leaves):
            anc_idx = np.nonzero(dist[c] >= 0)[0]
            order = np.lexsort((anc_idx, sign * dist[c, anc_idx], leaf_count[anc_idx]))
            candidates[c, : len(anc_idx)] = anc_idx[order]
        return cls(
            leaves=leaves,
            nodes=nodes,
            names=dict(names or {}),
            leaf_count=leaf_count,
            leaf_bits=pack_bits(member),
            dist=dist,
            candidates=candidates,
            top=top,
            tie_break=tie_break,
        )


def pack_bits(rows: np.ndarray) -> np.ndarray:
    """(K, C) bool -> (K, ceil(C/64)) uint64 little-endian bitsets."""
    k, c = rows.shape
    words = max((c + 63) // 64, 1)
    padded = np.zeros((k, words * 64), dtype=bool)
    padded[:, :c] = rows
    return np.packbits(padded, axis=1, bitorder="little").view(np.uint64).reshape(k, words)


def unpack_bits(bits: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`."""
    k = bits.shape[0]
    flat = np.unpackbits(
        np.ascontiguousarray(bits).view(np.uint8).reshape(k, -1), axis=1, bitorder="little"
    )
    return flat[:, :n].astype(bool)
