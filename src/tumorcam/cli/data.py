"""`tumorcam data ...`: download, synth, prepare."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tumorcam.cli._command import Command

data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Get, generate and prepare the brain tumour data.")


@data_app.command("download", cls=Command)
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


@data_app.command("synth", cls=Command)
def synth_command(
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for the synthetic data."),
    volumes: bool = typer.Option(
        False, "--volumes", help="Write 3-D multi-sequence volumes (T1, T1CE, T2, FLAIR) in the nnU-Net raw layout instead of .mat slices."
    ),
    patients: Optional[int] = typer.Option(None, "--patients", help="Slices: synthetic patients (default 60; classes cycle meningioma, glioma, pituitary)."),
    slices_per_patient: Optional[int] = typer.Option(None, "--slices-per-patient", help="Slices: slices per patient (default 4)."),
    cases: Optional[int] = typer.Option(None, "--cases", help="Volumes: number of cases (default 24)."),
    size: Optional[int] = typer.Option(None, "--size", help="Volumes: grid side S, each case is S x (S + S//4) x (S - S//4) voxels (default 32)."),
    seed: int = typer.Option(0, "--seed", help="Everything is deterministic from this."),
) -> None:
    """Write the synthetic dataset: figshare MATLAB v7.3 slices, or with --volumes nnU-Net raw NIfTI volumes."""
    from tumorcam.errors import TumorcamError

    if volumes:
        from tumorcam.data.synth_volumes import CHANNELS, write_synthetic_volumes

        for option, value in (("--patients", patients), ("--slices-per-patient", slices_per_patient)):
            if value is not None:
                raise TumorcamError(f"{option}: only for slices; with --volumes use --cases and --size")
        cases = 24 if cases is None else cases
        write_synthetic_volumes(out, cases=cases, size=32 if size is None else size, seed=seed)
        typer.echo(f"wrote {cases} synthetic volumes ({', '.join(CHANNELS)} + labels) in the nnU-Net raw layout to {out}")
        return
    from tumorcam.data.synth import write_synthetic

    for option, value in (("--cases", cases), ("--size", size)):
        if value is not None:
            raise TumorcamError(f"{option}: only with --volumes (slices use --patients and --slices-per-patient)")
    patients = 60 if patients is None else patients
    paths = write_synthetic(out, patients=patients, slices_per_patient=4 if slices_per_patient is None else slices_per_patient, seed=seed)
    typer.echo(f"wrote {len(paths)} slices of {patients} patients and cvind.mat to {out}")


@data_app.command("prepare", cls=Command)
def prepare_command(
    src: list[Path] = typer.Argument(
        ...,
        metavar="SRC",
        help="Folder of .mat files, figshare zip(s) or the article zip, a folder of images/ + masks/ PNGs, "
        "or one nnU-Net raw folder (dataset.json + imagesTr/ + labelsTr/) of 3-D volumes.",
    ),
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for the prepared arrays."),
    size: Optional[int] = typer.Option(None, "--size", help="Side of the output: square slices (default 256) or cubic volumes (default 64)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip bad slices or cases (listed with reasons in manifest.json) instead of stopping."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split (slices: used when no official folds are known)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Reader processes (default: the CPUs available)."),
    region_labels: Optional[str] = typer.Option(
        None, "--region-labels", help="Volumes: label values forming the explained region, e.g. 1,2 (default: every label > 0)."
    ),
) -> None:
    """Read, check, normalise and resize every slice or volume; write the arrays, manifest.json and splits.json."""
    from tumorcam.data.nnunet import is_nnunet_raw
    from tumorcam.errors import TumorcamError

    if any(is_nnunet_raw(path) for path in src):
        if len(src) != 1:
            raise TumorcamError("SRC: an nnU-Net raw folder is prepared on its own; give just that folder")
        _prepare_volumes(src[0], out, size, skip_bad, seed, workers, region_labels)
        return
    if region_labels is not None:
        raise TumorcamError("--region-labels: only for an nnU-Net raw folder of volumes")
    from tumorcam.data.prepare import prepare

    size = 256 if size is None else size
    manifest = prepare(src, out, size=size, skip_bad=skip_bad, seed=seed, workers=workers)
    counts = ", ".join(f"{name} {c['slices']} slices/{c['patients']} patients" for name, c in manifest["splits"]["counts"].items())
    typer.echo(f"prepared {manifest['count']} slices of {manifest['patients']} patients at {size}x{size} into {out} in {manifest['seconds']} s")
    typer.echo(f"splits ({manifest['splits']['method']}): {counts}")
    _echo_skipped(manifest, out, "file")


def _prepare_volumes(
    src: Path, out: Path, size: Optional[int], skip_bad: bool, seed: int, workers: Optional[int], region_labels: Optional[str]
) -> None:
    from tumorcam.data.volumes import prepare_volumes
    from tumorcam.errors import TumorcamError

    labels = None
    if region_labels is not None:
        try:
            labels = [int(part) for part in region_labels.split(",")]
        except ValueError:
            raise TumorcamError(f"--region-labels {region_labels!r}: give label values separated by commas, e.g. 1,2") from None
    size = 64 if size is None else size
    manifest = prepare_volumes(src, out, size=size, skip_bad=skip_bad, seed=seed, region_labels=labels, workers=workers)
    counts = ", ".join(f"{name} {n} cases" for name, n in manifest["splits"]["counts"].items())
    typer.echo(
        f"prepared {manifest['count']} volumes ({', '.join(manifest['channels'])}) at {size}x{size}x{size} "
        f"into {out} in {manifest['seconds']} s; region: {manifest['region']['rule']}"
    )
    typer.echo(f"splits ({manifest['splits']['method']}): {counts}")
    if manifest["empty_region"]:
        typer.echo(f"warning: {len(manifest['empty_region'])} case(s) have an empty region mask: {', '.join(manifest['empty_region'])}", err=True)
    _echo_skipped(manifest, out, "case")


def _echo_skipped(manifest: dict, out: Path, unit: str) -> None:
    if manifest["skipped"]:
        typer.echo(f"skipped {len(manifest['skipped'])} bad {unit}(s), listed in {out / 'manifest.json'}:", err=True)
        for item in manifest["skipped"]:
            typer.echo(f"  {item['reason']}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
