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
