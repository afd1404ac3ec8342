"""Shared sparse SAE encodings: exact CSR of sae.encode, spilled to files, computed once per run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from saebench_vision_plugins.evaluators.configs import (
    OntologyConfig,
    OODAccuracyConfig,
    ReconstructionConfig,
)
from saebench_vision_plugins.evaluators.ontology import OntologyEvaluator
from saebench_vision_plugins.evaluators.ood_accuracy import OODAccuracyEvaluator
from saebench_vision_plugins.evaluators.reconstruction import ReconstructionEvaluator
from test_eval_support import LinearReluSAE, make_ctx, write_acts

from saebench_vision.encodings import EncodingStore, encode_split
from saebench_vision.errors import SaebenchError
from saebench_vision.interfaces import ClassInfo


def _sae(rng, d=6, d_sae=10):
    return LinearReluSAE(
        rng.normal(size=(d_sae, d)),
        rng.normal(size=d_sae) - 0.5,
        rng.normal(size=(d, d_sae)),
        np.zeros(d),
    )


@pytest.mark.parametrize("spill", [False, True])
def test_csr_encoding_is_exactly_the_dense_latents(tmp_path, spill):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(53, 6)).astype(np.float32)
    acts = write_acts(tmp_path / "c", "a" * 64, x, chunk=9)
    sae = _sae(rng)
    enc = encode_split(
        sae,
        acts,
        device=torch.device("cpu"),
        batch_size=8,
        spill_dir=tmp_path / "s" if spill else None,
    )
    with torch.no_grad():
        dense = sae.encode(torch.from_numpy(x)).numpy()
    assert 0 < enc.nnz < dense.size  # sparse, not empty
    assert enc.nnz == int((dense != 0).sum())
    np.testing.assert_array_equal(enc.dense(0, enc.n), dense)
    rows = np.array([40, 3, 3, 17, 52])
    np.testing.assert_array_equal(enc.read(rows), dense[rows])
    np.testing.assert_array_equal(np.vstack([c for _, c in enc.iter_dense(7)]), dense)
    rebuilt = np.zeros_like(dense)
    for start, local, cols, vals in enc.iter_sparse(11):
        rebuilt[start + local, cols] = vals
    np.testing.assert_array_equal(rebuilt, dense)
    np.testing.assert_array_equal(enc.fire_counts(), (dense != 0).sum(0))
    if spill:
        assert isinstance(enc.values, np.memmap) and (tmp_path / "s" / "values.bin").exists()


def test_store_spills_beyond_its_budget_and_cleans_up(tmp_path):
    rng = np.random.default_rng(1)
    acts = write_acts(tmp_path / "c", "b" * 64, rng.normal(size=(40, 6)).astype(np.float32))
    sae = _sae(rng)
    store = EncodingStore(tmp_path / "enc", memory_budget_bytes=0)
    enc = store.get("s1", "train", sae, acts, device=torch.device("cpu"))
    assert isinstance(enc.indices, np.memmap) and store.memory_bytes == 0
    assert store.get("s1", "train", sae, acts, device=torch.device("cpu")) is enc
    assert store.encoded == [("s1", "train")]
    store.close()
    assert not (tmp_path / "enc").exists()
    roomy = EncodingStore(tmp_path / "enc2")
    roomy.get("s1", "train", sae, acts, device=torch.device("cpu"))
    assert roomy.memory_bytes > 0 and not (tmp_path / "enc2").exists()


def test_every_evaluator_shares_one_encoding_per_split(tmp_path):
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 20)
    x = (np.eye(6)[labels] * 3 + rng.normal(size=(60, 6))).astype(np.float32)
    classes = [ClassInfo(f"c{i}", f"c{i}") for i in range(3)]
    tree = {"c0": ["r"], "c1": ["r"], "c2": ["r"]}
    ctx = make_ctx(
        tmp_path,
        {"train": ("train", x, labels), "val": ("eval", x[::2], labels[::2])},
        sae=_sae(rng),
        classes={"train": classes, "val": classes},
        hierarchy=tree,
    )
    for ev in (
        ReconstructionEvaluator(ReconstructionConfig(device="cpu")),
        OODAccuracyEvaluator(OODAccuracyConfig(device="cpu", features=("latents",))),
        OntologyEvaluator(OntologyConfig(device="cpu", random_features=False)),
    ):
        assert ev.evaluate(ctx)
    assert sorted(ctx.encoding_store.encoded) == [("toy-sae", "train"), ("toy-sae", "val")]


def test_dense_helper_refuses_large_splits(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 6)).astype(np.float32)
    ctx = make_ctx(tmp_path, {"train": ("train", x, None)}, sae=_sae(rng))
    small = ctx.sae_encode("train")
    with torch.no_grad():
        np.testing.assert_array_equal(small, ctx.sae.encode(torch.from_numpy(x)).numpy())
    with pytest.raises(SaebenchError, match="over the .* limit of EvalContext.sae_encode"):
        ctx.sae_encode("train", max_bytes=30 * 10 * 4 - 1)
