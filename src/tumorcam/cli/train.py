"""`tumorcam train --data DIR --out RUN`: fine-tune the U-Net (see `tumorcam.training.train`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tumorcam.cli._command import Command, THREADS_HELP, use_threads


def train_command(
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared folder (`tumorcam data prepare`). "
                                        "With --resume, defaults to the run's own."),
    out: Path = typer.Option(..., "--out", help="Run folder to write (checkpoints, history, metrics)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="paper (the seed's recipe, default) or demo "
                                         "(CPU minutes). With --resume, the run's own config is the base."),
    encoder_weights: Optional[str] = typer.Option(None, "--encoder-weights", help="imagenet, none, or PATH "
                                                  "to a local encoder state_dict/safetensors file."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Total epochs (with --resume: train up to this)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Training batch size (per GPU under torchrun)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate."),
    size: Optional[int] = typer.Option(None, "--size", help="Training input size (a multiple of 32)."),
    loss: Optional[str] = typer.Option(None, "--loss", help="bce (the seed's) or dice+bce."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="constant (the seed's) or cosine."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Flips, small rotations, intensity."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN from its train_state.pth."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    compile_model: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of weights init, batch order and augmentation."),
    threads: Optional[int] = typer.Option(None, "--threads", min=0, metavar="N", help=THREADS_HELP),
) -> None:
    """Fine-tune the U-Net: validation Dice/IoU every epoch, best and last checkpoints, resume.

    Several GPUs: torchrun --standalone --nproc_per_node=N --no-python tumorcam train ...
    """
    from tumorcam.config import preset as preset_config
    from tumorcam.errors import TumorcamError
    from tumorcam.runfolder.folder import CONFIG_FILE, Run
    from tumorcam.training import train

    use_threads(threads)
    if resume and preset is None and (out / CONFIG_FILE).is_file():
        config = Run.open(out).config
    else:
        config = preset_config(preset or "paper")
    if data is not None:
        config.data = str(data)
    if not config.data:
        raise TumorcamError("--data: no prepared folder given (tumorcam train --data DIR --out RUN)")
    if encoder_weights is not None:
        config.model.encoder_weights = encoder_weights
    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "size": size, "loss": loss, "schedule": schedule,
                 "augment": augment, "device": device, "compile": compile_model, "seed": seed,
                 "num_threads": threads}
    for name, value in overrides.items():
        if value is not None:
            setattr(config.train, name, value)
    result = train(config, out, resume=resume)
    best = result["best_val_dice"]
    typer.echo(f"trained {result['epochs']} epoch(s) into {out}" +
               ("" if best is None else f"; best val Dice {best:.4f} (epoch {result['best_epoch']})"))
    metrics = _test_metrics(out, Path(config.data))
    if metrics is not None:
        typer.echo(f"test Dice {metrics['dice']['mean']:.4f}  IoU {metrics['iou']['mean']:.4f} "
                   f"({metrics['n']} slices) -> {out / 'metrics.json'}")


def _test_metrics(out: Path, data: Path) -> dict | None:
    """The trained model's Dice and IoU on the test split (RUN/metrics.json), by the first process
    alone; None without a test split or on the other torchrun ranks."""
    from tumorcam.data.arrays import load_prepared
    from tumorcam.models.unet import WEIGHTS_FILE
    from tumorcam.runs.segmentation import evaluate_segmentation
    from tumorcam.runs.shard import is_main_process

    if not is_main_process() or not (out / WEIGHTS_FILE).is_file() or len(load_prepared(data).indices("test")) == 0:
        return None
    return evaluate_segmentation(out, data=data, split="test")["overall"]


def register(app: typer.Typer) -> None:
    app.command("train", cls=Command)(train_command)
