"""Hierarchy index: leaf sets (eq. 9), LCH (eq. 10), height (eq. 11), coverage (eq. 12) by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from saebench_vision_plugins.datasets.hierarchy import (
    DATA_DIR,
    VIRTUAL_ROOT,
    HierarchyIndex,
    pack_bits,
    read_hierarchy_file,
    unpack_bits,
    wordnet_hierarchy_for,
)
from saebench_vision_plugins.evaluators.ontology import score_class_sets

from saebench_vision.errors import DatasetError

#        root
#      /   |    \
#     a    b     c
#    / \  /|\    |
#  a1 a2 b1 b2 b3 c1
TREE = {
    "a": ["root"],
    "b": ["root"],
    "c": ["root"],
    "a1": ["a"],
    "a2": ["a"],
    "b1": ["b"],
    "b2": ["b"],
    "b3": ["b"],
    "c1": ["c"],
}
LEAVES = ["a1", "a2", "b1", "b2", "b3", "c1"]


def _score(index: HierarchyIndex, members: list[list[str]]):
    sets = np.zeros((len(members), index.n_classes), dtype=bool)
    for k, names in enumerate(members):
        sets[k, [index.leaves.index(n) for n in names]] = True
    pivot = np.array([index.leaves.index(names[0]) if names else -1 for names in members])
    scores = score_class_sets(sets, pivot, index)
    lch = [index.nodes[i] if i >= 0 else None for i in scores.lch]
    return lch, scores.height, scores.coverage


def test_hand_checked_tree():
    index = HierarchyIndex.build(TREE, LEAVES)
    assert index.nodes[index.top] == "root"
    # eq. 9: L(b) = {b1, b2, b3}; a leaf's L is itself.
    assert [index.leaves[i] for i in index.leaf_set(index.nodes.index("b"))] == ["b1", "b2", "b3"]
    assert index.leaf_count[index.nodes.index("a1")] == 1
    lch, height, coverage = _score(
        index, [["a1", "a2"], ["b1", "b2"], ["a1", "b1"], ["a2"], ["b3", "b1", "b2"], []]
    )
    assert lch == ["a", "b", "root", "a2", "b", None]
    np.testing.assert_allclose(height[:5], [1, 1, 2, 0, 1])
    np.testing.assert_allclose(coverage[:5], [1, 2 / 3, 2 / 6, 1, 1])
    assert np.isnan(height[5]) and np.isnan(coverage[5])


def test_tie_break_on_single_child_chain():
    low = HierarchyIndex.build(TREE, LEAVES, tie_break="lowest")
    high = HierarchyIndex.build(TREE, LEAVES, tie_break="highest")
    assert _score(low, [["c1"]])[0] == ["c1"]
    lch, height, coverage = _score(high, [["c1"]])
    assert lch == ["c"] and height[0] == 1 and coverage[0] == 1


def test_dag_distances_and_forest():
    # x has two hypernym paths to the top: x -> p -> top (2) and x -> q -> r -> top (3).
    dag = {"x": ["p", "q"], "y": ["p"], "p": ["top"], "q": ["r"], "r": ["top"], "z": ["r"]}
    short = HierarchyIndex.build(dag, ["x", "y", "z"], distance="shortest")
    long = HierarchyIndex.build(dag, ["x", "y", "z"], distance="longest")
    lch, h_short, cov = _score(short, [["x", "z"]])
    # L(r) = {x, z}: r is the LCH (2 leaves) though x reaches r by the longer path.
    assert lch == ["r"] and cov[0] == 1.0 and h_short[0] == pytest.approx((2 + 1) / 2)
    assert _score(long, [["x", "y"]])[1][0] == pytest.approx((1 + 1) / 2)
    assert _score(long, [["x", "y", "z"]])[1][0] == pytest.approx((3 + 2 + 2) / 3)
    forest = HierarchyIndex.build({"a1": ["a"], "b1": ["b"]}, ["a1", "b1"])
    lch, height, cov = _score(forest, [["a1", "b1"]])
    assert lch == [VIRTUAL_ROOT] and height[0] == 2 and cov[0] == 1


def test_bad_hierarchies_are_refused():
    with pytest.raises(DatasetError, match="cycle"):
        HierarchyIndex.build({"a": ["b"], "b": ["a"]}, ["a"])
    with pytest.raises(DatasetError, match="twice"):
        HierarchyIndex.build(TREE, ["a1", "a1"])


def test_bit_packing_round_trip():
    rows = np.random.default_rng(0).random((5, 130)) > 0.7
    bits = pack_bits(rows)
    assert bits.shape == (5, 3) and bits.dtype == np.uint64
    np.testing.assert_array_equal(unpack_bits(bits, 130), rows)


def _imagenet_ids() -> list[str]:
    import timm

    return (
        (Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt").read_text().split()
    )


def test_shipped_imagenet_hierarchy_planted_subtree():
    ids = _imagenet_ids()
    parents, names = wordnet_hierarchy_for(ids)
    assert len(parents) == 1860 and names["n02084071"] == "dog"
    index = HierarchyIndex.build(parents, ids, names=names)
    dog = index.nodes.index("n02084071")
    leaves = index.leaf_set(dog)
    assert len(leaves) == 118
    sets = np.zeros((3, 1000), dtype=bool)
    sets[0, leaves] = True  # every dog class
    sets[1, leaves[:-1]] = True  # all dogs but one: still LCH dog, coverage 117/118
    sets[2, np.random.default_rng(0).choice(1000, 30, replace=False)] = True  # random classes
    scores = score_class_sets(sets, sets.argmax(1), index)
    assert index.nodes[scores.lch[0]] == "n02084071" and scores.coverage[0] == 1.0
    assert index.nodes[scores.lch[1]] == "n02084071"
    assert scores.coverage[1] == pytest.approx(117 / 118)
    expected_height = index.dist[leaves, dog].mean()
    assert scores.height[0] == pytest.approx(expected_height) and expected_height > 2
    assert scores.coverage[2] < 0.1


def test_shipped_file_matches_wordnet(tmp_path):
    from saebench_vision_plugins.datasets.hierarchy import wordnet_parents
    from saebench_vision_plugins.datasets.wordnet import wordnet_reader

    try:
        wn = wordnet_reader()
    except DatasetError as exc:
        pytest.skip(f"WordNet unavailable here: {exc}")
    doc = read_hierarchy_file(DATA_DIR / "imagenet1k_hierarchy.json.gz")
    ids = _imagenet_ids()
    assert doc["leaves"] == ids
    parents, names = wordnet_parents(ids, wn)
    assert parents == doc["parents"] and names == doc["names"]


def test_wordnet_dict_install_writes_lexnames(tmp_path):
    from saebench_vision_plugins.datasets.wordnet import (
        _DICT_FILES,
        install_dict_files,
        lexnames_text,
    )

    lines = lexnames_text().splitlines()
    assert len(lines) == 45 and lines[5] == "05\tnoun.animal\t1" and lines[-1] == "44\tadj.ppl\t3"
    src = tmp_path / "dict"
    src.mkdir()
    for name in _DICT_FILES[:-1]:
        (src / name).write_text("x")
    with pytest.raises(DatasetError, match="index.sense is missing"):
        install_dict_files(src, tmp_path / "root")
    (src / "index.sense").write_text("x")
    target = install_dict_files(src, tmp_path / "root")
    assert target == tmp_path / "root" / "corpora" / "wordnet"
    assert (target / "lexnames").read_text() == lexnames_text() and (target / "data.noun").is_file()
    assert (target.stat().st_mode & 0o077) == 0  # nltk reads only private corpus folders


def test_tie_break_depends_on_the_class_set_not_the_pivot():
    # H1 and H2 both have leaf set {a, b} (so does top). Distances: a->H1 1, b->H1 3 (total 4);
    # a->H2 2, b->H2 1 (total 3); top: 2 + 2 = 4. The nearest node to the pivot differs with the
    # pivot (a: H1, b: H2); the smallest total distance does not (H2). Highest: H1 and top tie at
    # 4, and the lower node index (H1) wins.
    dag = {"a": ["H1", "n"], "n": ["H2"], "b": ["H2", "m1"], "m1": ["m2"], "m2": ["H1"]}
    dag |= {"H1": ["top"], "H2": ["top"]}
    for tie_break, want in (("lowest", "H2"), ("highest", "H1")):
        index = HierarchyIndex.build(dag, ["a", "b"], tie_break=tie_break)
        sets = np.ones((2, 2), dtype=bool)
        scores = score_class_sets(sets, np.array([0, 1]), index)
        assert [index.nodes[i] for i in scores.lch] == [want, want]
        total = {"H2": 3, "H1": 4}[want]
        np.testing.assert_allclose(scores.height, [total / 2, total / 2])
