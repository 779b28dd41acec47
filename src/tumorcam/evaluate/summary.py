"""The per-metric summaries of the evaluation JSON files and their multiple-testing adjustment.

`metric_summary` summarises one metric of one method: the mean of patient means with its cluster
bootstrap CI, the patient-level mean curve (for curve metrics), and one `paired_comparison` per
reference map ("vs_random", "vs_mask"). `adjust_file` then adjusts every comparison of a file:

- family "primary": the `vs_random` and `vs_mask` tests of deletion and insertion of the one
  pre-registered row (method, target, layer, baseline of `primary`, trained model, not times_gt):
  is the map better than random, and does it say more than the predicted mask? Holm over these 4;
- family "exploratory": every other comparison of the file, one Holm over all of them.

Each comparison's `verdict` is then recomputed from its `p_adjusted` (see `stats.verdict`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from tumorcam.evaluate.stats import cluster_bootstrap_ci, holm, paired_comparison, verdict

PRIMARY, EXPLORATORY = "primary", "exploratory"
PRIMARY_METRICS = ("deletion", "insertion")
PRIMARY_KEYS = ("method", "target", "layer", "baseline")
PRIMARY_COMPARISONS = ("vs_random", "vs_mask")


def finite_list(values: np.ndarray) -> list[float | None]:
    """Floats for JSON, None where a value is NaN or infinite."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).ravel()]


def mean_curve(curves: np.ndarray) -> np.ndarray:
    """Mean over rows (axis 0) of curves (N, K+1), ignoring NaN; NaN where every row is NaN."""
    curves = np.asarray(curves, dtype=np.float64)
    if curves.ndim != 2:
        raise ValueError(f"curves must be (N, K+1), got shape {curves.shape}")
    finite = np.isfinite(curves)
    counts = finite.sum(axis=0)
    return np.where(counts > 0, np.where(finite, curves, 0).sum(axis=0) / np.maximum(counts, 1), np.nan)


def patient_mean_curve(curves: np.ndarray, patient_ids: np.ndarray) -> np.ndarray:
    """Mean over patients of each patient's mean curve (both NaN-aware), so each patient counts once;
    its trapezoid area is the mean of the patients' mean AUCs when no point is NaN."""
    curves = np.asarray(curves, dtype=np.float64)
    ids = np.asarray(patient_ids).ravel()
    if curves.ndim != 2 or curves.shape[0] != ids.size:
        raise ValueError(f"curves {curves.shape} need one row per patient id ({ids.size})")
    if ids.size == 0:
        return np.full(curves.shape[1], np.nan)
    return mean_curve(np.stack([mean_curve(curves[ids == pid]) for pid in np.unique(ids)]))


def metric_summary(values: np.ndarray, reference_values_by_name: Mapping[str, np.ndarray | None],
                   patient_ids: np.ndarray, *, lower_is_better: bool, test: str = "wilcoxon",
                   resamples: int = 1000, seed: int = 0, curves: np.ndarray | None = None,
                   alpha: float = 0.05, level: float = 0.95) -> dict[str, Any]:
    """One metric of one method: `cluster_bootstrap_ci` of its per-slice `values`, "curve_mean"
    (`patient_mean_curve` of `curves` (N, K+1), only when given), and for each reference
    ("random", "mask": per-slice values of the reference map on the same slices, or None) the key
    "vs_<name>" (a name already starting with "vs_" is kept) = `paired_comparison` or None.
    """
    summary = cluster_bootstrap_ci(values, patient_ids, resamples=resamples, level=level, seed=seed)
    if curves is not None:
        curves = np.asarray(curves, dtype=np.float64)
        if curves.ndim != 2 or curves.shape[0] != np.asarray(values).size:
            raise ValueError(f"curves {curves.shape} need one row per value ({np.asarray(values).size})")
        summary["curve_mean"] = finite_list(patient_mean_curve(curves, patient_ids))
    for name, reference in reference_values_by_name.items():
        key = name if name.startswith("vs_") else f"vs_{name}"
        summary[key] = None if reference is None else paired_comparison(
            values, reference, patient_ids, lower_is_better=lower_is_better, test=test, alpha=alpha,
            resamples=resamples, level=level, seed=seed)
    return summary


def is_primary_row(row: Mapping[str, Any], primary: Mapping[str, Any]) -> bool:
    """The row of the pre-registered comparison: method, target, layer and baseline as in `primary`,
    the trained model, not multiplied by the ground truth."""
    return (all(row.get(key) == primary.get(key) for key in PRIMARY_KEYS)
            and row.get("model", "trained") == "trained" and not row.get("times_gt", False))


def adjust_file(rows: list[dict[str, Any]], metrics: Iterable[str], *, primary: Mapping[str, Any] | None,
                alpha: float = 0.05) -> None:
    """Holm-adjust every comparison (`vs_random`, `vs_mask`) of `metrics` in `rows`, in place.

    The primary row (`is_primary_row`; none when `primary` is None or no row matches) gives
    family "primary": its `vs_random` and `vs_mask` of deletion and insertion, Holm over these
    four (`PRIMARY_COMPARISONS`). Every other
    comparison is family "exploratory", one Holm over all of them. Writes `p_adjusted` and
    `family` and sets `verdict` from `p_adjusted` at `alpha`. Two rows matching `primary` is an error.
    """
    metrics = list(metrics)
    primary_rows = [i for i, row in enumerate(rows) if primary is not None and is_primary_row(row, primary)]
    if len(primary_rows) > 1:
        raise ValueError(f"primary {dict(primary or {})} matches {len(primary_rows)} rows; it must name one")
    families: dict[str, list[dict[str, Any]]] = {PRIMARY: [], EXPLORATORY: []}
    for i, row in enumerate(rows):
        for metric in metrics:
            summary = row.get(metric)
            if not isinstance(summary, dict):
                continue
            for key in PRIMARY_COMPARISONS:  # the comparisons of every row; the primary row's are the family
                comparison = summary.get(key)
                if not isinstance(comparison, dict):
                    continue
                is_primary = i in primary_rows and metric in PRIMARY_METRICS
                families[PRIMARY if is_primary else EXPLORATORY].append(comparison)
    for comparison in families[PRIMARY] + families[EXPLORATORY]:
        if "lower_is_better" not in comparison:
            raise ValueError("rows: a comparison without `lower_is_better`; make it with `paired_comparison`")
    for family, comparisons in families.items():
        for comparison, p_adjusted in zip(comparisons, holm([c.get("p_value") for c in comparisons]), strict=True):
            comparison["p_adjusted"] = p_adjusted
            comparison["family"] = family
            n = comparison.get("n_patients", comparison.get("n_pairs"))
            comparison["verdict"] = verdict(p_adjusted, comparison.get("estimate"), int(n or 0),
                                            lower_is_better=bool(comparison["lower_is_better"]), alpha=alpha)
