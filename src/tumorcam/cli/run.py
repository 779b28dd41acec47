"""`tumorcam run`: every stage end to end (data, prepare, train, explain, evaluate, report), on slices or volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from tumorcam.cli._command import MIRROR_HELP, ONE_PASS_HELP, THREADS_HELP, Command, echo_headline, use_threads
from tumorcam.errors import TumorcamError

# The options that set a setting (`tumorcam.config.Settings`): option name -> the setting paths it sets.
SETTING_OPTIONS: dict[str, tuple[str, ...]] = {
    "split": ("explain.split", "evaluate.split"), "patients": ("explain.patients",), "layer": ("explain.layers",),
    "methods": ("explain.methods",), "targets": ("explain.targets",), "baselines": ("evaluate.baselines",),
    "steps": ("evaluate.steps",), "channel": ("explain.channel",), "encoder_weights": ("model.encoder_weights",),
    "device": ("train.device",), "threads": ("train.num_threads",), "model": ("model.network",),
    "weights": ("model.weights",),
}
LISTS = ("layer", "methods", "targets", "baselines")  # comma-separated on the command line


def run_command(
    data: Optional[Path] = typer.Option(
        None, "--data", help="Prepared slices or volumes, a folder of .mat files, figshare zip(s), a PNG folder or "
                             "nnU-Net's raw layout (default: the embedded synthetic slices)."),
    preset: Optional[str] = typer.Option(
        None, "--preset", help="demo-2d (CPU, minutes; the default), paper-2d (the seed's settings, GPU), demo-3d "
                               "(--volumes' default) or own-model (--model's default); demo and paper name "
                               "demo-2d and paper-2d."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: runs/<preset>; volumes: runs/volumes)."),
    force: bool = typer.Option(False, "--force", help="Redo every stage, even those done earlier."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="A settings JSON to use instead of the preset (every setting of every stage: a run's "
                               "config.json or volume_config.json); the options below replace its values."),
    synthetic_patients: int = typer.Option(60, "--synthetic-patients", help="Patients of the synthetic dataset (no --data)."),
    synthetic_slices: int = typer.Option(4, "--synthetic-slices", help="Slices per synthetic patient (no --data)."),
    prepare_size: Optional[int] = typer.Option(
        None, "--prepare-size", help="Side of the prepared slices (default 256) or volumes (default 64; the volume "
                                     "demo 32), when --data is not prepared."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Your network, MODULE:FACTORY (a function returning an nn.Module), on slices or "
                              "volumes: explained and evaluated without training (model.network)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="The state_dict of --model (.pth or .safetensors)."),
    volumes: bool = typer.Option(False, "--volumes", help="The volume demo: synthetic 4-sequence volumes in nnU-Net's "
                                                          "layout, a small 3-D U-Net trained on them, then the checks."),
    split: Optional[str] = typer.Option(None, "--split", help="train, val, test or all (explain.split, "
                                                             "evaluate.split; a split with training data is warned about)."),
    patients: Optional[int] = typer.Option(None, "--patients", "--cases", help="At most N patients of the split "
                                           "(explain.patients; volumes: the first N cases)."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Comma-separated layers explained (explain.layers; "
                                                             "volumes: one)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated methods (explain.methods) of "
                                                                  "{methods}; controls {controls}."),
    targets: Optional[str] = typer.Option(None, "--targets", help="Comma-separated targets (explain.targets; "
                                                                  "volumes: one) of {targets}."),
    baselines: Optional[str] = typer.Option(None, "--baselines", help="Comma-separated baselines of the game "
                                                                      "(evaluate.baselines) of {baselines}."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Deletion/Insertion steps K (evaluate.steps)."),
    channel: Optional[int] = typer.Option(None, "--channel", help="The explained class of --model (explain.channel)."),
    encoder_weights: Optional[str] = typer.Option(
        None, "--encoder-weights", help="imagenet, none, or PATH to a local encoder state_dict/safetensors "
                                        "(model.encoder_weights)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (train.device)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=0, metavar="N", help=THREADS_HELP + " Every stage's: "
                                          "train.num_threads. Default: the settings' (the demo presets: 1, so "
                                          "that their figures repeat)."),
    nnunet: Optional[Path] = typer.Option(None, "--nnunet", help="A trained nnU-Net v2 model folder "
                                          "(Trainer__Plans__configuration), explained on the cases of --data "
                                          "(nnU-Net's raw layout); see docs/nnunet.md."),
    folds: Optional[str] = typer.Option(None, "--folds", help="With --nnunet: comma-separated folds, their logits "
                                                              "and maps averaged (default 0)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Each --nnunet fold's checkpoint file "
                                                                        "(default checkpoint_final.pth)."),
    label: Optional[str] = typer.Option(None, "--label", help="The explained label of the --nnunet model's "
                                                              "dataset.json (default: its first)."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Unpickle the --nnunet checkpoints "
                                                                            "fully (only files you trust)."),
    mirror: bool = typer.Option(False, "--mirror", help=MIRROR_HELP),
    one_pass: bool = typer.Option(False, "--one-pass", help=ONE_PASS_HELP),
) -> None:
    """Run the whole pipeline into one run folder, skipping the stages already done; print the report's path.
    With volumes (nnU-Net's raw layout or prepared volumes) and --model, or with --volumes: the checks on
    3-D volumes (`tumorcam.runs.volumes`); with slices and --model: your network's, without training."""
    use_threads(threads)
    if nnunet is not None or folds or checkpoint is not None or label is not None or trust_checkpoint or mirror \
            or one_pass:
        _refuse_for_nnunet(nnunet, data, model, weights, volumes)
    on_volumes = volumes or _is_volume_data(data)
    if volumes and (data is not None or model is not None or weights is not None):
        raise TumorcamError("--volumes: the demo makes its own data and model; leave out --data, --model, --weights")
    if on_volumes and encoder_weights is not None:
        raise TumorcamError("--encoder-weights: not for volumes (the network comes from --model)")
    if weights is not None and model is None:
        raise TumorcamError("--weights: the state_dict of --model MODULE:FACTORY; give --model too")
    name = preset or ("demo-3d" if volumes else "own-model" if model is not None or nnunet is not None else "demo")
    given = {"split": split, "patients": patients, "layer": layer, "methods": methods, "targets": targets,
             "baselines": baselines, "steps": steps, "channel": channel, "encoder_weights": encoder_weights,
             "device": device, "threads": threads, "model": model, "weights": None if weights is None else str(weights)}
    settings = _settings(name, config, given)
    log = lambda line: typer.echo(line, err=True)  # noqa: E731
    if nnunet is not None:
        from tumorcam.nnunet.run import run_nnunet

        from tumorcam.nnunet.cli import fold_names
        report = run_nnunet(out or Path("runs") / "nnunet", data, nnunet, folds=fold_names(folds),
                            checkpoint=checkpoint, label=label, cases=patients, settings=settings,
                            trust_checkpoint=trust_checkpoint, mirror=mirror, one_pass=one_pass,
                            device=settings.train.device, log=log)
    elif on_volumes:
        default_out = Path("runs") / "volumes"
        report = _run_volumes(data, out or default_out, volumes, settings, prepare_size, threads, log)
    else:
        from tumorcam.runs.pipeline import run_pipeline

        report = run_pipeline(out=out if out is not None else Path("runs") / name, data=data, force=force,
                              config=settings, prepare_size=256 if prepare_size is None else prepare_size,
                              synthetic_patients=synthetic_patients, synthetic_slices=synthetic_slices, log=log)
    if report is not None:  # rank 0 (the only one under torchrun that writes the report)
        echo_headline(report.parent)
        typer.echo(str(report))


def _refuse_for_nnunet(nnunet: Optional[Path], data: Optional[Path], model: Optional[str], weights: Optional[Path],
                       volumes: bool) -> None:
    """The options --nnunet needs and those it excludes: one error naming the first wrong one."""
    if nnunet is None:
        raise TumorcamError("--folds, --checkpoint, --label, --trust-checkpoint, --mirror, --one-pass: options of "
                            "--nnunet MODEL_FOLDER")
    if model is not None or weights is not None:
        raise TumorcamError("--nnunet: the network is the nnU-Net model; leave out --model and --weights")
    if volumes or data is None:
        raise TumorcamError("--nnunet: give --data, an nnU-Net raw dataset (dataset.json, imagesTr/, labelsTr/)")


def _settings(preset_name: str, config: Optional[Path], given: dict[str, Any]) -> Any:
    """The run's settings: `config` (else the preset's), with the values of the options `given`."""
    from tumorcam.config import preset
    from tumorcam.runs.volume_settings import load_run_settings

    settings = load_run_settings(config) if config is not None else preset(preset_name)
    overrides = {}
    for option, value in given.items():
        if value is not None and option in LISTS:
            value = [v.strip() for v in value.split(",") if v.strip()]
        for path in SETTING_OPTIONS[option]:
            overrides[path] = value
    return settings.replace(overrides)


def _is_volume_data(data: Optional[Path]) -> bool:
    from tumorcam.data.nnunet import is_nnunet_raw
    from tumorcam.data.volumes import is_volume_folder

    return data is not None and (is_nnunet_raw(data) or is_volume_folder(data))


def _run_volumes(data: Optional[Path], out: Path, demo: bool, settings: Any, size: Optional[int],
                 threads: Optional[int], log: Any) -> Optional[Path]:
    """`tumorcam run` on volumes: the demo (--volumes) or --data DATASET --model MODULE:FACTORY."""
    from tumorcam.runs.volumes import run_volume_demo, run_volumes

    if demo:
        return run_volume_demo(out, settings=settings, size=size or 32, device=settings.train.device,
                               threads=threads, log=log)
    if settings.model.network is None:
        raise TumorcamError(f"--model: a run on the volumes of {data} explains your network; give "
                            "--model MODULE:FACTORY --weights W")
    return run_volumes(out, data, model=settings.model.network, weights=settings.model.weights, settings=settings,
                       device=settings.train.device, size=size, log=log)


def register(app: typer.Typer) -> None:
    app.command("run", cls=Command)(run_command)
