"""Bootstrap, paired tests, matched-sparsity interpolation and per-item files, against hand
computations and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from saebench_vision import stats
from saebench_vision.errors import ResultsError
from saebench_vision.items import load_item_values, save_item_values
from saebench_vision.sparsity import (
    SparsityError,
    best_within_budget,
    interpolate_log_l0,
    pareto_front,
    parse_l0_list,
)

# -- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_is_the_percentile_of_resampled_means_drawn_with_the_seed():
    values = np.random.default_rng(5).normal(size=100)  # continuous: resampled item by item
    iv = stats.bootstrap_mean(values, resamples=200, level=0.9, seed=7)
    # Independent derivation: the same generator, one resample at a time.
    rng = np.random.default_rng(7)
    means = [values[rng.integers(0, len(values), size=len(values))].mean() for _ in range(200)]
    lo, hi = np.quantile(means, [0.05, 0.95])
    assert iv.value == pytest.approx(values.mean())
    assert (iv.low, iv.high) == (pytest.approx(lo), pytest.approx(hi))
    assert "90% percentile bootstrap over 100 test items (200 resamples, seed 7)" == iv.over
    # Seeded: the same call gives the same interval.
    assert stats.bootstrap_mean(values, resamples=200, level=0.9, seed=7) == iv


def test_bootstrap_of_0_1_outcomes_has_the_exact_binomial_distribution():
    # The mean of a resample of n 0/1 outcomes with success rate p is Binomial(n, p) / n, so the
    # percentile interval converges to the binomial quantiles (hand-derivable, here scipy's).
    n, k = 400, 284
    values = np.r_[np.ones(k), np.zeros(n - k)]
    iv = stats.bootstrap_mean(values, resamples=40000, seed=3)
    lo, hi = scipy.stats.binom.ppf([0.025, 0.975], n, k / n) / n
    assert iv.low == pytest.approx(lo, abs=1.01 / n)
    assert iv.high == pytest.approx(hi, abs=1.01 / n)
    # At ImageNet scale this is as cheap as at 400 items.
    big = stats.bootstrap_mean(np.r_[np.ones(35000), np.zeros(15000)], resamples=1000)
    assert big.low < 0.7 < big.high and "over 50000" in big.over


def test_very_many_continuous_items_use_the_normal_limit_and_say_so():
    values = np.random.default_rng(0).exponential(size=2000)
    iv = stats.bootstrap_mean(values, max_items=1000)
    half = scipy.stats.norm.ppf(0.975) * values.std(ddof=1) / np.sqrt(2000)
    assert (iv.low, iv.high) == (
        pytest.approx(values.mean() - half),
        pytest.approx(values.mean() + half),
    )
    assert iv.over == "95% normal approximation of the bootstrap over 2000 test items"
    boot = stats.bootstrap_mean(values, max_items=None, resamples=4000)
    assert boot.low == pytest.approx(iv.low, abs=0.1 * half) and boot.high == pytest.approx(
        iv.high, abs=0.1 * half
    )


def test_bootstrap_matches_scipy_percentile_interval():
    rng = np.random.default_rng(3)
    values = rng.exponential(size=400)
    ours = stats.bootstrap_mean(values, resamples=20000, seed=1)
    ref = scipy.stats.bootstrap(
        (values,), np.mean, n_resamples=20000, method="percentile", random_state=2
    ).confidence_interval
    # Two independent Monte Carlo estimates of the same quantiles.
    width = ref.high - ref.low
    assert ours.low == pytest.approx(ref.low, abs=0.03 * width)
    assert ours.high == pytest.approx(ref.high, abs=0.03 * width)


def test_bootstrap_memory_is_chunked_and_result_independent_of_chunking(monkeypatch):
    values = np.arange(100, dtype=float)  # more levels than MAX_LEVELS: index resampling
    a = stats.bootstrap_mean(values, resamples=300, seed=0)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 60)  # one resample per chunk
    assert stats.bootstrap_mean(values, resamples=300, seed=0) == a


def test_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError):
        stats.bootstrap_mean([])
    with pytest.raises(ValueError):
        stats.bootstrap_mean([1.0, 2.0], level=1.5)


# -- paired tests -----------------------------------------------------------------------------


def test_mcnemar_exact_matches_a_binomial_test_on_discordant_pairs():
    rng = np.random.default_rng(0)
    a = (rng.random(300) < 0.72).astype(float)
    b = np.where(rng.random(300) < 0.85, a, 1 - a)
    n01 = int(((a == 1) & (b == 0)).sum())
    n10 = int(((a == 0) & (b == 1)).sum())
    expected = scipy.stats.binomtest(n01, n01 + n10, 0.5).pvalue
    assert stats.mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-9)
    # Hand value: 1 discordant pair in each direction -> p = 1; 5 vs 0 -> 2 * 0.5**5.
    assert stats.mcnemar_exact([1, 0], [0, 1]) == 1.0
    assert stats.mcnemar_exact([1] * 5, [0] * 5) == pytest.approx(2 * 0.5**5)


def test_paired_t_matches_scipy_ttest_rel():
    rng = np.random.default_rng(1)
    a = rng.normal(size=40)
    b = a + rng.normal(0.2, 1.0, size=40)
    assert stats.paired_t(a, b) == pytest.approx(scipy.stats.ttest_rel(a, b).pvalue, rel=1e-8)


def test_paired_bootstrap_picks_the_test_by_data_and_resamples_items_jointly():
    a = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1] * 10, dtype=float)
    b = np.array([1, 0, 1, 0, 1, 0, 0, 1, 0, 1] * 10, dtype=float)
    cmp = stats.paired_bootstrap(a, b, resamples=500, seed=0)
    assert cmp.test == "exact McNemar"
    assert cmp.difference.value == pytest.approx(0.3)
    # Joint resampling = bootstrap of the item-wise differences with the same seed.
    same = stats.bootstrap_mean(a - b, resamples=500, seed=0)
    assert (cmp.difference.low, cmp.difference.high) == (same.low, same.high)
    assert "paired bootstrap over 100" in cmp.difference.over
    cont = stats.paired_bootstrap(a + 0.5, b, resamples=50)
    assert cont.test == "paired t"
    with pytest.raises(ValueError):
        stats.paired_bootstrap([1.0, 2.0], [1.0])


def test_seed_interval_is_student_t():
    values = [0.70, 0.74, 0.72]
    iv = stats.seed_interval(values)
    assert iv is not None
    half = scipy.stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert (iv.low, iv.high) == (pytest.approx(0.72 - half), pytest.approx(0.72 + half))
    assert iv.over == "95% Student t over 3 seeds"
    assert stats.seed_interval([0.5]) is None


def test_stderr_interval_uses_the_normal_quantile():
    iv = stats.stderr_interval(0.5, 0.01)
    z = scipy.stats.norm.ppf(0.975)
    assert iv.high - 0.5 == pytest.approx(z * 0.01, rel=1e-9)


# -- matched sparsity -------------------------------------------------------------------------


def test_interpolation_is_linear_in_log_l0_and_never_extrapolates():
    l0 = [8, 32, 128]
    mse = [0.4, 0.2, 0.1]
    # L0 = 16 is halfway between 8 and 32 in log2: the value is halfway, 0.3 (hand value).
    # L0 = 64 likewise halfway between 0.2 and 0.1. Endpoints are measured values.
    got = interpolate_log_l0(l0, mse, [16, 64, 8, 128, 4, 256, 20])
    assert got[:4] == [pytest.approx(0.3), pytest.approx(0.15), 0.4, 0.1]
    assert math.isnan(got[4]) and math.isnan(got[5])
    # 20: fraction log(20/8)/log(4) of the way from 0.4 to 0.2.
    t = math.log(20 / 8) / math.log(4)
    assert got[6] == pytest.approx(0.4 + t * (0.2 - 0.4))


def test_interpolation_ignores_bad_points_and_averages_ties():
    got = interpolate_log_l0([10, 10, 0, float("nan"), 100], [1.0, 3.0, 9.0, 9.0, 4.0], [10, 100])
    assert got == [pytest.approx(2.0), pytest.approx(4.0)]
    assert math.isnan(interpolate_log_l0([], [], [5])[0])


def test_best_within_budget_and_pareto_front():
    l0 = [5, 20, 40, 90]
    acc = [0.5, 0.7, 0.65, 0.8]
    assert best_within_budget(l0, acc, 50, True, ["a", "b", "c", "d"]) == (0.7, 20.0, "b")
    assert best_within_budget(l0, acc, 4, True) is None
    assert best_within_budget(l0, [4, 2, 3, 1], 50, False)[0] == 2
    fx, fy = pareto_front(l0, acc, True)
    assert fx.tolist() == [5, 20, 90] and fy.tolist() == [0.5, 0.7, 0.8]


def test_l0_lists_are_checked():
    assert parse_l0_list("16, 32,64") == [16.0, 32.0, 64.0]
    for bad in ("a,b", "0", "-3", ""):
        with pytest.raises(SparsityError):
            parse_l0_list(bad)
    assert parse_l0_list("64", "--l0-budget", single=True) == [64.0]
    with pytest.raises(SparsityError, match="one L0 value, not 2"):
        parse_l0_list("16,32", "--l0-budget", single=True)


# -- per-item files ---------------------------------------------------------------------------


def test_item_values_round_trip_group_rows_into_items_and_refuse_mismatches(tmp_path):
    extra = save_item_values(
        tmp_path, "acc/val", [1.0, 0.0, 1.0, 1.0], items=[0, 0, 1, 1], pairing="k1"
    )
    info = extra["items"]
    assert info["n"] == 4 and info["pairing"] == "k1"
    got = load_item_values(tmp_path / info["file"], expect_n=4)
    assert got.values.tolist() == [0.5, 1.0]  # rows of one item averaged
    assert got.pairing == "k1"
    with pytest.raises(ResultsError, match="n=5"):
        load_item_values(tmp_path / info["file"], expect_n=5)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ResultsError, match="unreadable"):
        load_item_values(tmp_path / "broken.npz")
    assert not list(tmp_path.glob(".*tmp*"))
