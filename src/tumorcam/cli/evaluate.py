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


STAGES: dict[str, Callable[[Path, Optional[Path], str, dict[str, Any]], str]] = {
    "segmentation": _segmentation,
}


def evaluate_command(
    run: Path = typer.Argument(..., help="Run folder (from `tumorcam train`)."),
    segmentation: bool = typer.Option(False, "--segmentation", help="Dice/IoU per slice, class, patient -> metrics.json."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared folder (default: the one the run trained on)."),
    split: str = typer.Option("test", "--split", help="test, val, train or all."),
    checkpoint: str = typer.Option("last", "--checkpoint", help="last (unet_trained.pth) or best (unet_best.pth)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (default auto)."),
) -> None:
    """Evaluate a trained run: the chosen stages, or all of them when none is chosen."""
    from tumorcam.training.device import resolve_device

    chosen = {"segmentation": segmentation}
    names = [name for name, on in chosen.items() if on] or list(STAGES)
    options = {"checkpoint": checkpoint, "device": resolve_device(device or "auto")}
    for name in names:
        typer.echo(STAGES[name](run, data, split, options))


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
