"""`tumorcam data ...`: download, synth, prepare."""

from __future__ import annotations

import typer

data_app = typer.Typer(no_args_is_help=True, help="Get, generate and prepare the brain tumour data.")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
