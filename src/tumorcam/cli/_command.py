"""The class of every `tumorcam` command: typer's, with an argument that has a metavar (RUN, SRC...)
shown by that name alone in --help, without typer's Python type beside it (`<list[Path]>`), and the
names of the registries (`{methods}`, `{controls}`, `{targets}`, `{mask_targets}`, `{baselines}` in an option's help)
filled in from `tumorcam.explain` and `tumorcam.evaluate.baselines` when --help is shown (not at import:
they import torch); and what several commands share: `--threads` (`use_threads`) and the run's
headline in the terminal (`echo_headline`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand


def registry_names() -> dict[str, str]:
    """`{methods}` etc. -> the registry's names, comma-separated, in its order."""
    from tumorcam.evaluate.baselines import BASELINES
    from tumorcam.explain import METHODS, TARGETS

    return {"{methods}": ", ".join(name for name, method in METHODS.items() if not method.control),
            "{controls}": ", ".join(name for name, method in METHODS.items() if method.control),
            "{targets}": ", ".join(TARGETS), "{baselines}": ", ".join(BASELINES),
            "{mask_targets}": ", ".join(name for name, target in TARGETS.items() if target.needs_masks)}


class Command(TyperCommand):
    def format_help(self, ctx: Any, formatter: Any) -> None:
        params = [param for param in self.get_params(ctx) if "{" in (getattr(param, "help", None) or "")]
        if params:
            names = registry_names()
            for param in params:
                for key, value in names.items():
                    param.help = param.help.replace(key, value)
        super().format_help(ctx, formatter)

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperArgument) and param.metavar is not None:
                param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
        return params


MIRROR_HELP = "With --nnunet: nnU-Net's test-time mirroring of every tile (logits and maps; 2^axes times the work)."
ONE_PASS_HELP = "With --nnunet: the network on each whole preprocessed volume at once, not tile by tile."
THREADS_HELP = ("CPU threads for torch (0: automatic, torch's default lowered to the cores the load leaves idle; "
                "1 is often fastest on a busy machine).")


def use_threads(threads: int | None) -> None:
    """`--threads N`: torch's CPU threads for the rest of the command (`tumorcam.device.cpu_threads`);
    not given: as the root set them (automatic)."""
    if threads is None:
        return
    import torch

    from tumorcam.device import cpu_threads

    torch.set_num_threads(cpu_threads(threads))


TERMINAL_COLOURS = {"green": typer.colors.GREEN, "amber": typer.colors.YELLOW, "red": typer.colors.RED,
                    "grey": typer.colors.WHITE}


def echo_headline(run: Path) -> None:
    """The run's headline (faithfulness.json's), coloured by its level: the last lines of `tumorcam run`
    (before the report's path) and of `tumorcam evaluate`; nothing when the run has no faithfulness.json."""
    from tumorcam.io import optional_json
    from tumorcam.report.results import headline_of

    faithfulness = optional_json(run / "faithfulness.json")
    if not faithfulness:
        return
    head = headline_of(faithfulness)
    colour = TERMINAL_COLOURS.get(head.get("colour", "grey"), typer.colors.WHITE)
    typer.echo(typer.style(f"headline: {head['level']}", fg=colour, bold=True))
    typer.echo(typer.style(head["sentence"], fg=colour))
