"""The run's one headline: is the primary explanation true, and does it say more than the mask?

The primary family is four tests of the one pre-registered map (`summary.adjust_file`, Holm over
the four): deletion and insertion AUC against the random map (`vs_random`) and against the
predicted-mask control (`vs_mask`). With the sanity check's verdict they give one `level`:

- `supported`: better than random on both curves, better than the predicted mask on both, and
  the sanity check passes (decided, not undetermined);
- `no-more-than-mask`: better than random on both curves, but not better than the predicted mask
  on both: the map shows where the tumour is, not more than the mask the network already drew;
- `unsupported`: not better than random on some curve (worse, or not shown to differ), or the
  sanity check fails;
- `undetermined`: too few patients for any of the four tests to reach alpha after Holm (the
  smallest two-sided exact p on n pairs is 2 / 2^n, so the smallest adjusted one is 4 * 2 / 2^n),
  most primary maps flat, a test without a verdict, no predicted-mask control, or the sanity check
  undetermined (or not run) while the rest would say `supported`.

Every `undetermined` and `unsupported` carries its `reason` in words. The same `headline` dict is
written to faithfulness.json, led with by the report, printed by `tumorcam run` and returned by
`FaithfulnessResult.summary()`; `COLOURS` is its colour everywhere (green only for `supported`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tumorcam.evaluate.summary import PRIMARY_COMPARISONS, is_primary_row
from tumorcam.evaluate.summary import PRIMARY_METRICS as CURVES

SUPPORTED, NO_MORE_THAN_MASK, UNSUPPORTED, UNDETERMINED = "supported", "no-more-than-mask", "unsupported", "undetermined"
LEVELS = (SUPPORTED, NO_MORE_THAN_MASK, UNSUPPORTED, UNDETERMINED)
COLOURS = {SUPPORTED: "green", NO_MORE_THAN_MASK: "amber", UNSUPPORTED: "red", UNDETERMINED: "grey"}
FLAT_SHARE = 0.5  # more than this share of flat primary maps makes the headline undetermined
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM", "layercam": "LayerCAM",
                "saliency": "Saliency", "integrated-gradients": "Integrated Gradients", "random": "the random map",
                "predicted-mask": "the predicted mask", "predicted-probability": "the predicted probability",
                "dilated-mask": "the dilated predicted mask", "edges": "the image's edges"}


def method_name(method: Any) -> str:
    """A method's name for sentences ("Grad-CAM"); an unknown one as it is."""
    return METHOD_NAMES.get(str(method), str(method))


def smallest_adjusted_p(n_pairs: int, n_tests: int = 4) -> float:
    """The smallest Holm-adjusted p that `n_tests` two-sided exact signed-rank (or sign) tests on
    `n_pairs` pairs can reach: n_tests * 2 / 2^n_pairs (all pairs on one side), at most 1."""
    return min(1.0, n_tests * 2.0 / 2.0 ** max(0, int(n_pairs)))


def primary_tests(row: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The four tests of the primary family from the primary row, in a fixed order (vs random on
    deletion, insertion; vs the predicted mask on deletion, insertion); a missing test has
    verdict None. Each: question, curve, verdict, estimate with its CI, mean difference, raw and
    adjusted p, family, n_pairs, and the primary map's own AUC (mean with CI)."""
    tests = []
    for key in PRIMARY_COMPARISONS:
        for curve in CURVES:
            summary = (row or {}).get(curve) or {}
            test = summary.get(key) if isinstance(summary.get(key), dict) else {}
            tests.append({
                "question": key, "curve": curve, "verdict": test.get("verdict"),
                "estimate": test.get("estimate"), "estimate_ci_low": test.get("estimate_ci_low"),
                "estimate_ci_high": test.get("estimate_ci_high"), "mean_difference": test.get("mean_difference"),
                "p_value": test.get("p_value"), "p_adjusted": test.get("p_adjusted"), "family": test.get("family"),
                "test": test.get("test"), "n_pairs": test.get("n_pairs"), "n_patients": test.get("n_patients"),
                "auc": {k: summary.get(k) for k in ("mean", "ci_low", "ci_high")},
                "lower_is_better": curve == "deletion",
            })
    return tests


def headline(row: Mapping[str, Any] | None, *, primary: Mapping[str, Any] | None, alpha: float = 0.05,
             sanity: Mapping[str, Any] | None = None, flat: Mapping[str, int] | None = None,
             unit: str = "patient") -> dict[str, Any]:
    """The headline of a run from its primary `row` (a faithfulness.json row after `adjust_file`;
    None when the primary map was not evaluated), the sanity check's row of the primary method
    (`verdict`, `n_patients`, `reason`; None when not run) and the count of flat primary maps
    (`{"n_flat", "n_maps"}`). `unit` names the unit in the sentence ("patient" or "case").

    Returns {"level", "colour", "sentence", "reason", "method", "target", "layer", "baseline",
    "n_patients", "unit", "alpha", "adjustment", "tests" (`primary_tests`), "sanity", "flat_maps"}.
    """
    primary = dict(primary or {})
    tests = primary_tests(row)
    n_patients = max([int(t["n_patients"] or t["n_pairs"] or 0) for t in tests]
                     + [int(((row or {}).get("deletion") or {}).get("n_patients") or 0)])
    level, reason = _level(row, primary, tests, sanity, flat, alpha, unit)
    subject = method_name(primary.get("method"))
    sanity_part = None if sanity is None else {k: sanity.get(k) for k in ("method", "verdict", "n_patients", "reason")}
    out = {
        "level": level, "colour": COLOURS[level], "reason": reason,
        "method": primary.get("method"), "target": primary.get("target"), "layer": primary.get("layer"),
        "baseline": primary.get("baseline"), "n_patients": n_patients, "unit": unit, "alpha": alpha,
        "adjustment": f"Holm over the {len(tests)} primary tests", "tests": tests, "sanity": sanity_part,
        "flat_maps": None if flat is None else dict(flat),
    }
    out["sentence"] = sentence(out, subject)
    return out


def _level(row: Mapping[str, Any] | None, primary: Mapping[str, Any], tests: list[dict[str, Any]],
           sanity: Mapping[str, Any] | None, flat: Mapping[str, int] | None, alpha: float,
           unit: str) -> tuple[str, str | None]:
    """The level and, for undetermined or unsupported, the reason in words."""
    units = f"{unit}s"
    if row is None:
        return UNDETERMINED, (f"the primary map ({primary.get('method')}, {primary.get('target')}, "
                              f"{primary.get('layer')}, {primary.get('baseline')} baseline) was not evaluated")
    if flat and flat.get("n_maps") and flat.get("n_flat", 0) > FLAT_SHARE * flat["n_maps"]:
        return UNDETERMINED, (f"{flat['n_flat']} of {flat['n_maps']} {method_name(primary.get('method'))} maps at "
                              f"{primary.get('layer')} are flat (all equal): they rank no pixel above another")
    n = max(int(t["n_pairs"] or 0) for t in tests)
    reachable = smallest_adjusted_p(n, len(tests))
    if reachable >= alpha:
        return UNDETERMINED, (f"{n} {units if n != 1 else unit}: the smallest adjusted p reachable is "
                              f"{reachable:.4g} (>= alpha {alpha:g}), so no test can decide")
    verdicts = {(t["question"], t["curve"]): t["verdict"] for t in tests}
    versus_random = [verdicts["vs_random", c] for c in CURVES]
    if None in versus_random or "undetermined" in versus_random:
        return UNDETERMINED, "a test against random has no verdict (fewer than 2 usable pairs)"
    sanity_verdict = None if sanity is None else sanity.get("verdict")
    if any(v != "better" for v in versus_random):
        curves = [c for c in CURVES if verdicts["vs_random", c] != "better"]
        return UNSUPPORTED, f"not shown to be better than random on {' and '.join(curves)}"
    if sanity_verdict == "fails":
        return UNSUPPORTED, (f"it fails the sanity check: its maps stay similar when the network's weights are "
                             f"randomised ({sanity.get('n_patients')} {units})")
    versus_mask = [verdicts["vs_mask", c] for c in CURVES]
    if all(v is None for v in versus_mask):
        return UNDETERMINED, "the run has no predicted-mask control, so whether the map says more than the mask is untested"
    if any(v != "better" for v in versus_mask):
        return NO_MORE_THAN_MASK, None
    if sanity_verdict != "passes":
        why = "the sanity check was not run" if sanity is None else \
            f"the sanity check is undetermined: {sanity.get('reason') or 'no reason given'}"
        return UNDETERMINED, why
    return SUPPORTED, None


def sentence(head: Mapping[str, Any], subject: str | None = None) -> str:
    """The headline in plain words, with its test family and number of units, e.g. "Grad-CAM is
    better than random but not shown to say more than the predicted mask (4 tests, 47 patients, Holm)."."""
    subject = subject or method_name(head.get("method"))
    n, unit = head.get("n_patients"), head.get("unit", "patient")
    tail = f"({len(head.get('tests') or [])} tests, {n} {unit}{'' if n == 1 else 's'}, Holm)"
    level, reason = head.get("level"), head.get("reason")
    mask = {t["curve"]: t["verdict"] for t in head.get("tests") or [] if t["question"] == "vs_mask"}
    if level == SUPPORTED:
        sanity = head.get("sanity") or {}
        return (f"{subject} is better than random and says more than the predicted mask on deletion and "
                f"insertion, and passes the sanity check ({sanity.get('n_patients')} {unit}s) {tail}.")
    if level == NO_MORE_THAN_MASK:
        worse = [c for c, v in mask.items() if v == "worse"]
        detail = f"; it is worse than the mask on {' and '.join(worse)}" if worse else ""
        return f"{subject} is better than random but not shown to say more than the predicted mask{detail} {tail}."
    if level == UNSUPPORTED:
        return f"{subject} is not supported: {reason} {tail}."
    return f"Whether {subject} is true is undetermined: {reason} {tail}."


def sanity_row(sanity: Mapping[str, Any] | None, primary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The sanity check's row of the primary map in a sanity.json (its `results` row of the same
    method, target and layer; a file with one top-level verdict is that row); None when absent."""
    if not isinstance(sanity, Mapping):
        return None
    rows = sanity.get("results")
    if isinstance(rows, list):
        keys = [k for k in ("method", "target", "layer") if primary.get(k) is not None]
        match = next((r for r in rows if all(r.get(k) == primary.get(k) for k in keys)), None)
        if match is None:
            match = next((r for r in rows if r.get("method") == primary.get("method")), None)
        return None if match is None else dict(match)
    return dict(sanity) if "verdict" in sanity else None


def run_headline(faithfulness: Mapping[str, Any], sanity: Mapping[str, Any] | None = None, *,
                 unit: str = "patient") -> dict[str, Any]:
    """`headline` of a faithfulness.json (its `primary`, the matching row, `alpha`) and a sanity.json
    (or None); the primary row's `n_flat_maps` / `n_maps` give the flat-map count."""
    primary = faithfulness.get("primary") if isinstance(faithfulness.get("primary"), Mapping) else {}
    row = next((r for r in faithfulness.get("results", []) if primary and is_primary_row(r, primary)), None)
    flat = None
    if row is not None and row.get("n_maps") is not None:
        flat = {"n_flat": int(row.get("n_flat_maps") or 0), "n_maps": int(row["n_maps"])}
    return headline(row, primary=primary, alpha=float(faithfulness.get("alpha", 0.05)),
                    sanity=sanity_row(sanity, primary), flat=flat, unit=unit)

