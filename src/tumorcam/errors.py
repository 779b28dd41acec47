"""The library's exception, a `ValueError` whose message names the parameter at fault, and its warning.

Library calls name their own parameters (`layer`, `method`, `target`, `masks`, ...) and never a
command-line flag: `TumorcamError("steps: must be >= 1", param="steps")`. The CLI catches it, writes
the parameter as its flag (`--steps: must be >= 1`, `cli.flag_message`) and prints one line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TumorcamError(ValueError):
    """Bad input or a failed step, with a message that names the parameter or file at fault.

    Args:
        message: what is wrong; starts with `param:` when a parameter is at fault.
        param: the library parameter at fault (`steps`, `methods`, `data`, ...), or None for a file or
            a failed step. The CLI shows it as the command's flag.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class TumorcamWarning(UserWarning):
    """Input the library accepts but doubts (probability outputs, flat maps, empty regions, ...); the
    message names the parameter, and the CLI prints it as one line `warning: ...`."""


def unknown_name(parameter: str, name: str, choices: Iterable[str]) -> TumorcamError:
    """The error for a name that is not registered: `parameter: unknown parameter 'x' (did you mean y?); choose from ...`."""
    choices = list(choices)
    nearest = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f" (did you mean {nearest[0]}?)" if nearest else ""
    return TumorcamError(f"{parameter}: unknown {parameter} {name!r}{hint}; choose from {', '.join(choices)}",
                         param=parameter)
