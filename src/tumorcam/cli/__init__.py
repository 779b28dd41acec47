"""The `tumorcam` console script: a thin typer layer over the Python API.

Each command module exposes `register(app)`. Bad input raises `TumorcamError`, which `main`
prints as one line (`error: ...`) with exit status 2, as it prints a usage error (a missing or unknown
option, a bad value); `--debug` shows the traceback instead. A
`TumorcamWarning` is printed as one line `warning: ...` on stderr (no file or line), each distinct
message once; other warnings are shown as Python shows them.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import TextIO

import typer

from tumorcam import __version__
from tumorcam.errors import TumorcamError
from tumorcam.errors import TumorcamWarning

try:  # recent typer runs on its own copy of click, whose exceptions are not click's
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # older typer: click itself
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags without a type column (typer's rich panel shows `--force <bool>`)
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
    from tumorcam.cli import channels, data, evaluate, train, explain, report, run

    for module in (data, train, evaluate, channels, explain, report, run):
        module.register(app)


_register_commands()


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Within it, a TumorcamWarning prints as `warning: MESSAGE` on stderr, once per message; the
    warning filters and `warnings.showwarning` are restored afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("once", TumorcamWarning)
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            if issubclass(category, TumorcamWarning):
                typer.echo(f"warning: {message}", err=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


# Library parameters whose flag is not `--` + the name with `_` as `-` (one place for the mapping).
FLAGS: dict[str, str] = {
    "method": "--methods", "target": "--targets", "baseline": "--baselines", "layer": "--layer",
    "channel": "--channel", "weights": "--weights", "out": "--out", "run": "RUN", "images": "--image",
    "num_threads": "--threads",
    "channel_paths": "--image", "model.encoder_weights": "--encoder-weights", "train.size": "--size",
    "train.epochs": "--epochs", "train.batch_size": "--batch-size", "train.lr": "--lr", "train.loss": "--loss",
}

# Per command, the parameters whose flag there differs from FLAGS.
COMMAND_FLAGS: dict[str, dict[str, str]] = {
    "explain": {"method": "--method", "target": "--target"},
    "run": {"size": "--prepare-size", "patients": "--synthetic-patients", "slices_per_patient": "--synthetic-slices"},
}


def flag_message(exc: TumorcamError, command: str | None = None) -> str:
    """The message of a library error with its parameter written as the flag of `command` (`run`, ...):
    `steps: must be >= 1` (param `steps`) -> `--steps: must be >= 1`."""
    message = str(exc)
    if exc.param is None:
        return message
    flags = {**FLAGS, **COMMAND_FLAGS.get(command or "", {})}
    flag = flags.get(exc.param, "--" + exc.param.replace("_", "-"))
    if message.startswith(exc.param):
        return flag + message[len(exc.param):]
    return f"{flag}: {message}"


def usage_message(exc: ClickException) -> str:
    """Click's message of a usage error on one line, pointing to the command's --help."""
    message = " ".join(exc.format_message().split()).removesuffix(".")
    ctx = getattr(exc, "ctx", None) if isinstance(exc, UsageError) else None
    if ctx is not None:
        message += f" (see `{ctx.command_path} --help`)"
    return message


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning known errors into one line and an exit code, and
    TumorcamWarnings into one line `warning: ...`."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        with _one_line_warnings():
            result = app(args=args, prog_name="tumorcam", standalone_mode=False)
    except TumorcamError as exc:
        if debug:
            raise
        command = next((arg for arg in args if not arg.startswith("-")), None)
        typer.echo(f"error: {flag_message(exc, command)}", err=True)
        sys.exit(2)
    except NoArgsIsHelpError as exc:  # `tumorcam` or `tumorcam data` alone: the help
        exc.show()
        sys.exit(exc.exit_code)
    except ClickException as exc:  # a usage error: one line, like bad input
        typer.echo(f"error: {usage_message(exc)}", err=True)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    if isinstance(result, int) and result:
        sys.exit(result)
