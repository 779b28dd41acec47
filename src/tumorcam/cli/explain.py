"""`tumorcam explain`: heatmaps of a run's model (`RUN`, see `tumorcam.runs.explain`; `RUN --image FILE`
for one slice), or of your own network (`--image FILE --model MODULE:FACTORY --out DIR`, see
`tumorcam.runs.image.explain_files` and `tumorcam.models.user`; for a 3-D network the --image
files are the NIfTI channels of one case, see `tumorcam.runs.volume_files`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tumorcam.cli._command import MIRROR_HELP, ONE_PASS_HELP, THREADS_HELP, Command, use_threads


def _names(value: Optional[str]) -> Optional[list[str]]:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()] or None


def _first(value: Optional[str]) -> Optional[str]:
    """--image explains one map: the first name given."""
    names = _names(value)
    return names[0] if names else None


def _one(option: str, value: Optional[str], default: Optional[str]) -> Optional[str]:
    """--model explains one method, target and layer: the value given, else `default`."""
    from tumorcam.errors import TumorcamError

    names = _names(value)
    if names is not None and len(names) > 1:
        raise TumorcamError(f"{option} {value}: one value with --model (run the command once per value)")
    return names[0] if names else default


def _output(value: Optional[str]) -> int | str | None:
    """--output: an index of a tuple/list output when it is an integer, else a dict key."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def _ids(value: Optional[str]) -> Optional[list[int]]:
    from tumorcam.errors import TumorcamError

    names = _names(value)
    if names is None:
        return None
    try:
        return [int(name) for name in names]
    except ValueError:
        raise TumorcamError(f"--ids {value}: expected comma-separated file ids, e.g. 1,2,3") from None


def explain_command(
    run: Optional[Path] = typer.Argument(None, metavar="RUN", help="Run folder (config.json and unet_trained.pth); "
                                         "not with --model."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared folder; default: the run's config.data."),
    split: Optional[str] = typer.Option(None, "--split", help="test, val, train or all (default: config.explain.split)."),
    patients: Optional[int] = typer.Option(None, "--patients", help="A seeded sample of N patients of the split, "
                                           "spread over classes (default: config.explain.patients; none set: all)."),
    slices_per_patient: Optional[int] = typer.Option(None, "--slices-per-patient", help="At most K slices per patient, "
                                                     "evenly spaced (default: config.explain.slices_per_patient)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most N slices in all, after the patient sample "
                                        "(default: config.explain.limit)."),
    ids: Optional[str] = typer.Option(None, "--ids", help="Comma-separated file ids of the split, not a sample."),
    methods: Optional[str] = typer.Option(None, "--methods", "--method", help="{methods}; controls {controls} "
                                          "(comma-separated)."),
    targets: Optional[str] = typer.Option(None, "--targets", "--target", help="{targets} (comma-separated; "
                                          "--model: one, default predicted-region, none that needs a mask: "
                                          "{mask_targets})."),
    layers: Optional[str] = typer.Option(None, "--layers", "--layer", help="Module paths, e.g. "
                                         "decoder.blocks.4,encoder.layer4 (--model: one; default: the last "
                                         "convolution block before the head)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Slices per forward/backward."),
    untrained: bool = typer.Option(False, "--untrained", help="Explain the network before fine-tuning (seeded build)."),
    image: Optional[list[Path]] = typer.Option(None, "--image", metavar="FILE", help="A slice: PNG/JPEG, or DICOM/NIfTI with "
                                               "the medical extra (repeat for several with --model). With a "
                                               "3-D --model: the NIfTI volumes of one case, one per input "
                                               "channel, in order (CASE_0000.nii.gz, CASE_0001.nii.gz, ...)."),
    out: Optional[Path] = typer.Option(None, "--out", help="With RUN --image: the overlay PNG (default "
                                       "RUN/explanations/NAME.png). With --model: the folder for NAME.npy and "
                                       "NAME.png (a 3-D network: CASE_METHOD.nii.gz and CASE_METHOD.png)."),
    model: Optional[str] = typer.Option(None, "--model", help="Your own network: MODULE:FACTORY, a function "
                                        "returning an nn.Module (MODULE is found in the current directory too)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="With --model: a state_dict (.pth/.pt read with "
                                           "torch.load(weights_only=True), or .safetensors)."),
    channel: Optional[int] = typer.Option(None, "--channel", help="With --model: the explained class; required for a "
                                                                  "network with more than one output channel."),
    output: Optional[str] = typer.Option(None, "--output", help="With --model: the logits of a tuple/list (an index) "
                                         "or dict (a key) output."),
    imagenet: bool = typer.Option(False, "--imagenet", help="With --model: normalise the 3 input channels with "
                                  "ImageNet's mean and std (default: the slice in [0, 1])."),
    size: Optional[int] = typer.Option(None, "--size", help="With a 3-D --model: resample the case to a "
                                       "SIZE^3 cube for the network (trilinear; the map comes back at the "
                                       "case's shape). Default: the case's own shape, padded with zeros "
                                       "to the next multiple (2, 4, ..., 64) the network takes when it "
                                       "takes no other (the map is cropped back, with a warning)."),
    device: str = typer.Option("auto", "--device", help="With --model: auto, cpu, cuda or cuda:N."),
    threads: Optional[int] = typer.Option(None, "--threads", min=0, metavar="N", help=THREADS_HELP),
    nnunet: Optional[Path] = typer.Option(None, "--nnunet", metavar="MODEL_FOLDER", help="A trained nnU-Net v2 "
                                          "model (Trainer__Plans__configuration folder; the nnunet extra): explain "
                                          "the case whose channel files the --image files are, into --out."),
    folds: Optional[str] = typer.Option(None, "--folds", help="With --nnunet: comma-separated folds (default 0)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="With --nnunet: the checkpoint file name "
                                             "in each fold_k (default checkpoint_final.pth)."),
    label: Optional[str] = typer.Option(None, "--label", help="With --nnunet: the explained label's name in "
                                        "dataset.json."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="With --nnunet: unpickle a checkpoint "
                                          "that a weights-only load refuses (only one from a trusted source)."),
    mirror: bool = typer.Option(False, "--mirror", help=MIRROR_HELP),
    one_pass: bool = typer.Option(False, "--one-pass", help=ONE_PASS_HELP),
    per_fold: bool = typer.Option(False, "--per-fold", help="With --nnunet: each fold's map too "
                                                            "(CASE_METHOD_LABEL_foldK.nii.gz)."),
) -> None:
    """Heatmaps for the chosen methods, targets and layers, plus Grad-CAM x GT, in RUN/explanations/;
    or, with --model, heatmaps of your own network for each --image, in --out."""
    from tumorcam.errors import TumorcamError
    from tumorcam.runs.shard import is_main_process

    use_threads(threads)

    if nnunet is not None or folds or checkpoint or label or trust_checkpoint or mirror or one_pass or per_fold:
        from tumorcam.nnunet.cli import explain_nnunet

        given = {"RUN": run, "--model": model, "--weights": weights, "--channel": channel}
        for line in explain_nnunet(nnunet, image, out, folds=folds, checkpoint=checkpoint, label=label,
                                   trust_checkpoint=trust_checkpoint, mirror=mirror, one_pass=one_pass,
                                   per_fold=per_fold,
                                   method=_one("--method", methods, None),
                                   layer=_one("--layer", layers, None), device=device,
                                   others=[flag for flag, value in given.items() if value is not None]):
            typer.echo(line)
        return
    if model is not None:
        run_only = {"--data": data, "--split": split, "--patients": patients,
                    "--slices-per-patient": slices_per_patient, "--limit": limit, "--ids": ids,
                    "--batch-size": batch_size, "--untrained": untrained or None}
        for option, value in run_only.items():
            if value is not None:
                raise TumorcamError(f"{option}: only with RUN, not with --model")
        _explain_own_model(run, image, out, model, weights, methods, targets, layers, channel, output, imagenet,
                           size, device)
        return
    for option, given in (("--weights", weights is not None), ("--channel", channel is not None),
                          ("--output", output is not None), ("--imagenet", imagenet), ("--size", size is not None),
                          ("--device", device != "auto")):
        if given:
            raise TumorcamError(f"{option}: only with --model MODULE:FACTORY")
    if run is None:
        raise TumorcamError("RUN: give a run folder, or --image FILE --model MODULE:FACTORY --out DIR")
    if image:
        from tumorcam.runs.image import explain_image

        if len(image) > 1 and out is not None:
            raise TumorcamError("--out: one overlay PNG for one --image; leave it out for several")
        for path in image:
            written = explain_image(run, path, out=out, method=_first(methods), target=_first(targets),
                                    layer=_first(layers), untrained=untrained)
            typer.echo(f"wrote {written}")
        return
    if out is not None:
        raise TumorcamError("--out: only with --image (maps go to RUN/explanations/)")
    from tumorcam.runfolder.index import read_index
    from tumorcam.runs.explain import explain_run

    folder = explain_run(run, data=data, split=split, limit=limit, ids=_ids(ids), methods=_names(methods),
                         targets=_names(targets), layers=_names(layers), batch_size=batch_size, untrained=untrained,
                         patients=patients, slices_per_patient=slices_per_patient)
    if not is_main_process():  # under torchrun: rank 0 reports
        return
    index = read_index(folder)
    typer.echo(f"{len(index.entries)} map file(s) of {index.header['n_slices']} slice(s) from "
               f"{index.header['n_patients']} patient(s) of the {index.split} split at {index.size}px, "
               f"listed in {index.path}")


def _explain_own_model(run: Optional[Path], images: Optional[list[Path]], out: Optional[Path], spec: str,
                       weights: Optional[Path], methods: Optional[str], targets: Optional[str],
                       layers: Optional[str], channel: Optional[int], output: Optional[str], imagenet: bool,
                       size: Optional[int], device: str) -> None:
    """`tumorcam explain --image FILE... --model MODULE:FACTORY --out DIR`: one map and overlay per image;
    for a 3-D network, one of the case whose channels the images are."""
    from tumorcam.device import resolve_device
    from tumorcam.errors import TumorcamError
    from tumorcam.runs.image import explain_files, spatial_dims
    from tumorcam.runs.volume_files import explain_volume_files
    from tumorcam.models.user import load_user_model

    if run is not None:
        raise TumorcamError(f"--model: explains your own network, not the run {run}; give RUN or --model")
    if not images:
        raise TumorcamError("--image: --model needs at least one --image FILE")
    if out is None:
        raise TumorcamError("--out: --model needs a folder for the maps, e.g. --out maps")
    method = _one("--method", methods, "gradcam")
    target = _one("--target", targets, "predicted-region")
    layer = _one("--layer", layers, None)
    network = load_user_model(spec, weights)
    options = {"model_name": f"--model {spec}", "method": method, "target": target, "layer": layer,
               "channel": channel, "output": _output(output), "device": resolve_device(device)}
    if spatial_dims(network) == 3:
        if imagenet:
            raise TumorcamError(f"--imagenet: for a 2-D network's RGB slices; --model {spec} is a 3-D network")
        written = explain_volume_files(network, images, out, size=size, **options)
    else:
        if size is not None:
            raise TumorcamError(f"--size: resamples a 3-D network's NIfTI volumes; --model {spec} is a 2-D "
                                "network (slices go to it at their own size)")
        written = explain_files(network, images, out, imagenet=imagenet, **options)
    typer.echo(f"{method} of {target}, channel {0 if channel is None else channel}, at layer {written.layer} of {type(network).__name__} "
               f"({written.channels} input channel(s))")
    for heatmap, png in written.files:
        typer.echo(f"wrote {heatmap} and {png}")


def register(app: typer.Typer) -> None:
    app.command("explain", cls=Command)(explain_command)
