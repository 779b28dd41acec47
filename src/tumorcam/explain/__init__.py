"""Explanations of the segmentation U-Net: one call, a batch of slices -> heatmaps in [0, 1].

`compute_maps(model, images, method=..., target=..., layer=...)` wraps the model so it returns one
scalar per image (the target, see `targets`), attributes it with the method (see `methods`) at the
layer (a module path, see `layers`), then rectifies, upsamples and normalises (see `maps`).
A batch of B slices costs one forward and one backward (integrated gradients: one per path step).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.explain.layers import DEFAULT_LAYER, INPUT_LAYER, resolve_layer
from tumorcam.explain.maps import normalise, rectify, times_mask, upsample
from tumorcam.explain.methods import METHODS, Method, Options, ScalarOutput
from tumorcam.explain.targets import TARGETS, Target

__all__ = ["DEFAULT_LAYER", "INPUT_LAYER", "METHODS", "TARGETS", "compute_maps", "get_method", "get_target", "times_mask"]


def _unknown(kind: str, option: str, name: str, choices: Sequence[str]) -> TumorcamError:
    nearest = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f" (did you mean {nearest[0]}?)" if nearest else ""
    return TumorcamError(f"{option}: unknown {kind} {name!r}{hint}; choose from {', '.join(choices)}")


def get_method(name: str) -> Method:
    """The registered method `name`, or a TumorcamError listing the valid ones."""
    if name not in METHODS:
        raise _unknown("method", "--methods", name, list(METHODS))
    return METHODS[name]


def get_target(name: str) -> Target:
    """The registered target `name`, or a TumorcamError listing the valid ones."""
    if name not in TARGETS:
        raise _unknown("target", "--targets", name, list(TARGETS))
    return TARGETS[name]


@contextlib.contextmanager
def explaining(model: nn.Module) -> Iterator[None]:
    """Eval mode, parameters frozen (only the layer and what follows it are recorded for backward);
    both restored afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compute_maps(
    model: nn.Module,
    images: torch.Tensor,
    *,
    method: str,
    target: str,
    layer: str | None,
    masks: torch.Tensor | None = None,
    ig_steps: int = 32,
    seed: int | Sequence[int] = 0,
    amp: bool = True,
) -> torch.Tensor:
    """Heatmaps (B,H,W) float32 in [0, 1] of `images` (B,1,H,W) in [0, 1], on the images' device.

    `layer` is a module path (None: the default `decoder.blocks.4`); layer-free methods ignore it.
    `masks` (B,1,H,W) are needed by the `gt-region` target. `seed` seeds the random map (an int for
    the batch, or one per image). `amp`: bf16 autocast when on CUDA (ignored on CPU).
    """
    chosen = get_method(method)
    chosen_target = get_target(target)
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (B,1,H,W), got {tuple(images.shape)}")
    if chosen_target.needs_masks and masks is None:
        raise TumorcamError(f"--targets {target}: needs ground-truth masks, and the data given has none")
    module = resolve_layer(model, layer or DEFAULT_LAYER) if chosen.uses_layer else None
    if masks is not None:
        masks = masks.to(images.device)
    scalar = ScalarOutput(model, chosen_target, masks)
    with explaining(model), _autocast(images.device, amp):
        raw = chosen.attribute(scalar, images, module, Options(ig_steps=ig_steps, seed=seed))
    return normalise(upsample(rectify(raw.detach().float(), chosen.rectify), tuple(images.shape[-2:])))
