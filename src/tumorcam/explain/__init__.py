"""Explain any segmentation network: a batch of images -> one heatmap per image in [0, 1].

    import segmentation_models_pytorch as smp
    import torch
    import tumorcam

    model = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=3).eval()
    x = torch.rand(4, 3, 64, 64)
    maps = tumorcam.explain(model, x, channel=1)  # (4, 64, 64): Grad-CAM of class 1's predicted region

The model is any `nn.Module` whose output holds logits z (B, C, *spatial): C = 1 is read with a
sigmoid, C > 1 with a softmax and `channel` chooses the class. A tuple, list or dict output (deep
supervision, auxiliary heads) is read through `output`: an index, a key or a callable. Images are
(B, C_in, H, W), or (B, C_in, D, H, W) for a 3-D network, with any number of input channels.

`explain` wraps the model so it returns one scalar per image (the target: a name of `TARGETS` or a
callable `(logits, masks) -> weights`, see `targets`), attributes it with the method (see
`methods`) at the layer (a module path or the module; None picks one by the rule in `layers`),
then rectifies, upsamples and normalises (see `maps`). Each batch of `batch_size` images costs one
forward and one backward (integrated gradients: one per path step). The `component` target gives
one map per connected lesion: `explain_components`. Autocast (bf16 on CUDA) only with `amp=True`.

The package is callable: `tumorcam.explain(...)` is `tumorcam.explain.explain(...)`.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from tumorcam import guards
from tumorcam.device import autocast
from tumorcam.errors import TumorcamError, unknown_name
from tumorcam.explain.layers import INPUT_LAYER, candidate_layers, default_layer, is_tiled, resolve_layer
from tumorcam.explain.maps import normalize, rectify, times_mask, upsample
from tumorcam.explain.methods import METHODS, Method, Options, ScalarOutput
from tumorcam.explain.methods.base import Logits, Output, explaining
from tumorcam.explain.targets import (
    TARGETS,
    TargetFn,
    get_target,
    lesion_weights,
    predicted,
    target_function,
)

__all__ = ["INPUT_LAYER", "METHODS", "TARGETS", "LesionMaps", "compute_maps", "explain", "explain_at",
           "explain_components", "get_method", "get_target", "times_mask"]

Seed = int | Sequence[int]


def get_method(name: str) -> Method:
    """The registered method `name`, or a TumorcamError naming `method` and the valid ones."""
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    return METHODS[name]


def explain(
    model: nn.Module,
    images: torch.Tensor,
    *,
    method: str = "gradcam",
    target: str | TargetFn = "predicted-region",
    layer: str | nn.Module | None = None,
    channel: int | None = None,
    output: Output = None,
    masks: torch.Tensor | None = None,
    batch_size: int = 32,
    amp: bool = False,
    ig_steps: int = 32,
    seed: Seed = 0,
) -> torch.Tensor:
    """Heatmaps of `images` in [0, 1], one per image, by `method` at `layer` for `target`.

    The checks and warnings of `tumorcam.guards` run first; flat maps are warned.

    Args:
        model: any module returning logits (B, C, *spatial).
        images: (B, C_in, H, W) or (B, C_in, D, H, W) inputs of the model.
        method: a name of `METHODS`.
        target: a name of `TARGETS` or a callable `(logits, masks) -> weights` (weights broadcastable
            to the logits (B, C, *spatial)); the scalar explained is sum(weights * logits).
        layer: a module path or module of `model` (None: the last convolution block before the head,
            logged; when its Grad-CAM-family maps are flat for every image, the next block up, with a
            warning); layer-free methods ignore it.
        channel: the explained class, required when the model has several output channels (None: 0
            for one).
        output: picks the logits from a tuple, list or dict output (index, key or callable).
        masks: (B, 1, *spatial) or (B, *spatial), the ground truth of the explained class, needed by
            `gt-region`, `false-positive` and `false-negative`.
        batch_size: images per forward and backward (integrated gradients: one per path step).
        amp: bf16 autocast on CUDA.
        ig_steps: integrated-gradients path points.
        seed: seeds the random map (an int for the call, or one per image).

    Returns:
        (B, *spatial) float32 heatmaps in [0, 1], on the images' device.

    Raises:
        TumorcamError: for an unknown method or target, images that are not (B, C_in, *spatial), a
            target that needs masks without them, batch_size < 1, a layer that is not in `model` or
            not on the path to the output, a missing or invalid `channel`, or seeds that do not
            match the images.

    Example:
        >>> maps = tumorcam.explain(model, x, channel=1)  # (4, 64, 64): Grad-CAM of class 1's predicted region
    """
    return explain_at(model, images, method=method, target=target, layer=layer, channel=channel, output=output,
                      masks=masks, batch_size=batch_size, amp=amp, ig_steps=ig_steps, seed=seed)[0]


def explain_at(
    model: nn.Module,
    images: torch.Tensor,
    *,
    method: str = "gradcam",
    target: str | TargetFn = "predicted-region",
    layer: str | nn.Module | None = None,
    channel: int | None = None,
    output: Output = None,
    masks: torch.Tensor | None = None,
    batch_size: int = 32,
    amp: bool = False,
    ig_steps: int = 32,
    seed: Seed = 0,
) -> tuple[torch.Tensor, str]:
    """`explain`, and the layer explained: its module path (the one `layer=None` chose, after any
    fallback; a module given is named by its path) or `input` for a layer-free method."""
    chosen = get_method(method)
    guards.check_images(images)
    target_function(target, 0)  # the target's name, before the model runs
    if isinstance(target, str) and get_target(target).needs_masks and masks is None:
        raise TumorcamError(f"masks: target {target!r} needs ground-truth masks (B, 1, *spatial); none were given")
    guards.check_positive_int("batch_size", batch_size)
    tiled = is_tiled(model) and not chosen.control  # a control reads the whole model's output
    if chosen.uses_layer and layer is not None and not tiled:
        resolve_layer(model, layer)
    # a callable target picks its own class: `channel` then matters only to a method that reads it
    channel = guards.check_model(model, images, output=output, channel=channel,
                                 required=isinstance(target, str) or chosen.reads_channel)
    weights = target_function(target, channel)
    if tiled:  # it runs once per tile: the model explains its tiles (`layers.is_tiled`)
        if output is not None:
            raise TumorcamError("output: a tiled model returns its logits as one tensor", param="output")
        maps, name = model.explain_tiles(images, method=method, target=weights, layer=layer, channel=channel,
                                         masks=None if masks is None else _masks_of(masks, images), ig_steps=ig_steps,
                                         seed=seed)
        guards.warn_flat_maps(maps, chosen.name, name)
        return maps, name
    run = partial(_maps, model, images, chosen, weights, channel=channel, output=output, masks=masks,
                  batch_size=batch_size, amp=amp, ig_steps=ig_steps, seed=seed)
    if not chosen.uses_layer:
        maps = run(layer=None)
        guards.warn_flat_maps(maps, chosen.name, INPUT_LAYER)
        return maps, INPUT_LAYER
    if layer is not None:
        maps = run(layer=layer)
        name = layer if isinstance(layer, str) else _path_of(model, layer)
        guards.warn_flat_maps(maps, chosen.name, name)
        return maps, name
    with explaining(model):
        candidates = candidate_layers(model, images[:1], log=True) if len(images) else [""]
    maps = run(layer=candidates[0])
    if len(maps) and bool(guards.flat_maps(maps).all()) and _has_target(model, images, weights, masks, output,
                                                                         channel, batch_size):
        for tried, name in enumerate(candidates[1:1 + FALLBACK_BLOCKS], start=1):
            other = run(layer=name)
            if not bool(guards.flat_maps(other).all()):
                guards.warn_layer_fallback(candidates[:tried], name)
                guards.warn_flat_maps(other, chosen.name, name)
                return other, name
    guards.warn_flat_maps(maps, chosen.name, candidates[0])
    return maps, candidates[0]


FALLBACK_BLOCKS = 3  # explain_at: how many blocks up `layer=None` tries when its choice gives flat maps


def _masks_of(masks: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Ground-truth masks (B, 1, *spatial) or (B, *spatial) as (B, 1, *spatial) on the images' device."""
    masks = torch.as_tensor(masks).to(images.device)
    if masks.dim() == images.dim() - 1:
        masks = masks[:, None]
    if masks.shape[0] != images.shape[0] or tuple(masks.shape[2:]) != tuple(images.shape[2:]):
        raise TumorcamError(f"masks: shape {tuple(masks.shape)} does not fit images {tuple(images.shape)}",
                            param="masks")
    return masks


def _path_of(model: nn.Module, layer: nn.Module) -> str:
    """The module path of `layer` in `model` (its class name when it is not a submodule)."""
    return next((name for name, module in model.named_modules() if module is layer and name), type(layer).__name__)


def _has_target(model: nn.Module, images: torch.Tensor, weights: TargetFn, masks: torch.Tensor | None,
                output: Output, channel: int, batch_size: int) -> bool:
    """Whether the target weights some pixel of some image: flat maps of an empty target (no predicted
    pixel, say) are flat at every layer, and moving up would not help."""
    if masks is not None:
        masks = torch.as_tensor(masks).to(images.device)
    with explaining(model):
        for start in range(0, len(images), batch_size):
            part = slice(start, start + batch_size)
            scalar = ScalarOutput(model, weights, None if masks is None else masks[part], output=output,
                                  channel=channel)
            if bool((scalar.fixed_weights(images[part]) != 0).any()):
                return True
    return False


def _maps(model: nn.Module, images: torch.Tensor, chosen: Method, weights: TargetFn, *, layer: str | nn.Module | None,
          channel: int, output: Output, masks: torch.Tensor | None, batch_size: int, amp: bool, ig_steps: int,
          seed: Seed) -> torch.Tensor:
    """The engine of `explain` and `explain_components`: the method's maps of `images`, batch by batch,
    at `layer` (a path or module, chosen by the caller; None for a layer-free method). The callers
    have checked the images and the batch size."""
    count = images.shape[0]
    if masks is not None:
        masks = torch.as_tensor(masks).to(images.device)
        if masks.dim() == 0 or masks.shape[0] != count:
            raise TumorcamError(f"masks: {masks.shape[0] if masks.dim() else 0} masks for {count} images")
    if isinstance(seed, (int, np.integer)):
        generator: torch.Generator | None = torch.Generator().manual_seed(int(seed))
    else:
        generator, seed = None, list(seed)
        if len(seed) != count:
            raise TumorcamError(f"seed: {len(seed)} seeds for {count} images")
    spatial = tuple(images.shape[2:])
    if count == 0:
        return torch.zeros((0, *spatial), device=images.device)
    if chosen.uses_layer and is_tiled(model):
        raise TumorcamError(f"method: {type(model).__name__} runs its layers once per tile; {chosen.name} of its "
                            "lesions is not available (explain its predicted or ground-truth region)", param="method")
    out = []
    with explaining(model):
        module = None
        if chosen.uses_layer:
            module = resolve_layer(model, layer)
        for start in range(0, count, batch_size):
            part = slice(start, start + batch_size)
            scalar = ScalarOutput(model, weights, None if masks is None else masks[part], output=output,
                                  channel=channel)
            options = Options(ig_steps=ig_steps, seed=generator if generator is not None else seed[part])
            with autocast(images.device, amp):
                try:
                    raw = chosen.attribute(scalar, images[part], module, options)
                except RuntimeError as exc:
                    if module is None or "does not require grad" not in str(exc):
                        raise
                    raise TumorcamError(f"layer: {type(module).__name__} is not on the path from the input to the "
                                        "chosen output (another head of the model?); name a layer that the output "
                                        "depends on", param="layer") from None
            out.append(normalize(upsample(rectify(raw.detach().float(), chosen.rectify), spatial)))
    return torch.cat(out)


def compute_maps(
    model: nn.Module,
    images: torch.Tensor,
    *,
    method: str,
    target: str | TargetFn,
    layer: str | nn.Module | None,
    masks: torch.Tensor | None = None,
    ig_steps: int = 32,
    seed: Seed = 0,
    amp: bool = False,
) -> torch.Tensor:
    """`explain` of the whole batch in one pass (the caller batches), channel 0 of a plain tensor output."""
    return explain(model, images, method=method, target=target, layer=layer, channel=0, masks=masks,
                   ig_steps=ig_steps, seed=seed, amp=amp, batch_size=max(1, images.shape[0]))


@dataclass(frozen=True)
class LesionMaps:
    """One map per connected predicted lesion, in image order: `maps` (L, *spatial) float32 in [0, 1],
    `image_index` (L,) int64 the image of each lesion, `lesions` (L, *spatial) bool its mask."""

    maps: torch.Tensor
    image_index: torch.Tensor
    lesions: torch.Tensor


def explain_components(
    model: nn.Module,
    images: torch.Tensor,
    *,
    method: str = "gradcam",
    layer: str | nn.Module | None = None,
    channel: int | None = None,
    output: Output = None,
    batch_size: int = 32,
    amp: bool = False,
    ig_steps: int = 32,
    seed: Seed = 0,
) -> LesionMaps:
    """The `component` target: each connected lesion of the predicted region of class `channel`
    explained on its own.

    The lesions are the connected components of the prediction on the logits' grid (scipy.ndimage.label,
    face, edge and corner neighbours connect: 8 in 2-D, 26 in 3-D); lesion l of image b is explained as
    `explain(..., target=R_l)` with R_l its mask (s = sum of z_c over the lesion). An image with no
    predicted pixel has no lesion.

    Args:
        model: as in `explain`.
        images: as in `explain`.
        method: as in `explain`.
        layer: as in `explain`.
        channel: as in `explain`.
        output: as in `explain`.
        batch_size: as in `explain`.
        amp: as in `explain`.
        ig_steps: as in `explain`.
        seed: as in `explain`; a per-image `seed` list is given per image and used for each of its
            lesions.

    Returns:
        `LesionMaps`: `maps` (L, *spatial) float32 in [0, 1], `image_index` (L,) the image of each
        lesion, `lesions` (L, *spatial) bool its mask; with no lesion at all, the fields are empty
        (L = 0).

    Raises:
        TumorcamError: as `explain` does for the method, images, batch size, layer and channel, or
            for seeds that do not match the images.
    """
    chosen = get_method(method)
    guards.check_images(images)
    guards.check_positive_int("batch_size", batch_size)
    if chosen.uses_layer and layer is not None:
        resolve_layer(model, layer)
    channel = guards.check_model(model, images, output=output, channel=channel)
    logits_of = Logits(model, output)
    regions = []
    with explaining(model), torch.no_grad(), autocast(images.device, amp):
        for start in range(0, images.shape[0], batch_size):
            regions.append(predicted(logits_of(images[start:start + batch_size]), channel).cpu())
    region = torch.cat(regions).numpy()
    structure = ndimage.generate_binary_structure(region.ndim - 1, region.ndim - 1)
    lesions, index = [], []
    for b in range(region.shape[0]):
        labels, found = ndimage.label(region[b], structure=structure)
        lesions += [labels == k for k in range(1, found + 1)]
        index += [b] * found
    spatial = tuple(images.shape[2:])
    image_index = torch.tensor(index, dtype=torch.int64)
    if not lesions:
        empty = torch.zeros((0, *spatial), device=images.device)
        return LesionMaps(maps=empty, image_index=image_index, lesions=empty.bool())
    masks = torch.from_numpy(np.stack(lesions)).unsqueeze(1).to(images.device)
    if not isinstance(seed, (int, np.integer)):
        seeds = list(seed)
        if len(seeds) != images.shape[0]:
            raise TumorcamError(f"seed: {len(seeds)} seeds for {images.shape[0]} images")
        seed = [seeds[b] for b in index]
    if chosen.uses_layer and layer is None:
        with explaining(model):
            layer = default_layer(model, images[:1])
    maps = _maps(model, images[image_index.to(images.device)], chosen, partial(lesion_weights, channel=channel),
                 layer=layer, channel=channel, output=output, masks=masks, batch_size=batch_size, amp=amp,
                 ig_steps=ig_steps, seed=seed)
    guards.warn_flat_maps(maps, chosen.name, INPUT_LAYER if not chosen.uses_layer else
                          layer if isinstance(layer, str) else _path_of(model, layer))
    if tuple(masks.shape[2:]) != spatial:
        masks = torch.nn.functional.interpolate(masks.float(), size=spatial, mode="nearest") > 0.5
    return LesionMaps(maps=maps, image_index=image_index, lesions=masks[:, 0])


class _CallableModule(types.ModuleType):
    """This package, callable: `tumorcam.explain(model, images, ...)` calls `explain`."""

    __signature__ = inspect.signature(explain)

    def __call__(self, *args: object, **kwargs: object) -> torch.Tensor:
        return explain(*args, **kwargs)  # type: ignore[arg-type]


sys.modules[__name__].__class__ = _CallableModule
