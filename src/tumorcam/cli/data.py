"""`tumorcam data ...`: download, synth, prepare."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

data_app = typer.Typer(no_args_is_help=True, help="Get, generate and prepare the brain tumour data.")


@data_app.command("download")
def download_command(
    dest: Path = typer.Option(Path("data/figshare"), "--dest", help="Folder for the zips, cvind.mat and README.txt."),
    base_url: Optional[str] = typer.Option(
        None, "--base-url", help="Replaces https://ndownloader.figshare.com (files are fetched from URL/files/<id>)."
    ),
    api_url: Optional[str] = typer.Option(
        None, "--api-url", help="Replaces https://api.figshare.com/v2 (its file listing gives cvind.mat, README.txt)."
    ),
    extract: bool = typer.Option(True, "--extract/--no-extract", help="Unpack the zips safely into DEST/mat/."),
) -> None:
    """Fetch the four figshare zips (MD5-verified, resumable), cvind.mat and README.txt."""
    import warnings

    from tumorcam.data.download import EXTRACT_DIR, FIGSHARE_API, DownloadWarning, download

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DownloadWarning)
        try:
            paths = download(dest, base_url, api_url=api_url or FIGSHARE_API, extract=extract)
        finally:
            for warning in caught:
                typer.echo(f"warning: {warning.message}", err=True)
    for path in paths:
        typer.echo(f"verified {path}")
    if extract:
        typer.echo(f"extracted into {dest / EXTRACT_DIR}")


@data_app.command("synth")
def synth_command(
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for N.mat slices and cvind.mat."),
    patients: int = typer.Option(60, "--patients", help="Synthetic patients (classes cycle meningioma, glioma, pituitary)."),
    slices_per_patient: int = typer.Option(4, "--slices-per-patient", help="Slices per patient."),
    seed: int = typer.Option(0, "--seed", help="Everything is deterministic from this."),
) -> None:
    """Write the synthetic dataset in the figshare MATLAB v7.3 layout."""
    from tumorcam.data.synth import write_synthetic

    paths = write_synthetic(out, patients=patients, slices_per_patient=slices_per_patient, seed=seed)
    typer.echo(f"wrote {len(paths)} slices of {patients} patients and cvind.mat to {out}")


@data_app.command("prepare")
def prepare_command(
    src: list[Path] = typer.Argument(..., help="Folder of .mat files, figshare zip(s) or the article zip, or a folder of images/ + masks/ PNGs."),
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for the prepared arrays."),
    size: int = typer.Option(256, "--size", help="Side of the square output slices."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip bad slices (listed with reasons in manifest.json) instead of stopping."),
    seed: int = typer.Option(0, "--seed", help="Seed of the stratified split (used when no official folds are known)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Reader processes (default: the CPUs available)."),
) -> None:
    """Read, check, normalise and resize every slice; write images/masks/labels/pids/file_ids, manifest and splits."""
    from tumorcam.data.prepare import prepare

    manifest = prepare(src, out, size=size, skip_bad=skip_bad, seed=seed, workers=workers)
    counts = ", ".join(f"{name} {c['slices']} slices/{c['patients']} patients" for name, c in manifest["splits"]["counts"].items())
    typer.echo(f"prepared {manifest['count']} slices of {manifest['patients']} patients at {size}x{size} into {out} in {manifest['seconds']} s")
    typer.echo(f"splits ({manifest['splits']['method']}): {counts}")
    if manifest["skipped"]:
        typer.echo(f"skipped {len(manifest['skipped'])} bad file(s), listed in {out / 'manifest.json'}:", err=True)
        for item in manifest["skipped"]:
            typer.echo(f"  {item['reason']}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
