"""The run's headline: each level from crafted faithfulness/sanity JSON, the reachable-p rule, the
effect-size CI, and the four-test primary family."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tumorcam.evaluate.headline import (
    NO_MORE_THAN_MASK,
    SUPPORTED,
    UNDETERMINED,
    UNSUPPORTED,
    run_headline,
    smallest_adjusted_p,
)
from tumorcam.evaluate.stats import estimate_ci, paired_comparison
from tumorcam.evaluate.summary import adjust_file, metric_summary

PRIMARY = {"method": "gradcam", "target": "predicted-region", "layer": "decoder.blocks.4", "baseline": "zero"}


def _test(verdict: str, n: int = 12, p: float = 0.0005) -> dict:
    return {"verdict": verdict, "estimate": -0.2, "estimate_ci_low": -0.3, "estimate_ci_high": -0.1,
            "p_value": p, "p_adjusted": min(1.0, 4 * p), "family": "primary", "test": "wilcoxon", "n_pairs": n}


def _faith(random: tuple[str, str], mask: tuple[str, str] | None, n: int = 12, flat: int = 0) -> dict:
    row = {**PRIMARY, "model": "trained", "times_gt": False, "n_maps": 2 * n, "n_flat_maps": flat}
    for curve, r, m in zip(("deletion", "insertion"), random, mask or (None, None), strict=True):
        row[curve] = {"mean": 0.3, "ci_low": 0.2, "ci_high": 0.4, "n_patients": n,
                      "vs_random": _test(r, n), "vs_mask": None if m is None else _test(m, n)}
    return {"primary": PRIMARY, "alpha": 0.05, "results": [row]}


def _sanity(verdict: str | None, n: int = 12, reason: str | None = None) -> dict:
    return {"results": [{"method": "gradcam", "target": "predicted-region", "layer": "decoder.blocks.4",
                         "verdict": verdict, "n_patients": n, "reason": reason}]}


def test_supported_needs_random_mask_and_a_passing_sanity_check() -> None:
    head = run_headline(_faith(("better", "better"), ("better", "better")), _sanity("passes"))
    assert head["level"] == SUPPORTED and head["colour"] == "green"
    assert head["sentence"].startswith("Grad-CAM is better than random and says more than the predicted mask")
    assert "(4 tests, 12 patients, Holm)" in head["sentence"]
    assert [(t["question"], t["curve"]) for t in head["tests"]] == [
        ("vs_random", "deletion"), ("vs_random", "insertion"), ("vs_mask", "deletion"), ("vs_mask", "insertion")]
    assert head["sanity"]["verdict"] == "passes" and head["sanity"]["n_patients"] == 12


def test_better_than_random_but_not_than_the_mask_is_no_more_than_mask() -> None:
    head = run_headline(_faith(("better", "better"), ("not shown to differ", "worse"), n=47), _sanity("passes"))
    assert head["level"] == NO_MORE_THAN_MASK and head["colour"] == "amber"
    assert head["sentence"] == ("Grad-CAM is better than random but not shown to say more than the predicted mask; "
                                "it is worse than the mask on insertion (4 tests, 47 patients, Holm).")
    # an undetermined sanity check does not lift or lower this level
    assert run_headline(_faith(("better", "better"), ("better", "worse")), _sanity("undetermined"))["level"] \
        == NO_MORE_THAN_MASK


@pytest.mark.parametrize("random", [("better", "not shown to differ"), ("worse", "better")])
def test_not_better_than_random_on_a_curve_is_unsupported(random: tuple[str, str]) -> None:
    head = run_headline(_faith(random, ("better", "better")), _sanity("passes"))
    assert head["level"] == UNSUPPORTED and head["colour"] == "red"
    failing = "insertion" if random[1] != "better" else "deletion"
    assert head["reason"] == f"not shown to be better than random on {failing}"


def test_a_failing_sanity_check_is_unsupported() -> None:
    head = run_headline(_faith(("better", "better"), ("better", "better")), _sanity("fails", n=9))
    assert head["level"] == UNSUPPORTED
    assert "fails the sanity check" in head["reason"] and "9 patients" in head["reason"]


def test_undetermined_sanity_or_none_keeps_supported_from_being_said() -> None:
    faith = _faith(("better", "better"), ("better", "better"))
    head = run_headline(faith, _sanity("undetermined", n=3, reason="3 patients compared; at least 5 are needed"))
    assert head["level"] == UNDETERMINED and head["colour"] == "grey"
    assert "3 patients compared; at least 5 are needed" in head["sentence"]
    assert run_headline(faith, None)["reason"] == "the sanity check was not run"


def test_too_few_patients_for_any_test_is_undetermined_and_says_the_reachable_p() -> None:
    # 6 patients: the smallest exact two-sided p is 2/64, times 4 tests = 0.125 >= 0.05
    assert smallest_adjusted_p(6) == pytest.approx(0.125)
    assert smallest_adjusted_p(7) == pytest.approx(0.0625) and smallest_adjusted_p(8) == pytest.approx(0.03125)
    head = run_headline(_faith(("not shown to differ",) * 2, ("not shown to differ",) * 2, n=6), _sanity("passes"),
                        unit="case")
    assert head["level"] == UNDETERMINED
    assert head["reason"] == "6 cases: the smallest adjusted p reachable is 0.125 (>= alpha 0.05), so no test can decide"
    assert "(4 tests, 6 cases, Holm)" in head["sentence"]


def test_flat_primary_maps_make_it_undetermined_naming_them() -> None:
    head = run_headline(_faith(("not shown to differ",) * 2, ("worse",) * 2, flat=24), _sanity("undetermined"))
    assert head["level"] == UNDETERMINED
    assert head["reason"].startswith("24 of 24 Grad-CAM maps at decoder.blocks.4 are flat")
    assert head["flat_maps"] == {"n_flat": 24, "n_maps": 24}


def test_no_primary_row_or_no_mask_control_is_undetermined() -> None:
    faith = _faith(("better", "better"), ("better", "better"))
    faith["primary"] = {**PRIMARY, "baseline": "blur"}
    assert "was not evaluated" in run_headline(faith, _sanity("passes"))["reason"]
    no_mask = run_headline(_faith(("better", "better"), None), _sanity("passes"))
    assert no_mask["level"] == UNDETERMINED and "no predicted-mask control" in no_mask["reason"]


def test_the_primary_family_is_four_tests_holm_over_four() -> None:
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(10), 2).astype(str)
    values = rng.uniform(0.1, 0.3, 20)
    random, mask = values + 0.4 + rng.uniform(0, 0.1, 20), values + rng.normal(0, 0.05, 20)
    rows = [{**PRIMARY, "model": "trained", "times_gt": False}]
    for curve in ("deletion", "insertion"):
        sign = 1 if curve == "deletion" else -1
        rows[0][curve] = metric_summary(sign * values, {"random": sign * random, "mask": sign * mask}, ids,
                                        lower_is_better=curve == "deletion", resamples=200)
    adjust_file(rows, ("deletion", "insertion"), primary=PRIMARY)
    tests = [rows[0][c][k] for k in ("vs_random", "vs_mask") for c in ("deletion", "insertion")]
    assert {t["family"] for t in tests} == {"primary"}
    raw = sorted(t["p_value"] for t in tests)
    # Holm by hand: the smallest raw p times 4
    assert min(t["p_adjusted"] for t in tests) == pytest.approx(min(1.0, 4 * raw[0]))
    assert rows[0]["deletion"]["vs_random"]["verdict"] == "better"


def test_estimate_ci_brackets_the_hodges_lehmann_estimate_and_is_degenerate_for_equal_differences() -> None:
    low, high = estimate_ci(np.full(8, 0.25), "wilcoxon", resamples=200)
    assert low == high == pytest.approx(0.25)  # every draw has the same Walsh averages
    d = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    low, high = estimate_ci(d, "wilcoxon", resamples=2000, seed=1)
    assert 0.1 <= low < 0.55 < high <= 1.0  # HL of 0.1..1.0 is 0.55
    low, high = estimate_ci(d, "sign", resamples=2000, seed=1)
    assert 0.1 <= low < np.median(d) < high <= 1.0
    assert estimate_ci(np.array([0.3]), "wilcoxon") == (None, None)


def test_comparison_carries_the_effect_size_beside_the_verdict() -> None:
    ids = np.arange(12).astype(str)
    values = np.linspace(0.1, 0.2, 12)
    result = paired_comparison(values, values + 0.5, ids, lower_is_better=True, resamples=300)
    assert result["estimate"] == pytest.approx(-0.5)
    assert result["estimate_ci_low"] == pytest.approx(-0.5) and result["estimate_ci_high"] == pytest.approx(-0.5)
    assert result["mean_difference"] == pytest.approx(-0.5)


def test_pointing_game_hit_shares_use_the_signed_rank_test_as_scipy_does() -> None:
    """A predicted mask's pointing game (0.995: tied maxima, 99.5% inside the tumour) against a random
    map that hits in 3 of 15 cases: the sign test (12 wins of 15) gives scipy's binomial p = 0.035 and is
    lost after Holm; the signed-rank test of the run folder uses the magnitudes (W- = 1 + 2 + 3 = 6)."""
    from tumorcam.evaluate.localization import TESTS

    mask = np.full(15, 0.995)
    random = np.array([1.0] * 3 + [0.0] * 12)
    ids = np.arange(15).astype(str)
    assert stats.binomtest(12, 15).pvalue == pytest.approx(0.03515625)
    assert TESTS["pointing_game"] == "wilcoxon"
    result = paired_comparison(mask, random, ids, lower_is_better=False, test=TESTS["pointing_game"])
    expected = stats.wilcoxon(mask - random, method="asymptotic", correction=False)
    assert result["statistic"] == 6.0 == expected.statistic
    assert result["p_value"] == pytest.approx(expected.pvalue) and result["p_value"] < 0.05 / 15
    assert result["verdict"] == "better"
