"""The numbers of a run, put in the shapes the report draws: curves, series, tables, predictions.

Each function reads one documented JSON schema (docs/training.md, docs/evaluate.md) and returns
plain Python data; a value that is absent becomes "n/a" in a table rather than an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumorcam.data.arrays import PreparedData


@dataclass
class Table:
    """A table for the HTML page: header cells, rows of text cells, an optional note below."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


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
    """A p-value: 3 significant digits, "< 0.001" below that."""
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

def example_rows(prepared: PreparedData, limit: int) -> np.ndarray:
    """Test-split rows to show (all rows without a test split): one per class first, then in order."""
    rows = prepared.indices("test")
    if len(rows) == 0:
        rows = prepared.indices("all")
    return rows[one_per_class_first(np.asarray(prepared.labels[rows]), limit)]


def one_per_class_first(labels: np.ndarray, limit: int) -> np.ndarray:
    """Positions to show: the first of each class (in class order), then the others in order, up to `limit`."""
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in sorted(set(labels.tolist()))]
    chosen = set(firsts)
    rest = [i for i in range(len(labels)) if i not in chosen]
    return np.array((firsts + rest)[:limit], dtype=np.int64)


def predict_examples(run: Path, prepared: PreparedData, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images (N,S,S), ground-truth and predicted masks (N,S,S) bool and rows of a few test slices,
    predicted by the run's last checkpoint at its training size, on the CPU."""
    import torch

    from tumorcam.model import load_run_model
    from tumorcam.training.predict import predict_masks

    model, config = load_run_model(run, "last", "cpu")
    rows = example_rows(prepared, limit)
    images, masks = prepared.tensors(rows, config.train.size)
    predicted = predict_masks(model, images, len(rows), torch.device("cpu"), amp=False)
    return images[:, 0].numpy(), masks[:, 0].numpy() > 0.5, predicted[:, 0].numpy(), rows


# --- faithfulness ---------------------------------------------------------------------------------

@dataclass
class Curve:
    """One method's mean curves: {"deletion": (fraction, score), ...} and AUCs."""

    method: str
    label: str
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    auc: dict[str, float | None] = field(default_factory=dict)

    def get(self, game: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self.curves.get(game)


@dataclass
class CurveGroup:
    """The curves drawn in one row of Figure 4 (one baseline and score)."""

    title: str
    score_label: str
    curves: list[Curve]


GAMES = ("deletion", "insertion")


def _method_label(row: dict[str, Any], with_layer: bool) -> str:
    label = str(row.get("method", "?")) + (" x GT" if row.get("times_gt") else "")
    if with_layer and row.get("layer") not in (None, "input"):
        label += f" @ {row['layer']}"
    return label


def _is_random(row: dict[str, Any]) -> bool:
    return row.get("method") == "random"


def faithfulness_curves(faithfulness: dict[str, Any]) -> list[CurveGroup]:
    """Figure 4's panels from faithfulness.json: one group per (baseline, target), each with the
    mean curve and AUC of every trained-model method, and its random reference map."""
    fractions = np.asarray(faithfulness["fractions"], dtype=np.float64)
    rows = [r for r in faithfulness["results"] if r.get("model", "trained") == "trained"]
    layers = {r.get("layer") for r in rows if not _is_random(r) and r.get("layer") != "input"}
    score = str(faithfulness.get("score", "score"))
    groups = []
    for baseline in dict.fromkeys(r.get("baseline") for r in rows):
        in_baseline = [r for r in rows if r.get("baseline") == baseline]
        for target in dict.fromkeys(r.get("target") for r in in_baseline if not _is_random(r)):
            members = [r for r in in_baseline if r.get("target") == target and not _is_random(r)]
            references = []
            for r in members:
                ref = r.get("random_reference") or {}
                match = next((x for x in in_baseline if _is_random(x) and x.get("target") == ref.get("target")
                              and x.get("layer") == ref.get("layer")), None)
                if match is not None and match not in references:
                    references.append(match)
            curves = []
            for r in members + references:
                curve = Curve(method=str(r.get("method")), label=_method_label(r, len(layers) > 1))
                for game in GAMES:
                    summary = r.get(game) or {}
                    if summary.get("curve_mean") is not None:
                        values = np.array([np.nan if v is None else v for v in summary["curve_mean"]], np.float64)
                        curve.curves[game] = (fractions, values)
                    curve.auc[game] = summary.get("mean")
                curves.append(curve)
            groups.append(CurveGroup(title=f"baseline {baseline}, target {target}",
                                     score_label=f"model score ({score})", curves=curves))
    return groups


def faithfulness_tables(faithfulness: dict[str, Any]) -> list[Table]:
    """One table per game: AUC mean [95% CI] of each method, its random map's AUC beside it, the
    share of slices where the method beats random, the Wilcoxon p-value and the verdict."""
    rows = [r for r in faithfulness["results"] if r.get("model", "trained") == "trained"]
    tables = []
    for game in GAMES:
        direction = "lower" if game == "deletion" else "higher"
        body = []
        for r in rows:
            if _is_random(r):
                continue
            summary = r.get(game) or {}
            ref = r.get("random_reference") or {}
            random_row = next((x for x in rows if _is_random(x) and x.get("baseline") == r.get("baseline")
                               and x.get("target") == ref.get("target") and x.get("layer") == ref.get("layer")), None)
            test = summary.get("vs_random") or {}
            body.append([str(r.get("baseline")), str(r.get("target")), _method_label(r, False), str(r.get("layer")),
                         fmt_ci(summary), fmt_ci((random_row or {}).get(game)),
                         fmt(test.get("better_share"), 2), fmt_p(test.get("p_value")), str(test.get("verdict", "n/a"))])
        tables.append(Table(
            f"{game.capitalize()} AUC ({direction} is better), {fmt(faithfulness.get('n_slices'))} slices, "
            f"K = {fmt(faithfulness.get('steps'))} steps",
            ["baseline", "target", "method", "layer", "AUC [95% CI]", "random map AUC [95% CI]",
             "share of slices better than random", "p (Wilcoxon vs random)", "verdict"],
            body,
            "AUC: trapezoid of the mean-score curve over the fraction of pixels; CI: bootstrap over slices; "
            "p: two-sided Wilcoxon signed-rank test of the per-slice AUCs against the random map's; "
            "verdict at p < 0.05."))
    return tables


def faithfulness_summary(faithfulness: dict[str, Any]) -> list[str]:
    """One line per Grad-CAM row (the paper's method): its AUCs against the random map's, per baseline and target."""
    lines = []
    for r in faithfulness["results"]:
        if r.get("method") != "gradcam" or r.get("times_gt") or r.get("model", "trained") != "trained":
            continue
        parts = []
        for game in GAMES:
            summary = r.get(game) or {}
            verdict = (summary.get("vs_random") or {}).get("verdict", "n/a")
            parts.append(f"{game} AUC {fmt(summary.get('mean'))} ({verdict} than random)"
                         if verdict in ("better", "worse") else f"{game} AUC {fmt(summary.get('mean'))} ({verdict} from random)")
        lines.append(f"Grad-CAM, target {r.get('target')}, layer {r.get('layer')}, baseline {r.get('baseline')}: "
                     + "; ".join(parts) + ".")
    return lines


# --- localisation ---------------------------------------------------------------------------------

def _summaries(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The metric summaries of a result row: every value that is a dict with a "mean"."""
    return {k: v for k, v in row.items() if isinstance(v, dict) and "mean" in v}


def localization_tables(localization: dict[str, Any]) -> Table:
    """Each map's localisation metrics (mean [95% CI]) with the p-value against the random map of the
    same model (trained, and the network before fine-tuning)."""
    rows = localization["results"]
    metrics = list(dict.fromkeys(m for r in rows for m in _summaries(r)))
    body = []
    for r in rows:
        cells = [str(r.get("model", "trained")), _method_label(r, False), str(r.get("target")), str(r.get("layer"))]
        for metric in metrics:
            summary = r.get(metric) or {}
            test = summary.get("vs_random") or {}
            p = f"; p {fmt_p(test['p_value'])}" if test.get("p_value") is not None else ""
            cells.append(fmt_ci(summary) + p)
        body.append(cells)
    return Table(f"Localisation against the ground truth ({fmt(localization.get('n_slices'))} slices)",
                 ["model", "method", "target", "layer"] + [m.replace("_", " ") for m in metrics], body,
                 "Pointing game: share of slices whose map maximum lies in the tumour; energy pointing game: share "
                 "of the map's mass inside the tumour; top IoU: IoU of the map's top "
                 f"{fmt(localization.get('top_percent'), 1)}% pixels with the tumour. Higher is better; p: "
                 "Wilcoxon test against the random map.")


# --- sanity check ---------------------------------------------------------------------------------

@dataclass
class SanityPanel:
    """One metric of the sanity plot: the randomised layers (in order) and one line per method."""

    metric: str
    steps: list[str]
    lines: dict[str, list[float]]
    signed: bool
    threshold: float | None = None


def sanity_series(sanity: dict[str, Any]) -> list[SanityPanel]:
    """Per similarity metric (Spearman, SSIM), each method's mean similarity to its original maps after
    each cumulative step of the randomisation (sanity.json: "stages", results[].spearman/.ssim per stage)."""
    steps = [str(stage) for stage in sanity["stages"]]
    panels = []
    for metric, signed in (("spearman", True), ("ssim", True)):
        lines = {}
        for r in sanity["results"]:
            values = r.get(metric)
            if values is not None:
                label = f"{r.get('method')} ({r.get('target')})" + {True: "", False: " FAILS"}.get(r.get("passes"), " undetermined")
                lines[label] = [np.nan if v is None else float(v) for v in values]
        if lines:
            threshold = sanity.get("threshold") if metric == "spearman" else None
            panels.append(SanityPanel("Spearman rank correlation" if metric == "spearman" else "SSIM", steps, lines,
                                      signed, None if threshold is None else float(threshold)))
    return panels


def sanity_tables(sanity: dict[str, Any]) -> Table:
    """Pass or fail per method, with the similarity once every layer is randomised."""
    body = []
    for r in sanity["results"]:
        ssim = r.get("ssim") or [None]
        body.append([str(r.get("method")), str(r.get("target")), str(r.get("layer")),
                     fmt(r.get("final_spearman")), fmt(ssim[-1]), sanity_verdict(r)])
    return Table(f"Sanity check (cascading randomisation, {fmt(sanity.get('n_slices'))} slices)",
                 ["method", "target", "layer", "Spearman after full randomisation", "SSIM after full randomisation",
                  "result"], body,
                 f"A method fails when the maps of the fully randomised network keep a mean Spearman correlation "
                 f">= {fmt(sanity.get('threshold'), 2)} with the original maps.")


def sanity_verdict(row: dict[str, Any]) -> str:
    """"passes", "FAILS", or "undetermined" when every original map was flat (sanity.json passes = null)."""
    return {True: "passes", False: "FAILS"}.get(row.get("passes"), "undetermined (original maps flat)")


def sanity_summary(sanity: dict[str, Any]) -> list[str]:
    """One line: the methods that pass and fail; the random map, a control that ignores the weights, apart."""
    rows = [r for r in sanity["results"] if r.get("method") != "random"]
    passed = sorted({str(r.get("method")) for r in rows if r.get("passes")})
    failed = sorted({str(r.get("method")) for r in rows if r.get("passes") is False})
    line = "Sanity check: " + (f"passes: {', '.join(passed)}" if passed else "no method passes")
    line += f"; fails: {', '.join(failed)}" if failed else ""
    control = [r for r in sanity["results"] if r.get("method") == "random"]
    if control:
        line += ("; the random-map control fails, as it should (it ignores the weights)"
                 if not any(r.get("passes") for r in control) else "; the random-map control passes: check the test")
    return [line + "."]
