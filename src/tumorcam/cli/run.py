"""`tumorcam run`: every stage end to end (data, prepare, train, explain, evaluate, report)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def run_command(
    data: Optional[Path] = typer.Option(
        None, "--data", help="Prepared folder, folder of .mat files, figshare zip(s) or PNG folder "
                             "(default: the embedded synthetic dataset)."),
    preset: str = typer.Option("demo", "--preset", help="demo (CPU, minutes) or paper (the seed's settings, GPU)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: runs/<preset>)."),
    force: bool = typer.Option(False, "--force", help="Redo every stage, even those done earlier."),
    encoder_weights: Optional[str] = typer.Option(
        None, "--encoder-weights", help="imagenet, none, or PATH to a local encoder state_dict/safetensors."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="A config.json to use instead of the preset (every setting of every stage)."),
    synthetic_patients: int = typer.Option(60, "--synthetic-patients", help="Patients of the synthetic dataset (no --data)."),
    synthetic_slices: int = typer.Option(4, "--synthetic-slices", help="Slices per synthetic patient (no --data)."),
    prepare_size: int = typer.Option(256, "--prepare-size", help="Side of the prepared slices (when --data is not prepared)."),
) -> None:
    """Run the whole pipeline into one run folder, skipping the stages already done; print the report's path."""
    from tumorcam.config import Config
    from tumorcam.pipeline import run_pipeline

    report = run_pipeline(
        out=out if out is not None else Path("runs") / preset,
        data=data,
        preset=preset,
        force=force,
        config=Config.load(config) if config is not None else None,
        encoder_weights=encoder_weights,
        device=device,
        prepare_size=prepare_size,
        synthetic_patients=synthetic_patients,
        synthetic_slices=synthetic_slices,
        log=lambda line: typer.echo(line, err=True),
    )
    typer.echo(str(report))


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
