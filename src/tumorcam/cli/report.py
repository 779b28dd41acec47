"""`tumorcam report RUN`: the figures and the self-contained report.html of a run folder."""

from __future__ import annotations

from pathlib import Path

import typer


def report_command(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder (config.json, metrics.json, explanations/, ...)."),
) -> None:
    """Draw RUN/figures/*.png and write RUN/report.html (missing stages are shown as missing)."""
    from tumorcam.report import build_report

    path = build_report(run)
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    from tumorcam.cli._command import Command

    app.command("report", cls=Command)(report_command)
