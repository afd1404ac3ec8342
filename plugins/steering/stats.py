"""The paired t-test of Table 3, written out so every number it reports is visible."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of ``a − b`` (two-sided), with a ``confidence`` interval of the mean."""

    n: int
    mean_difference: float
    stderr: float
    ci_low: float
    ci_high: float
    t: float
    p_value: float
    effect_size: float
    """Cohen's d_z: the mean difference over the standard deviation of the differences."""
    confidence: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_ttest(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> PairedTest:
    """Paired t-test of ``a`` against ``b`` (same length, at least 2 pairs).

    ``t = mean(d) / (sd(d) / sqrt(n))`` with ``d = a − b`` and the sample standard deviation;
    the p-value is two-sided from Student's t with ``n − 1`` degrees of freedom; the interval
    is ``mean ± t_{(1+confidence)/2, n−1} · sd / sqrt(n)``. Identical pairs give t = 0, p = 1.
    """
    from scipy import special

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(
            f"paired_ttest needs two equal-length 1-d samples of 2+ pairs, got {x.shape} and {y.shape}"
        )
    d = x - y
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    df = n - 1
    # Student's t quantile by inverting the regularised incomplete beta function.
    q = (1 + confidence) / 2
    t_crit = float(special.stdtrit(df, q))
    if se == 0:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0 else 0.0
    else:
        t = mean / se
        p = float(2 * special.stdtr(df, -abs(t)))
    effect = 0.0 if sd == 0 else mean / sd
    return PairedTest(
        n=n,
        mean_difference=mean,
        stderr=se,
        ci_low=mean - t_crit * se,
        ci_high=mean + t_crit * se,
        t=t,
        p_value=p,
        effect_size=effect,
        confidence=confidence,
    )
