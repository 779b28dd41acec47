"""`tumorcam report RUN`: the figures and the self-contained report.html of a run folder."""

from __future__ import annotations

from pathlib import Path

import typer


def build_run_report(run: str | Path) -> Path:
    """The report of any run folder, by its kind: a run on volumes (volume_config.json, no config.json)
    gets `tumorcam.report.volume_page.build_volume_report`, every other folder `tumorcam.report.build_report`
    (which names a folder that is not a run). Both read the folder's JSON and saved arrays only."""
    from tumorcam.runfolder.folder import is_volume_run

    run = Path(run)
    if is_volume_run(run):
        from tumorcam.report.volume_page import build_volume_report

        return build_volume_report(run)
    from tumorcam.report import build_report

    return build_report(run)


def report_command(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder: a trained run (config.json, metrics.json, "
                               "explanations/, ...) or a run on volumes (volume_config.json)."),
) -> None:
    """Draw RUN/figures/*.png and write RUN/report.html (missing stages are shown as missing)."""
    typer.echo(str(build_run_report(run)))


def register(app: typer.Typer) -> None:
    from tumorcam.cli._command import Command

    app.command("report", cls=Command)(report_command)
