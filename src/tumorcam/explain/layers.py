"""Layers by module path (`decoder.blocks.4`, `encoder.layer4`, ...), as `model.named_modules()` names them.

The default is the seed's "decoder head" choice, `decoder.blocks.4`: the last U-Net decoder block
(16 channels at full resolution), just before `segmentation_head`. A CAM taken at the last
convolution (`segmentation_head.0`, one channel) only redraws the logits: with `mean-logits` its
one channel weight is the constant 1/(H*W), so the map is the min-max normalised ReLU(logits).
Layer-free methods (saliency, integrated gradients, random) are recorded with the layer `input`.
"""

from __future__ import annotations

import difflib

from torch import nn

from tumorcam.errors import TumorcamError

DEFAULT_LAYER = "decoder.blocks.4"
INPUT_LAYER = "input"


def layer_names(model: nn.Module) -> list[str]:
    """Every named submodule path of `model` (the root excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, path: str) -> nn.Module:
    """The submodule at `path`; an unknown path fails naming the nearest valid paths (difflib)."""
    modules = dict(model.named_modules())
    module = modules.get(path) if path else None
    if module is not None:
        return module
    names = layer_names(model)
    nearest = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    hint = f"nearest: {', '.join(nearest)}" if nearest else f"top-level modules: {', '.join(n for n in names if '.' not in n)}"
    raise TumorcamError(f"--layers: {type(model).__name__} has no layer {path!r} ({hint})")
