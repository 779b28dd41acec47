"""The `tumorcam` console script: a thin typer layer over the Python API.

Each command module exposes `register(app)`. Bad input raises `TumorcamError`, which `main`
prints as one line (`error: ...`) with exit status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import sys

import typer

from tumorcam import __version__
from tumorcam.errors import TumorcamError

try:  # recent typer runs on its own copy of click, whose exceptions are not click's
    from typer._click.exceptions import ClickException
except ImportError:  # older typer: click itself
    from click.exceptions import ClickException

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Explain a brain-tumour segmentation U-Net with Grad-CAM, and measure whether the explanation is true.",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tumorcam {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _set_cpu_threads()


def _set_cpu_threads() -> None:
    """CPU work of every command uses the threads training would (fewer than the cores when they are busy)."""
    import torch

    from tumorcam.device import cpu_threads

    torch.set_num_threads(cpu_threads(0))


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
    except ClickException as exc:  # a usage error: typer's own message, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    if isinstance(result, int) and result:
        sys.exit(result)
