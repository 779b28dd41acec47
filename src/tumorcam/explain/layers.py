"""Layers by module path (`decoder.blocks.4`, `encoder.layer4`, ...), as `model.named_modules()` names them.

`layer=None` takes the last convolution block before the segmentation head, found from the order
in which one forward pass runs the modules (`default_layer`):

1. the head is the last convolution to run (in a model without convolutions: the last module
   with parameters of its own);
2. the last layer is the last module of the same kind to run before the head; of convolutions,
   only one whose output has more channels than the head's (one that already outputs the classes,
   such as the transposed convolution opening the top up-block of MONAI's `UNet`, only redraws
   the logits);
3. the block is its innermost enclosing module that ran, holds at least two modules of that kind
   and is neither the model itself nor a module holding the head; without one, the last layer.

For an smp U-Net this is `decoder.blocks.4` (two 3x3 convolutions at full resolution, just before
`segmentation_head`); for MONAI's `UNet` (two or more levels) the up-block of the level below the
top, `model.1.submodule.2`. The choice is logged at INFO on the `tumorcam.explain` logger. A CAM taken
at the last convolution (`segmentation_head.0` of a one-channel U-Net) only redraws the logits:
with `mean-logits` its one channel weight is the constant 1/(H*W), so the map is the min-max
normalised ReLU(logits). Layer-free methods (saliency, integrated gradients, random) are recorded
with the layer `input`.

A sliding-window model (an nnU-Net model) runs each layer once per tile, so a hook on its whole
forward would see one tile only. Such a model is *tiled* (`is_tiled`): it explains itself through
`explain_tiles(images, method=, target=, layer=, channel=, masks=, ig_steps=, seed=)` -> (maps,
layer path), names its default layer with `tile_layer()` and may give its sanity cascade with
`cascade_stages()`; `tumorcam.explain` and `tumorcam.sanity` use these for every method but the
controls (which read the whole model's output), so that memory stays that of one tile.
"""

from __future__ import annotations

import difflib
import logging

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from tumorcam.errors import TumorcamError

INPUT_LAYER = "input"

logger = logging.getLogger("tumorcam.explain")


def is_tiled(model: nn.Module) -> bool:
    """Whether `model` explains its layers itself, tile by tile (`explain_tiles`, see the module docstring)."""
    return callable(getattr(model, "explain_tiles", None))


def layer_names(model: nn.Module) -> list[str]:
    """Every named submodule path of `model` (the root excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """The submodule at path `layer` (or `layer` itself when it is a submodule of `model`); an unknown
    path fails naming the nearest valid paths (difflib)."""
    if isinstance(layer, nn.Module):
        if any(module is layer for module in model.modules()):
            return layer
        raise TumorcamError(f"layer: the {type(layer).__name__} given is not a submodule of {type(model).__name__}",
                            param="layer")
    modules = dict(model.named_modules())
    module = modules.get(layer) if layer else None
    if module is not None:
        return module
    names = layer_names(model)
    nearest = difflib.get_close_matches(str(layer), names, n=5, cutoff=0.5)
    hint = f"nearest: {', '.join(nearest)}" if nearest else f"top-level modules: {', '.join(n for n in names if '.' not in n)}"
    raise TumorcamError(f"layer: {type(model).__name__} has no layer {layer!r} ({hint})", param="layer")


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def default_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The last convolution block before the head (rule in the module docstring), from one forward of `example`."""
    return candidate_layers(model, example, log=True)[0]


def candidate_layers(model: nn.Module, example: torch.Tensor, *, log: bool = False) -> list[str]:
    """The convolution blocks before the head, last first, from one forward of `example`: the block
    of each earlier layer of the head's kind by the rule in the module docstring, each once. The
    first is `default_layer`'s choice (logged with `log`); `explain` moves up this list when that
    choice gives flat Grad-CAM maps for every image."""
    modules = dict(model.named_modules())
    order: list[str] = []
    widths: dict[str, int] = {}  # output channels of each module that returned a tensor

    def record(name: str, out: object) -> None:
        order.append(name)
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            widths[name] = int(out.shape[1])

    handles = [module.register_forward_hook(lambda m, args, out, name=name: record(name, out))
               for name, module in modules.items() if name]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    convolutional = any(isinstance(modules[name], _ConvNd) for name in order)

    def of_kind(module: nn.Module) -> bool:
        if convolutional:
            return isinstance(module, _ConvNd)
        return _owns_parameters(module) and next(module.children(), None) is None

    runs = [i for i, name in enumerate(order) if of_kind(modules[name])]
    if not runs:
        raise TumorcamError(f"layer: {type(model).__name__} runs no submodule with parameters; name a layer", param="layer")
    head = order[runs[-1]]
    before = [order[i] for i in runs if order[i] != head
              and (not convolutional or widths.get(order[i], 2) > widths.get(head, 1))]
    if not before:
        raise TumorcamError(f"layer: {type(model).__name__} has no layer before its head {head}; name a layer",
                            param="layer")

    def block(layer: str) -> str:
        parts = layer.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            ancestor = ".".join(parts[:depth])
            if head.startswith(ancestor + "."):
                break
            if ancestor in order and sum(of_kind(m) for m in modules[ancestor].modules()) >= 2:
                return ancestor
        return layer

    blocks = list(dict.fromkeys(block(layer) for layer in reversed(before)))
    if log:
        logger.info("layer=None: explaining at %s, the last convolution block before the head %s", blocks[0], head)
    return blocks
