"""`tumorcam evaluate RUN [--segmentation] ...`: each flag runs one evaluation stage's API.

A stage is one entry of `STAGES` (flag name -> function(run, data, split, options) -> summary
line). With no stage flag, every stage runs. Before the stages that read RUN/explanations
(`MAP_STAGES`), maps that are missing or do not fit (`tumorcam.runs.inputs.check_maps`: another
split, other slices, other weights) are made first by the explain step, with a note.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from tumorcam.cli._command import Command, THREADS_HELP, echo_headline, use_threads

if TYPE_CHECKING:
    from tumorcam.runfolder.folder import Run


def _segmentation(run: Path, data: Optional[Path], split: str, options: dict[str, Any]) -> str:
    from tumorcam.runs.segmentation import evaluate_segmentation

    doc = evaluate_segmentation(run, data=data, split=split, checkpoint=options["checkpoint"],
                                device=options["device"])
    overall = doc["overall"]
    per_class = "  ".join(f"{name} {c['dice']['mean']:.3f}" for name, c in doc["per_class"].items())
    return (f"segmentation ({split}, {overall['n']} slices): Dice {overall['dice']['mean']:.4f}  "
            f"IoU {overall['iou']['mean']:.4f}  [{per_class}] -> {run / 'metrics.json'}")


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def _faithfulness(run: Path, data: Optional[Path], split: str, options: dict[str, Any]) -> str:
    from tumorcam.runs.faithfulness import evaluate_faithfulness

    doc = evaluate_faithfulness(run, data=data, split=split, steps=options["steps"], baselines=options["baselines"],
                                score=options["score"], schedule=options["schedule"], batch_size=options["batch_size"],
                                device=options["device"], patients=options.get("patients"),
                                slices_per_patient=options.get("slices_per_patient"))
    lines = [f"faithfulness ({doc['split']}, {doc['n_patients']} patients, {doc['n_slices']} slices, K={doc['steps']} "
             f"{doc['schedule']}, score {doc['score']}, {doc['seconds']:.1f} s) -> {run / 'faithfulness.json'}",
             "  verdicts deletion/insertion, Holm-adjusted; patient means"]
    for row in doc["results"]:
        verdicts = {ref: "/".join((row[c].get(ref) or {}).get("verdict", "-") for c in ("deletion", "insertion"))
                    for ref in ("vs_random", "vs_mask")}
        lines.append(f"  {row['baseline']:<5} {row['method']:<22} {row['target']:<17} {row['layer']:<17} "
                     f"{row['score']:<17} deletion AUC {_fmt(row['deletion']['mean'])}  "
                     f"insertion AUC {_fmt(row['insertion']['mean'])}  vs random: {verdicts['vs_random']}  "
                     f"vs mask: {verdicts['vs_mask']}")
    return "\n".join(lines)


def _localization(run: Path, data: Optional[Path], split: str, options: dict[str, Any]) -> str:
    from tumorcam.evaluate.localization import METRICS
    from tumorcam.runs.localization import evaluate_localization

    doc = evaluate_localization(run, data=data, split=split, top_percent=options["top_percent"],
                                patients=options.get("patients"), slices_per_patient=options.get("slices_per_patient"))
    lines = [f"localization ({doc['split']}, {doc['n_patients']} patients, {doc['n_with_tumour']} of {doc['n_slices']} "
             f"slices with tumour, top {doc['top_percent']}%) -> {run / 'localization.json'}",
             "  patient means; verdicts vs random / vs mask, Holm-adjusted (all exploratory)"]
    for row in doc["results"]:
        values = "  ".join(f"{m} {_fmt(row[m]['mean'])} ({(row[m].get('vs_random') or {}).get('verdict', '-')}/"
                           f"{(row[m].get('vs_mask') or {}).get('verdict', '-')})" for m in METRICS)
        lines.append(f"  {row['model']:<9} {row['method']:<22}{' x GT' if row['times_gt'] else '     '} "
                     f"{row['target']:<17} {row['layer']:<17} {values}")
    return "\n".join(lines)


def _sanity(run: Path, data: Optional[Path], split: str, options: dict[str, Any]) -> str:
    from tumorcam.runs.sanity import evaluate_sanity

    doc = evaluate_sanity(run, data=data, split=split, device=options["device"], patients=options.get("patients"),
                          slices_per_patient=options.get("slices_per_patient"))
    lines = [f"sanity ({doc['n_slices']} slices of {doc.get('n_patients')} patients, {len(doc['stages'])} layers "
             f"randomised; passes when the 95% CIs over patients of the final mean |Spearman| and SSIM lie below "
             f"{doc['threshold']}, fails when one lies above) -> {run / 'sanity.json'}"]
    for row in doc["results"]:
        verdict = row.get("verdict", "undetermined")
        if row.get("reason"):
            verdict += f": {row['reason']}"
        low, high = (row.get("final_mean_abs_spearman_ci") or [None, None])
        lines.append(f"  {row['method']:<22} {row['target']:<17} {row['layer']:<17} final mean |Spearman| "
                     f"{_fmt(row['final_mean_abs_spearman'])} [{_fmt(low)}, {_fmt(high)}]  SSIM "
                     f"{_fmt(row['final_ssim'])}  ({row.get('n_patients')} patients)  {verdict}")
    return "\n".join(lines)


STAGES: dict[str, Callable[[Path, Optional[Path], str, dict[str, Any]], str]] = {
    "segmentation": _segmentation,
    "faithfulness": _faithfulness,
    "localization": _localization,
    "sanity": _sanity,
}
MAP_STAGES = ("faithfulness", "localization", "sanity")


def evaluate_command(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder (from `tumorcam train`, or `tumorcam run "
                               "--volumes`: its maps, model and volumes; the slices' sampling options do not apply)."),
    segmentation: bool = typer.Option(False, "--segmentation", help="Dice/IoU per slice, class, patient -> metrics.json."),
    faithfulness: bool = typer.Option(False, "--faithfulness", help="Deletion/Insertion curves and AUC -> faithfulness.json."),
    localization: bool = typer.Option(False, "--localization", help="Pointing game, energy, top-p% IoU -> localization.json."),
    sanity: bool = typer.Option(False, "--sanity", help="Cascading layer randomisation -> sanity.json."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Deletion/Insertion steps K (default: the run's config.evaluate.steps)."),
    baselines: Optional[str] = typer.Option(None, "--baselines", help="Comma list of {baselines} (default: the run's config.evaluate.baselines)."),
    score: Optional[str] = typer.Option(None, "--score", help="target (each map's own), mean-sigmoid (the seed's), predicted-region or dice."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="log (fractions 1e-3..1, log-spaced) or uniform (k/K, the seed's)."),
    top_percent: Optional[float] = typer.Option(None, "--top-percent", help="Localisation: IoU of the top p% of the map."),
    patients: Optional[int] = typer.Option(None, "--patients", help="Maps of a seeded sample of N patients spread over "
                                           "classes; re-explains when RUN/explanations holds others (default: as they are)."),
    slices_per_patient: Optional[int] = typer.Option(None, "--slices-per-patient", help="Maps of at most K slices per "
                                                     "patient; re-explains likewise (default: as they are)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Perturbed slices per forward (Deletion/Insertion)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared folder (default: the one the run trained on)."),
    split: Optional[str] = typer.Option(None, "--split", help="test, val, train or all (default: the run's config.evaluate.split)."),
    checkpoint: str = typer.Option("last", "--checkpoint", help="last (unet_trained.pth) or best (unet_best.pth)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (default: the run's "
                                         "config.train.device)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=0, metavar="N", help=THREADS_HELP),
) -> None:
    """Evaluate a run (trained, or on volumes): the chosen stages, or all of them when none is chosen."""
    from tumorcam.errors import TumorcamError
    from tumorcam.runfolder.folder import Run, is_nnunet_run, is_volume_run
    from tumorcam.runs.shard import is_main_process
    from tumorcam.training.distributed import refuse_under_torchrun

    use_threads(threads)

    chosen = {"segmentation": segmentation, "faithfulness": faithfulness, "localization": localization, "sanity": sanity}
    names = [name for name, on in chosen.items() if on] or list(STAGES)
    if is_nnunet_run(run):
        raise TumorcamError(f"run {run}: the run of an nnU-Net model is evaluated by the run itself; re-run `tumorcam "
                            f"run --nnunet MODEL_FOLDER --data NNUNET_RAW --out {run}` to evaluate it again",
                            param="run")
    if is_volume_run(run):
        refuse_under_torchrun("evaluate RUN (a run on volumes)")
        _refuse_for_volumes({"patients": patients, "slices_per_patient": slices_per_patient, "data": data,
                             "split": split, "checkpoint": None if checkpoint == "last" else checkpoint})
        _evaluate_volumes(run, names, device, {"steps": steps, "baselines": _names(baselines), "score": score,
                                               "schedule": schedule, "batch_size": batch_size,
                                               "top_percent": top_percent})
        return
    folder = Run.open(run, device=device)
    options = {"checkpoint": checkpoint, "device": device, "steps": steps,
               "baselines": _names(baselines),
               "score": score, "schedule": schedule, "top_percent": top_percent, "batch_size": batch_size,
               "patients": patients, "slices_per_patient": slices_per_patient}
    split = split or folder.config.evaluate.split
    if any(name in MAP_STAGES for name in names):
        _explain_first(folder, data, split, patients, slices_per_patient)
    main = is_main_process()  # under torchrun the map stages shard their patients; rank 0 alone reports
    for name in names:
        if name in MAP_STAGES or main:
            summary = STAGES[name](run, data, split, options)
            if main:
                typer.echo(summary)
    if main and {"faithfulness", "sanity"} & set(names):
        echo_headline(run)  # after both: the sanity stage completes the headline


def _names(text: Optional[str]) -> Optional[list[str]]:
    """A comma list (`--baselines zero,blur`) as names; None when not given."""
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def _refuse_for_volumes(given: dict[str, Any]) -> None:
    """Options of the slices' evaluation that a run on volumes has no use for: one error for the first given."""
    from tumorcam.errors import TumorcamError

    for name, value in given.items():
        if value is not None:
            raise TumorcamError(f"{name}: a run on volumes is evaluated on its own cases, maps and prepared volumes "
                                "(volume_config.json); leave it out", param=name)


def _evaluate_volumes(run: Path, names: list[str], device: Optional[str], replace: dict[str, Any]) -> None:
    """The stages `names` of a run on volumes (`volumes.stages.evaluate_volume_run`), a line per file,
    then the headline."""
    from tumorcam.runs.volume_stages import evaluate_volume_run

    docs = evaluate_volume_run(run, names, device=device or "auto", **replace)
    for name, doc in docs.items():
        typer.echo(f"{name} ({doc['split']}, {_cases(doc['n_cases'])}) -> {run / f'{name}.json'}")
    if {"faithfulness", "sanity"} & set(names):
        echo_headline(run)


def _cases(count: int) -> str:
    return f"{count} case" if count == 1 else f"{count} cases"


def _explain_first(run: Run, data: Optional[Path], split: str, patients: Optional[int],
                   slices_per_patient: Optional[int]) -> None:
    """Run the explain step when RUN/explanations is missing or does not fit the evaluation."""
    from tumorcam.runs.inputs import check_maps, explain_again

    check = check_maps(run, data=data, split=split, patients=patients, slices_per_patient=slices_per_patient)
    if check.reason is not None:
        typer.echo(f"note: {check.reason}; running `tumorcam explain` first", err=True)
        explain_again(run, check, data=data)


def register(app: typer.Typer) -> None:
    app.command("evaluate", cls=Command)(evaluate_command)
