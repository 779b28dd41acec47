"""Statistics of per-slice scores with the patient as the unit.

Slices of one patient are not independent (same tumour, same scanner, neighbouring cuts), so
every interval and test here works on patient means: a patient's value is the mean of its finite
slice values (NaN slices dropped; a patient with none drops out), and each patient counts once.

- `cluster_bootstrap_ci`: mean of the patient means with a percentile cluster bootstrap (patients
  drawn with replacement, the statistic = mean of the drawn patients' means).
- `paired_comparison`: a method against a reference map on the same slices; the per-patient mean
  difference d = mean(values - reference) enters a two-sided exact test, `wilcoxon_test`
  (signed-rank, estimate = Hodges-Lehmann) or `sign_test` (binomial, estimate = median). Patients
  whose differences are all 0 (or all but one) show no difference: p = 1, "not shown to differ".
- `estimate_ci`: a percentile bootstrap CI over patients of a test's own estimate (the effect size
  printed beside every verdict).
- `holm`: Holm-Bonferroni adjustment of a family of p-values.
- `verdict`: "better" / "worse" when p < alpha, in the direction of the test's own estimate;
  "not shown to differ" otherwise; "undetermined" with fewer than 2 usable pairs.

`bootstrap_ci` (slices as the unit) remains for the segmentation metrics of `tumorcam.evaluate.metrics`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats

EXACT_MAX_N = 50  # the Wilcoxon test is exact up to this many non-zero differences without ties
PERMUTATION_MAX_N = 13  # with tied |d|: all 2^n sign patterns up to this many (8192)
BETTER, WORSE, NOT_SHOWN, UNDETERMINED = "better", "worse", "not shown to differ", "undetermined"
TESTS = ("wilcoxon", "sign")


def patient_means(values: np.ndarray, patient_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-patient mean of the finite `values` (one per slice) and the patient ids, sorted.

    A patient whose slices are all NaN (or infinite) is left out of both arrays.
    """
    x, ids = _per_slice(values, patient_ids)
    keep = np.isfinite(x)
    x, ids = x[keep], ids[keep]
    if x.size == 0:
        return np.zeros(0, dtype=np.float64), ids[:0]
    unique, inverse = np.unique(ids, return_inverse=True)
    sums = np.bincount(inverse, weights=x, minlength=unique.size)
    counts = np.bincount(inverse, minlength=unique.size)
    return sums / counts, unique


def cluster_bootstrap_ci(values: np.ndarray, patient_ids: np.ndarray, *, resamples: int = 1000,
                         level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Mean of the patient means of `values` with a percentile cluster-bootstrap CI.

    With m_1..m_P the patient means, mean = (1/P) sum_p m_p. Each of the `resamples` draws takes
    P patients with replacement and computes the mean of their means; the CI is the
    ((1-level)/2, (1+level)/2) quantiles of those draws. One patient gives a zero-width interval;
    none gives nulls. Returns {"mean", "ci_low", "ci_high", "unit": "patient", "n_patients", "n_slices"}
    (n_slices: the finite slice values that entered).
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x, _ = _per_slice(values, patient_ids)
    means, _ = patient_means(values, patient_ids)
    out: dict[str, Any] = {"mean": None, "ci_low": None, "ci_high": None, "unit": "patient",
                           "n_patients": int(means.size), "n_slices": int(np.isfinite(x).sum())}
    if means.size == 0:
        return out
    rng = np.random.default_rng(seed)
    draws = means[rng.integers(0, means.size, size=(resamples, means.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    out.update(mean=float(means.mean()), ci_low=float(low), ci_high=float(high))
    return out


def pooled_cluster_bootstrap_ci(values: np.ndarray, patient_ids: np.ndarray, *, resamples: int = 1000,
                                level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Mean over slices of `values` with a percentile CI from a cluster bootstrap over patients.

    Each draw takes P patients with replacement and computes the pooled mean of their slices,
    sum_p S_p / sum_p n_p (S_p, n_p: a drawn patient's sum and count of finite values), so slices
    of one patient are resampled together. Returns {"mean", "ci_low", "ci_high", "n" (slices),
    "n_patients", "unit": "patient"}; nulls when no value is finite.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    x, ids = _per_slice(values, patient_ids)
    keep = np.isfinite(x)
    x, ids = x[keep], ids[keep]
    out: dict[str, Any] = {"mean": None, "ci_low": None, "ci_high": None, "n": int(x.size), "n_patients": 0,
                           "unit": "patient"}
    if x.size == 0:
        return out
    unique, inverse = np.unique(ids, return_inverse=True)
    sums = np.bincount(inverse, weights=x, minlength=unique.size)
    counts = np.bincount(inverse, minlength=unique.size).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, unique.size, size=(resamples, unique.size))
    pooled = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(pooled, [tail, 1.0 - tail])
    out.update(mean=float(x.mean()), ci_low=float(low), ci_high=float(high), n_patients=int(unique.size))
    return out


def wilcoxon_test(differences: np.ndarray) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of `differences` (one per patient) against 0.

    NaN and zero differences are dropped (Wilcoxon's "wilcox" zero method); n is what remains.
    With n <= 50 and no tied |d| the p-value is exact (scipy.stats.wilcoxon, method "exact"); with
    tied |d| and n <= 13 it is the exact sign-flip permutation p-value of the mid-rank statistic
    (all 2^n sign patterns, scipy's PermutationMethod; method "permutation"), since the normal
    approximation is anti-conservative there (6 equal differences: 0.014 instead of 2/64);
    otherwise it is the normal approximation with tie correction (method "asymptotic"). The method
    is chosen here, not by scipy's "auto" (whose choice differs between scipy versions), and reported.
    The estimate is the Hodges-Lehmann location of the tested differences: the median of the
    Walsh averages (d_i + d_j) / 2 over i <= j. With n < 2 the test is undefined: nulls.
    Returns {"test": "wilcoxon", "method", "statistic" (min(W+, W-)), "p_value", "n", "n_zero",
    "hodges_lehmann", "estimate"}.
    """
    d, n_zero = _nonzero(differences)
    hl = hodges_lehmann(d) if d.size else None
    out: dict[str, Any] = {"test": "wilcoxon", "method": None, "statistic": None, "p_value": None, "n": int(d.size),
                           "n_zero": n_zero, "hodges_lehmann": hl, "estimate": hl}
    if d.size < 2:
        return _all_but_one_tied(out, d)
    ties = np.unique(np.abs(d)).size < d.size
    if not ties and d.size <= EXACT_MAX_N:
        method, how = "exact", "exact"
    elif ties and d.size <= PERMUTATION_MAX_N:
        method, how = "permutation", stats.PermutationMethod(n_resamples=2**PERMUTATION_MAX_N)
    else:
        method, how = "asymptotic", "asymptotic"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scipy's small-sample notes
        result = stats.wilcoxon(d, zero_method="wilcox", correction=False, alternative="two-sided", method=how)
    out.update(method=method, statistic=float(result.statistic), p_value=float(result.pvalue))
    return out


def hodges_lehmann(differences: np.ndarray) -> float:
    """Median of the Walsh averages (d_i + d_j) / 2, i <= j, of finite `differences`."""
    d = np.asarray(differences, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0:
        raise ValueError("differences: no finite value for a Hodges-Lehmann estimate")
    i, j = np.triu_indices(d.size)
    return float(np.median((d[i] + d[j]) / 2.0))


def sign_test(differences: np.ndarray) -> dict[str, Any]:
    """Two-sided exact sign test of `differences` (one per patient) against 0.

    NaN and zero differences are dropped; with n+ positive of the n remaining, p is the two-sided
    binomial p of n+ ~ Bin(n, 1/2) (scipy.stats.binomtest). The estimate is the median of the
    tested differences, whose sign is that of n+ - n-. With n < 2: nulls.
    Returns {"test": "sign", "method": "exact", "statistic" (n+), "p_value", "n", "n_zero",
    "n_positive", "n_negative", "median", "estimate"}.
    """
    d, n_zero = _nonzero(differences)
    median = float(np.median(d)) if d.size else None
    n_pos = int((d > 0).sum())
    out: dict[str, Any] = {"test": "sign", "method": None, "statistic": None, "p_value": None, "n": int(d.size),
                           "n_zero": n_zero, "n_positive": n_pos, "n_negative": int(d.size) - n_pos,
                           "median": median, "estimate": median}
    if d.size < 2:
        return _all_but_one_tied(out, d)
    result = stats.binomtest(n_pos, int(d.size), 0.5, alternative="two-sided")
    out.update(method="exact", statistic=float(n_pos), p_value=float(result.pvalue))
    return out


def estimate_ci(differences: np.ndarray, test: str, *, resamples: int = 1000, level: float = 0.95,
                seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of a test's own estimate of the patient differences d_1..d_n.

    Each of `resamples` draws takes n patients' differences with replacement (zeros included, as
    drawn) and computes the estimate of the draw's non-zero values: Hodges-Lehmann (`test`
    "wilcoxon") or the median ("sign"), as `wilcoxon_test` and `sign_test` do; a draw of only zeros
    gives 0. The CI is the ((1-level)/2, (1+level)/2) quantiles of the draws. Fewer than 2 finite
    differences: (None, None). The draws are made in chunks so memory stays ~O(n^2) per chunk.
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    d = np.asarray(differences, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    if d.size < 2:
        return None, None
    draws = np.random.default_rng(seed).integers(0, d.size, size=(resamples, d.size))
    values = np.empty(resamples, dtype=np.float64)
    i, j = np.triu_indices(d.size)
    chunk = max(1, 2_000_000 // max(1, i.size))
    for start in range(0, resamples, chunk):
        sample = d[draws[start:start + chunk]]
        if test == "wilcoxon":
            walsh = (sample[:, i] + sample[:, j]) / 2.0
            nonzero = (sample[:, i] != 0) & (sample[:, j] != 0)
            values[start:start + chunk] = _masked_median(walsh, nonzero)
        else:
            values[start:start + chunk] = _masked_median(sample, sample != 0)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def _masked_median(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Median per row of `values` over the entries where `keep`; 0 for a row with none."""
    masked = np.where(keep, values, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
        out = np.nanmedian(masked, axis=1)
    return np.where(keep.any(axis=1), out, 0.0)


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni step-down adjustment, in the input order; None stays None and is not counted.

    With the m non-null p-values sorted p_(1) <= ... <= p_(m):
        p_adj_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))
    (the running maximum keeps the adjusted values in the order of the raw ones). Written here
    because scipy has no multiple-testing adjustment and statsmodels would be a heavy dependency
    for this one formula.
    """
    index = [i for i, p in enumerate(p_values) if p is not None]
    for i in index:
        p = p_values[i]
        if not 0.0 <= float(p) <= 1.0:  # type: ignore[arg-type]
            raise ValueError(f"p_values[{i}] = {p} is not a probability")
    out: list[float | None] = [None] * len(p_values)
    m = len(index)
    running = 0.0
    for rank, i in enumerate(sorted(index, key=lambda k: float(p_values[k]))):  # type: ignore[arg-type]
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


def verdict(p_value: float | None, estimate: float | None, n_pairs: int, *, lower_is_better: bool,
            alpha: float = 0.05) -> str:
    """"better" / "worse" when p_value < alpha, by the sign of the test's estimate (of values - reference)
    and `lower_is_better`; "not shown to differ" when p >= alpha or the estimate is 0; "undetermined"
    with fewer than 2 pairs (patients with a finite difference, ties included) or no p-value."""
    if n_pairs < 2 or p_value is None or estimate is None:
        return UNDETERMINED
    if p_value >= alpha or estimate == 0:
        return NOT_SHOWN
    return BETTER if (estimate < 0) == lower_is_better else WORSE


def paired_comparison(values: np.ndarray, reference: np.ndarray, patient_ids: np.ndarray, *,
                      lower_is_better: bool, test: str = "wilcoxon", alpha: float = 0.05, resamples: int = 1000,
                      level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """A method's per-slice `values` against a `reference` on the same slices, patient by patient.

    Slices where both are finite enter; each patient's difference is d_p = mean over its slices of
    (values - reference). `test` ("wilcoxon" or "sign") tests the d_p against 0 (zeros dropped); its
    estimate (Hodges-Lehmann or median of the tested d_p) gives the verdict's direction, never the mean.
    `p_adjusted` and `family` are None until `tumorcam.evaluate.summary.adjust_file` fills them and
    recomputes `verdict` from `p_adjusted`.
    The effect size: `estimate` with its `level` CI (`estimate_ci_low`, `estimate_ci_high`: the
    patient bootstrap of `estimate_ci`), and the plain mean of the patient differences (`mean_difference`).
    Returns {"test", "method", "statistic", "p_value", "p_adjusted", "family", "verdict", "n_pairs"
    (patients the test used), "n_patients" (patients with a difference, zeros included), "n_slices",
    "estimate", "estimate_ci_low", "estimate_ci_high", "mean_difference", "better_share" (share of the
    n_patients where the method is better), "lower_is_better"}.
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    b = np.asarray(reference, dtype=np.float64).ravel()
    if b.size != np.asarray(values).size:
        raise ValueError(f"reference has {b.size} values, values has {np.asarray(values).size}; "
                         "they must be the same slices")
    a, ids = _per_slice(values, patient_ids)
    keep = np.isfinite(a) & np.isfinite(b)
    diffs, _ = patient_means(np.where(keep, a - b, np.nan), ids)
    result = wilcoxon_test(diffs) if test == "wilcoxon" else sign_test(diffs)
    better = diffs < 0 if lower_is_better else diffs > 0
    low, high = estimate_ci(diffs, test, resamples=resamples, level=level, seed=seed)
    return {
        "test": test,
        "method": result["method"],
        "statistic": result["statistic"],
        "p_value": result["p_value"],
        "p_adjusted": None,
        "family": None,
        "verdict": verdict(result["p_value"], result["estimate"], int(diffs.size), lower_is_better=lower_is_better,
                           alpha=alpha),
        "n_pairs": result["n"],
        "n_patients": int(diffs.size),
        "n_slices": int(keep.sum()),
        "estimate": result["estimate"],
        "estimate_ci_low": low,
        "estimate_ci_high": high,
        "mean_difference": float(diffs.mean()) if diffs.size else None,
        "better_share": float(better.mean()) if diffs.size else None,
        "lower_is_better": bool(lower_is_better),
    }


def bootstrap_ci(values: np.ndarray, *, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Mean of `values` (NaN dropped) with a percentile bootstrap CI, the values as the unit.

    The mean is resampled `resamples` times (values drawn with replacement); the CI is the
    ((1-level)/2, (1+level)/2) quantiles of those means. One value gives a zero-width interval;
    none gives nulls. Returns {"mean", "ci_low", "ci_high", "n"}. For slices of patients use
    `cluster_bootstrap_ci`.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"mean": float(x.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(x.size)}


def _per_slice(values: np.ndarray, patient_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`values` as float64 and `patient_ids` as strings, both flat and of one length (one per slice)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    ids = np.asarray(patient_ids).astype(str).ravel()
    if x.size != ids.size:
        raise ValueError(f"patient_ids has {ids.size} entries for {x.size} values; give one patient id per slice")
    return x, ids


def _all_but_one_tied(out: dict[str, Any], d: np.ndarray) -> dict[str, Any]:
    """A test with fewer than 2 non-zero differences but at least 2 patients in all: the data show
    no difference to test, and the exact two-sided p of 0 or 1 non-zero pairs is 1 (method "tied");
    the estimate is the one non-zero difference or 0. With fewer than 2 patients: left undefined."""
    if d.size + out["n_zero"] < 2:
        return out
    estimate = float(d[0]) if d.size else 0.0
    out.update(method="tied", statistic=0.0, p_value=1.0, estimate=estimate)
    out["hodges_lehmann" if out["test"] == "wilcoxon" else "median"] = estimate
    return out


def _nonzero(differences: np.ndarray) -> tuple[np.ndarray, int]:
    """The finite non-zero `differences`, and how many finite ones were exactly zero."""
    d = np.asarray(differences, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    return d[d != 0], int((d == 0).sum())
