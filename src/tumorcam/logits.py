"""A model's logits: picked out of its output (`Logits`, `select_output`, the `Output` that says how)
and the model run for an explanation (`explaining`: eval mode, parameters frozen).

The lowest layer that runs a model: `tumorcam.guards` checks a model through it, and
`tumorcam.explain.methods.base` (where the methods import these from) builds on it.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from tumorcam.errors import TumorcamError

Output = int | str | Callable[[Any], torch.Tensor] | None


def select_output(out: Any, output: Output) -> torch.Tensor:
    """The logits tensor in a model's output: the output itself (`output` None), `out[output]` (an index
    of a tuple or list, a key of a dict) or `output(out)` (a callable)."""
    if callable(output):
        picked = output(out)
    elif output is None:
        picked = out
        if isinstance(out, Mapping):
            raise TumorcamError(f"output: the model returns a dict with keys {', '.join(map(str, out))}; "
                                "choose the logits with output=KEY", param="output")
        if isinstance(out, (tuple, list)):
            raise TumorcamError(f"output: the model returns a {type(out).__name__} of {len(out)}; "
                                "choose the logits with output=INDEX", param="output")
    elif isinstance(out, Mapping):
        if output not in out:
            nearest = difflib.get_close_matches(str(output), [str(k) for k in out], n=1, cutoff=0.5)
            hint = f" (did you mean {nearest[0]}?)" if nearest else ""
            raise TumorcamError(f"output: the model's dict has no key {output!r}{hint}; keys: "
                                f"{', '.join(map(str, out))}", param="output")
        picked = out[output]
    elif isinstance(out, (tuple, list)) and isinstance(output, int):
        if not -len(out) <= output < len(out):
            raise TumorcamError(f"output: index {output} is out of range for the model's {type(out).__name__} "
                                f"of {len(out)}", param="output")
        picked = out[output]
    else:
        raise TumorcamError(f"output: cannot pick {output!r} from the model's {type(out).__name__} output", param="output")
    if not isinstance(picked, torch.Tensor):
        raise TumorcamError(f"output: the logits must be a tensor (B, C, *spatial), got {type(picked).__name__}",
                            param="output")
    return picked


@contextlib.contextmanager
def explaining(model: nn.Module) -> Iterator[None]:
    """Eval mode, parameters frozen (only the layer and what follows it are recorded for backward);
    afterwards every module gets its own mode back and every parameter its own flag."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


class Logits(nn.Module):
    """The model with its logits picked: x (B, C_in, *spatial) -> z (B, C, *spatial)."""

    def __init__(self, model: nn.Module, output: Output = None) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = select_output(self.model(x), self.output)
        if logits.dim() != x.dim() or logits.shape[0] != x.shape[0]:
            raise TumorcamError(f"output: the logits must be (B, C, *spatial) like the images {tuple(x.shape)}, "
                                f"got {tuple(logits.shape)}", param="output")
        return logits
