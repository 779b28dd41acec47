"""The numbers of a run, put in the shapes the report draws: curves, series, tables, predictions.

Each function reads one documented JSON schema (docs/training.md, docs/evaluate.md) and returns
plain Python data; a value that is absent becomes "n/a" in a table rather than an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tumorcam.data.arrays import PreparedData
from tumorcam.errors import TumorcamError
from tumorcam.runfolder.examples import EXAMPLES_COMMAND, EXAMPLES_FILE, load_examples
from tumorcam.evaluate.headline import method_name, run_headline

if TYPE_CHECKING:
    from tumorcam.runfolder.folder import Run


@dataclass
class Table:
    """A table for the HTML page: header cells (optionally grouped), rows of text cells, a note below."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    groups: list[tuple[str, int]] = field(default_factory=list)  # a header row above: (title, columns spanned)


def fmt(value: Any, digits: int = 3) -> str:
    """A number as text with `digits` decimals (`digits` significant digits below 0.1); None or NaN as "n/a"."""
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not np.isfinite(number):
        return "n/a"
    if number != 0 and abs(number) < 0.1:  # small scores (e.g. mean sigmoid over a slice): significant digits
        return f"{number:.{digits}g}"
    return f"{number:.{digits}f}"


def fmt_p(value: Any) -> str:
    """A p-value with 3 decimals, "< 0.001" below that; None as "n/a"."""
    if value is None:
        return "n/a"
    number = float(value)
    return "< 0.001" if number < 1e-3 else f"{number:.3f}"


def fmt_ci(summary: dict[str, Any] | None, digits: int = 3) -> str:
    """"mean [low, high]" from a {"mean", "ci95": [low, high]} or {"mean", "ci_low", "ci_high"} dict."""
    if not isinstance(summary, dict) or summary.get("mean") is None:
        return "n/a"
    low, high = summary.get("ci_low"), summary.get("ci_high")
    if isinstance(summary.get("ci95"), (list, tuple)):
        low, high = summary["ci95"]
    if low is None or high is None:
        return fmt(summary["mean"], digits)
    return f"{fmt(summary['mean'], digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


# --- training history ------------------------------------------------------------------------------

HISTORY_PLOTTED = ("loss", "val_dice", "val_iou")


def history_series(history: dict[str, Any]) -> tuple[list[int], dict[str, list[float]]]:
    """Epoch numbers and the plotted per-epoch series of history.json ({"epochs": [{"epoch", ...}]})."""
    rows = history["epochs"]
    epochs = [int(r["epoch"]) for r in rows]
    series = {}
    for key in HISTORY_PLOTTED:
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            series[key] = [np.nan if v is None else float(v) for v in values]
    return epochs, series


# --- segmentation metrics ----------------------------------------------------------------------------

def segmentation_table(metrics: dict[str, Any]) -> Table:
    """Dice and IoU (mean [95% CI]) overall, per patient and per class, from metrics.json."""
    rows = [["all slices", fmt(metrics["overall"]["dice"].get("n")), fmt_ci(metrics["overall"]["dice"]),
             fmt_ci(metrics["overall"]["iou"])]]
    patient = metrics.get("per_patient", {}).get("summary")
    if patient:
        rows.append([f"per patient (mean of {fmt(patient.get('n'))} patients)", fmt(patient.get("n")),
                     fmt_ci(patient["dice"]), fmt_ci(patient["iou"])])
    for name, summary in metrics.get("per_class", {}).items():
        rows.append([name, fmt(summary.get("n")), fmt_ci(summary["dice"]), fmt_ci(summary["iou"])])
    split = metrics.get("split")
    title = "Segmentation" + (f" ({split} split)" if split else "")
    return Table(title, ["group", "n", "Dice mean [95% CI]", "IoU mean [95% CI]"], rows,
                 "Dice = 2|P∩G| / (|P|+|G|), IoU = |P∩G| / |P∪G| per slice; 95% CI by bootstrap.")


# --- prediction examples -----------------------------------------------------------------------------

def read_examples(run: Run, prepared: PreparedData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images (N,S,S), ground-truth and predicted masks (N,S,S) bool and rows of
    Figure 5's slices, read from RUN/figures_data/examples.npz (written by the segmentation stage; the
    report never runs the network). A missing file is a `TumorcamError` naming the command that writes it."""
    examples = load_examples(run.path)
    order = {int(f): i for i, f in enumerate(np.asarray(prepared.file_ids))}
    if any(int(f) not in order for f in examples.file_ids):
        raise TumorcamError(f"{EXAMPLES_FILE} holds slices that are not in {prepared.root}; write it again with "
                            f"`{EXAMPLES_COMMAND}`")
    rows = np.array([order[int(f)] for f in examples.file_ids], dtype=np.int64)
    images, masks = prepared.tensors(rows, examples.size)
    return images[:, 0].numpy(), masks[:, 0].numpy() > 0.5, examples.predicted, rows


# --- what a row is -----------------------------------------------------------------------------------

GAMES = ("deletion", "insertion")
DIRECTION = {"deletion": "lower", "insertion": "higher"}
WEIGHT_FREE_CONTROLS = ("random", "edges")  # controls that never read the weights: the sanity check must fail them
ENTRY_KEYS = ("method", "target", "layer", "model", "times_gt")


def is_control(row: dict[str, Any]) -> bool:
    """A control map (the random map, the predicted mask, ...) rather than an explanation: the row's
    `control` flag, or, where a file has none (sanity.json), the method registry's."""
    if "control" in row:
        return bool(row["control"])
    from tumorcam.runfolder.index import method_is_control

    return method_is_control(str(row.get("method")))


def _method_label(row: dict[str, Any], with_layer: bool) -> str:
    """A row's method for a table cell: the method id, " x GT", "@ layer", the model when not the
    trained one, and "(control)" for a control."""
    label = str(row.get("method", "?")) + (" x GT" if row.get("times_gt") else "")
    if with_layer and row.get("layer") not in (None, "input"):
        label += f" @ {row['layer']}"
    if row.get("model", "trained") != "trained":
        label += f" ({row.get('model')} network)"
    return label + (" (control)" if is_control(row) else "")


def _several_layers(rows: list[dict[str, Any]]) -> bool:
    """Whether some method appears with more than one layer (then a label names the layer)."""
    layers: dict[Any, set[Any]] = {}
    for r in rows:
        layers.setdefault(r.get("method"), set()).add(r.get("layer"))
    return any(len(v) > 1 for v in layers.values())


def _reference(rows: list[dict[str, Any]], row: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The row of the map that `row` is compared with (its `random_reference` or `mask_reference`:
    method, target, layer, model, times_gt), under the same baseline."""
    ref = row.get(key)
    if not isinstance(ref, dict):
        return None
    return next((x for x in rows if x.get("baseline") == row.get("baseline")
                 and all(x.get(k) == ref.get(k) for k in ENTRY_KEYS)), None)


def _test(summary: Any, key: str) -> dict[str, Any] | None:
    """A metric summary's comparison `key` ("vs_random" / "vs_mask"), None when absent."""
    test = summary.get(key) if isinstance(summary, dict) else None
    return test if isinstance(test, dict) else None


def _adjusted(test: dict[str, Any] | None) -> str:
    """The Holm-adjusted p with its family: "0.012 (exploratory)"."""
    if test is None:
        return "n/a"
    family = test.get("family")
    return fmt_p(test.get("p_adjusted")) + (f" ({family})" if family else "")


def _verdict(test: dict[str, Any] | None, reference: bool = False) -> str:
    """A comparison's verdict with its effect size ("better, -0.312 [-0.351, -0.270]"); "(the
    reference)" for the map every other one is compared with."""
    if test is None:
        return "(the reference)" if reference else "n/a"
    effect = effect_phrase(test)
    return str(test.get("verdict", "n/a")) + ("" if effect == "n/a" else f", {effect}")


def _versus_mask_cell(row: dict[str, Any], summary: Any) -> str:
    test = _test(summary, "vs_mask")
    if test is None:
        return _verdict(None, row.get("method") == "predicted-mask")
    return f"{_verdict(test)} ({fmt_p(test.get('p_adjusted'))})"


def _patients(n: Any) -> str:
    return f"{fmt(n)} patient" + ("" if n == 1 else "s")


def _p_phrase(p: Any) -> str:
    """"p = 0.012", "p < 0.001", or "no p-value"."""
    if p is None:
        return "no p-value"
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


# --- faithfulness ---------------------------------------------------------------------------------

@dataclass
class Curve:
    """One map's patient-level mean curves {"deletion": (t, score), ...} over the step t = k/K, and AUCs;
    `reference` for the random map and the predicted-mask control drawn beside the methods."""

    method: str
    label: str
    reference: bool = False
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    auc: dict[str, float | None] = field(default_factory=dict)

    def get(self, game: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self.curves.get(game)


@dataclass
class CurveGroup:
    """The curves drawn in one row of Figure 4 (one baseline and target), with the x ticks."""

    title: str
    score_label: str
    curves: list[Curve]
    ticks: tuple[list[float], list[str]] = field(default_factory=lambda: ([], []))


def fraction_ticks(fractions: np.ndarray, schedule: str) -> tuple[list[float], list[str]]:
    """Ticks for Figure 4's x axis, the normalised step t = k/K over which the AUC is taken, labelled
    with the fraction of pixels f_k at that step: for the "log" schedule f = 0 and the step nearest
    (in log f) to each power of ten from f_1 up to 1; for "uniform" (f = t) t = 0, 1/4, ..., 1."""
    fractions = np.asarray(fractions, dtype=np.float64)
    steps = fractions.size - 1
    if steps < 1:
        return [], []
    if schedule != "log":
        quarters = [0.0, 0.25, 0.5, 0.75, 1.0]
        return quarters, [f"{q:g}" for q in quarters]
    logs = np.log10(np.maximum(fractions[1:], 1e-300))
    decades = np.arange(np.ceil(logs[0] - 1e-9), 1)
    ks = [0] + sorted({1 + int(np.argmin(np.abs(logs - d))) for d in decades})
    return [k / steps for k in ks], [f"{fractions[k]:.2g}" for k in ks]


def faithfulness_curves(faithfulness: dict[str, Any]) -> list[CurveGroup]:
    """Figure 4's panels from faithfulness.json: one group per (baseline, target), each with the
    patient-level mean curve and AUC of every trained-model method, then the random map and the
    predicted-mask control they are compared with; x = the step t = k/K (the AUC's axis)."""
    fractions = np.asarray(faithfulness["fractions"], dtype=np.float64)
    t = np.linspace(0.0, 1.0, fractions.size)
    ticks = fraction_ticks(fractions, str(faithfulness.get("schedule", "uniform")))
    rows = [r for r in faithfulness["results"] if r.get("model", "trained") == "trained"]
    methods = [r for r in rows if not is_control(r)]
    with_layer = _several_layers(methods)
    groups = []
    for baseline in dict.fromkeys(r.get("baseline") for r in methods):
        for target in dict.fromkeys(r.get("target") for r in methods if r.get("baseline") == baseline):
            members = [r for r in methods if r.get("baseline") == baseline and r.get("target") == target]
            references: list[dict[str, Any]] = []
            for key in ("random_reference", "mask_reference"):
                for r in members:
                    ref = _reference(rows, r, key)
                    if ref is not None and ref not in references:
                        references.append(ref)
            curves = []
            for r in members + references:
                curve = Curve(method=str(r.get("method")), label=_method_label(r, with_layer), reference=r in references)
                for game in GAMES:
                    summary = r.get(game) or {}
                    if summary.get("curve_mean") is not None:
                        values = np.array([np.nan if v is None else v for v in summary["curve_mean"]], np.float64)
                        curve.curves[game] = (t, values)
                    curve.auc[game] = summary.get("mean")
                curves.append(curve)
            score = members[0].get("score", faithfulness.get("score", "score"))
            groups.append(CurveGroup(title=f"baseline {baseline}, target {target}",
                                     score_label=f"model score ({score})", curves=curves, ticks=ticks))
    return groups


def primary_row(faithfulness: dict[str, Any]) -> dict[str, Any] | None:
    """The row of faithfulness.json's `primary` comparison (None when it names none or none matches)."""
    from tumorcam.evaluate.summary import is_primary_row

    primary = faithfulness.get("primary")
    if not isinstance(primary, dict):
        return None
    return next((r for r in faithfulness["results"] if is_primary_row(r, primary)), None)


def headline_of(faithfulness: dict[str, Any]) -> dict[str, Any]:
    """faithfulness.json's `headline`; for a file written before it existed, made from the file alone
    (no sanity check: at best `undetermined`)."""
    head = faithfulness.get("headline")
    return head if isinstance(head, dict) else run_headline(faithfulness, None)


def effect_phrase(test: dict[str, Any] | None) -> str:
    """A test's effect size: "-0.312 [-0.351, -0.270]" (its estimate of the paired difference with
    the 95% CI over patients), "n/a" when the test has none."""
    if not isinstance(test, dict) or test.get("estimate") is None:
        return "n/a"
    low, high = test.get("estimate_ci_low"), test.get("estimate_ci_high")
    interval = "" if low is None or high is None else f" [{fmt(low)}, {fmt(high)}]"
    return f"{fmt(test['estimate'])}{interval}"


def primary_sentence(faithfulness: dict[str, Any]) -> str:
    """The four tests of the primary family in one sentence: per question and curve the verdict, the
    effect size (paired difference with its CI), raw and Holm-adjusted p and the number of patients."""
    primary = faithfulness.get("primary")
    if not isinstance(primary, dict):
        return "faithfulness.json names no primary comparison: every test in it is exploratory."
    subject = (f"{method_name(primary.get('method'))} ({primary.get('target')}, {primary.get('layer')}, "
               f"{primary.get('baseline')} baseline)")
    row = primary_row(faithfulness)
    if row is None:
        return (f"Primary comparison: {subject} is not in faithfulness.json (that method, target, layer or "
                "baseline was not evaluated), so every test in it is exploratory.")
    clauses = []
    for key, reference in (("vs_random", "random"), ("vs_mask", "the predicted mask")):
        for game in GAMES:
            test = _test(row.get(game), key)
            if test is None:
                clauses.append(f"not compared with {reference} on {game}")
                continue
            verdict = str(test.get("verdict"))
            words = {"better": f"better than {reference}", "worse": f"worse than {reference}",
                     "not shown to differ": f"not shown to differ from {reference}"}.get(verdict,
                                                                                       f"{verdict} against {reference}")
            clauses.append(f"{words} on {game} (difference {effect_phrase(test)}, {_p_phrase(test.get('p_value'))}, "
                           f"adjusted {fmt_p(test.get('p_adjusted'))}, n = {_patients(test.get('n_pairs'))})")
    return (f"Primary family: {subject} is {'; '.join(clauses)}. Verdicts at alpha = "
            f"{fmt(faithfulness.get('alpha', 0.05), 2)} after Holm's adjustment over these {len(clauses)} tests; a "
            "difference is the map's AUC minus the reference's (Hodges-Lehmann estimate over patients, 95% "
            "bootstrap CI).")


def exploratory_sentence(faithfulness: dict[str, Any]) -> str:
    """How many other tests there are and how their verdicts are reached."""
    tests = [test for r in faithfulness["results"] for game in GAMES for key in ("vs_random", "vs_mask")
             if (test := _test(r.get(game), key)) is not None]
    n = sum(1 for test in tests if test.get("family") == "exploratory")
    return (f"Every other test is exploratory: each method and control against the random map and against the "
            f"predicted mask, per target and baseline ({n} tests); their verdicts use the Holm-adjusted p over "
            f"all {n} at alpha = {fmt(faithfulness.get('alpha', 0.05), 2)}.")


def _mask_outcome(row: dict[str, Any]) -> str:
    """What the vs_mask tests of one row say, as a verb phrase."""
    tests = {game: _test(row.get(game), "vs_mask") for game in GAMES}
    if all(test is None for test in tests.values()):
        return "not compared with the predicted mask (the run has no predicted-mask control)"
    verdicts = {game: (test or {}).get("verdict") for game, test in tests.items()}
    better = [g for g in GAMES if verdicts[g] == "better"]
    worse = [g for g in GAMES if verdicts[g] == "worse"]
    if all(v == "undetermined" for v in verdicts.values()):
        return "undetermined against the predicted mask (fewer than 2 patients)"
    parts = []
    if better:
        parts.append(f"better than the predicted-mask control on {' and '.join(better)}")
    if worse:
        parts.append(f"worse than the predicted-mask control on {' and '.join(worse)}")
    if not parts:
        return "not shown to tell more than the predicted mask"
    rest = [g for g in GAMES if g not in better + worse]
    if rest:
        parts.append(f"not shown to differ from it on {' and '.join(rest)}")
    return ", ".join(parts)


def mask_sentences(faithfulness: dict[str, Any]) -> list[str]:
    """One sentence per method (trained network, not x GT): does it tell more than the predicted
    mask? From its vs_mask verdicts, per setting (target, layer, baseline) when the settings disagree."""
    rows = [r for r in faithfulness["results"] if r.get("model", "trained") == "trained"
            and not r.get("times_gt") and not is_control(r)]
    lines = []
    for method in dict.fromkeys(r.get("method") for r in rows):
        own = [r for r in rows if r.get("method") == method]
        with_layer = len({r.get("layer") for r in own}) > 1
        outcomes: dict[str, list[str]] = {}
        for r in own:
            setting = (str(r.get("target")) + (f" @ {r.get('layer')}" if with_layer else "")
                       + f" with the {r.get('baseline')} baseline")
            outcomes.setdefault(_mask_outcome(r), []).append(setting)
        clauses = [f"{outcome} for {' and '.join(settings)}" for outcome, settings in outcomes.items()]
        lines.append(f"{method_name(method)} is " + "; it is ".join(clauses) + ".")
    return lines


def glance_sentences(faithfulness: dict[str, Any]) -> list[str]:
    """The faithfulness sentences of "At a glance": the run's headline first, then its four primary
    tests, how the exploratory tests are read, and per method whether it tells more than the
    predicted mask."""
    return [headline_of(faithfulness)["sentence"], primary_sentence(faithfulness), exploratory_sentence(faithfulness),
            *mask_sentences(faithfulness)]


GLANCE_PER_GAME = ["AUC [95% CI]", "p vs random", "adjusted p", "vs random", "vs predicted mask (adjusted p)"]


def _glance_row(row: dict[str, Any], label: str) -> list[str]:
    summaries = [row.get(game) or {} for game in GAMES]
    cells = [label, str(row.get("target")), str(row.get("baseline")), fmt(summaries[0].get("n_patients"))]
    for summary in summaries:
        test = _test(summary, "vs_random")
        cells += [fmt_ci(summary), fmt_p(None if test is None else test.get("p_value")), _adjusted(test),
                  _verdict(test, row.get("method") == "random"), _versus_mask_cell(row, summary)]
    return cells


def glance_tables(faithfulness: dict[str, Any]) -> list[Table]:
    """The "At a glance" tables: every method (the primary row first), then the controls; per row
    the patient-level Deletion and Insertion AUC with CI, raw and Holm-adjusted p against random,
    and the verdicts against random and against the predicted mask."""
    rows = [r for r in faithfulness["results"] if r.get("model", "trained") == "trained"]
    primary = primary_row(faithfulness)
    methods = sorted((r for r in rows if not is_control(r)), key=lambda r: r is not primary)
    controls = [r for r in rows if is_control(r)]
    with_layer = _several_layers(methods)
    headers = ["method", "target", "baseline", "n patients"] + GLANCE_PER_GAME * 2
    groups = [("", 4), ("Deletion: lower AUC is better", 5), ("Insertion: higher AUC is better", 5)]
    n = f"{fmt(faithfulness.get('n_patients'))} test patients, {fmt(faithfulness.get('n_slices'))} slices"
    note = ("AUC: mean over patients of each patient's mean AUC (area under the score curve over the step "
            "k/K); 95% CI by cluster bootstrap over patients. p: two-sided Wilcoxon signed-rank test of the "
            "patients' mean AUC differences against the random map of the same target; adjusted p: Holm within "
            "its family (primary: the primary row's four tests, against random and against the predicted mask; "
            "exploratory: every other test of the file). "
            f"Verdicts at alpha = {fmt(faithfulness.get('alpha', 0.05), 2)} on the adjusted p, each with its effect "
            "size: the Hodges-Lehmann estimate of the paired difference with its 95% bootstrap CI over patients; "
            "\"vs predicted mask\": the same test against the predicted-mask control.")
    tables = [Table(f"Deletion and Insertion per method ({n})", headers,
                    [_glance_row(r, _method_label(r, with_layer) + (" (primary)" if r is primary else ""))
                     for r in methods], note, groups)]
    if controls:
        tables.append(Table(
            "Controls: maps that explain nothing by design", headers,
            [_glance_row(r, _method_label(r, False)) for r in controls],
            "The random map ignores the network; the predicted mask, its probability, the mask grown by a margin "
            "and the image's edges are what a heatmap could show without explaining the prediction. A method "
            "earns its place where it is better than these.", groups))
    return tables


def faithfulness_tables(faithfulness: dict[str, Any]) -> list[Table]:
    """One table per game: each map's patient-level AUC beside its random map's and its predicted-mask
    control's, the share of patients where it beats random, the Hodges-Lehmann difference, the
    Holm-adjusted p and the verdict (the random map is the reference, not a row)."""
    rows = [r for r in faithfulness["results"] if r.get("model", "trained") == "trained"]
    steps = len(faithfulness["fractions"]) - 1
    tables = []
    for game in GAMES:
        body = []
        for r in rows:
            if r.get("method") == "random":
                continue
            summary = r.get(game) or {}
            test = _test(summary, "vs_random")
            random_row, mask_row = _reference(rows, r, "random_reference"), _reference(rows, r, "mask_reference")
            body.append([str(r.get("baseline")), str(r.get("target")), _method_label(r, False), str(r.get("layer")),
                         fmt_ci(summary), fmt_ci((random_row or {}).get(game)), fmt_ci((mask_row or {}).get(game)),
                         fmt((test or {}).get("better_share"), 2), fmt((test or {}).get("estimate")),
                         _adjusted(test), _verdict(test),
                         f"{fmt(summary.get('n_patients'))} ({fmt(summary.get('n_slices'))})"])
        tables.append(Table(
            f"{game.capitalize()} AUC ({DIRECTION[game]} is better), {fmt(faithfulness.get('n_patients'))} patients, "
            f"{fmt(faithfulness.get('n_slices'))} slices, K = {steps} steps ({faithfulness.get('schedule', 'uniform')} "
            "schedule)",
            ["baseline", "target", "method", "layer", "AUC [95% CI]", "random map AUC [95% CI]",
             "predicted-mask AUC [95% CI]", "share of patients better than random",
             "difference vs random (Hodges-Lehmann)", "adjusted p vs random", "verdict", "n patients (slices)"],
            body,
            "Each patient's AUC is the mean over their slices; CI: cluster bootstrap over patients; difference: "
            "Hodges-Lehmann estimate of the patients' mean AUC differences (method - random); p: two-sided "
            "Wilcoxon signed-rank test, Holm-adjusted within its family."))
    return tables


# --- localisation ---------------------------------------------------------------------------------

LOCALIZATION_METRICS = {
    "pointing_game": "pointing game (share of slices whose map maximum lies in the tumour)",
    "energy_pointing_game": "energy pointing game (share of the map's mass inside the tumour)",
    "top_iou": "top IoU (IoU of the map's top pixels with the tumour)",
}


def _summaries(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The metric summaries of a result row: every value that is a dict with a "mean"."""
    return {k: v for k, v in row.items() if isinstance(v, dict) and "mean" in v}


def localization_tables(localization: dict[str, Any]) -> list[Table]:
    """One table per localisation metric: each map's patient-level mean [95% CI], its patients, the
    test against the random map (raw and Holm-adjusted p, verdict) and the verdict against the
    predicted mask; for the trained network and the network before fine-tuning."""
    rows = localization["results"]
    metrics = list(dict.fromkeys(m for r in rows for m in _summaries(r)))
    tables = []
    for metric in metrics:
        body = []
        for r in rows:
            summary = r.get(metric) or {}
            test = _test(summary, "vs_random")
            body.append([_method_label(r, False), str(r.get("target")),
                         str(r.get("layer")), fmt_ci(summary),
                         f"{fmt(summary.get('n_patients'))} ({fmt(summary.get('n_slices'))})",
                         str((test or {}).get("test", "n/a")), fmt_p((test or {}).get("p_value")), _adjusted(test),
                         _verdict(test, r.get("method") == "random"), _versus_mask_cell(r, summary)])
        tables.append(Table(
            f"Localisation: {LOCALIZATION_METRICS.get(metric, metric.replace('_', ' '))}, "
            f"{fmt(localization.get('n_patients'))} patients, {fmt(localization.get('n_slices'))} slices",
            ["method", "target", "layer", "mean [95% CI]", "n patients (slices)", "test", "p vs random",
             "adjusted p", "vs random", "vs predicted mask (adjusted p, exploratory)"], body,
            "Higher is better. Mean over patients of each patient's mean, 95% CI by cluster bootstrap over "
            f"patients; top IoU uses the map's top {fmt(localization.get('top_percent'), 1)}% pixels. p: two-sided "
            "Wilcoxon signed-rank test of the patients' mean differences, every test exploratory: Holm over the "
            "file."))
    return tables


# --- sanity check ---------------------------------------------------------------------------------

@dataclass
class SanityPanel:
    """One measure of the sanity plot: the randomised layers (in order) and one line per method."""

    metric: str
    steps: list[str]
    lines: dict[str, list[float]]
    signed: bool
    threshold: float | None = None
    bands: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # per line: (ci_low, ci_high) per stage


SANITY_MEASURES = (("mean_abs_spearman", "mean |Spearman rank correlation|", False), ("ssim", "mean SSIM", True))
SANITY_CIS = {"mean_abs_spearman": ("mean_abs_spearman_ci", "final_mean_abs_spearman_ci"),
              "ssim": ("ssim_ci", "final_ssim_ci")}  # sanity.json: per-stage [[low, high]] and final [low, high]


def _last(values: Any) -> Any:
    """The value at full randomisation (the last stage) of a per-stage list."""
    return values[-1] if isinstance(values, list) and values else None


def sanity_series(sanity: dict[str, Any]) -> list[SanityPanel]:
    """Per similarity measure (mean |Spearman|, mean SSIM: the two the criterion reads), each
    method's similarity to its original maps after each cumulative randomisation step
    (sanity.json: "stages", results[].mean_abs_spearman/.ssim per stage: the mean of the patient
    means), with the threshold and, where the file has them, each stage's 95% CI as a band."""
    steps = [str(stage) for stage in sanity["stages"]]
    threshold = sanity.get("threshold")
    panels = []
    for metric, title, signed in SANITY_MEASURES:
        lines, bands = {}, {}
        for r in sanity["results"]:
            values = r.get(metric)
            if values is not None:
                word = sanity_word(r)
                label = (f"{r.get('method')} ({r.get('target')}{', control' if is_control(r) else ''})"
                         + {"passes": "", "fails": " FAILS"}.get(word, " undetermined"))
                lines[label] = [np.nan if v is None else float(v) for v in values]
                cis = r.get(SANITY_CIS[metric][0])
                if isinstance(cis, list) and len(cis) == len(values):
                    bands[label] = [(np.nan, np.nan) if not isinstance(ci, list) or None in ci
                                    else (float(ci[0]), float(ci[1])) for ci in cis]
        if lines:
            panels.append(SanityPanel(title, steps, lines, signed, None if threshold is None else float(threshold),
                                      bands))
    return panels


def sanity_word(row: dict[str, Any]) -> str:
    """A row's verdict: its `verdict`, or from `passes` in a sanity.json written before verdicts."""
    verdict = row.get("verdict")
    if verdict in ("passes", "fails", "undetermined"):
        return str(verdict)
    return {True: "passes", False: "fails"}.get(row.get("passes"), "undetermined")


def ci_cell(mean: Any, ci: Any) -> str:
    """"mean [low, high]" of a mean and a sanity.json CI [low, high] (or none); "n/a" without a mean."""
    low, high = ci if isinstance(ci, list) and len(ci) == 2 else (None, None)
    return "n/a" if mean is None else fmt_ci({"mean": mean, "ci_low": low, "ci_high": high})


def _sanity_ci_cell(row: dict[str, Any], metric: str) -> str:
    """The similarity after full randomisation, with its 95% CI over patients where the row has one."""
    return ci_cell(_last(row.get(metric)), row.get(SANITY_CIS[metric][1]))


def _sanity_scope(sanity: dict[str, Any]) -> str:
    """"N slices" or "N slices of P patients"."""
    scope = f"{fmt(sanity.get('n_slices'))} slices"
    return scope + (f" of {fmt(sanity['n_patients'])} patients" if sanity.get("n_patients") is not None else "")


def sanity_tables(sanity: dict[str, Any]) -> Table:
    """The verdict per method (with the reason when undetermined), the similarities once every layer
    is randomised (mean of the patient means with its 95% cluster-bootstrap CI where the file has
    one) and how many patients and slices they were measured on."""
    body = []
    for r in sanity["results"]:
        compared = f"{fmt(_last(r.get('n_compared')))} of {fmt(sanity.get('n_slices'))}"
        if r.get("n_patients") is not None:
            compared = f"{fmt(r['n_patients'])} patients ({compared} slices)"
        body.append([str(r.get("method")) + (" (control)" if is_control(r) else ""), str(r.get("target")),
                     str(r.get("layer")), _sanity_ci_cell(r, "mean_abs_spearman"), _sanity_ci_cell(r, "ssim"),
                     compared, sanity_verdict(r)])
    note = (f"A method {sanity.get('criterion', 'fails when its fully randomised maps stay similar to the originals')} "
            f"(threshold {fmt(sanity.get('threshold'), 2)}"
            + (f", at least {fmt(sanity['min_patients'])} patients" if sanity.get("min_patients") is not None else "")
            + f"). {sanity.get('threshold_source', '')}").strip()
    return Table(f"Sanity check (cascading randomisation, {_sanity_scope(sanity)})",
                 ["method", "target", "layer", "mean |Spearman| after full randomisation [95% CI]",
                  "mean SSIM after full randomisation [95% CI]", "compared", "result"], body, note)


def sanity_verdict(row: dict[str, Any]) -> str:
    """"passes", "FAILS", or "undetermined: REASON" (a sanity.json written before verdicts: "undetermined
    (original maps flat)")."""
    word = sanity_word(row)
    if word != "undetermined":
        return {"passes": "passes", "fails": "FAILS"}[word]
    if "verdict" not in row:
        return "undetermined (original maps flat)"
    return f"undetermined: {row.get('reason') or 'no reason given'}"


def sanity_summary(sanity: dict[str, Any]) -> list[str]:
    """One line: the methods that pass, fail or stay undetermined; then the controls, where the
    weight-free ones (the random map, the image's edges) must fail."""
    methods = [r for r in sanity["results"] if not is_control(r)]
    groups = {verdict: sorted({str(r.get("method")) + (f" ({r['reason']})" if verdict == "undetermined"
                                                         and r.get("reason") else "")
                               for r in methods if sanity_word(r) == verdict})
              for verdict in ("passes", "fails", "undetermined")}
    parts = [f"{verdict}: {', '.join(names)}" for verdict, names in groups.items() if names] or ["no method checked"]
    line = f"Sanity check ({_sanity_scope(sanity)}): " + "; ".join(parts)
    for r in (r for r in sanity["results"] if is_control(r)):
        name, verdict = str(r.get("method")), sanity_verdict(r)
        if name in WEIGHT_FREE_CONTROLS:
            verdict += (", as it should (it never reads the weights)" if sanity_word(r) == "fails"
                        else ": it never reads the weights, so check the test")
        line += f"; control {name} ({r.get('target')}): {verdict}"
    return [line + "."]
