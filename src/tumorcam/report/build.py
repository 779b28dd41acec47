"""`build_report(run)`: draw the figures into RUN/figures/ and write RUN/report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tumorcam.io import optional_json, write_text
from tumorcam.report import results
from tumorcam.report.contents import RunContents, Section as Part, load_run_contents
from tumorcam.report.figures import FigureResult, make_figures
from tumorcam.report.html import Glance, Section, render_page

REPORT_FILE = "report.html"
FIGURES_DIR = "figures"


def build_report(run: str | Path) -> Path:
    """Figures (RUN/figures/*.png) and the self-contained RUN/report.html of a run.

    Sections whose inputs the run lacks are shown as "not available", with the reason.

    Args:
        run: the run folder.

    Returns:
        The path of RUN/report.html.

    Raises:
        TumorcamError: for a folder that is not a run (no config.json), or explanations whose file ids
            are not in the prepared data.
    """
    run = Path(run)
    contents = load_run_contents(run)
    figures = {f.key: f for f in make_figures(contents, run / FIGURES_DIR)}
    sections = _sections(contents, figures)
    config = contents.config.value
    page = render_page(
        run_name=run.resolve().name,
        subtitle=_subtitle(contents),
        glance=_glance(contents),
        sections=sections,
        config=config,
        provenance=optional_json(run / "provenance.json"),
    )
    path = run / REPORT_FILE
    write_text(path, page)
    return path


def _tables(part: Part, make: Any) -> tuple[list[results.Table], list[str]]:
    """Tables from a run section, or the reason it is missing (also when its shape is not the documented one)."""
    if not part.present:
        return [], [part.reason]
    try:
        made = make(part.value)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return [], [f"it does not have the documented shape ({type(exc).__name__}: {exc})"]
    return (made if isinstance(made, list) else [made]), []


def _sections(contents: RunContents, figures: dict[str, FigureResult]) -> list[Section]:
    segmentation, seg_missing = _tables(contents.metrics, results.segmentation_table)
    faithfulness, faith_missing = _tables(contents.faithfulness, results.faithfulness_tables)
    localization, loc_missing = _tables(contents.localization, results.localization_tables)
    sanity, sanity_missing = _tables(contents.sanity, results.sanity_tables)
    return [
        Section("data", "The data", [figures["fig1_classes"]], [], []),
        Section("explanations", "Explanations", [figures["fig2_untrained_gradcam"], figures["fig3_gradcam_times_gt"]],
                [], []),
        Section("faithfulness", "Is the explanation true?", [figures["fig4_deletion_insertion"]],
                faithfulness + localization, faith_missing + loc_missing,
                intro="Deletion/Insertion asks the network itself: does removing what the map calls important "
                      "change its tumour score? Localisation asks whether the map falls on the expert's tumour. "
                      "Every number is per patient (a patient's slices averaged first); the verdicts at a glance "
                      "are repeated here with the reference maps' own values."),
        Section("segmentation", "Segmentation", [figures["fig5_predicted_mask"], figures["training_curves"]],
                segmentation, seg_missing),
        Section("sanity", "Sanity check", [figures["sanity_check"]], sanity, sanity_missing),
    ]


def _subtitle(contents: RunContents) -> str:
    config = contents.config.value
    parts = [f"preset {config.get('preset', '?')}"]
    if contents.prepared.present:
        parts.append(f"data: {_source(contents.prepared.value.manifest.get('source'), contents.prepared.value.root)}")
        parts.append(f"{len(contents.prepared.value)} slices")
    model = config.get("model", {})
    parts.append(f"U-Net ({model.get('encoder', '?')}, encoder weights {model.get('encoder_weights', '?')})")
    return " · ".join(parts)


def _source(source: Any, root: Path) -> str:
    """The manifest's source as text: its kind and paths, or the prepared folder when it says nothing."""
    if isinstance(source, dict):
        paths = source.get("paths") or []
        return f"{source.get('kind', 'data')} {', '.join(map(str, paths))}".strip()
    return str(source) if source else str(root)


def _glance(contents: RunContents) -> Glance:
    """"At a glance": the faithfulness verdicts (the primary comparison first) and their tables, then
    the segmentation and sanity lines and what is missing."""
    lead: list[str] = []
    tables: list[results.Table] = []
    level = None
    if contents.faithfulness.present:
        try:
            lead = results.glance_sentences(contents.faithfulness.value)
            tables = results.glance_tables(contents.faithfulness.value)
            level = results.headline_of(contents.faithfulness.value)["level"]
        except (KeyError, TypeError, ValueError):
            lead, tables = [], []
    notes = []
    if contents.metrics.present:
        try:
            overall = contents.metrics.value["overall"]
            notes.append(f"Segmentation on {contents.metrics.value.get('split', 'test')} slices: Dice "
                         f"{results.fmt_ci(overall['dice'])}, IoU {results.fmt_ci(overall['iou'])} "
                         f"(mean [95% CI], n = {results.fmt(overall['dice'].get('n'))}).")
        except (KeyError, TypeError):
            pass
    if contents.sanity.present:
        try:
            notes += results.sanity_summary(contents.sanity.value)
        except (KeyError, TypeError, ValueError):
            pass
    for part in (contents.history, contents.metrics, contents.explanations, contents.faithfulness,
                 contents.localization, contents.sanity, contents.prepared):
        if not part.present:
            notes.append(f"Missing: {part.reason}.")
    return Glance(lead, tables, notes, level)


