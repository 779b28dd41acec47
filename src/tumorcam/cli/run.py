"""`tumorcam run`: every stage end to end (data, prepare, train, explain, evaluate, report)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tumorcam.cli._command import Command, THREADS_HELP, echo_headline, use_threads
from tumorcam.errors import TumorcamError


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
    prepare_size: Optional[int] = typer.Option(
        None, "--prepare-size", help="Side of the prepared slices (default 256) or volumes (default 64; the volume "
                                     "demo 32), when --data is not prepared."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Volumes: your network, MODULE:FACTORY (a function returning an nn.Module); "
                              "explains and evaluates it without training."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Volumes: the state_dict of --model (.pth or .safetensors)."),
    volumes: bool = typer.Option(False, "--volumes", help="The volume demo: synthetic 4-sequence volumes in nnU-Net's "
                                                          "layout, a small 3-D U-Net trained on them, then the checks."),
    split: Optional[str] = typer.Option(None, "--split", help="Volumes: train, val, test or all (default: test when "
                                                             "the data has a test split, else all; a split with "
                                                             "training cases is warned about)."),
    cases: Optional[int] = typer.Option(None, "--cases", help="Volumes: at most N cases of the split."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Volumes: comma-separated methods (default "
                                                                  "gradcam,saliency; controls are added)."),
    baselines: Optional[str] = typer.Option(None, "--baselines", help="Volumes: comma-separated baselines of the "
                                                                      "game (default zero,blur)."),
    channel: Optional[int] = typer.Option(None, "--channel", help="Volumes: the explained class of --model."),
    threads: Optional[int] = typer.Option(None, "--threads", min=0, metavar="N", help=THREADS_HELP + " Every stage's: the config's "
                                          "train.num_threads. Default: the config's (the demo presets: 1, so "
                                          "that their figures repeat)."),
) -> None:
    """Run the whole pipeline into one run folder, skipping the stages already done; print the report's path.
    With a volume dataset (nnU-Net's raw layout or prepared volumes) and --model, or with --volumes: the
    checks on 3-D volumes (`tumorcam.volumes.run`)."""
    from tumorcam.config import Config
    from tumorcam.pipeline import run_pipeline

    use_threads(threads)
    volume_options = {"--model": model, "--weights": weights, "--split": split, "--cases": cases,
                      "--methods": methods, "--baselines": baselines, "--channel": channel}
    if volumes or model is not None or _is_volume_data(data):
        _run_volumes(data, out, volumes, config, device, prepare_size, model, weights, split, cases, methods,
                     baselines, channel, encoder_weights, threads)
        return
    given = [option for option, value in volume_options.items() if value is not None]
    if given:
        raise TumorcamError(f"{given[0]}: only for volumes (--volumes, or --data DATASET in nnU-Net's layout with "
                            "--model MODULE:FACTORY)")

    report = run_pipeline(
        out=out if out is not None else Path("runs") / preset,
        data=data,
        preset=preset,
        force=force,
        config=Config.load(config) if config is not None else None,
        encoder_weights=encoder_weights,
        device=device,
        num_threads=threads,
        prepare_size=256 if prepare_size is None else prepare_size,
        synthetic_patients=synthetic_patients,
        synthetic_slices=synthetic_slices,
        log=lambda line: typer.echo(line, err=True),
    )
    echo_headline(report.parent)
    typer.echo(str(report))


def _is_volume_data(data: Optional[Path]) -> bool:
    from tumorcam.data.nnunet import is_nnunet_raw
    from tumorcam.data.volumes import is_volume_folder

    return data is not None and (is_nnunet_raw(data) or is_volume_folder(data))


def _run_volumes(data: Optional[Path], out: Optional[Path], demo: bool, config: Optional[Path], device: Optional[str],
                 size: Optional[int], model: Optional[str], weights: Optional[Path], split: Optional[str],
                 cases: Optional[int], methods: Optional[str], baselines: Optional[str], channel: Optional[int],
                 encoder_weights: Optional[str], threads: Optional[int] = None) -> None:
    """`tumorcam run` on volumes: the demo (--volumes) or --data DATASET --model MODULE:FACTORY."""
    from tumorcam.volumes.run import run_volume_demo, run_volumes
    from tumorcam.volumes.settings import VolumeSettings

    if encoder_weights is not None:
        raise TumorcamError("--encoder-weights: not for volumes (the network comes from --model)")
    defaults = {"split": "test" if demo else None}  # None: test when the data has one (`volumes.run.resolve_split`)
    settings = VolumeSettings.load(config, defaults) if config is not None else VolumeSettings(**defaults)
    for name, value in (("split", split), ("cases", cases), ("channel", channel),
                        ("methods", _names(methods)), ("baselines", _names(baselines))):
        if value is not None:
            setattr(settings, name, value)
    settings.check()
    log = lambda line: typer.echo(line, err=True)  # noqa: E731
    if demo:
        if data is not None or model is not None or weights is not None:
            raise TumorcamError("--volumes: the demo makes its own data and model; leave out --data, --model, --weights")
        report = run_volume_demo(out or Path("runs") / "volumes", settings=settings, size=size or 32,
                                 device=device or "auto", threads=threads, log=log)
    else:
        if data is None:
            raise TumorcamError("--model: a run of your network needs its volumes: --data DATASET (nnU-Net's raw "
                                "layout or a prepared volume folder)")
        if not _is_volume_data(data):
            raise TumorcamError(f"--data {data}: --model needs volumes, in nnU-Net's raw layout (dataset.json, "
                                "imagesTr/, labelsTr/) or prepared by `tumorcam data prepare`; for a slice use "
                                "`tumorcam explain --image FILE --model MODULE:FACTORY`")
        if model is None:
            raise TumorcamError(f"--model: a run on the volumes of {data} explains your network; give "
                                "--model MODULE:FACTORY --weights W")
        report = run_volumes(out or Path("runs") / "volumes", data, model=model, weights=weights, settings=settings,
                             device=device or "auto", size=size, log=log)
    if report is not None:  # rank 0 (the only one under torchrun that writes the report)
        echo_headline(report.parent)
        typer.echo(str(report))


def _names(value: Optional[str]) -> Optional[list[str]]:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def register(app: typer.Typer) -> None:
    app.command("run", cls=Command)(run_command)
