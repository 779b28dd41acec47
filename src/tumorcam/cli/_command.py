"""The class of every `tumorcam` command: typer's, with an argument that has a metavar (RUN, SRC...)
shown by that name alone in --help, without typer's Python type beside it (`<list[Path]>`)."""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperCommand


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperArgument) and param.metavar is not None:
                param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
        return params


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
