"""The layer-sweep evaluator: one record set per layer, consistent with its parts."""

from __future__ import annotations

import numpy as np
import pytest
from saebench_vision_plugins.evaluators.configs import (
    LayerSweepConfig,
    OntologyConfig,
    ReconstructionConfig,
)
from saebench_vision_plugins.evaluators.layer_sweep import LayerSweepEvaluator
from saebench_vision_plugins.evaluators.ontology import OntologyEvaluator
from saebench_vision_plugins.evaluators.reconstruction import ReconstructionEvaluator
from test_eval_ontology import _setup
from test_eval_support import by_key


def test_layer_sweep_agrees_with_reconstruction_and_ontology(tmp_path):
    ctx, _ = _setup(tmp_path)
    got = by_key(LayerSweepEvaluator(LayerSweepConfig(device="cpu")).evaluate(ctx))
    recon = by_key(ReconstructionEvaluator(ReconstructionConfig(device="cpu")).evaluate(ctx))
    onto = by_key(
        OntologyEvaluator(OntologyConfig(device="cpu", random_features=False)).evaluate(ctx)
    )
    for metric in ("mse", "l0", "explained_variance", "dead_fraction"):
        assert got[(metric, "val")].value == pytest.approx(recon[(metric, "val")].value)
    for metric in ("coverage_gt_0.99", "mean_lch_height", "n_multiclass"):
        assert got[(metric, "val")].value == pytest.approx(onto[(metric, "val")].value)
    assert got[("coverage_gt_0.99", "val")].extra["layer"] == "final"
    base = by_key(
        LayerSweepEvaluator(LayerSweepConfig(device="cpu")).baseline(ctx.with_sae(None, ""))
    )
    assert base[("n_multiclass", "val")].value == 0 and ("mse", "val") not in base
    assert np.isnan(base[("mean_coverage", "val")].value)
