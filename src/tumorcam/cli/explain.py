"""`tumorcam explain RUN`: heatmaps of the run's model (see `tumorcam.explain.run`), or of one `--image`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _names(value: Optional[str]) -> Optional[list[str]]:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()] or None


def _first(value: Optional[str]) -> Optional[str]:
    """--image explains one map: the first name given."""
    names = _names(value)
    return names[0] if names else None


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
    run: Path = typer.Argument(..., help="Run folder (config.json and unet_trained.pth)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared folder; default: the run's config.data."),
    split: Optional[str] = typer.Option(None, "--split", help="test, val, train or all (default: config.explain.split)."),
    patients: Optional[int] = typer.Option(None, "--patients", help="A seeded sample of N patients of the split, "
                                           "spread over classes (default: config.explain.patients; none set: all)."),
    slices_per_patient: Optional[int] = typer.Option(None, "--slices-per-patient", help="At most K slices per patient, "
                                                     "evenly spaced (default: config.explain.slices_per_patient)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most N slices in all, after the patient sample "
                                        "(default: config.explain.limit)."),
    ids: Optional[str] = typer.Option(None, "--ids", help="Comma-separated file ids of the split, not a sample."),
    methods: Optional[str] = typer.Option(None, "--methods", help="gradcam, gradcam++, hirescam, layercam, saliency, "
                                          "integrated-gradients; controls random, predicted-mask, "
                                          "predicted-probability, dilated-mask, edges (comma-separated)."),
    targets: Optional[str] = typer.Option(None, "--targets", help="mean-logits, predicted-region, gt-region (comma-separated)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Module paths, e.g. decoder.blocks.4,encoder.layer4."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Slices per forward/backward."),
    untrained: bool = typer.Option(False, "--untrained", help="Explain the network before fine-tuning (seeded build)."),
    image: Optional[Path] = typer.Option(None, "--image", help="One slice: PNG/JPEG, or DICOM/NIfTI with the medical extra."),
    out: Optional[Path] = typer.Option(None, "--out", help="With --image: the overlay PNG (default RUN/explanations/NAME.png)."),
) -> None:
    """Heatmaps for the chosen methods, targets and layers, plus Grad-CAM x GT, in RUN/explanations/."""
    import json

    from tumorcam.errors import TumorcamError

    if image is not None:
        from tumorcam.explain.image import explain_image

        path = explain_image(run, image, out=out, method=_first(methods), target=_first(targets),
                             layer=_first(layers), untrained=untrained)
        typer.echo(f"wrote {path}")
        return
    if out is not None:
        raise TumorcamError("--out: only with --image (maps go to RUN/explanations/)")
    from tumorcam.explain.run import INDEX_FILE, explain_run

    folder = explain_run(run, data=data, split=split, limit=limit, ids=_ids(ids), methods=_names(methods),
                         targets=_names(targets), layers=_names(layers), batch_size=batch_size, untrained=untrained,
                         patients=patients, slices_per_patient=slices_per_patient)
    index = json.loads((folder / INDEX_FILE).read_text())
    typer.echo(f"{len(index['entries'])} map file(s) of {index['n_slices']} slice(s) from {index['n_patients']} "
               f"patient(s) of the {index['split']} split at {index['size']}px, listed in {folder / INDEX_FILE}")


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_command)
