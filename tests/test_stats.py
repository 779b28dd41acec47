"""Patient-level statistics (evaluate/stats.py) and the evaluation summaries (evaluate/summary.py),
checked against scipy and hand-worked cases."""

from __future__ import annotations

import itertools

import copy

import numpy as np
import pytest
from scipy import stats as sps

from tumorcam.evaluate.stats import (
    bootstrap_ci,
    cluster_bootstrap_ci,
    hodges_lehmann,
    holm,
    paired_comparison,
    patient_means,
    sign_test,
    verdict,
    wilcoxon_test,
)
from tumorcam.evaluate.summary import adjust_file, finite_list, mean_curve, metric_summary, patient_mean_curve


# --- patient means and the cluster bootstrap ---------------------------------------------------------------------

def test_patient_means_drop_nan_slices_and_empty_patients() -> None:
    values = np.array([1.0, 3.0, np.nan, 10.0, np.nan, np.nan, 4.0])
    ids = np.array(["b", "b", "b", "a", "c", "c", "d"])
    means, pids = patient_means(values, ids)
    assert pids.tolist() == ["a", "b", "d"]  # sorted; c has no finite slice
    np.testing.assert_allclose(means, [10.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="patient_ids has 2 entries for 3 values"):
        patient_means(np.zeros(3), np.array([1, 2]))


def test_cluster_bootstrap_counts_each_patient_once() -> None:
    # patient a: 6 slices of 1.0, patient b: one slice of 0.0 -> mean of patient means 0.5, not 6/7
    values = np.array([1.0] * 6 + [0.0, np.nan])
    ids = np.array(["a"] * 6 + ["b", "c"])
    ci = cluster_bootstrap_ci(values, ids, resamples=500, seed=3)
    assert ci["mean"] == pytest.approx(0.5)
    assert (ci["unit"], ci["n_patients"], ci["n_slices"]) == ("patient", 2, 7)
    assert 0.0 <= ci["ci_low"] <= 0.5 <= ci["ci_high"] <= 1.0
    one = cluster_bootstrap_ci(np.array([0.4, 0.6, np.nan]), np.array([7, 7, 7]), resamples=100)
    assert (one["mean"], one["ci_low"], one["ci_high"], one["n_patients"], one["n_slices"]) == (
        pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5), 1, 2)
    none = cluster_bootstrap_ci(np.array([np.nan, np.nan]), np.array([1, 2]))
    assert (none["mean"], none["ci_low"], none["ci_high"], none["n_patients"], none["n_slices"]) == (None,) * 3 + (0, 0)
    with pytest.raises(ValueError, match="resamples"):
        cluster_bootstrap_ci(values, ids, resamples=0)


def test_cluster_bootstrap_widens_with_within_patient_correlation() -> None:
    """Same slice count and total variance: slices sharing a patient effect (ICC ~ 0.99) carry about
    as much information as one slice per patient, so the patient-level CI must be much wider than
    with independent slices, and wider than the slice-level bootstrap of the same correlated data."""
    rng = np.random.default_rng(0)
    n_patients, per_patient = 40, 6
    ids = np.repeat(np.arange(n_patients), per_patient)
    correlated = rng.normal(0, 1, n_patients)[ids] + rng.normal(0, 0.1, ids.size)
    independent = rng.normal(0, np.sqrt(1.01), ids.size)
    width = lambda ci: ci["ci_high"] - ci["ci_low"]  # noqa: E731
    wide = cluster_bootstrap_ci(correlated, ids, resamples=2000, seed=1)
    narrow = cluster_bootstrap_ci(independent, ids, resamples=2000, seed=1)
    naive = bootstrap_ci(correlated, resamples=2000, seed=1)
    assert (wide["n_patients"], wide["n_slices"]) == (40, 240)
    # expected ratio about sqrt(6) = 2.45: sd of a patient mean is ~1.0 vs ~0.41
    assert width(wide) > 1.8 * width(narrow)
    assert width(wide) > 1.8 * width(naive)
    se = np.std(patient_means(correlated, ids)[0], ddof=1) / np.sqrt(n_patients)
    assert width(wide) == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_slice_bootstrap_on_known_samples() -> None:
    constant = bootstrap_ci(np.array([0.4, 0.4, np.nan, 0.4]), resamples=100)
    assert constant == {"mean": pytest.approx(0.4), "ci_low": pytest.approx(0.4), "ci_high": pytest.approx(0.4), "n": 3}
    spread = bootstrap_ci(np.arange(100.0), resamples=2000, seed=1)
    assert spread["mean"] == 49.5 and 43 < spread["ci_low"] < 47 and 52 < spread["ci_high"] < 56  # +-1.96 * 2.9
    assert bootstrap_ci(np.array([np.nan]))["mean"] is None


# --- Wilcoxon, sign test, Hodges-Lehmann -----------------------------------------------------------------------

def test_wilcoxon_exact_small_n_by_hand_and_scipy() -> None:
    # n = 5, all positive: W+ = 15 is the single most extreme of 2^5 sign patterns -> p = 2 * 1/32
    result = wilcoxon_test(np.array([0.3, 1.2, 0.7, 2.5, 0.1]))
    assert (result["method"], result["n"], result["p_value"]) == ("exact", 5, pytest.approx(2 / 32))
    assert result["p_value"] == pytest.approx(sps.wilcoxon([0.3, 1.2, 0.7, 2.5, 0.1], method="exact").pvalue)
    # ranks 1..4 positive, rank 5 negative: W- = 5; #subsets of {1..5} with sum <= 5 is 10 -> p = 2 * 10/32
    mixed = wilcoxon_test(np.array([1.0, 2.0, 3.0, 4.0, -5.0]))
    assert (mixed["statistic"], mixed["p_value"]) == (5.0, pytest.approx(20 / 32))
    rng = np.random.default_rng(4)
    for n in (6, 12, 25, 50):
        d = rng.normal(0.3, 1, n)
        ours = wilcoxon_test(d)
        theirs = sps.wilcoxon(d, method="exact")
        assert ours["method"] == "exact"
        assert (ours["statistic"], ours["p_value"]) == (pytest.approx(theirs.statistic), pytest.approx(theirs.pvalue))


def test_wilcoxon_drops_zeros_and_goes_asymptotic_past_50_or_with_many_ties() -> None:
    d = np.array([0.0, 0.3, -0.2, 0.0, 0.9, 1.4, 0.5, np.nan])
    result = wilcoxon_test(d)
    assert (result["n"], result["n_zero"], result["method"]) == (5, 2, "exact")
    assert result["p_value"] == pytest.approx(sps.wilcoxon([0.3, -0.2, 0.9, 1.4, 0.5], method="exact").pvalue)
    large = np.random.default_rng(1).normal(0.2, 1, 60)
    result = wilcoxon_test(large)
    assert result["method"] == "asymptotic"
    assert result["p_value"] == pytest.approx(sps.wilcoxon(large, method="asymptotic", correction=False).pvalue)
    tied = np.tile([1.0, 1.0, -1.0, 2.0, 2.0, 3.0, 0.5], 2)  # 14 differences with ties
    result = wilcoxon_test(tied)
    assert result["method"] == "asymptotic"
    assert result["p_value"] == pytest.approx(sps.wilcoxon(tied, method="asymptotic", correction=False).pvalue)
    for too_few in (np.array([]), np.array([1.5])):
        result = wilcoxon_test(too_few)
        assert result["p_value"] is None and result["method"] is None
        assert result["n"] == too_few.size


def test_patients_without_a_difference_are_not_shown_to_differ_not_undetermined() -> None:
    """12 patients whose differences are all 0 (an untrained network's pointing game 0.0 against a
    random map's 0.0): nothing to test, p = 1 (the exact two-sided p of one non-zero pair is 2 x 1/2
    = 1 too), "not shown to differ" with 12 patients, not "undetermined"."""
    for test in (wilcoxon_test, sign_test):
        for ties in (np.zeros(12), np.array([0.0, 0.0, 2.0])):
            result = test(ties)
            assert (result["method"], result["p_value"]) == ("tied", 1.0)
            assert result["estimate"] == (2.0 if ties.any() else 0.0)
    assert sps.binomtest(1, 1).pvalue == 1.0 and sps.wilcoxon([2.0], method="exact").pvalue == 1.0
    ids = np.arange(12).astype(str)
    comparison = paired_comparison(np.zeros(12), np.zeros(12), ids, lower_is_better=False, resamples=50)
    assert (comparison["verdict"], comparison["n_pairs"], comparison["n_patients"]) == ("not shown to differ", 0, 12)
    one = paired_comparison(np.zeros(1), np.zeros(1), ids[:1], lower_is_better=False, resamples=50)
    assert one["verdict"] == "undetermined" and one["p_value"] is None


def test_wilcoxon_with_ties_and_small_n_enumerates_every_sign_pattern() -> None:
    """Tied |d| with n <= 13: the p-value of all 2^n sign flips of the mid-ranks, by hand; the normal
    approximation would be anti-conservative (six equal differences: 0.014, exactly 2/64)."""
    tied = np.array([1.0, 1.0, -1.0, 2.0, 2.0, 3.0, 0.5])
    ranks = sps.rankdata(np.abs(tied))
    observed = min(ranks[tied > 0].sum(), ranks[tied < 0].sum())
    signs = np.array(list(itertools.product([1, -1], repeat=tied.size)))
    positive = (signs > 0) @ ranks
    extreme = np.minimum(positive, ranks.sum() - positive) <= observed + 1e-9
    result = wilcoxon_test(tied)
    assert result["method"] == "permutation"
    assert result["p_value"] == pytest.approx(extreme.mean())
    equal = wilcoxon_test(np.ones(6))
    assert equal["p_value"] == pytest.approx(2 / 2**6)
    assert sps.wilcoxon(np.ones(6), method="asymptotic", correction=False).pvalue < 0.015


def test_hodges_lehmann_is_the_median_of_walsh_averages() -> None:
    d = np.array([1.0, 4.0, -2.0])
    # Walsh averages: 1, 4, -2, 2.5, -0.5, 1.0 -> median of (-2, -0.5, 1, 1, 2.5, 4) = 1.0
    assert hodges_lehmann(d) == 1.0
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, 9)
    walsh = [(x[i] + x[j]) / 2 for i in range(9) for j in range(i, 9)]
    assert hodges_lehmann(x) == pytest.approx(np.median(walsh))
    assert wilcoxon_test(x)["hodges_lehmann"] == pytest.approx(np.median(walsh))


def test_sign_test_matches_binomtest() -> None:
    # 6 positive, 0 negative, 2 zeros dropped: p = 2 * (1/2)^6 = 1/32
    result = sign_test(np.array([0.1, 0.2, 0.0, 0.5, 3.0, 0.0, 0.7, 0.01]))
    assert (result["n"], result["n_zero"], result["n_positive"], result["n_negative"]) == (6, 2, 6, 0)
    assert result["p_value"] == pytest.approx(1 / 32)
    assert result["median"] == pytest.approx(0.35) and result["estimate"] == result["median"]
    rng = np.random.default_rng(5)
    for n in (7, 20, 41):
        d = rng.normal(0.2, 1, n)
        k = int((d > 0).sum())
        assert sign_test(d)["p_value"] == pytest.approx(sps.binomtest(k, n, 0.5).pvalue)
    assert sign_test(np.array([1.0]))["p_value"] is None


# --- Holm ------------------------------------------------------------------------------------------------------

def test_holm_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    with_none = holm([None, 0.01, 0.04, None, 0.03, 0.005])
    assert with_none[0] is None and with_none[3] is None
    assert [with_none[i] for i in (1, 2, 4, 5)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped
    assert holm([0.02]) == [0.02]
    assert holm([]) == [] and holm([None]) == [None]
    with pytest.raises(ValueError, match=r"p_values\[1\]"):
        holm([0.1, 1.5])


def test_holm_is_monotone_and_never_below_the_raw_p() -> None:
    p = np.random.default_rng(6).uniform(0, 0.2, 30).tolist()
    adjusted = holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(np.array(adjusted)[order]) >= 0)
    assert all(a >= r for a, r in zip(adjusted, p, strict=True)) and max(adjusted) <= 1.0  # type: ignore[operator]
    # Bonferroni bounds Holm from above; the smallest p gets exactly m * p
    assert all(a <= min(1.0, 30 * r) for a, r in zip(adjusted, p, strict=True))  # type: ignore[operator]
    assert adjusted[int(order[0])] == pytest.approx(30 * p[int(order[0])])


# --- verdicts and paired comparisons -----------------------------------------------------------------------------

def test_verdict_wording_and_direction() -> None:
    assert verdict(0.01, -0.2, 10, lower_is_better=True) == "better"
    assert verdict(0.01, -0.2, 10, lower_is_better=False) == "worse"
    assert verdict(0.01, 0.2, 10, lower_is_better=False) == "better"
    assert verdict(0.05, 0.2, 10, lower_is_better=False) == "not shown to differ"  # p < alpha is strict
    assert verdict(0.01, 0.0, 10, lower_is_better=False) == "not shown to differ"
    assert verdict(0.04, 0.2, 10, lower_is_better=False, alpha=0.01) == "not shown to differ"
    assert verdict(None, None, 1, lower_is_better=True) == "undetermined"


def test_verdict_follows_the_hodges_lehmann_estimate_not_the_mean() -> None:
    """Deletion (lower is better): +1 on 20 patients, -30 on 3. The mean difference is -3.04 (looks
    better) but most patients are worse; the signed-rank test is significant and HL = +1: worse."""
    per_patient = np.array([1.0] * 20 + [-30.0] * 3)
    ids = np.arange(23)
    reference = np.zeros(23)
    assert per_patient.mean() == pytest.approx(-3.043, abs=1e-3)
    result = paired_comparison(per_patient, reference, ids, lower_is_better=True, test="wilcoxon")
    assert result["estimate"] == 1.0 and result["method"] == "asymptotic"  # tied |d|
    assert result["p_value"] < 0.05
    assert result["verdict"] == "worse"
    assert result["better_share"] == pytest.approx(3 / 23)


def test_paired_comparison_counts_patients_not_slices() -> None:
    """Patient a has 6 slices where the method is worse (+1); five other patients one slice each where it
    is better (-1). Slice-level that is 6 vs 5; patient-level it is 1 vs 5."""
    ids = np.array(["a"] * 6 + ["b", "c", "d", "e", "f"])
    values = np.array([1.0] * 6 + [-1.0] * 5)
    reference = np.zeros(11)
    reference[0] = np.nan  # one slice of a has no reference value: it drops out, a stays
    result = paired_comparison(values, reference, ids, lower_is_better=True, test="sign")
    assert (result["n_pairs"], result["n_patients"], result["n_slices"]) == (6, 6, 10)
    assert result["p_value"] == pytest.approx(sps.binomtest(1, 6, 0.5).pvalue)  # 2 * 7/64
    assert result["estimate"] == -1.0 and result["better_share"] == pytest.approx(5 / 6)
    assert result["verdict"] == "not shown to differ"
    assert (result["p_adjusted"], result["family"]) == (None, None)
    assert (result["test"], result["lower_is_better"]) == ("sign", True)
    same = paired_comparison(values, values, ids, lower_is_better=True)
    assert (same["n_pairs"], same["n_patients"], same["verdict"], same["p_value"]) == (0, 6, "not shown to differ", 1.0)
    with pytest.raises(ValueError, match="test must be one of"):
        paired_comparison(values, reference, ids, lower_is_better=True, test="t")
    with pytest.raises(ValueError, match="same slices"):
        paired_comparison(values, reference[:5], ids, lower_is_better=True)


def test_patient_level_tests_keep_the_false_positive_rate() -> None:
    """No true difference, but each patient has its own offset shared by its 6 slices: a slice-level
    test rejects far too often, the patient-level test at about alpha."""
    rng = np.random.default_rng(7)
    ids = np.repeat(np.arange(20), 6)
    slice_level, patient_level = 0, 0
    for _ in range(200):
        d = rng.normal(0, 1, 20)[ids] + rng.normal(0, 0.2, ids.size)
        slice_level += sps.wilcoxon(d, method="asymptotic").pvalue < 0.05
        patient_level += paired_comparison(d, np.zeros_like(d), ids, lower_is_better=True)["p_value"] < 0.05
    assert slice_level / 200 > 0.3
    assert patient_level / 200 < 0.1


# --- summary.py ------------------------------------------------------------------------------------------------

def test_finite_list_and_mean_curves() -> None:
    assert finite_list(np.array([1.0, np.nan, np.inf, 2])) == [1.0, None, None, 2.0]
    curves = np.array([[1.0, 0.0, np.nan], [0.0, 0.0, np.nan], [1.0, 1.0, np.nan]])
    np.testing.assert_allclose(mean_curve(curves), [2 / 3, 1 / 3, np.nan])
    # patient a: rows 0-1 -> (0.5, 0); patient b: row 2 -> (1, 1); mean over patients (0.75, 0.5)
    np.testing.assert_allclose(patient_mean_curve(curves, np.array(["a", "a", "b"])), [0.75, 0.5, np.nan])


def test_metric_summary_fields() -> None:
    rng = np.random.default_rng(8)
    ids = np.repeat(np.arange(12), 3)
    curves = rng.uniform(0, 1, (36, 5))
    values = curves.mean(axis=1)
    random_values = values + 0.3 + rng.normal(0, 0.05, 36)
    summary = metric_summary(values, {"random": random_values, "mask": None}, ids, lower_is_better=True,
                             test="wilcoxon", resamples=200, seed=0, curves=curves)
    assert summary["mean"] == pytest.approx(patient_means(values, ids)[0].mean())
    assert (summary["unit"], summary["n_patients"], summary["n_slices"]) == ("patient", 12, 36)
    assert summary["curve_mean"] == pytest.approx(patient_mean_curve(curves, ids).tolist())
    assert summary["vs_mask"] is None
    vs_random = summary["vs_random"]
    assert (vs_random["n_pairs"], vs_random["verdict"], vs_random["method"]) == (12, "better", "exact")
    assert vs_random["p_value"] == pytest.approx(2 / 2**12)  # all 12 patients better: exact two-sided
    assert vs_random["estimate"] < 0 and vs_random["p_adjusted"] is None
    plain = metric_summary(values, {"vs_random": None}, ids, lower_is_better=False, resamples=10)
    assert plain["vs_random"] is None and "curve_mean" not in plain
    with pytest.raises(ValueError, match="one row per value"):
        metric_summary(values, {}, ids, lower_is_better=True, curves=curves[:3])


def _comparison(p: float | None, estimate: float, lower_is_better: bool) -> dict:
    return {"test": "wilcoxon", "p_value": p, "p_adjusted": None, "family": None,
            "verdict": "undetermined" if p is None else verdict(p, estimate, 10, lower_is_better=lower_is_better),
            "n_pairs": 0 if p is None else 10, "estimate": None if p is None else estimate,
            "lower_is_better": lower_is_better}


def _document() -> list[dict]:
    def row(method: str, baseline: str, deletion: dict, insertion: dict, **extra: object) -> dict:
        return {"method": method, "target": "predicted-region", "layer": "decoder", "model": "trained",
                "times_gt": False, "baseline": baseline, **extra, "deletion": deletion, "insertion": insertion,
                "per_slice": {"deletion": [0.1], "insertion": [0.2]}}

    return [
        row("gradcam", "zero",
            {"mean": 0.2, "vs_random": _comparison(0.01, -0.1, True), "vs_mask": _comparison(0.2, 0.1, True)},
            {"mean": 0.6, "vs_random": _comparison(0.04, 0.05, False), "vs_mask": None}),
        row("gradcam", "rise",
            {"mean": 0.2, "vs_random": _comparison(0.001, 0.1, True)},
            {"mean": 0.6, "vs_random": _comparison(0.03, 0.05, False)}),
        row("gradcam", "zero", {"mean": 0.3, "vs_random": _comparison(0.02, -0.1, True)},
            {"mean": 0.5, "vs_random": _comparison(None, 0.0, False)}, model="untrained"),
        row("random", "zero", {"mean": 0.4}, {"mean": 0.4}, control=True),
    ]


PRIMARY = {"method": "gradcam", "target": "predicted-region", "layer": "decoder", "baseline": "zero"}


def test_adjust_file_primary_and_exploratory_families() -> None:
    rows = _document()
    assert rows[1]["insertion"]["vs_random"]["verdict"] == "better"  # p 0.03 before adjustment
    adjust_file(rows, {"deletion": True, "insertion": False}, primary=PRIMARY, alpha=0.05)
    primary_del, primary_ins = rows[0]["deletion"]["vs_random"], rows[0]["insertion"]["vs_random"]
    # primary: the four tests vs random and vs mask (the insertion vs_mask is absent): Holm over
    #   (0.01, 0.04, 0.2) -> sorted 0.01 x3 = 0.03, 0.04 x2 = 0.08, 0.2 x1 -> max(0.08, 0.2) = 0.2
    primary_mask = rows[0]["deletion"]["vs_mask"]
    assert (primary_del["family"], primary_del["p_adjusted"], primary_del["verdict"]) == (
        "primary", pytest.approx(0.03), "better")
    assert (primary_ins["family"], primary_ins["p_adjusted"], primary_ins["verdict"]) == (
        "primary", pytest.approx(0.08), "not shown to differ")
    assert (primary_mask["family"], primary_mask["p_adjusted"], primary_mask["verdict"]) == (
        "primary", pytest.approx(0.2), "not shown to differ")
    # exploratory: (0.001, 0.03, 0.02) with the None left out, m = 3
    #   sorted 0.001 x3 = 0.003, 0.02 x2 = 0.04, 0.03 x1 -> max(0.04, 0.03) = 0.04
    explored = [rows[1]["deletion"]["vs_random"], rows[1]["insertion"]["vs_random"],
                rows[2]["deletion"]["vs_random"], rows[2]["insertion"]["vs_random"]]
    assert [c["family"] for c in explored] == ["exploratory"] * 4
    assert [c["p_adjusted"] for c in explored] == [pytest.approx(0.003), pytest.approx(0.04),
                                                   pytest.approx(0.04), None]
    assert [c["verdict"] for c in explored] == ["worse", "better", "better", "undetermined"]
    assert rows[0]["insertion"]["vs_mask"] is None and "vs_random" not in rows[3]["deletion"]
    assert primary_del["p_value"] == 0.01  # the raw p is kept


def test_adjust_file_without_a_primary_row_makes_everything_exploratory() -> None:
    for primary in (None, {**PRIMARY, "baseline": "blur"}):
        rows = _document()
        adjust_file(rows, ["deletion", "insertion"], primary=primary, alpha=0.05)
        first = rows[0]["deletion"]["vs_random"]
        # six p-values, 0.01 is the second smallest: 5 x 0.01 = 0.05 -> not significant at 0.05
        assert (first["family"], first["p_adjusted"], first["verdict"]) == (
            "exploratory", pytest.approx(0.05), "not shown to differ")
    rows = _document()
    rows.append(copy.deepcopy(rows[0]))
    with pytest.raises(ValueError, match="matches 2 rows"):
        adjust_file(rows, ["deletion", "insertion"], primary=PRIMARY, alpha=0.05)
