"""The `tumorcam` console script: a thin typer layer over the Python API.

Each command module exposes `register(app)`. Bad input raises `TumorcamError`, which `main`
prints as one line (`error: ...`) with exit status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import sys

import click
import typer

from tumorcam import __version__
from tumorcam.errors import TumorcamError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Explain a brain-tumour segmentation U-Net with Grad-CAM, and measure whether the explanation is true.",
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        typer.echo(f"tumorcam {__version__}")
        raise typer.Exit()


def _register_commands() -> None:
    from tumorcam.cli import data, evaluate, train, explain, report, run

    for module in (data, train, evaluate, explain, report, run):
        module.register(app)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning known errors into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="tumorcam", standalone_mode=False)
    except TumorcamError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    if isinstance(result, int) and result:
        sys.exit(result)
