"""Summary statistics for per-slice scores: bootstrap confidence interval, paired Wilcoxon test."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats


def bootstrap_ci(values: np.ndarray, *, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Mean of `values` (NaN dropped) with a percentile bootstrap CI.

    The mean is resampled `resamples` times (slices drawn with replacement); the CI is the
    ((1-level)/2, (1+level)/2) quantiles of those means. One value gives a zero-width interval;
    none gives nulls. Returns {"mean", "ci_low", "ci_high", "n"}.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return {"mean": float(x.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(x.size)}


def wilcoxon_paired(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Wilcoxon signed-rank test of the paired differences a - b (scipy.stats.wilcoxon, two-sided).

    Pairs with a NaN are dropped. `mean_difference` is mean(a - b) and `share_a_lower` the share
    of pairs with a < b (`share_a_higher`: a > b). With fewer than 2 non-zero differences the test is undefined:
    statistic and p_value are null.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    diff = a[keep] - b[keep]
    out: dict[str, Any] = {
        "n": int(diff.size),
        "mean_difference": float(diff.mean()) if diff.size else None,
        "share_a_lower": float((diff < 0).mean()) if diff.size else None,
        "share_a_higher": float((diff > 0).mean()) if diff.size else None,
        "statistic": None,
        "p_value": None,
    }
    if np.count_nonzero(diff) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # scipy's small-sample notes
            result = stats.wilcoxon(diff)
        out["statistic"] = float(result.statistic)
        out["p_value"] = float(result.pvalue)
    return out
