"""Intervals and paired tests that say what they are over.

* :func:`bootstrap_mean` - a seeded percentile bootstrap of the mean over test items: resample
  the items with replacement ``resamples`` times, take the ``(1-level)/2`` and ``(1+level)/2``
  quantiles of the resampled means (through level counts for discrete values, and by the
  normal limit for very many continuous ones; see :func:`_resampled_means`). Percentile rather than BCa because it is transparent and
  matches scipy's ``method="percentile"``; for the binary and near-normal means it is used on
  they agree closely.
* :func:`paired_bootstrap` - the same on the item-wise difference of two rows scored on the same
  items, plus a paired test: the exact McNemar test (a two-sided binomial test on the discordant
  pairs) when both rows are 0/1 per item (accuracy), a paired Student t-test otherwise.
* :func:`seed_interval` - the mean and Student-t interval over seeds (as the leaderboard does).

Every result carries ``over``, a phrase such as "95% percentile bootstrap over 270 test items
(1000 resamples, seed 0)" that tables print beside the interval. Resampling runs in chunks, so
memory stays bounded (about 8 MB) however many items and resamples there are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
_CHUNK_ELEMENTS = 1_000_000
MAX_LEVELS = 64
"""Values with at most this many distinct levels are resampled through their level counts."""
DEFAULT_MAX_ITEMS = 100_000
"""Beyond this many items with continuous values, the bootstrap of a mean is replaced by its
normal limit (see :func:`bootstrap_mean`)."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval ``[low, high]`` and what it is over."""

    value: float
    low: float
    high: float
    over: str

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "over": self.over}


@dataclass(frozen=True)
class PairedComparison:
    """Mean difference ``a - b`` over shared items, its bootstrap interval and a paired test."""

    difference: Interval
    test: str
    p_value: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.difference.as_dict(),
            "test": self.test,
            "p_value": self.p_value,
            "n": self.n,
        }


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of ``resamples`` bootstrap samples of ``values``; same seed, same means.

    Values with at most ``MAX_LEVELS`` distinct levels (0/1 correctness, paired differences in
    {-1, 0, 1}, integer L0s) draw each resample's level counts from a multinomial, which is
    exactly the distribution of the counts in a resample with replacement, in O(levels) per
    resample instead of O(items): ImageNet-scale splits cost nothing. Other values are
    resampled index by index, in chunks of bounded memory.
    """
    n = len(values)
    rng = np.random.default_rng(seed)
    levels, counts = np.unique(values, return_counts=True)
    if len(levels) <= MAX_LEVELS:
        draws = rng.multinomial(n, counts / n, size=resamples)
        return (draws @ levels) / n
    out = np.empty(resamples, dtype=np.float64)
    per_chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for lo in range(0, resamples, per_chunk):
        hi = min(resamples, lo + per_chunk)
        idx = rng.integers(0, n, size=(hi - lo, n))
        out[lo:hi] = values[idx].mean(axis=1)
    return out


def _check(values: Any, level: float, resamples: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(arr) == 0:
        raise ValueError("no values to resample")
    if not 0 < level < 1:
        raise ValueError(f"confidence level {level} is not between 0 and 1")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    return arr


def bootstrap_mean(
    values: Any,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    over: str = "test items",
    max_items: int | None = DEFAULT_MAX_ITEMS,
) -> Interval:
    """Percentile-bootstrap interval of the mean of ``values`` (one per test item).

    With more than ``max_items`` items of continuous values (more than ``MAX_LEVELS`` distinct
    levels), resampling would cost ``resamples x items`` draws for an interval the central
    limit theorem already gives to within Monte-Carlo error: the interval is then the normal
    one, mean ± z sd / sqrt(n), and says so ("normal approximation of the bootstrap").
    """
    arr = _check(values, level, resamples)
    if max_items is not None and len(arr) > max_items and len(np.unique(arr)) > MAX_LEVELS:
        z = _normal_quantile((1 + level) / 2)
        half = z * float(arr.std(ddof=1)) / math.sqrt(len(arr))
        mean = float(arr.mean())
        return Interval(
            mean,
            mean - half,
            mean + half,
            f"{level:.0%} normal approximation of the bootstrap over {len(arr)} {over}",
        )
    means = _resampled_means(arr, resamples, seed)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(
        float(arr.mean()),
        float(low),
        float(high),
        f"{level:.0%} percentile bootstrap over {len(arr)} {over} ({resamples} resamples, seed {seed})",
    )


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes (binomial test on discordant pairs)."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    n01 = int(np.sum(a & ~b))
    n10 = int(np.sum(~a & b))
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    # P(X <= k) for X ~ Binomial(n, 1/2), doubled; exact with integer arithmetic.
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return float(min(1.0, 2 * tail))


def paired_t(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of the paired Student t-test of mean(a - b) = 0."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    if n < 2:
        return float("nan")
    sd = float(d.std(ddof=1))
    mean = float(d.mean())
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    t = mean / (sd / math.sqrt(n))
    return _student_t_sf2(abs(t), n - 1)


def _student_t_sf2(t: float, dof: int) -> float:
    """Two-sided tail 2 P(T > t) of Student's t, via the regularised incomplete beta function."""
    x = dof / (dof + t * t)
    return float(min(1.0, _betainc(dof / 2, 0.5, x)))


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by its continued fraction (Numerical Recipes 6.4)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return front * h / a


def paired_bootstrap(
    a: Any,
    b: Any,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    over: str = "test items",
    max_items: int | None = DEFAULT_MAX_ITEMS,
) -> PairedComparison:
    """Difference ``mean(a) - mean(b)`` of two rows on the same items, resampling items jointly."""
    x = _check(a, level, resamples)
    y = _check(b, level, resamples)
    if len(x) != len(y):
        raise ValueError(f"paired rows need the same items: {len(x)} vs {len(y)} values")
    diff = bootstrap_mean(
        x - y, resamples=resamples, level=level, seed=seed, over=over, max_items=max_items
    )
    binary = bool(np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all())
    if binary:
        test, p = "exact McNemar", mcnemar_exact(x, y)
    else:
        test, p = "paired t", paired_t(x, y)
    over_text = diff.over.replace("bootstrap over", "paired bootstrap over", 1)
    over_text = over_text.replace("of the bootstrap over", "of the paired bootstrap over", 1)
    return PairedComparison(Interval(diff.value, diff.low, diff.high, over_text), test, p, len(x))


def seed_interval(values: Any, *, level: float = DEFAULT_LEVEL) -> Interval | None:
    """Mean and Student-t interval over seeds; None with fewer than two seeds."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if len(arr) < 2:
        return None
    mean = float(arr.mean())
    half = _t_quantile((1 + level) / 2, len(arr) - 1) * float(arr.std(ddof=1)) / math.sqrt(len(arr))
    return Interval(mean, mean - half, mean + half, f"{level:.0%} Student t over {len(arr)} seeds")


def _t_quantile(q: float, dof: int) -> float:
    """Quantile of Student's t by bisection on the two-sided tail (no scipy at run time)."""
    target = 2 * (1 - q)
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if _student_t_sf2(mid, dof) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def stderr_interval(
    value: float, stderr: float, *, level: float = DEFAULT_LEVEL, n: int | None = None
) -> Interval:
    """``value ± z * stderr`` from an evaluator's standard error (normal approximation)."""
    z = _normal_quantile((1 + level) / 2)
    over = f"±{z:.2f} standard errors reported by the evaluator"
    if n:
        over += f" over {n} rows"
    return Interval(value, value - z * stderr, value + z * stderr, over)


def _normal_quantile(q: float) -> float:
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
