"""`load_user_model`: a researcher's own network from `MODULE:FACTORY` and an optional weights file.

`MODULE` is imported as `import MODULE` would, with the current directory searched first (as
`python -m` does), so a `my_models.py` beside the command works without installing it.
`FACTORY` is a callable of that module (a dotted path such as `Models.unet` works too), called
with no arguments; it must return a `torch.nn.Module`. The weights, when given, are a
state_dict: a `.safetensors` file, or a `torch.save` file read with
`torch.load(weights_only=True)`, which never runs code from the file; they must fit the model
exactly (`load_state_dict(strict=True)`). Every failure is one `TumorcamError` naming `model`
or `weights` (its `param`) and the value at fault.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from tumorcam.errors import TumorcamError

EXAMPLE = "my_models:make_unet"


@contextlib.contextmanager
def _cwd_first() -> Iterator[None]:
    """The current directory at the front of sys.path while the block runs."""
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        sys.path.remove(cwd)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_user_model(spec: str, weights: str | Path | None = None) -> nn.Module:
    """The module `FACTORY()` of `spec` = "MODULE:FACTORY", with the state_dict of `weights` loaded."""
    option = f"model {spec}"
    module_name, colon, factory_path = spec.partition(":")
    if not colon or not module_name or not factory_path or ":" in factory_path:
        raise TumorcamError(f"{option}: expected MODULE:FACTORY, e.g. {EXAMPLE} (a function in my_models.py "
                            "that returns the network)", param="model")
    with _cwd_first():
        importlib.invalidate_caches()
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                raise TumorcamError(f"{option}: no module named {module_name!r} in the current directory or "
                                    "on the Python path", param="model") from None
            raise TumorcamError(f"{option}: importing {module_name} failed ({first_line(exc)})", param="model") from None
        except Exception as exc:  # noqa: BLE001 - the user's module failed to run
            raise TumorcamError(f"{option}: importing {module_name} failed ({first_line(exc)})", param="model") from None
        factory: object = module
        for part in factory_path.split("."):
            if not hasattr(factory, part):
                names = [n for n in dir(factory) if not n.startswith("_")]
                nearest = difflib.get_close_matches(part, names, n=1, cutoff=0.5)
                hint = f" (did you mean {nearest[0]}?)" if nearest else ""
                raise TumorcamError(f"{option}: {module_name} has no {factory_path!r}{hint}", param="model")
            factory = getattr(factory, part)
        if not callable(factory):
            raise TumorcamError(f"{option}: {factory_path} is an object of type {type(factory).__name__}, "
                                "not a factory to call", param="model")
        try:
            model = factory()
        except Exception as exc:  # noqa: BLE001 - the user's factory failed
            raise TumorcamError(f"{option}: calling {factory_path}() failed ({first_line(exc)})", param="model") from None
    if not isinstance(model, nn.Module):
        raise TumorcamError(f"{option}: {factory_path}() returned an object of type {type(model).__name__}, "
                            "not a torch.nn.Module", param="model")
    if weights is not None:
        load_state(model, Path(weights), spec)
    return model


def load_state(model: nn.Module, path: Path, spec: str) -> None:
    """Load the state_dict at `path` into `model` (built by `spec`), strictly."""
    from tumorcam.models.unet import read_state_dict

    option = f"weights {path}"
    state = read_state_dict(path, param="weights")
    loose = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if loose:
        raise TumorcamError(f"{option}: not a state_dict: entries {', '.join(loose[:5])} are not tensors "
                            "(save model.state_dict(), not a training checkpoint)", param="weights")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        found = []
        if missing:
            found.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            found.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            key = shapes[0]
            found.append(f"{len(shapes)} of another shape (e.g. {key}: {tuple(state[key].shape)} in the file, "
                         f"{tuple(expected[key].shape)} in the model)")
        raise TumorcamError(f"{option}: does not fit the network of model {spec}: {len(expected)} entries "
                            f"expected, {'; '.join(found)}", param="weights")
    model.load_state_dict(state, strict=True)
