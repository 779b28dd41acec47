"""RUN/report.html of a run on volumes: the primary verdict first, orthogonal views of the maps
through the tumour centre, each sequence's share of the attribution, then the verdict tables.

It reads only the run folder (`tumorcam.runs.volumes` documents it) and draws with
`tumorcam.report.volumes`; the page's look is the slices' report's (`tumorcam.report.html`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tumorcam.io import optional_json, write_text
from tumorcam.report.figures import FigureResult, save_figure
from tumorcam.report.html import Glance, Section, render_page
from tumorcam.report.results import (Table, ci_cell, effect_phrase, fmt_ci, fmt_p, headline_of, method_name,
                                     sanity_word)

REPORT_FILE = "report.html"
FIGURES_DIR = "figures"
VIEWED_CASES = 3  # orthogonal views of the first cases of the split
HOW_TO_READ = (
    "The network outlines the tumour in each 3-D volume (a case: one patient's MRI sequences). A map "
    "shows which voxels pushed that outline: bright means strong influence, dark none. The views cut "
    "each volume in three planes through the centre of the ground-truth tumour.",
    "A map is a hypothesis, not a proof. Deletion removes the voxels a map ranks first and insertion "
    "shows only those: if the map is true, the network's tumour score falls fast (deletion, lower is "
    "better) or rises fast (insertion, higher is better). Every method is compared with a random map "
    "and with the network's own predicted mask: a map not shown to beat the predicted mask has not "
    "been shown to tell more than the outline the network already draws.",
    "The case is the unit: every mean and 95% interval is over cases, every test pairs cases. One map, "
    "fixed before the run, is primary: its four tests (against random and against the predicted mask, on "
    "deletion and insertion) are Holm-adjusted together and, with the sanity check, give the headline: "
    "supported (green), no-more-than-mask, unsupported or undetermined. Each verdict shows its effect "
    "size, the paired difference with its 95% interval over cases. Every other test is "
    "exploratory and its verdict uses a p-value adjusted (Holm) for how many tests there are. \"Not "
    "shown to differ\" means the data cannot tell the two apart, not that they are equal; with few "
    "cases, few tests can succeed.",
    "Sequences: each input channel's share of the attribution (integrated gradients) and how much the "
    "prediction changes when that sequence alone is blanked. Blanking shows what the network needs, "
    "which may be a sequence without tumour contrast that it uses as a reference.",
    "The sanity check scrambles the network's learned weights; a trustworthy map must change when "
    "that happens. This is a research tool: it is not validated for diagnosis.",
)


def _test_phrase(test: dict[str, Any] | None, reference: str) -> str:
    if not isinstance(test, dict):
        return "not tested"
    words = test.get("verdict") or "undetermined"
    if words in ("better", "worse"):
        words = f"{words} than {reference}"
    elif words == "not shown to differ":
        words = f"not shown to differ from {reference}"
    return (f"{words} (difference {effect_phrase(test)}; {test.get('test', 'wilcoxon')} on "
            f"{cases(test.get('n_pairs'))}, {_p(test.get('p_value'))}, Holm-adjusted over the {test.get('family')} family "
            f"{_p(test.get('p_adjusted'))})")


def cases(count: Any) -> str:
    """"1 case", "6 cases" ("? cases" when unknown)."""
    return f"{count} case" if count == 1 else f"{count} cases"


def _p(value: Any) -> str:
    """"p = 0.004" or "p < 0.001"."""
    text = fmt_p(value)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _primary_lead(faith: dict[str, Any]) -> list[str]:
    """The headline, then the primary map's four tests with their effect sizes."""
    primary = faith["primary"]
    rows = [r for r in faith["results"] if all(r.get(k) == v for k, v in primary.items())]
    lines = [headline_of(faith)["sentence"]]
    if not rows:
        return lines + ["No primary comparison in faithfulness.json."]
    row = rows[0]
    for name in ("deletion", "insertion"):
        summary = row[name]
        lines.append(f"Primary: {method_name(row['method'])} of the {row['target']} at {row['layer']}, "
                     f"{row['baseline']} baseline, {name} AUC {fmt_ci(summary)} (mean over "
                     f"{cases(summary.get('n_patients'))}, 95% bootstrap CI over cases): "
                     f"{_test_phrase(summary.get('vs_random'), 'random')}.")
    for name in ("deletion", "insertion"):
        lines.append(f"Against the predicted-mask control, {name}: "
                     f"{_test_phrase(row[name].get('vs_mask'), 'the predicted mask')}.")
    return lines


def _faithfulness_table(faith: dict[str, Any]) -> Table:
    rows = []
    for r in faith["results"]:
        cells = [method_name(r["method"]), r["baseline"]]
        for name in ("deletion", "insertion"):
            summary = r[name]
            cells += [fmt_ci(summary), _verdict_cell(summary.get("vs_random")), _verdict_cell(summary.get("vs_mask"))]
        rows.append(cells)
    return Table("Deletion (lower is better) and insertion (higher is better) AUC per case",
                 ["method", "baseline", "AUC [95% CI]", "vs random", "vs mask", "AUC [95% CI]", "vs random",
                  "vs mask"], rows,
                 note=f"Wilcoxon signed-rank on cases (each case one patient), n = {faith['n_cases']}; beside each "
                      "verdict the difference (Hodges-Lehmann estimate, 95% bootstrap CI over cases); p adjusted by "
                      "Holm (the primary map's four tests; every other test one exploratory family).",
                 groups=[("", 2), ("deletion", 3), ("insertion", 3)])


def _verdict_cell(test: dict[str, Any] | None) -> str:
    if not isinstance(test, dict):
        return "-"
    return f"{test.get('verdict')}, {effect_phrase(test)} (p_adj {fmt_p(test.get('p_adjusted'))})"


def _localization_table(loc: dict[str, Any]) -> Table:
    from tumorcam.evaluate.localization import METRICS

    rows = [[method_name(r["method"])] + [f"{fmt_ci(r[m])}; vs random {_verdict_cell(r[m].get('vs_random'))}"
                                          for m in METRICS] for r in loc["results"]]
    return Table("Localisation of the ground truth", ["method", *METRICS], rows,
                 note=f"Per case, then mean over {cases(loc['n_cases'])} with a 95% bootstrap CI; Wilcoxon "
                      "signed-rank on cases; Holm over the file, exploratory.")


def _channels_lead(channels: dict[str, Any]) -> str:
    summary = channels["summary"]
    per_channel = summary.get("channels", {})
    if not per_channel:
        return "No per-sequence attribution."
    top = summary.get("top_channel")
    if top is None:
        return "Sequences: no case has an attribution (nothing predicted)."
    drop = per_channel[top]["dice_drop"]
    return (f"Sequences: {top} carries the largest share of the attribution, {fmt_ci(per_channel[top]['share'])}; "
            f"replacing it by its {channels['ablation_baseline']} baseline lowers the Dice of the prediction by "
            f"{fmt_ci(drop)} (means over cases, 95% bootstrap CIs over cases).")


def _channels_table(channels: dict[str, Any]) -> Table:
    per_channel = channels["summary"].get("channels", {})
    rows = []
    tests = {t["channel"]: t for t in channels["summary"].get("tests", []) if t.get("kind") == "dice_drop_vs_zero"}
    for name, values in per_channel.items():
        test = tests.get(name)
        rows.append([name, fmt_ci(values["share"]), fmt_ci(values["dice_drop"]),
                     "-" if not isinstance(test, dict) else f"{test.get('verdict')} (p_adj {fmt_p(test.get('p_adjusted'))})"])
    return Table("Per-sequence attribution and channel ablation", ["sequence", "share of |attribution|",
                                                                     "Dice drop when ablated", "drop vs 0"], rows,
                 note=f"Shares from {channels['method']}; ablation replaces one sequence by its "
                      f"{channels['ablation_baseline']} baseline. Wilcoxon on cases, Holm over the file's tests.")


def _sanity_table(sanity: dict[str, Any]) -> Table:
    if "stages" not in sanity:
        return Table("Sanity check", ["note"], [[sanity.get("skipped", "not run")]])
    row = (sanity.get("results") or [{}])[0]
    stage_cis = (row.get("mean_abs_spearman_ci") or [None] * len(sanity["stages"]),
                 row.get("ssim_ci") or [None] * len(sanity["stages"]))
    rows = [[stage, ci_cell(rho, rho_ci), ci_cell(s, s_ci), str(n)] for stage, rho, s, n, rho_ci, s_ci in
            zip(sanity["stages"], sanity["mean_abs_spearman"], sanity["mean_ssim"], sanity["n_compared"], *stage_cis)]
    verdict = sanity_word(sanity)
    if verdict == "undetermined" and sanity.get("reason"):
        verdict += f" ({sanity['reason']})"
    patients = row.get("n_patients", sanity["n_cases"])
    return Table(f"Sanity check of {method_name(sanity['method'])}: {verdict}",
                 ["randomized up to", "mean |Spearman| [95% CI]", "mean SSIM [95% CI]", "cases"], rows,
                 note=f"Cascading randomization on {cases(sanity['n_cases'])}, {patients} compared, each case one "
                      f"patient; means over cases inside each volume's foreground, 95% bootstrap CIs over cases. "
                      f"Fails when the CI of the fully randomized model's mean |rho| or mean SSIM lies at or above "
                      f"{sanity['threshold']}, passes when both lie below it, undetermined otherwise or with fewer "
                      f"than {cases(sanity.get('min_patients', 5))} compared.")


def _view_figures(run: Path, index: dict[str, Any], folder: Path) -> list[FigureResult]:
    from tumorcam.data.volumes import load_volumes
    from tumorcam.report.volumes import draw_orthogonal_views
    from tumorcam.runfolder.folder import data_folder

    prepared = load_volumes(data_folder(run, index["prepared"]))
    row_of = {str(c): i for i, c in enumerate(prepared.case_ids)}
    methods = [e for e in index["entries"] if e["method"] != "random"]
    maps = {e["method"]: np.load(run / "explanations" / e["file"], mmap_mode="r") for e in methods}
    shapes = index.get("shapes")  # each map row's own grid, padded to the cube in the files (an nnU-Net run)
    figures = []
    for i, case in enumerate((index.get("map_cases") or index["case_ids"])[:VIEWED_CASES]):
        row = row_of[case]
        crop = (...,) if shapes is None else (..., *(slice(0, int(n)) for n in shapes[i]))
        volume = np.asarray(prepared.images[row][crop], dtype=np.float32)
        mask = np.asarray(prepared.masks[row][crop], dtype=bool)
        predicted = (np.asarray(maps["predicted-mask"][i][crop], dtype=np.float32) > 0.5
                     if "predicted-mask" in maps else None)
        shown = {method_name(m): np.asarray(v[i][crop], dtype=np.float32) for m, v in maps.items()
                 if m != "predicted-mask"}
        shown_channel = view_channel(index.get("channels", []))
        names = index.get("channels") or []
        fig = draw_orthogonal_views(volume, shown, mask, predicted, channel_index=shown_channel,
                                    channel_name=names[shown_channel] if names else None, title=f"case {case}")
        path = save_figure(fig, folder / f"views_{case}.png")
        figures.append(FigureResult(key=f"views_{case}", title=f"Case {case}: axial, coronal and sagittal planes",
                                    caption="Planes through the centre of the ground-truth tumour (array order, "
                                            "not RAS); outline: ground truth and prediction; colours: the map.",
                                    path=path))
    return figures


def view_channel(channels: list[str]) -> int:
    """The sequence shown under the maps, of the dataset's `channels`: FLAIR when there is one, else the first."""
    names = [str(c).upper() for c in channels]
    return names.index("FLAIR") if "FLAIR" in names else 0


def model_phrase(settings: dict[str, Any]) -> str:
    """The model of a run on volumes as its report names it, from its volume_config.json: "model
    MODULE:FACTORY", or for an nnU-Net model's run (its "nnunet" record) "nnU-Net model FOLDER
    (configuration, folds, checkpoint), label NAME"."""
    nnunet = settings.get("nnunet")
    if isinstance(nnunet, dict):
        folds = nnunet.get("folds") or ["?"]
        return (f"nnU-Net model {nnunet.get('folder', '?')} (configuration {nnunet.get('configuration', '?')}, "
                f"fold{'' if len(folds) == 1 else 's'} {', '.join(map(str, folds))}, {nnunet.get('checkpoint', '?')}), "
                f"label {nnunet.get('label', '?')}")
    model = settings.get("model", "?")  # MODULE:FACTORY in model.network, or (earlier runs) model itself
    return f"model {model.get('network', '?') if isinstance(model, dict) else model}"


def build_volume_report(run: str | Path) -> Path:
    """Write RUN/figures/*.png and RUN/report.html of a run on volumes; return the page's path."""
    from tumorcam.report.volumes import draw_channel_shares

    run = Path(run)
    folder = run / FIGURES_DIR
    folder.mkdir(exist_ok=True)
    index = optional_json(run / "explanations" / "index.json") or {}
    faith = optional_json(run / "faithfulness.json")
    loc = optional_json(run / "localization.json")
    channels = optional_json(run / "channels.json")
    sanity = optional_json(run / "sanity.json")
    segmentation = optional_json(run / "segmentation.json")
    lead = _primary_lead(faith) if faith else ["No faithfulness.json."]
    if channels:
        lead.append(_channels_lead(channels))
    if segmentation:
        lead.append(f"Segmentation: Dice {fmt_ci(segmentation['dice'])} over {cases(segmentation['n_cases'])} "
                    "(95% bootstrap CI over cases).")
    sections = [Section("views", "Maps in three planes", _view_figures(run, index, folder) if index else [], [],
                        [] if index else ["no explanations/index.json"])]
    if channels:
        fig = save_figure(draw_channel_shares(channels["summary"], title="Share of attribution and Dice drop per sequence"),
                    folder / "channels.png")
        sections.append(Section("channels", "Which sequence the model relies on",
                                [FigureResult("channels", "Per-sequence attribution", "Means over cases with 95% "
                                              "bootstrap CIs over cases.", path=fig)], [_channels_table(channels)], []))
    tables = []
    if faith:
        tables.append(_faithfulness_table(faith))
    if loc:
        tables.append(_localization_table(loc))
    if sanity:
        tables.append(_sanity_table(sanity))
    sections.append(Section("verdicts", "Is the explanation true?", [], tables, []))
    settings = optional_json(run / "volume_config.json") or {}
    subtitle = (f"{cases(index.get('n_cases', '?'))} of the {index.get('split', '?')} split of "
                f"{index.get('data', '?')}, {model_phrase(settings)}")
    level = headline_of(faith)["level"] if faith else None
    page = render_page(run_name=run.name, subtitle=subtitle, glance=Glance(lead=lead, tables=[], notes=[], level=level),
                       sections=sections, config=settings, provenance=None, how_to_read=HOW_TO_READ)
    path = run / REPORT_FILE
    write_text(path, page)
    return path
