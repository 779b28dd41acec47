"""`tumorcam evaluate RUN [--segmentation] ...`: each flag runs one evaluation stage's API.

A stage is one entry of `STAGES` (flag name -> function(run, data, split, options) -> summary
line). With no stage flag, every stage runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer


def _segmentation(run: Path, data: Optional[Path], split: str, options: dict[str, Any]) -> str:
    from tumorcam.evaluate.segmentation import evaluate_segmentation

    doc = evaluate_segmentation(run, data=data, split=split, checkpoint=options["checkpoint"],
                                device=options["device"])
    overall = doc["overall"]
    per_class = "  ".join(f"{name} {c['dice']['mean']:.3f}" for name, c in doc["per_class"].items())
    return (f"segmentation ({split}, {overall['n']} slices): Dice {overall['dice']['mean']:.4f}  "
            f"IoU {overall['iou']['mean']:.4f}  [{per_class}] -> {run / 'metrics.json'}")


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def _faithfulness(run: Path, data: Optional[Path], split: str, options: dict[str, Any]) -> str:
    from tumorcam.evaluate.faithfulness import evaluate_faithfulness

    doc = evaluate_faithfulness(run, data=data, split=split, steps=options["steps"], baselines=options["baselines"],
                                score=options["score"], batch_size=options["batch_size"], device=options["device"])
    lines = [f"faithfulness ({doc['split']}, {doc['n_slices']} slices, K={doc['steps']}, {doc['score']}, "
             f"{doc['seconds']:.1f} s) -> {run / 'faithfulness.json'}"]
    for row in doc["results"]:
        verdicts = "/".join(row[c].get("vs_random", {}).get("verdict", "-") for c in ("deletion", "insertion"))
        lines.append(f"  {row['baseline']:<5} {row['method']:<22} {row['target']:<17} {row['layer']:<17} "
                     f"deletion AUC {_fmt(row['deletion']['mean'])}  insertion AUC {_fmt(row['insertion']['mean'])}  "
                     f"vs random: {verdicts}")
    return "\n".join(lines)


def _localization(run: Path, data: Optional[Path], split: str, options: dict[str, Any]) -> str:
    from tumorcam.evaluate.localization import evaluate_localization

    doc = evaluate_localization(run, data=data, split=split, top_percent=options["top_percent"])
    lines = [f"localization ({doc['split']}, {doc['n_with_tumour']} slices with tumour, top {doc['top_percent']}%) "
             f"-> {run / 'localization.json'}"]
    for row in doc["results"]:
        values = "  ".join(f"{m} {row[m]['mean']:.3f}" if row[m]["mean"] is not None else f"{m} -"
                           for m in ("pointing_game", "energy_pointing_game", "top_iou"))
        lines.append(f"  {row['model']:<9} {row['method']:<22}{' x GT' if row['times_gt'] else '     '} "
                     f"{row['target']:<17} {row['layer']:<17} {values}")
    return "\n".join(lines)


def _sanity(run: Path, data: Optional[Path], split: str, options: dict[str, Any]) -> str:
    from tumorcam.evaluate.sanity import evaluate_sanity

    doc = evaluate_sanity(run, data=data, split=split, device=options["device"])
    lines = [f"sanity ({doc['n_slices']} slices, {len(doc['stages'])} layers randomised, fail if final Spearman "
             f">= {doc['threshold']}) -> {run / 'sanity.json'}"]
    for row in doc["results"]:
        verdict = {True: "pass", False: "FAIL"}.get(row["passes"], "undetermined (original maps flat)")
        lines.append(f"  {row['method']:<22} {row['target']:<17} {row['layer']:<17} final Spearman "
                     f"{_fmt(row['final_spearman'])}  {verdict}")
    return "\n".join(lines)


STAGES: dict[str, Callable[[Path, Optional[Path], str, dict[str, Any]], str]] = {
    "segmentation": _segmentation,
    "faithfulness": _faithfulness,
    "localization": _localization,
    "sanity": _sanity,
}


def evaluate_command(
    run: Path = typer.Argument(..., help="Run folder (from `tumorcam train`)."),
    segmentation: bool = typer.Option(False, "--segmentation", help="Dice/IoU per slice, class, patient -> metrics.json."),
    faithfulness: bool = typer.Option(False, "--faithfulness", help="Deletion/Insertion curves and AUC -> faithfulness.json."),
    localization: bool = typer.Option(False, "--localization", help="Pointing game, energy, top-p% IoU -> localization.json."),
    sanity: bool = typer.Option(False, "--sanity", help="Cascading layer randomisation -> sanity.json."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Deletion/Insertion steps K (default: the run's config, 50)."),
    baselines: Optional[str] = typer.Option(None, "--baselines", help="Comma list of zero, blur, mean, road."),
    score: Optional[str] = typer.Option(None, "--score", help="mean-sigmoid (the seed's) or predicted-region."),
    top_percent: Optional[float] = typer.Option(None, "--top-percent", help="Localisation: IoU of the top p% of the map."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Perturbed slices per forward (Deletion/Insertion)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared folder (default: the one the run trained on)."),
    split: Optional[str] = typer.Option(None, "--split", help="test, val, train or all (default: the run's config.evaluate.split)."),
    checkpoint: str = typer.Option("last", "--checkpoint", help="last (unet_trained.pth) or best (unet_best.pth)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (default auto)."),
) -> None:
    """Evaluate a trained run: the chosen stages, or all of them when none is chosen."""
    from tumorcam.training.device import resolve_device

    chosen = {"segmentation": segmentation, "faithfulness": faithfulness, "localization": localization, "sanity": sanity}
    names = [name for name, on in chosen.items() if on] or list(STAGES)
    options = {"checkpoint": checkpoint, "device": resolve_device(device or "auto"), "steps": steps,
               "baselines": [b.strip() for b in baselines.split(",") if b.strip()] if baselines is not None else None,
               "score": score, "top_percent": top_percent, "batch_size": batch_size}
    split = split or _configured_split(run)
    for name in names:
        typer.echo(STAGES[name](run, data, split, options))


def _configured_split(run: Path) -> str:
    """The split the run's config evaluates (`test`, or `val` for data without a test split)."""
    from tumorcam.config import Config

    return Config.load(run / "config.json").evaluate.split if (run / "config.json").is_file() else "test"


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
